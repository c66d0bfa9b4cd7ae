"""Item co-visitation: items engaged with in the same sessions as the user's recent items."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from tastemaker.arrays import unique_rows
from tastemaker.catalog import Catalog
from tastemaker.features.layout import COVIS, PROFILE, SESSION, item_row, merge_shards
from tastemaker.retrieval.base import Candidates, RetrievalContext
from tastemaker.store import OnlineStore

__all__ = ["CovisitationRetriever", "NeighbourCache"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


class NeighbourCache:
    """Items' co-visitation neighbours as catalog rows and weights (scaled so the strongest is
    1), kept in RAM for `ttl_s` (`serving.neighbour_cache_s`) and shared by both
    co-visitation retrievers of a pipeline.

    Popular items are every user's seeds: without it each request reads and decodes their
    neighbour maps again and maps thousands of item ids to rows. Neighbours move slowly (the
    stream changes an item's map at most once a microbatch), so seconds of staleness are
    invisible; new events still reach the user's own seeds at once (they are read per
    request). Hand-written because it is a dozen lines over a dict: a TTL, a size bound, and
    the values are arrays derived from the catalog."""

    def __init__(self, store: OnlineStore, ttl_s: float = 1.0, max_items: int = 50_000) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_items = max_items
        self._items: dict[str, tuple[float, IntArray, FloatArray]] = {}

    def get(self, catalog: Catalog, items: Sequence[str]) -> dict[str, tuple[IntArray, FloatArray]]:
        """Each item's (rows, weights); items without neighbours are left out. One multi-get
        for the items not cached (or expired)."""
        now = time.monotonic()
        out: dict[str, tuple[IntArray, FloatArray]] = {}
        missing: list[str] = []
        for item in items:
            hit = self._items.get(item)
            if hit is not None and now - hit[0] < self.ttl_s:
                if hit[1].size:
                    out[item] = (hit[1], hit[2])
            else:
                missing.append(item)
        if not missing:
            return out
        stored = self.store.get([item_row(i) for i in missing], [COVIS])
        if len(self._items) + len(missing) > self.max_items:
            self._items.clear()  # crude but bounded; refilled by the next requests
        empty = (np.empty(0, np.int64), np.empty(0, np.float32))
        for item in missing:
            # Shares of several log partitions are merged (as is, from a one-partition log).
            links = merge_shards(stored.get(item_row(item), {}).get(COVIS, {})).get("neighbours")
            rows, weights = empty
            if links is not None and links.value:
                ids = list(links.value)
                all_rows = catalog.rows(ids)
                w = np.fromiter(links.value.values(), np.float32, len(ids))
                keep = all_rows >= 0
                rows, weights = all_rows[keep], w[keep]
                if weights.size and weights.max() > 0:
                    weights = weights / weights.max()
            self._items[item] = (now, rows, weights)
            if rows.size:
                out[item] = (rows, weights)
        return out


class CovisitationRetriever:
    """Items co-visited with seed items, the most recent seeds weighing most; the seeds'
    neighbour lists come from a `NeighbourCache` (one multi-get for those not cached). As
    `covisitation` the seeds are the user's last items; as `session` (session neighbours)
    only the items of the current session."""

    def __init__(
        self,
        store: OnlineStore,
        *,
        session_only: bool = False,
        max_seeds: int = 10,
        cache: NeighbourCache | None = None,
    ) -> None:
        self.store = store
        self.max_seeds = max_seeds
        self.cache = cache if cache is not None else NeighbourCache(store)
        self.name = "session" if session_only else "covisitation"
        self._source = (SESSION, "session_items") if session_only else (PROFILE, "last_items")

    def _seeds(self, ctx: RetrievalContext, family: str, column: str) -> list[str]:
        cell = ctx.user.get(family, {}).get(column)
        return [] if cell is None else list(cell.value)[: self.max_seeds]

    def retrieve(self, ctx: RetrievalContext, k: int) -> Candidates:
        seeds = self._seeds(ctx, *self._source)
        if not seeds:
            return Candidates.empty()
        got = ctx.shared.get("covis")
        if got is None:
            # Both co-visitation retrievers' seeds at once, shared by the request.
            wanted = list(
                dict.fromkeys(
                    seeds
                    + self._seeds(ctx, PROFILE, "last_items")
                    + self._seeds(ctx, SESSION, "session_items")
                )
            )
            got = ctx.shared["covis"] = self.cache.get(ctx.catalog, wanted)
        rows_parts: list[IntArray] = []
        parts: list[FloatArray] = []
        ranks: list[int] = []
        for rank, seed in enumerate(seeds):
            hit = got.get(seed)
            if hit is not None:
                rows_parts.append(hit[0])
                parts.append(hit[1])
                ranks.append(rank)
        if not rows_parts:
            return Candidates.empty()
        # Each seed's weights times 1 / (1 + its rank), then summed per neighbour, vectorized
        # over catalog rows.
        factor = (1.0 / (1.0 + np.asarray(ranks, np.float64))).astype(np.float32)
        weights = np.concatenate(parts) * np.repeat(factor, [p.size for p in parts])
        cand_rows, inverse = unique_rows(np.concatenate(rows_parts))
        scores = np.bincount(inverse, weights=weights).astype(np.float32)
        if cand_rows.size > k:
            best = np.argpartition(-scores, k - 1)[:k]
            cand_rows, scores = cand_rows[best], scores[best]
        return Candidates(cand_rows, scores)
