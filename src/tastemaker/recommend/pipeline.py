"""The recommend pipeline: features -> retrieve -> rank -> rerank -> respond, under a deadline.

One multi-get fetches the user's profile and session families with the global top lists;
the co-visitation retriever does one more for its seeds' neighbours. Scoring is one matrix
product (or one compiled-model call) over all candidates.

Each request has a deadline (`serving.deadline_ms`, or the request's own) and each stage a
budget. A stage that fails, or would start after its budget is spent, is replaced by its
fallback, counted in `tastemaker_stage_fallbacks{stage}`, and named in the answer's
`fallbacks` (with `degraded: true`):

- features (the store read fails): popular items, from the last top list read, else the
  batch popularity artifact;
- a retriever (raises, or the retrieve budget is spent): skipped, the others' candidates
  are ranked;
- rank (the model raises, or the deadline is near): the linear scorer.

Answers are cached per (user, request) for `serving.cache_ttl_s`; an entry is only used
while the user's stored features are unchanged, so a user's new event invalidates it in every
process as soon as the stream has applied it (and at once in the process that took it).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Collection, Sequence

import msgspec
import numpy as np
import numpy.typing as npt

from tastemaker.arrays import member
from tastemaker.catalog import Catalog
from tastemaker.config import Config
from tastemaker.features import Histogram
from tastemaker.features.layout import (
    COVIS,
    GLOBAL_ROW,
    POPULAR,
    PROFILE,
    SESSION,
    item_row,
    merge_shards,
    user_row,
)
from tastemaker.metrics import METRICS
from tastemaker.ranking import FEATURE_NAMES, LinearScorer, Scorer, assemble
from tastemaker.ranking.lightgbm import LightGBMScorer
from tastemaker.ranking.rerank import (
    Contribution,
    diversify,
    filter_mask,
    top_contributions,
)
from tastemaker.recommend.cache import RecommendCache
from tastemaker.recommend.types import FeatureSink, Recommendation, RecommendedItem, Request
from tastemaker.retrieval import (
    AnnRetriever,
    Candidates,
    CandidateSet,
    CategoryRetriever,
    CovisitationRetriever,
    EmbeddingRetriever,
    ItemKnnRetriever,
    LongPopularRetriever,
    ModelHolder,
    NeighbourCache,
    NewItemsRetriever,
    PopularRetriever,
    RetrievalContext,
    Retriever,
    SegmentRetriever,
    merge,
    with_rows,
)
from tastemaker.store import Cell, OnlineStore, RowData, StoreError

__all__ = ["RecommendPipeline", "Recommendation", "RecommendedItem", "Request"]

log = logging.getLogger(__name__)


class _Clock:
    """Elapsed time of one request against its deadline and the stage budgets."""

    def __init__(self, deadline_ms: float) -> None:
        self.start = time.perf_counter()
        self.deadline_ms = deadline_ms

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.start) * 1000.0


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
        self.linear = LinearScorer(config.ranking.weights)  # the rank stage's fallback
        s = config.serving
        # Items' co-visitation neighbours, cached per process for neighbour_cache_s.
        neighbours = NeighbourCache(store, ttl_s=s.neighbour_cache_s)
        # The first retriever is the fallback when the store fails: it needs no user data.
        self.retrievers: list[tuple[Retriever, int]] = [
            (PopularRetriever(), s.popular_candidates),
            (PopularRetriever(trending=True), s.trending_candidates),
            (CovisitationRetriever(store, cache=neighbours), s.covis_candidates),
            (
                CovisitationRetriever(store, session_only=True, cache=neighbours),
                s.session_candidates,
            ),
            (CategoryRetriever(), s.category_candidates),
            (self._ann_retriever(catalog), s.ann_candidates),
            (ItemKnnRetriever(self.models), s.item_knn_candidates),
            (EmbeddingRetriever(self.models), s.als_candidates),
            (SegmentRetriever(self.models), s.segment_candidates),
            (LongPopularRetriever(self.models), s.popular_candidates),
            (NewItemsRetriever(s.new_item_window_s), s.new_item_candidates),
        ]
        hist = next((f for f in config.features if isinstance(f, Histogram)), None)
        self.price_edges = list(hist.edges) if hist else []
        # Item lists of the profile whose items are never recommended to the user.
        self.excluded_columns = (
            ["purchased"]
            + (["engaged_items"] if s.exclude_seen else [])
            + (["shown_items"] if s.exclude_shown else [])
        )
        self._popular: tuple[float, dict[str, Cell]] = (0.0, {})
        self._lock = threading.Lock()
        self.cache = RecommendCache(s.cache_ttl_s, s.cache_size)

    def _ann_retriever(self, catalog: Catalog) -> Retriever:
        s = self.config.serving
        if s.ann_index == "pgvector" and s.ann_vector_url is not None:
            from tastemaker.retrieval.pgvector import PgVectorRetriever  # the pgvector extra

            return PgVectorRetriever(catalog, s.ann_vector_url)
        return AnnRetriever(
            catalog,
            exact_below=s.ann_exact_below,
            index="hnsw" if s.ann_index == "hnsw" else "ivf",
            k=s.ann_candidates,
            recall=s.ann_recall,
        )

    def set_catalog(self, catalog: Catalog) -> None:
        """Serve from a newer catalog (the change feed applied): one assignment, so a
        request sees the old catalog or the new one."""
        for r, _ in self.retrievers:
            follow = getattr(r, "set_catalog", None)  # the ann retrievers follow the catalog
            if follow is not None:
                follow(catalog)
        self.catalog = catalog

    def close(self) -> None:
        """Release what retrievers hold outside the process (pgvector's connections)."""
        for r, _ in self.retrievers:
            release = getattr(r, "close", None)
            if release is not None:
                release()

    # -- reading ---------------------------------------------------------------------------

    def _global_lists(self) -> dict[str, Cell]:
        """The global top lists, re-read at most every `global_cache_s`."""
        fetched_at, lists = self._popular
        now = time.monotonic()
        if now - fetched_at < self.config.serving.global_cache_s:
            return lists
        rows = self.store.get([GLOBAL_ROW], [POPULAR])
        # Several log partitions each write their share of the lists: merged here, once a
        # `global_cache_s`, not per request.
        lists = dict(merge_shards(rows.get(GLOBAL_ROW, {}).get(POPULAR, {})))
        with self._lock:
            self._popular = (now, lists)
        return lists

    def user_features(self, user_id: str) -> RowData:
        """The user's profile and session families as stored."""
        return self.store.get([user_row(user_id)], [PROFILE, SESSION]).get(user_row(user_id), {})

    def context(
        self, user_id: str, region: str | None = None, device: str | None = None
    ) -> RetrievalContext:
        """What every retriever reads: the user's features, the global top lists and the
        request's context."""
        return RetrievalContext(
            self.user_features(user_id),
            self._global_lists(),
            self.catalog,
            user_id,
            region,
            device,
        )

    def candidates(
        self, ctx: RetrievalContext, retrievers: Sequence[tuple[Retriever, int]] | None = None
    ) -> CandidateSet:
        """The retrievers' candidates for one request (all of them by default), merged."""
        chosen = self.retrievers if retrievers is None else retrievers
        return merge([r.name for r, _ in chosen], [r.retrieve(ctx, k) for r, k in chosen])

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
            device=ctx.device,
        )

    # -- recommending ----------------------------------------------------------------------

    def recommend(
        self,
        user_id: str,
        n: int = 10,
        exclude: Collection[str] = (),
        now: float | None = None,
        request: Request | None = None,
    ) -> Recommendation:
        """Top items for the user under `request` (or `n`, `exclude`, `now`): never what is
        excluded or what the user bought; popular items for unknown users."""
        req = request or Request(n=n, exclude=frozenset(exclude), now=now)
        request_id = uuid.uuid4().hex
        s = self.config.serving
        clock = _Clock(s.deadline_ms if req.deadline_ms is None else req.deadline_ms)
        fallbacks: list[str] = []
        try:
            ctx = self.context(user_id, req.region, req.device)
        except StoreError:
            log.warning("store failed; answering with popular items", exc_info=True)
            return self.fallback(user_id, req, "features", request_id)
        METRICS.stage_seconds.labels("features").observe(clock.elapsed_ms() / 1e3)
        if clock.elapsed_ms() > s.budget_features_ms:
            METRICS.stage_overruns.labels("features").inc()
        key = self.cache.key(user_id, req)
        version = _version(ctx.user) if key is not None else (0.0, 0)
        if key is not None:
            hit = self.cache.get(key, version, ctx.catalog, req.filters)
            if hit is not None:
                METRICS.recommendations.labels("cached").inc()
                return msgspec.structs.replace(hit, request_id=request_id, cached=True)
        items = self._rank(ctx, req, clock, fallbacks, request_id)
        METRICS.recommendations.labels("personalized" if ctx.user else "cold_start").inc()
        if clock.elapsed_ms() > clock.deadline_ms:
            METRICS.stage_overruns.labels("request").inc()
        rec = Recommendation(items, bool(fallbacks), request_id, fallbacks)
        if key is not None and not fallbacks:
            self.cache.put(key, version, rec, ctx.catalog)
        return rec

    def fallback(
        self, user_id: str, request: Request, reason: str, request_id: str | None = None
    ) -> Recommendation:
        """The degraded answer without the store (popular items), named `reason` in its
        `fallbacks`: for a store that failed ("features"), or a request whose store work did
        not finish by its deadline ("deadline"). CPU only; it never waits on a backend."""
        METRICS.recommendations.labels("degraded").inc()
        METRICS.stage_fallbacks.labels(reason).inc()
        ctx = RetrievalContext(
            {}, self._popular[1], self.catalog, user_id, request.region, request.device
        )
        items = self._fallback(ctx, request)
        return Recommendation(items, True, request_id or uuid.uuid4().hex, [reason])

    def _fallback(self, ctx: RetrievalContext, req: Request) -> list[RecommendedItem]:
        """Popular items without the store: the last top list read, else the batch
        popularity artifact."""
        if ctx.popular:
            clock = _Clock(float("inf"))
            return self._rank(ctx, req, clock, [], None, retrievers=self.retrievers[:1])
        popular = self.models.models.popular
        if popular is None:
            return self._catalog_order(req.n)
        rows, scores = popular
        keep = filter_mask(self.catalog, rows, req.filters) & self.catalog.active[rows]
        if req.exclude:
            keep &= ~member(rows, self.catalog.rows(list(req.exclude)))
        ids = self.catalog.ids[rows[keep][: req.n]]
        return [
            RecommendedItem(str(i), round(float(v), 6), ["popular_batch"])
            for i, v in zip(ids, scores[keep][: req.n], strict=True)
        ]

    def _retrieve(
        self,
        ctx: RetrievalContext,
        retrievers: Sequence[tuple[Retriever, int]],
        clock: _Clock,
        fallbacks: list[str],
    ) -> CandidateSet:
        """Each retriever in turn while the retrieve budget lasts; one that raises is
        skipped. The first (popular) always runs: it is what the others fall back to."""
        s = self.config.serving
        # Stop retrieving at the retrieve budget, or earlier if ranking would then miss the
        # request's deadline.
        limit = min(
            s.budget_features_ms + s.budget_retrieve_ms, clock.deadline_ms - s.budget_rank_ms
        )
        results: list[Candidates] = []
        for i, (r, k) in enumerate(retrievers):
            if i > 0 and clock.elapsed_ms() > limit:
                METRICS.stage_fallbacks.labels("retrieve").inc()
                fallbacks.append(f"retrieve:{r.name}")
                results.append(Candidates.empty())
                continue
            try:
                results.append(r.retrieve(ctx, k))
            except Exception:
                log.warning("retriever %s failed; skipped", r.name, exc_info=True)
                METRICS.stage_fallbacks.labels("retrieve").inc()
                fallbacks.append(f"retrieve:{r.name}")
                results.append(Candidates.empty())
        return merge([r.name for r, _ in retrievers], results)

    def _score(
        self, x: npt.NDArray[np.float32], clock: _Clock, fallbacks: list[str]
    ) -> tuple[npt.NDArray[np.float32], Scorer]:
        """The model's scores, or the linear scorer's when the model fails or the time left
        before the deadline is under the rank budget."""
        s = self.config.serving
        scorer = self.scorer
        if scorer is not self.linear and clock.deadline_ms - clock.elapsed_ms() < s.budget_rank_ms:
            METRICS.stage_fallbacks.labels("rank").inc()
            fallbacks.append("rank")
            return self.linear.score(x, FEATURE_NAMES).astype(np.float32), self.linear
        try:
            return scorer.score(x, FEATURE_NAMES).astype(np.float32), scorer
        except Exception:
            log.warning("scorer failed; ranking with the linear scorer", exc_info=True)
            METRICS.stage_fallbacks.labels("rank").inc()
            fallbacks.append("rank")
            return self.linear.score(x, FEATURE_NAMES).astype(np.float32), self.linear

    def _rank(
        self,
        ctx: RetrievalContext,
        req: Request,
        clock: _Clock,
        fallbacks: list[str],
        request_id: str | None,
        *,
        retrievers: Sequence[tuple[Retriever, int]] | None = None,
        given: npt.NDArray[np.int64] | None = None,
    ) -> list[RecommendedItem]:
        """Retrieve (or take the `given` catalog rows), score, filter, diversify, explain."""
        started = clock.elapsed_ms()
        cands = self._retrieve(ctx, retrievers or self.retrievers, clock, fallbacks)
        retrieved = clock.elapsed_ms()
        METRICS.stage_seconds.labels("retrieve").observe((retrieved - started) / 1e3)
        if given is not None:
            # The client's items join the retrieved ones, so their features are scaled over
            # the same candidate set as in `recommend` and in training (`point_in_time_features`);
            # only they can be shown.
            cands = with_rows(cands, given)
        if cands.rows.size == 0:
            return self._catalog_order(req.n)
        at = time.time() if req.now is None else req.now
        x = self.features(ctx, cands, at)
        scores, scorer = self._score(x, clock, fallbacks)
        self._mask(ctx, req, cands, scores, given)
        s = self.config.serving
        top = diversify(
            cands.rows,
            scores,
            self.catalog,
            req.n,
            max_per_category=s.max_per_category if given is None else 0,
            mmr_lambda=s.mmr_lambda if given is None else 1.0,
        )
        if top.size == 0:
            return []
        if given is None:
            top = self._new_item_slots(cands, scores, top)
        ids = ctx.catalog.ids[cands.rows[top]]
        logger = self.feature_logger
        if logger is not None and request_id is not None and logger.wants(request_id):
            ids_ = [str(i) for i in ids]
            logger.log(request_id, ctx.user_id, at, item_ids=ids_, scores=scores[top], x=x[top])
        because: list[list[Contribution]] | list[None] = [None] * top.size
        if req.explain:
            because = top_contributions(scorer.contributions(x[top], FEATURE_NAMES), FEATURE_NAMES)
        METRICS.stage_seconds.labels("rank").observe((clock.elapsed_ms() - retrieved) / 1e3)
        names = list(enumerate(cands.names))
        return [
            RecommendedItem(str(item), round(score, 6), [n for b, n in names if bits >> b & 1], why)
            for item, score, bits, why in zip(
                ids.tolist(),
                scores[top].tolist(),
                cands.sources[top].tolist(),
                because,
                strict=True,
            )
        ]

    def _mask(
        self,
        ctx: RetrievalContext,
        req: Request,
        cands: CandidateSet,
        scores: npt.NDArray[np.float32],
        given: npt.NDArray[np.int64] | None,
    ) -> None:
        """Score -inf what may not be shown: filtered, inactive, excluded, already owned."""
        catalog = ctx.catalog
        keep = filter_mask(catalog, cands.rows, req.filters) & catalog.active[cands.rows]
        if given is not None:
            keep &= member(cands.rows, given)
        scores[~keep] = -np.inf
        if given is None:
            for column in self.excluded_columns:
                cell = ctx.user.get(PROFILE, {}).get(column)
                if cell is not None:
                    scores[member(cands.rows, self.catalog.rows(cell.value))] = -np.inf
        if req.exclude:
            scores[member(cands.rows, self.catalog.rows(list(req.exclude)))] = -np.inf

    def _new_item_slots(
        self, cands: CandidateSet, scores: npt.NDArray[np.float32], top: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        """Item cold start: the last `serving.new_item_slots` places go to the best new items
        (proposed by `new_items`, i.e. added within `new_item_window_s`) when none made it on
        their own score; without engagement they could never earn one."""
        slots = min(self.config.serving.new_item_slots, top.size)
        if slots == 0 or "new_items" not in cands.names:
            return top
        bit = np.uint32(1) << np.uint32(cands.names.index("new_items"))
        is_new = (cands.sources & bit) != 0
        if is_new[top].any():
            return top
        pool = np.flatnonzero(is_new & np.isfinite(scores))
        if pool.size == 0:
            return top
        best = pool[np.argsort(-scores[pool], kind="stable")][:slots]
        return np.concatenate([top[: top.size - best.size], best])

    def rank(
        self,
        user_id: str,
        item_ids: Sequence[str],
        request: Request,
        *,
        fallback: str | None = None,
    ) -> Recommendation:
        """The client's candidates, ranked for the user by the same features and model;
        ids not in the catalog are left out (the caller checks them first). With `fallback`
        (why: "deadline") the store is not read: ranked without user features, popular
        candidates only, CPU only."""
        rows = self.catalog.rows(list(item_ids))
        clock = _Clock(
            self.config.serving.deadline_ms if request.deadline_ms is None else request.deadline_ms
        )
        fallbacks: list[str] = []
        request_id = uuid.uuid4().hex
        retrievers = None
        if fallback is None:
            try:
                ctx = self.context(user_id, request.region, request.device)
            except StoreError:
                log.warning("store failed; ranking without user features", exc_info=True)
                fallback = "features"
        else:
            retrievers = self.retrievers[:1]
        if fallback is not None:
            METRICS.stage_fallbacks.labels(fallback).inc()
            fallbacks.append(fallback)
            ctx = RetrievalContext(
                {}, self._popular[1], self.catalog, user_id, request.region, request.device
            )
        req = msgspec.structs.replace(request, n=min(request.n, int((rows >= 0).sum())))
        items = self._rank(
            ctx, req, clock, fallbacks, request_id, retrievers=retrievers, given=rows[rows >= 0]
        )
        return Recommendation(items, bool(fallbacks), request_id, fallbacks)

    def similar(self, item_id: str, n: int, *, use_store: bool = True) -> list[RecommendedItem]:
        """Items like `item_id`: its nearest items by embedding, its co-visitation neighbours
        from the stream (unless not `use_store`: the fallback when the store is slow) and the
        batch item-kNN neighbours; each source's score scaled to (0, 1] and summed."""
        row = self.catalog.index[item_id]
        emb = self.catalog.embedding
        sims = emb @ emb[row]
        sims[row] = -np.inf
        k = min(max(n * 5, 50), len(self.catalog) - 1)
        near = np.argpartition(-sims, k - 1)[:k] if k > 0 else np.empty(0, np.int64)
        results = [
            Candidates(near.astype(np.int64), np.maximum(sims[near], 1e-6).astype(np.float32))
        ]
        names = ["embedding"]
        neighbours = self.models.models.neighbours
        if neighbours is not None and neighbours.shape[0] == len(self.catalog):
            r = neighbours.getrow(row)
            results.append(Candidates(r.indices.astype(np.int64), r.data.astype(np.float32)))
            names.append("item_knn")
        if use_store:
            self._similar_covisitation(item_id, results, names)
        cands = merge(names, results)
        top_scores = cands.scores.max(axis=0)
        total = (cands.scores / np.where(top_scores > 0, top_scores, 1.0)).sum(axis=1)
        total[(cands.rows == row) | ~self.catalog.active[cands.rows]] = -np.inf
        top = diversify(cands.rows, total.astype(np.float32), self.catalog, n)
        return [
            RecommendedItem(
                str(self.catalog.ids[cands.rows[i]]),
                round(float(total[i]), 6),
                [names[b] for b in range(len(names)) if cands.sources[i] >> b & 1],
            )
            for i in top.tolist()
        ]

    def _similar_covisitation(
        self, item_id: str, results: list[Candidates], names: list[str]
    ) -> None:
        """The item's co-visitation neighbours, appended to `results` (none if the store
        fails)."""
        try:
            data = self.store.get([item_row(item_id)], [COVIS]).get(item_row(item_id), {})
        except StoreError:
            log.warning("store failed; similar items without co-visitation", exc_info=True)
            return
        links = merge_shards(data.get(COVIS, {})).get("neighbours")
        if links is not None and links.value:
            ids = list(links.value)
            rows = self.catalog.rows(ids)
            w = np.fromiter(links.value.values(), np.float32, len(ids))
            results.append(Candidates(rows[rows >= 0], w[rows >= 0]))
            names.append("covisitation")

    def _catalog_order(self, n: int) -> list[RecommendedItem]:
        """Before any event was processed there is no popularity: the catalog's first items."""
        return [RecommendedItem(str(i), 0.0, ["catalog"]) for i in self.catalog.ids[:n]]


def _version(user: RowData) -> tuple[float, int]:
    """Changes whenever the stream applies an event of the user: the newest cell time, and
    the user's event count (`counts`), which a late event moves when the time does not."""
    newest = max((c.ts for cells in user.values() for c in cells.values()), default=0.0)
    counts = user.get(PROFILE, {}).get("counts")
    total = sum(counts.value.values()) if counts is not None and counts.value else 0
    return newest, int(total)
