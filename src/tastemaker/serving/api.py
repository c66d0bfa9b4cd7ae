"""The HTTP API on Starlette, with msgspec doing all decoding, validation and encoding.

Why Starlette and not a bigger framework: the endpoints are few and hot, and measured on
`POST /v1/recommend` Starlette with msgspec had the least overhead (docs/http-framework.md).
"""

from __future__ import annotations

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

from tastemaker import __version__, safejson
from tastemaker.deployment.ingest import BackpressureError
from tastemaker.deployment.offload import DeadlineExceededError
from tastemaker.deployment.runtime import ItemsError, Runtime
from tastemaker.events import InvalidBatchError, id_problem
from tastemaker.log import LogError
from tastemaker.metrics import METRICS
from tastemaker.recommend.pipeline import Request as PipelineRequest
from tastemaker.serving.auth import client_name, install_auth
from tastemaker.serving.console import console_routes
from tastemaker.serving.guards import RequestGuard
from tastemaker.serving.health import health_routes
from tastemaker.serving.openapi import openapi_document
from tastemaker.serving.privacy_api import privacy_routes
from tastemaker.serving.ratelimit import RateLimiter, retry_after
from tastemaker.serving.ratelimit_redis import RedisRateLimiter
from tastemaker.serving.schemas import (
    Accepted,
    ErrorBody,
    FeatureCell,
    ItemsAccepted,
    ItemsBatch,
    RankRequest,
    RecommendRequest,
    RecommendResponse,
    RequestContext,
    SimilarResponse,
    UserFeatures,
)
from tastemaker.store import StoreError

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


def _decode(
    decoder: msgspec.json.Decoder[T], body: bytes, limits: ServingLimits, error: str
) -> T | Response:
    """The decoded body, or the 400 that names what is wrong with it (a `user_id` is a store
    key: its bytes are limited too)."""
    written = "; nothing was written" if error == "invalid_items" else ""
    try:
        decoded = safejson.decode(decoder, body, limits.max_json_depth)
    except msgspec.ValidationError as exc:
        return _error(400, error, f"{exc}{written}")
    except (msgspec.DecodeError, safejson.UnsafeJSONError) as exc:
        return _error(400, error, f"malformed JSON: {exc}{written}")
    user_id = getattr(decoded, "user_id", None)
    if user_id is not None and (why := id_problem(user_id, limits.max_id_bytes)) is not None:
        return _error(400, error, f"user_id: {why}")
    return decoded


class ServingLimits(msgspec.Struct, frozen=True):
    max_json_depth: int
    max_id_bytes: int


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


def _timed(endpoint: str, handler: Handler) -> Handler:
    histogram = METRICS.request_seconds.labels(endpoint)

    async def wrapped(request: Request) -> Response:
        started = time.perf_counter()
        status = 500  # if the handler raises
        try:
            response = await handler(request)
            status = response.status_code
            return response
        finally:
            histogram.observe(time.perf_counter() - started)
            METRICS.responses.labels(endpoint, f"{status // 100}xx").inc()

    return wrapped


