"""The HTTP API on Starlette, with msgspec doing all decoding, validation and encoding.

Why Starlette and not a bigger framework: the endpoints are few and hot, and measured on
`POST /v1/recommend` Starlette with msgspec had the least overhead (docs/http-framework.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tastemaker import __version__
from tastemaker.events import InvalidBatchError
from tastemaker.log import LogError
from tastemaker.metrics import METRICS
from tastemaker.serving.ingest import BackpressureError
from tastemaker.serving.openapi import openapi_document
from tastemaker.serving.pipeline import Request as PipelineRequest
from tastemaker.serving.ratelimit import RateLimiter, retry_after
from tastemaker.serving.ratelimit_redis import RedisRateLimiter
from tastemaker.serving.runtime import ItemsError, Runtime
from tastemaker.serving.schemas import (
    Accepted,
    ErrorBody,
    FeatureCell,
    Health,
    ItemsAccepted,
    ItemsBatch,
    RankRequest,
    RecommendRequest,
    RecommendResponse,
    RequestContext,
    SimilarResponse,
    UserFeatures,
)

__all__ = ["build_app"]

_encode = msgspec.json.Encoder().encode
_recommend_decoder = msgspec.json.Decoder(RecommendRequest)
_rank_decoder = msgspec.json.Decoder(RankRequest)
_items_decoder = msgspec.json.Decoder(ItemsBatch)


def _json(body: Any, status: int = 200) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


def _error(status: int, error: str, detail: str, problems: list[Any] | None = None) -> Response:
    return _json(ErrorBody(error, detail, problems or []), status)


Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")


def _decode(decoder: msgspec.json.Decoder[T], body: bytes) -> T | Response:
    """The decoded body, or the 400 that names what is wrong with it."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        return _error(400, "invalid_request", str(exc))
    except msgspec.DecodeError as exc:
        return _error(400, "invalid_request", f"malformed JSON: {exc}")


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


def _timed(endpoint: str, handler: Handler) -> Handler:
    histogram = METRICS.request_seconds.labels(endpoint)

    async def wrapped(request: Request) -> Response:
        started = time.perf_counter()
        try:
            return await handler(request)
        finally:
            histogram.observe(time.perf_counter() - started)

    return wrapped


