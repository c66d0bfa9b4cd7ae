"""Item co-visitation: items engaged with in the same sessions as the user's recent items."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tastemaker.features.layout import COVIS, PROFILE, SESSION, item_row, merge_shards
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

    def _seeds(self, ctx: RetrievalContext, family: str, column: str) -> list[str]:
        cell = ctx.user.get(family, {}).get(column)
        return [] if cell is None else list(cell.value)[: self.max_seeds]

    def retrieve(self, ctx: RetrievalContext, k: int) -> Candidates:
        seeds = self._seeds(ctx, *self._source)
        if not seeds:
            return Candidates.empty()
        rows = ctx.shared.get("covis")
        if rows is None:
            # Both co-visitation retrievers' seeds in one multi-get, shared by the request.
            wanted = dict.fromkeys(
                seeds
                + self._seeds(ctx, PROFILE, "last_items")
                + self._seeds(ctx, SESSION, "session_items")
            )
            rows = self.store.get([item_row(i) for i in wanted], [COVIS])
            ctx.shared["covis"] = rows
        ids: list[str] = []
        parts: list[npt.NDArray[np.float32]] = []
        for rank, seed in enumerate(seeds):
            data = rows.get(item_row(seed))
            if data is None:
                continue
            cells = data[COVIS]
            if "neighbours" not in cells:  # shares of several log partitions: merge them
                cells = merge_shards(cells)
                if "neighbours" not in cells:
                    continue
            links: dict[str, float] = cells["neighbours"].value
            w = np.fromiter(links.values(), np.float32, len(links))
            ids.extend(links)
            parts.append(w * np.float32(1.0 / ((1.0 + rank) * w.max())))
        if not ids:
            return Candidates.empty()
        # Sum each neighbour's weights over the seeds, vectorized over catalog rows.
        all_rows = ctx.catalog.rows(ids)
        weights = np.concatenate(parts)
        keep = all_rows >= 0
        cand_rows, inverse = np.unique(all_rows[keep], return_inverse=True)
        scores = np.bincount(inverse, weights=weights[keep]).astype(np.float32)
        if cand_rows.size > k:
            best = np.argpartition(-scores, k - 1)[:k]
            cand_rows, scores = cand_rows[best], scores[best]
        return Candidates(cand_rows, scores)
