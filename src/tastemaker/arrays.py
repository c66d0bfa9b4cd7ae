"""Small numpy building blocks shared by the vectorized code paths."""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

__all__ = ["member", "rank_within", "unique_rows"]


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


_SCRATCH = threading.local()


def unique_rows(rows: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """`np.unique(rows, return_inverse=True)` for catalog rows (small non-negative ints),
    through a per-thread array over the catalog's rows: one scatter marks each row's last
    position, the rows at their marked position are the distinct ones, sorted, then scattered
    their rank. Only the distinct rows are sorted, not all of them (a request's candidate
    merge repeats rows a lot)."""
    if rows.size == 0 or rows.min() < 0:
        distinct, inverse = np.unique(rows, return_inverse=True)
        return distinct, inverse
    mark: npt.NDArray[np.int64] | None = getattr(_SCRATCH, "mark", None)
    top = int(rows.max())
    if mark is None or mark.size <= top:
        size = max(top + 1, 2 * (0 if mark is None else mark.size))
        mark = _SCRATCH.mark = np.empty(size, np.int64)
    pos = np.arange(rows.size)
    mark[rows] = pos
    distinct = np.sort(rows[mark[rows] == pos])
    mark[distinct] = np.arange(distinct.size)
    return distinct, mark[rows]