def build_app(runtime: Runtime) -> Starlette:
    """The ASGI app over an open runtime."""
    spec = _encode(openapi_document(__version__, runtime.config, runtime.catalog.dim))
    limits = ServingLimits(
        runtime.config.serving.max_json_depth, runtime.config.events.max_id_bytes
    )

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
            if exc.maybe_written:  # a timeout: the log may have the batch; resending is safe
                return _error(
                    503,
                    "log_unavailable",
                    f"{exc}; the events may have been written: resend the same events with the "
                    "same event ids (the stream drops repeated ids)",
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
        else RedisRateLimiter(
            s.rate_limit_url,
            s.rate_limit_rps,
            s.rate_limit_burst,
            s.api_key_rps,
            breaker=(s.breaker_failures, s.breaker_window_s, s.breaker_cooldown_s),
        )
    )
    offload = runtime.offload

    def within(deadline_ms: float | None) -> float:
        """Seconds a request waits for its backend work: its deadline plus the grace."""
        return ((s.deadline_ms if deadline_ms is None else deadline_ms) + s.deadline_grace_ms) / 1e3

    async def limited(request: Request) -> Response | None:
        """429 when the request's API key is over its rate: the authenticated key's name,
        else (auth off) the `X-API-Key` header, else "anonymous"."""
        if not limiter.enabled():
            return None
        key = client_name(request.scope) or request.headers.get("x-api-key", "anonymous")
        if isinstance(limiter, RedisRateLimiter):
            try:
                wait = await offload.run(within(None), limiter.acquire, key)
            except DeadlineExceededError:
                METRICS.rate_limit_errors.inc()  # let through, as when Redis fails
                wait = 0.0
        else:
            wait = limiter.acquire(key)
        if wait <= 0:
            return None
        METRICS.rate_limited.inc()
        response = _error(429, "rate_limited", f"API key {key!r} is over its request rate")
        response.headers["Retry-After"] = retry_after(wait)
        return response

    async def post_recommend(request: Request) -> Response:
        if (refused := await limited(request)) is not None:
            return refused
        req = _decode(_recommend_decoder, await request.body(), limits, "invalid_request")
        if isinstance(req, Response):
            return req
        options = _options(req, min(int(req.n), s.max_n))
        try:
            rec = await offload.run(
                within(options.deadline_ms),
                runtime.pipeline.recommend,
                req.user_id,
                request=options,
            )
        except DeadlineExceededError:
            rec = runtime.pipeline.fallback(req.user_id, options, "deadline")
        return _json(
            RecommendResponse(rec.items, rec.degraded, rec.request_id, rec.fallbacks, rec.cached)
        )

    async def post_rank(request: Request) -> Response:
        if (refused := await limited(request)) is not None:
            return refused
        req = _decode(_rank_decoder, await request.body(), limits, "invalid_request")
        if isinstance(req, Response):
            return req
        unknown = [i for i in req.item_ids if i not in runtime.catalog.index]
        if unknown:
            return _error(
                400,
                "unknown_items",
                f"{len(unknown)} item id(s) not in the catalog: {unknown[:20]}",
            )
        options = _options(req, int(req.n or len(req.item_ids)))
        pipeline = runtime.pipeline
        try:
            rec = await offload.run(
                within(options.deadline_ms), pipeline.rank, req.user_id, req.item_ids, options
            )
        except DeadlineExceededError:
            rec = pipeline.rank(req.user_id, req.item_ids, options, fallback="deadline")
        return _json(RecommendResponse(rec.items, rec.degraded, rec.request_id, rec.fallbacks))

    async def post_items(request: Request) -> Response:
        if (refused := await limited(request)) is not None:
            return refused
        batch = _decode(_items_decoder, await request.body(), limits, "invalid_items")
        if isinstance(batch, Response):
            return batch
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
        if (refused := await limited(request)) is not None:
            return refused
        item_id = request.path_params["item_id"]
        if item_id not in runtime.catalog.index:
            return _error(404, "unknown_item", f"item {item_id!r} is not in the catalog")
        n = _count(request.query_params.get("n", "10"), s.max_n)
        if n is None:
            return _error(400, "invalid_request", f"n must be an integer in 1..{s.max_n}")
        try:
            items = await offload.run(within(None), runtime.pipeline.similar, item_id, n)
        except DeadlineExceededError:  # without the store's co-visitation neighbours
            METRICS.stage_fallbacks.labels("deadline").inc()
            items = runtime.pipeline.similar(item_id, n, use_store=False)
        return _json(SimilarResponse(item_id, items))

    async def get_features(request: Request) -> Response:
        user_id = request.path_params["user_id"]
        if (why := id_problem(user_id, runtime.config.events.max_id_bytes)) is not None:
            return _error(400, "invalid_request", f"user_id: {why}")
        try:
            data = await offload.run(within(None), runtime.pipeline.user_features, user_id)
        except (DeadlineExceededError, StoreError) as exc:
            response = _error(503, "store_unavailable", f"the online store did not answer: {exc}")
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
        return _json(UserFeatures(user_id, features))

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(_: Request) -> Response:
        return Response(spec, media_type="application/json")

    app = Starlette(
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
            *health_routes(runtime),
            *privacy_routes(runtime),  # admin scope (serving/auth.py)
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            *console_routes(runtime),  # admin scope (serving/auth.py)
        ]
    )
    # Added last, so outermost: a request without a valid key is refused (401/403) before its
    # body is looked at.
    app.add_middleware(RequestGuard, max_body_bytes=s.max_body_bytes)
    install_auth(app, s)
    return app
