"""Small numpy building blocks shared by the vectorized code paths."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["member", "rank_within"]


def rank_within(groups: npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
    """0, 1, 2, ... within each run of equal values of a sorted (grouped) array."""
    if groups.size == 0:
        return np.zeros(0, np.int64)
    starts = np.r_[0, np.flatnonzero(groups[1:] != groups[:-1]) + 1]
    lengths = np.diff(np.r_[starts, groups.size])
    return np.asarray(np.arange(groups.size) - np.repeat(starts, lengths), np.int64)


def member(values: npt.NDArray[np.int64], wanted: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """`np.isin(values, wanted)` for the request path's small arrays (a user's seed or bought
    items against a few hundred candidates), by binary search in sorted `wanted`. np.isin
    compares `values` with each wanted value in turn when `wanted` is short (50 passes for 50
    seeds) and sorts both arrays otherwise; this is one sort of `wanted` and one search."""
    if wanted.size == 0 or values.size == 0:
        return np.zeros(values.shape, bool)
    ordered = np.sort(wanted)
    at = np.minimum(np.searchsorted(ordered, values), ordered.size - 1)
    found: npt.NDArray[np.bool_] = ordered[at] == values
    return found
