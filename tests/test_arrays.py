"""The small numpy helpers of `tastemaker.arrays`."""

from __future__ import annotations

import numpy as np

from tastemaker.arrays import member


def test_member_is_np_isin() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        values = rng.integers(-2, 60, rng.integers(0, 40))
        wanted = rng.integers(-2, 60, rng.integers(0, 12))  # repeats, -1 (unknown ids)
        assert (member(values, wanted) == np.isin(values, wanted)).all()
    assert member(np.arange(3), np.empty(0, np.int64)).tolist() == [False] * 3
    assert member(np.empty(0, np.int64), np.arange(3)).shape == (0,)
