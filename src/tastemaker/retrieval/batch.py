"""Retrievers over what the batch jobs computed, held in RAM on the serving node.

`BatchModels` is the in-memory form of the current artifacts (item neighbours, item
embeddings, user segments, long-term popularity), mapped onto catalog rows when loaded. The
pipeline holds one `ModelHolder`; the artifact watcher swaps its `models` in one assignment,
so a request sees one consistent set, old or new.

The seeds of the neighbour and embedding retrievers are the user's latest items from the
online store (`last_items`), so they follow what the user did seconds ago even though the
item-side models were computed in batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from tastemaker.arrays import member, unique_rows
from tastemaker.features.layout import PROFILE
from tastemaker.retrieval.base import Candidates, RetrievalContext

__all__ = [
    "BatchModels",
    "EmbeddingRetriever",
    "ItemKnnRetriever",
    "LongPopularRetriever",
    "ModelHolder",
    "NewItemsRetriever",
    "SegmentRetriever",
    "seed_rows",
    "top_k",
]


@dataclass(frozen=True)
class BatchModels:
    """Artifacts mapped onto catalog rows. Every part is optional."""

    neighbours: sp.csr_matrix | None = None  # (items, items) item-item weights
    item_factors: npt.NDArray[np.float32] | None = None  # (items, d), zero rows: unknown
    factor_index: Any = None  # an IvfIndex (MIPS) over item_factors, for large catalogs
    user_segment: dict[str, int] = field(default_factory=dict)
    segment_top: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]] = field(
        default_factory=list
    )
    popular: tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]] | None = None
    item_first_ts: npt.NDArray[np.float64] | None = None  # (items,), inf: never engaged
    versions: dict[str, int] = field(default_factory=dict)


class ModelHolder:
    """The current `BatchModels`; replaced whole by the artifact watcher."""

    def __init__(self, models: BatchModels | None = None) -> None:
        self.models = models or BatchModels()


def top_k(
    scores: npt.NDArray[np.float32], k: int, exclude: npt.NDArray[np.int64] | None = None
) -> Candidates:
    """The `k` best positive scores of a dense per-item vector, as candidates."""
    if exclude is not None and exclude.size:
        scores = scores.copy()
        scores[exclude] = 0.0
    pos = np.flatnonzero(scores > 0)
    if pos.size > k:
        pos = pos[np.argpartition(-scores[pos], k - 1)[:k]]
    return Candidates(pos.astype(np.int64), scores[pos].astype(np.float32))


def seed_rows(
    ctx: RetrievalContext, max_seeds: int, recency: float, known_below: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The user's latest items (newest first) as catalog rows, with weights
    `1 / (1 + recency * rank)`: from `engaged_items` where declared (a longer history),
    else `last_items`. Only rows below `known_below` (the rows an artifact covers: items
    added since it was built have no neighbours or vectors yet)."""
    key = f"seed_rows:{max_seeds}:{recency}"
    got = ctx.shared.get(key)  # the item-kNN and ALS retrievers share one lookup
    if got is None:
        profile = ctx.user.get(PROFILE, {})
        cell = profile.get("engaged_items") or profile.get("last_items")
        ids = [] if cell is None else list(cell.value)[:max_seeds]
        got = ctx.shared[key] = (
            ctx.catalog.rows(ids),
            (1.0 / (1.0 + recency * np.arange(len(ids)))).astype(np.float32),
        )
    rows, weights = got
    keep = (rows >= 0) & (rows < known_below)
    return rows[keep], weights[keep]


class ItemKnnRetriever:
    """Items most similar to the user's latest items by the batch item-item model."""

    name = "item_knn"

    def __init__(self, holder: ModelHolder, *, max_seeds: int = 50, recency: float = 0.05):
        self.holder = holder
        self.max_seeds = max_seeds
        self.recency = recency

    def retrieve(self, ctx: RetrievalContext, k: int) -> Candidates:
        s = self.holder.models.neighbours
        if s is None or s.shape[0] > len(ctx.catalog):
            return Candidates.empty()
        rows, w = seed_rows(ctx, self.max_seeds, self.recency, s.shape[0])
        if rows.size == 0:
            return Candidates.empty()
        # The seeds' rows of the CSR matrix, gathered and summed without building a matrix.
        starts, ends = s.indptr[rows], s.indptr[rows + 1]
        lengths = ends - starts
        if lengths.sum() == 0:
            return Candidates.empty()
        take = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(
            lengths.sum()
        )
        neighbours = s.indices[take].astype(np.int64)
        weights = s.data[take] * np.repeat(w, lengths)
        found, inverse = unique_rows(neighbours)
        scores = np.bincount(inverse, weights=weights).astype(np.float32)
        drop = member(found, rows)
        found, scores = found[~drop], scores[~drop]
        if found.size > k:
            best = np.argpartition(-scores, k - 1)[:k]
            found, scores = found[best], scores[best]
        return Candidates(found, scores)


