"""The recommend pipeline: fetch features -> retrieve -> rank -> filter -> respond.

One multi-get fetches the user's profile and session families with the global top lists;
the co-visitation retriever does one more for its seeds' neighbours. Scoring is one matrix
product over all candidates. A store failure degrades to popular items, never to an error.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Collection, Sequence
from typing import Protocol

import msgspec
import numpy as np
import numpy.typing as npt

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
    EmbeddingRetriever,
    ItemKnnRetriever,
    LongPopularRetriever,
    ModelHolder,
    PopularRetriever,
    RetrievalContext,
    Retriever,
    SegmentRetriever,
    merge,
)
from tastemaker.store import Cell, OnlineStore, RowData, StoreError

__all__ = ["RecommendPipeline", "Recommendation", "RecommendedItem"]

log = logging.getLogger(__name__)


class FeatureSink(Protocol):
    """Where sampled requests' scored feature rows go (`offline.feature_log.FeatureLogger`)."""

    def wants(self, request_id: str) -> bool: ...

    def log(
        self,
        request_id: str,
        user_id: str,
        ts: float,
        *,
        item_ids: list[str],
        scores: npt.NDArray[np.float32],
        x: npt.NDArray[np.float32],
    ) -> None: ...


class RecommendedItem(msgspec.Struct, frozen=True):
    item_id: str
    score: float
    sources: list[str]


class Recommendation(msgspec.Struct, frozen=True):
    items: list[RecommendedItem]
    degraded: bool = False
    # Send it back as `context.extra.request_id` on impression and click events.
    request_id: str | None = None


class RecommendPipeline:
    """Recommendations for one user at a time, from the online store and the catalog."""

    def __init__(
        self,
        config: Config,
        store: OnlineStore,
        catalog: Catalog,
        scorer: Scorer | None = None,
        models: ModelHolder | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.catalog = catalog
        # The batch artifacts in RAM; the artifact watcher replaces `models.models`.
        self.models = models or ModelHolder()
        # Set by the runtime when `offline.feature_log_sample` > 0.
        self.feature_logger: FeatureSink | None = None
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
            (ItemKnnRetriever(self.models), s.item_knn_candidates),
            (EmbeddingRetriever(self.models), s.als_candidates),
            (SegmentRetriever(self.models), s.segment_candidates),
            (LongPopularRetriever(self.models), s.popular_candidates),
        ]
        hist = next((f for f in config.features if isinstance(f, Histogram)), None)
        self.price_edges = list(hist.edges) if hist else []
        # Item lists of the profile whose items are never recommended to the user.
        self.excluded_columns = ["purchased"] + (["engaged_items"] if s.exclude_seen else [])
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
        return RetrievalContext(
            self.user_features(user_id), self._global_lists(), self.catalog, user_id
        )

    def candidates(
        self, ctx: RetrievalContext, retrievers: Sequence[tuple[Retriever, int]] | None = None
    ) -> CandidateSet:
        """The retrievers' candidates for one request (all of them by default), merged."""
        chosen = self.retrievers if retrievers is None else retrievers
        return merge([r.name for r, _ in chosen], [r.retrieve(ctx, k) for r, k in chosen])

    def recommend(
        self, user_id: str, n: int, exclude: Collection[str] = (), now: float | None = None
    ) -> Recommendation:
        """Top `n` items for the user, leaving out `exclude` and what the user bought;
        popular items for unknown users. `now` (default: the clock) is the time the
        time-dependent features are computed at; a replay or an evaluation passes its own."""
        request_id = uuid.uuid4().hex
        try:
            ctx = self.context(user_id)
            items = self._rank(
                ctx, n, self.retrievers, exclude=exclude, now=now, request_id=request_id
            )
            METRICS.recommendations.labels("personalized" if ctx.user else "cold_start").inc()
            return Recommendation(items, request_id=request_id)
        except StoreError:
            log.exception("store failed; answering with popular items")
            METRICS.recommendations.labels("degraded").inc()
            ctx = RetrievalContext({}, self._popular[1], self.catalog, user_id)
            items = self._fallback(ctx, n, exclude)
            return Recommendation(items, degraded=True, request_id=request_id)

    def _fallback(
        self, ctx: RetrievalContext, n: int, exclude: Collection[str]
    ) -> list[RecommendedItem]:
        """Popular items without the store: the last top list read, else the batch
        popularity artifact."""
        if ctx.popular:
            return self._rank(ctx, n, self.retrievers[:1], exclude=exclude)
        popular = self.models.models.popular
        if popular is None:
            return self._catalog_order(n)
        rows, scores = popular
        drop = self.catalog.rows(list(exclude)) if exclude else np.empty(0, np.int64)
        keep = ~np.isin(rows, drop)
        ids = self.catalog.ids[rows[keep][:n]]
        return [
            RecommendedItem(str(i), round(float(v), 6), ["popular_batch"])
            for i, v in zip(ids, scores[keep][:n], strict=True)
        ]

    def features(
        self, ctx: RetrievalContext, cands: CandidateSet, now: float
    ) -> npt.NDArray[np.float32]:
        """The candidates' feature matrix as of `now`: what the scorer sees, and what the
        offline replay computes for training (the same call)."""
        return assemble(
            cands,
            ctx.user,
            self.catalog,
            self.price_edges,
            item_first_ts=self.models.models.item_first_ts,
            now=now,
        )

    def _rank(
        self,
        ctx: RetrievalContext,
        n: int,
        retrievers: Sequence[tuple[Retriever, int]],
        *,
        exclude: Collection[str] = (),
        now: float | None = None,
        request_id: str | None = None,
    ) -> list[RecommendedItem]:
        cands = self.candidates(ctx, retrievers)
        names = cands.names
        if cands.rows.size == 0:
            return self._catalog_order(n)
        at = time.time() if now is None else now
        x = self.features(ctx, cands, at)
        scores = self.scorer.score(x, FEATURE_NAMES).astype(np.float32)
        for column in self.excluded_columns:
            cell = ctx.user.get(PROFILE, {}).get(column)
            if cell is not None:
                scores[np.isin(cands.rows, self.catalog.rows(cell.value))] = -np.inf
        if exclude:
            scores[np.isin(cands.rows, self.catalog.rows(list(exclude)))] = -np.inf
        k = min(n, int(np.isfinite(scores).sum()))
        if k == 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        ids = self.catalog.ids[cands.rows[top]]
        logger = self.feature_logger
        if logger is not None and request_id is not None and logger.wants(request_id):
            logger.log(
                request_id,
                ctx.user_id,
                at,
                item_ids=[str(i) for i in ids],
                scores=scores[top],
                x=x[top],
            )
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
