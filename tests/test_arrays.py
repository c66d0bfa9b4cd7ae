"""The small numpy helpers of `tastemaker.arrays`."""

from __future__ import annotations

import numpy as np

from tastemaker.arrays import member, unique_rows


def test_member_is_np_isin() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        values = rng.integers(-2, 60, rng.integers(0, 40))
        wanted = rng.integers(-2, 60, rng.integers(0, 12))  # repeats, -1 (unknown ids)
        assert (member(values, wanted) == np.isin(values, wanted)).all()
    assert member(np.arange(3), np.empty(0, np.int64)).tolist() == [False] * 3
    assert member(np.empty(0, np.int64), np.arange(3)).shape == (0,)


def test_unique_rows_is_np_unique_with_inverse() -> None:
    rng = np.random.default_rng(1)
    for trial in range(200):
        low = -1 if trial % 40 == 0 else 0  # a stray -1 takes np.unique itself
        rows = rng.integers(low, 10 + 40 * trial, rng.integers(0, 60))  # the scratch grows
        got, want = unique_rows(rows), np.unique(rows, return_inverse=True)
        assert got[0].tolist() == want[0].tolist()
        assert got[1].tolist() == want[1].tolist()
