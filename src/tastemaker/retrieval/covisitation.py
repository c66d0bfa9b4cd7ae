"""Item co-visitation: items engaged with in the same sessions as the user's recent items."""

from __future__ import annotations

import numpy as np

from tastemaker.features.layout import COVIS, PROFILE, SESSION, item_row
from tastemaker.retrieval.base import Candidates, RetrievalContext
from tastemaker.store import OnlineStore

__all__ = ["CovisitationRetriever"]


class CovisitationRetriever:
    """Items co-visited with seed items, the most recent seeds weighing most; the seeds'
    neighbour lists are read in one multi-get. As `covisitation` the seeds are the user's last
    items; as `session` (session neighbours) only the items of the current session."""

    def __init__(
        self, store: OnlineStore, *, session_only: bool = False, max_seeds: int = 10
    ) -> None:
        self.store = store
        self.max_seeds = max_seeds
        self.name = "session" if session_only else "covisitation"
        self._source = (SESSION, "session_items") if session_only else (PROFILE, "last_items")

    def retrieve(self, ctx: RetrievalContext, k: int) -> Candidates:
        family, column = self._source
        cell = ctx.user.get(family, {}).get(column)
        seeds: list[str] = [] if cell is None else list(cell.value)[: self.max_seeds]
        if not seeds:
            return Candidates.empty()
        rows = self.store.get([item_row(i) for i in seeds], [COVIS])
        totals: dict[str, float] = {}
        for rank, seed in enumerate(seeds):
            data = rows.get(item_row(seed))
            if data is None:
                continue
            links: dict[str, float] = data[COVIS]["neighbours"].value
            norm = max(links.values())
            recency = 1.0 / (1.0 + rank)
            for other, w in links.items():
                totals[other] = totals.get(other, 0.0) + recency * w / norm
        if not totals:
            return Candidates.empty()
        ids = list(totals)
        scores = np.fromiter(totals.values(), np.float32, len(ids))
        cand_rows = ctx.catalog.rows(ids)
        keep = cand_rows >= 0
        cand_rows, scores = cand_rows[keep], scores[keep]
        if cand_rows.size > k:
            best = np.argpartition(-scores, k - 1)[:k]
            cand_rows, scores = cand_rows[best], scores[best]
        return Candidates(cand_rows, scores)
