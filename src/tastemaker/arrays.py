"""Small numpy building blocks shared by the vectorized code paths."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["rank_within"]


def rank_within(groups: npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
    """0, 1, 2, ... within each run of equal values of a sorted (grouped) array."""
    if groups.size == 0:
        return np.zeros(0, np.int64)
    starts = np.r_[0, np.flatnonzero(groups[1:] != groups[:-1]) + 1]
    lengths = np.diff(np.r_[starts, groups.size])
    return np.asarray(np.arange(groups.size) - np.repeat(starts, lengths), np.int64)
