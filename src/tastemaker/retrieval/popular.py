"""Time-decayed popularity, kept current by the stream: the cold-start and fallback source."""

from __future__ import annotations

import numpy as np

from tastemaker.catalog import Catalog
from tastemaker.retrieval.base import Candidates, FloatArray, IntArray, RetrievalContext
from tastemaker.store import Cell

__all__ = ["PopularRetriever", "popular_candidates"]


# A top list is read once a second per process but used by every request: its ids are mapped
# to catalog rows once per (list, catalog) and kept here.
_MAPPED: dict[int, tuple[Cell, Catalog, IntArray, FloatArray]] = {}


def _mapped(cell: Cell, catalog: Catalog) -> tuple[IntArray, FloatArray]:
    hit = _MAPPED.get(id(cell))
    if hit is not None and hit[0] is cell and hit[1] is catalog:
        return hit[2], hit[3]
    ids, log_scores = cell.value
    rows = catalog.rows(ids)
    scores = np.asarray(log_scores, np.float64)
    known = rows >= 0  # items no longer in the catalog since the list was written
    top = scores.max() if scores.size else 0.0
    out = (rows[known], np.exp((scores[known] - top) / 4.0).astype(np.float32))
    if len(_MAPPED) > 4096:
        _MAPPED.clear()
    _MAPPED[id(cell)] = (cell, catalog, *out)
    return out


def popular_candidates(ctx: RetrievalContext, column: str, k: int) -> Candidates:
    """Candidates from one stored top list (`all` or `c:<category>`). The score is
    `(popularity / best popularity) ** 0.25`, in (0, 1]: the fourth root keeps the Zipf tail
    from vanishing next to the head."""
    cell = ctx.popular.get(column)
    if cell is None:
        return Candidates.empty()
    rows, scores = _mapped(cell, ctx.catalog)
    return Candidates(rows[:k], scores[:k])


class PopularRetriever:
    """The most popular items (long half-life, `popular`) in the request's region when the
    stream keeps a list for it, else overall; or the items gaining attention right now
    (short half-life, `trending`)."""

    def __init__(self, *, trending: bool = False) -> None:
        self.name = "trending" if trending else "popular"
        self._column = "trending" if trending else "all"

    def retrieve(self, ctx: RetrievalContext, k: int) -> Candidates:
        if ctx.region and self.name != "trending" and "r:" + ctx.region in ctx.popular:
            return popular_candidates(ctx, "r:" + ctx.region, k)
        return popular_candidates(ctx, self._column, k)
