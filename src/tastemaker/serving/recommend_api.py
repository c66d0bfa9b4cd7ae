"""`POST /v1/recommend`, `POST /v1/rank`, `GET /v1/items/{id}/similar` and
`GET /v1/users/{id}/features`: the recommend pipeline over HTTP, each call under its deadline
with the pipeline's fallback when it is missed."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tastemaker.deployment.offload import DeadlineExceededError
from tastemaker.deployment.runtime import Runtime
from tastemaker.events import id_problem
from tastemaker.metrics import METRICS
from tastemaker.recommend import Request as PipelineRequest
from tastemaker.serving.admission import Admission
from tastemaker.serving.responses import ServingLimits, decode, error, json, timed
from tastemaker.serving.schemas import (
    FeatureCell,
    RankRequest,
    RecommendRequest,
    RecommendResponse,
    RequestContext,
    SimilarResponse,
    UserFeatures,
)
from tastemaker.store import StoreError

__all__ = ["RecommendHandlers"]

_recommend_decoder = msgspec.json.Decoder(RecommendRequest)
_rank_decoder = msgspec.json.Decoder(RankRequest)


def _count(raw: str, limit: int) -> int | None:
    """`raw` as an integer in 1..limit, else None. Only ASCII digits: `str.isdigit` takes
    '²', and `int()` of thousands of digits raises."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        return None
    value = int(raw)
    return value if 1 <= value <= limit else None


def _options(req: RecommendRequest | RankRequest, n: int) -> PipelineRequest:
    context = req.context or RequestContext()
    return PipelineRequest(
        n=n,
        filters=req.filters,
        explain=req.explain,
        deadline_ms=req.deadline_ms,
        region=context.region,
        device=context.device,
    )


class RecommendHandlers:
    def __init__(self, runtime: Runtime, admission: Admission, limits: ServingLimits) -> None:
        self.runtime = runtime
        self.admission = admission
        self.limits = limits
        self.max_n = runtime.config.serving.max_n

    def routes(self) -> list[Route]:
        similar, features = "/v1/items/{item_id:str}/similar", "/v1/users/{user_id:str}/features"
        return [
            Route("/v1/recommend", timed("recommend", self.post_recommend), methods=["POST"]),
            Route("/v1/rank", timed("rank", self.post_rank), methods=["POST"]),
            Route(similar, timed("similar", self.get_similar), methods=["GET"]),
            Route(features, timed("features", self.get_features), methods=["GET"]),
        ]

    async def post_recommend(self, request: Request) -> Response:
        if (refused := await self.admission.refused(request)) is not None:
            return refused
        req = decode(_recommend_decoder, await request.body(), self.limits, "invalid_request")
        if isinstance(req, Response):
            return req
        options = _options(req, min(int(req.n), self.max_n))
        pipeline = self.runtime.pipeline
        try:
            rec = await self.admission.offload.run(
                self.admission.within(options.deadline_ms),
                pipeline.recommend,
                req.user_id,
                request=options,
            )
        except DeadlineExceededError:
            rec = pipeline.fallback(req.user_id, options, "deadline")
        return json(
            RecommendResponse(rec.items, rec.degraded, rec.request_id, rec.fallbacks, rec.cached)
        )

    async def post_rank(self, request: Request) -> Response:
        if (refused := await self.admission.refused(request)) is not None:
            return refused
        req = decode(_rank_decoder, await request.body(), self.limits, "invalid_request")
        if isinstance(req, Response):
            return req
        unknown = [i for i in req.item_ids if i not in self.runtime.catalog.index]
        if unknown:
            return error(
                400,
                "unknown_items",
                f"{len(unknown)} item id(s) not in the catalog: {unknown[:20]}",
            )
        options = _options(req, int(req.n or len(req.item_ids)))
        pipeline = self.runtime.pipeline
        try:
            rec = await self.admission.offload.run(
                self.admission.within(options.deadline_ms),
                pipeline.rank,
                req.user_id,
                req.item_ids,
                options,
            )
        except DeadlineExceededError:
            rec = pipeline.rank(req.user_id, req.item_ids, options, fallback="deadline")
        return json(RecommendResponse(rec.items, rec.degraded, rec.request_id, rec.fallbacks))

    async def get_similar(self, request: Request) -> Response:
        if (refused := await self.admission.refused(request)) is not None:
            return refused
        item_id = request.path_params["item_id"]
        if item_id not in self.runtime.catalog.index:
            return error(404, "unknown_item", f"item {item_id!r} is not in the catalog")
        n = _count(request.query_params.get("n", "10"), self.max_n)
        if n is None:
            return error(400, "invalid_request", f"n must be an integer in 1..{self.max_n}")
        pipeline = self.runtime.pipeline
        try:
            items = await self.admission.offload.run(
                self.admission.within(None), pipeline.similar, item_id, n
            )
        except DeadlineExceededError:  # without the store's co-visitation neighbours
            METRICS.stage_fallbacks.labels("deadline").inc()
            items = pipeline.similar(item_id, n, use_store=False)
        return json(SimilarResponse(item_id, items))

    async def get_features(self, request: Request) -> Response:
        user_id = request.path_params["user_id"]
        if (why := id_problem(user_id, self.limits.max_id_bytes)) is not None:
            return error(400, "invalid_request", f"user_id: {why}")
        try:
            data = await self.admission.offload.run(
                self.admission.within(None), self.runtime.pipeline.user_features, user_id
            )
        except (DeadlineExceededError, StoreError) as exc:
            response = error(503, "store_unavailable", f"the online store did not answer: {exc}")
            response.headers["Retry-After"] = "1"
            return response
        features = {
            fam: {
                col: FeatureCell(c.value, c.ts)
                for col, c in cells.items()
                if not col.startswith("_")
            }
            for fam, cells in data.items()
        }
        return json(UserFeatures(user_id, features))