class EmbeddingRetriever:
    """Items nearest to the weighted mean of the user's latest items' batch embeddings
    (implicit ALS item factors): exact, one matrix-vector product over the catalog."""

    name = "als"

    def __init__(self, holder: ModelHolder, *, max_seeds: int = 50, recency: float = 0.05):
        self.holder = holder
        self.max_seeds = max_seeds
        self.recency = recency

    def retrieve(self, ctx: RetrievalContext, k: int) -> Candidates:
        f = self.holder.models.item_factors
        if f is None or f.shape[0] > len(ctx.catalog):
            return Candidates.empty()
        rows, w = seed_rows(ctx, self.max_seeds, self.recency, f.shape[0])
        if rows.size == 0:
            return Candidates.empty()
        user = w @ f[rows]
        index = self.holder.models.factor_index
        if index is not None:
            # The seeds themselves are near the query: ask for a few more than k.
            want = k + min(rows.size, 10)
            sims, found = index.search(user[None, :].astype(np.float32), want)
            keep = (found[0] >= 0) & ~member(found[0], rows)
            got, s = found[0][keep][:k].astype(np.int64), sims[0][keep][:k]
            return Candidates(got, (s - s.min() + 1e-6).astype(np.float32) if s.size else s)
        scores = f @ user
        # Shift so the worst candidate kept still scores above 0 (0 means "not proposed").
        return top_k(scores - scores.min() + 1e-6, k, rows)


class LongPopularRetriever:
    """The batch popularity artifact's top list: popularity over a long half-life
    (`offline.popularity_half_life_s`, 30 days by default), beside the stream's short ones."""

    name = "popular_long"

    def __init__(self, holder: ModelHolder) -> None:
        self.holder = holder

    def retrieve(self, ctx: RetrievalContext, k: int) -> Candidates:
        del ctx  # the same list for everyone
        popular = self.holder.models.popular
        if popular is None:
            return Candidates.empty()
        rows, scores = popular
        return Candidates(rows[:k], scores[:k])


class NewItemsRetriever:
    """The new-item slot (item cold start): items added through `POST /v1/items` within
    `window_s`, newest first, favouring the user's categories. They have no engagement yet,
    so no other retriever can propose them."""

    name = "new_items"

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s

    def retrieve(self, ctx: RetrievalContext, k: int) -> Candidates:
        cat = ctx.catalog
        if cat.added_rows.size == 0:
            return Candidates.empty()
        now = time.time()
        added = cat.added_rows
        fresh = added[(cat.added_ts[added] >= now - self.window_s) & cat.active[added]]
        if fresh.size == 0:
            return Candidates.empty()
        recency = 1.0 - (now - cat.added_ts[fresh]) / self.window_s
        affinity = np.zeros(len(cat.category_names), np.float32)
        cell = ctx.user.get(PROFILE, {}).get("category_intensity")
        if cell is not None:
            for name, v in cell.value["v"].items():
                code = cat.category_index.get(name)
                if code is not None and v > 0:
                    affinity[code] = v
            if affinity.sum() > 0:
                affinity /= affinity.sum()
        scores = (0.5 * recency + affinity[cat.category[fresh]] + 1e-6).astype(np.float32)
        return top_k_of(fresh.astype(np.int64), scores, k)


def top_k_of(rows: npt.NDArray[np.int64], scores: npt.NDArray[np.float32], k: int) -> Candidates:
    if rows.size > k:
        best = np.argpartition(-scores, k - 1)[:k]
        rows, scores = rows[best], scores[best]
    return Candidates(rows, scores)


class SegmentRetriever:
    """The most popular items among the user's cohort (k-means segment of the batch user
    embeddings): cohort-level personalization for users the per-user models know little of."""

    name = "segment"

    def __init__(self, holder: ModelHolder) -> None:
        self.holder = holder

    def retrieve(self, ctx: RetrievalContext, k: int) -> Candidates:
        m = self.holder.models
        seg = m.user_segment.get(ctx.user_id)
        if seg is None or seg >= len(m.segment_top):
            return Candidates.empty()
        rows, scores = m.segment_top[seg]
        return Candidates(rows[:k], scores[:k])