def build_app(runtime: Runtime) -> Starlette:
    """The ASGI app over an open runtime."""
    spec = _encode(openapi_document(__version__))

    async def post_events(request: Request) -> Response:
        body = await request.body()
        try:
            # The append fsyncs: run it off the event loop so other requests keep flowing.
            accepted = await run_in_threadpool(runtime.ingestor.ingest_json, body)
        except InvalidBatchError as exc:
            return _error(
                400,
                "invalid_batch",
                f"{len(exc.problems)} invalid event(s); nothing was written",
                exc.problems,
            )
        except LogError as exc:
            if exc.maybe_written:  # its message says the events may have been written
                return _error(
                    503,
                    "log_unavailable",
                    f"{exc}: resend the same events with the same event ids (the stream drops "
                    "repeated ids)",
                )
            return _error(503, "log_unavailable", f"{exc}; nothing was written, retry later")
        except BackpressureError as exc:
            response = _error(429, "backpressure", f"{exc}; nothing was written")
            response.headers["Retry-After"] = str(exc.retry_after_s)
            return response
        return _json(Accepted(accepted), 202)

    s = runtime.config.serving
    limiter: RateLimiter | RedisRateLimiter = (
        RateLimiter(s.rate_limit_rps, s.rate_limit_burst, s.api_key_rps)
        if s.rate_limit_url is None
        else RedisRateLimiter(s.rate_limit_url, s.rate_limit_rps, s.rate_limit_burst, s.api_key_rps)
    )

    def limited(request: Request) -> Response | None:
        """429 when the request's API key (`X-API-Key`, else "anonymous") is over its rate."""
        if not limiter.enabled():
            return None
        key = request.headers.get("x-api-key", "anonymous")
        wait = limiter.acquire(key)
        if wait <= 0:
            return None
        METRICS.rate_limited.inc()
        response = _error(429, "rate_limited", f"API key {key!r} is over its request rate")
        response.headers["Retry-After"] = retry_after(wait)
        return response

    async def post_recommend(request: Request) -> Response:
        if (refused := limited(request)) is not None:
            return refused
        req = _decode(_recommend_decoder, await request.body())
        if isinstance(req, Response):
            return req
        options = _options(req, min(req.n, s.max_n))
        rec = runtime.pipeline.recommend(req.user_id, request=options)
        return _json(
            RecommendResponse(rec.items, rec.degraded, rec.request_id, rec.fallbacks, rec.cached)
        )

    async def post_rank(request: Request) -> Response:
        if (refused := limited(request)) is not None:
            return refused
        req = _decode(_rank_decoder, await request.body())
        if isinstance(req, Response):
            return req
        unknown = [i for i in req.item_ids if i not in runtime.catalog.index]
        if unknown:
            return _error(
                400,
                "unknown_items",
                f"{len(unknown)} item id(s) not in the catalog: {unknown[:20]}",
            )
        options = _options(req, req.n or len(req.item_ids))
        rec = runtime.pipeline.rank(req.user_id, req.item_ids, options)
        return _json(RecommendResponse(rec.items, rec.degraded, rec.request_id, rec.fallbacks))

    async def post_items(request: Request) -> Response:
        if (refused := limited(request)) is not None:
            return refused
        try:
            batch = _items_decoder.decode(await request.body())
        except msgspec.ValidationError as exc:
            return _error(400, "invalid_items", f"{exc}; nothing was written")
        except msgspec.DecodeError as exc:
            return _error(400, "invalid_items", f"malformed JSON: {exc}")
        try:
            version = await run_in_threadpool(runtime.upsert_items, batch.items)
        except ItemsError as exc:
            return _error(
                400,
                "invalid_items",
                f"{len(exc.problems)} problem(s); nothing was written",
                exc.problems,
            )
        return _json(ItemsAccepted(len(batch.items), version), 202)

    async def get_similar(request: Request) -> Response:
        if (refused := limited(request)) is not None:
            return refused
        item_id = request.path_params["item_id"]
        if item_id not in runtime.catalog.index:
            return _error(404, "unknown_item", f"item {item_id!r} is not in the catalog")
        raw_n = request.query_params.get("n", "10")
        if not raw_n.isdigit() or not 1 <= int(raw_n) <= s.max_n:
            return _error(400, "invalid_request", f"n must be an integer in 1..{s.max_n}")
        items = runtime.pipeline.similar(item_id, int(raw_n))
        return _json(SimilarResponse(item_id, items))

    async def get_features(request: Request) -> Response:
        user_id = request.path_params["user_id"]
        data = runtime.pipeline.user_features(user_id)
        features = {
            fam: {
                col: FeatureCell(c.value, c.ts)
                for col, c in cells.items()
                if not col.startswith("_")
            }
            for fam, cells in data.items()
        }
        return _json(UserFeatures(user_id, features))

    async def healthz(_: Request) -> Response:
        end = sum(runtime.log.end_offsets().values())
        lag = sum(runtime.log.lag(runtime.config.stream.group).values())
        served = {k: v for k, v in runtime.artifact_versions().items() if v is not None}
        return _json(Health("ok", end, lag, len(runtime.catalog), served, os.getpid()))

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(_: Request) -> Response:
        return Response(spec, media_type="application/json")

    return Starlette(
        routes=[
            Route("/v1/events", _timed("events", post_events), methods=["POST"]),
            Route("/v1/recommend", _timed("recommend", post_recommend), methods=["POST"]),
            Route("/v1/rank", _timed("rank", post_rank), methods=["POST"]),
            Route("/v1/items", _timed("items", post_items), methods=["POST"]),
            Route(
                "/v1/items/{item_id:str}/similar",
                _timed("similar", get_similar),
                methods=["GET"],
            ),
            Route(
                "/v1/users/{user_id:str}/features",
                _timed("features", get_features),
                methods=["GET"],
            ),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ]
    )
