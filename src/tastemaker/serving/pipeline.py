"""The recommend pipeline: fetch features -> retrieve -> rank -> filter -> respond.

One multi-get fetches the user's profile and session families with the global top lists;
the co-visitation retriever does one more for its seeds' neighbours. Scoring is one matrix
product over all candidates. A store failure degrades to popular items, never to an error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import msgspec
import numpy as np

from tastemaker.catalog import Catalog
from tastemaker.config import Config
from tastemaker.features import Histogram
from tastemaker.features.layout import GLOBAL_ROW, POPULAR, PROFILE, SESSION, user_row
from tastemaker.metrics import METRICS
from tastemaker.ranking import FEATURE_NAMES, LinearScorer, Scorer, assemble
from tastemaker.ranking.lightgbm import LightGBMScorer
from tastemaker.retrieval import (
    AnnRetriever,
    CandidateSet,
    CategoryRetriever,
    CovisitationRetriever,
    PopularRetriever,
    RetrievalContext,
    Retriever,
    merge,
)
from tastemaker.store import Cell, OnlineStore, RowData, StoreError

__all__ = ["RecommendPipeline", "Recommendation", "RecommendedItem"]

log = logging.getLogger(__name__)


class RecommendedItem(msgspec.Struct, frozen=True):
    item_id: str
    score: float
    sources: list[str]


class Recommendation(msgspec.Struct, frozen=True):
    items: list[RecommendedItem]
    degraded: bool = False


class RecommendPipeline:
    """Recommendations for one user at a time, from the online store and the catalog."""

    def __init__(
        self, config: Config, store: OnlineStore, catalog: Catalog, scorer: Scorer | None = None
    ) -> None:
        self.config = config
        self.store = store
        self.catalog = catalog
        if scorer is None and config.ranking.model_path is not None:
            scorer = LightGBMScorer(
                config.ranking.model_path, FEATURE_NAMES, compile_model=config.ranking.compile_model
            )
        self.scorer = scorer or LinearScorer(config.ranking.weights)
        s = config.serving
        # The first retriever is the fallback when the store fails: it needs no user data.
        self.retrievers: list[tuple[Retriever, int]] = [
            (PopularRetriever(), s.popular_candidates),
            (PopularRetriever(trending=True), s.trending_candidates),
            (CovisitationRetriever(store), s.covis_candidates),
            (CovisitationRetriever(store, session_only=True), s.session_candidates),
            (CategoryRetriever(), s.category_candidates),
            (AnnRetriever(catalog, exact_below=s.ann_exact_below), s.ann_candidates),
        ]
        hist = next((f for f in config.features if isinstance(f, Histogram)), None)
        self.price_edges = list(hist.edges) if hist else []
        self._popular: tuple[float, dict[str, Cell]] = (0.0, {})
        self._lock = threading.Lock()

    def _global_lists(self) -> dict[str, Cell]:
        """The global top lists, re-read at most every `global_cache_s`."""
        fetched_at, lists = self._popular
        now = time.monotonic()
        if now - fetched_at < self.config.serving.global_cache_s:
            return lists
        rows = self.store.get([GLOBAL_ROW], [POPULAR])
        lists = rows.get(GLOBAL_ROW, {}).get(POPULAR, {})
        with self._lock:
            self._popular = (now, lists)
        return lists

    def user_features(self, user_id: str) -> RowData:
        """The user's profile and session families as stored."""
        return self.store.get([user_row(user_id)], [PROFILE, SESSION]).get(user_row(user_id), {})

    def context(self, user_id: str) -> RetrievalContext:
        """What every retriever reads: the user's features and the global top lists."""
        return RetrievalContext(self.user_features(user_id), self._global_lists(), self.catalog)

    def candidates(
        self, ctx: RetrievalContext, retrievers: Sequence[tuple[Retriever, int]] | None = None
    ) -> CandidateSet:
        """The retrievers' candidates for one request (all of them by default), merged."""
        chosen = self.retrievers if retrievers is None else retrievers
        return merge([r.name for r, _ in chosen], [r.retrieve(ctx, k) for r, k in chosen])

    def recommend(self, user_id: str, n: int) -> Recommendation:
        """Top `n` items for the user; popular items for unknown users."""
        try:
            ctx = self.context(user_id)
            items = self._rank(ctx, n, self.retrievers)
            METRICS.recommendations.labels("personalized" if ctx.user else "cold_start").inc()
            return Recommendation(items)
        except StoreError:
            log.exception("store failed; answering with popular items")
            METRICS.recommendations.labels("degraded").inc()
            ctx = RetrievalContext({}, self._popular[1], self.catalog)
            return Recommendation(self._rank(ctx, n, self.retrievers[:1]), degraded=True)

    def _rank(
        self, ctx: RetrievalContext, n: int, retrievers: Sequence[tuple[Retriever, int]]
    ) -> list[RecommendedItem]:
        cands = self.candidates(ctx, retrievers)
        names = cands.names
        if cands.rows.size == 0:
            return self._catalog_order(n)
        x = assemble(cands, ctx.user, self.catalog, self.price_edges)
        scores = self.scorer.score(x, FEATURE_NAMES).astype(np.float32)
        bought = ctx.user.get(PROFILE, {}).get("purchased")
        if bought is not None:
            scores[np.isin(cands.rows, self.catalog.rows(bought.value))] = -np.inf
        k = min(n, int(np.isfinite(scores).sum()))
        if k == 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        ids = self.catalog.ids[cands.rows[top]]
        return [
            RecommendedItem(
                str(ids[j]),
                round(float(scores[i]), 6),
                [names[b] for b in range(len(names)) if cands.sources[i] >> b & 1],
            )
            for j, i in enumerate(top)
        ]

    def _catalog_order(self, n: int) -> list[RecommendedItem]:
        """Before any event was processed there is no popularity: the catalog's first items."""
        return [RecommendedItem(str(i), 0.0, ["catalog"]) for i in self.catalog.ids[:n]]
