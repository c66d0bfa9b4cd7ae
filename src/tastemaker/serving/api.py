"""The HTTP API on Starlette, with msgspec doing all decoding, validation and encoding.

Why Starlette and not a bigger framework: the endpoints are few and hot, and measured on
`POST /v1/recommend` Starlette with msgspec had the least overhead (docs/http-framework.md).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

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
from tastemaker.serving.runtime import Runtime
from tastemaker.serving.schemas import (
    Accepted,
    ErrorBody,
    FeatureCell,
    Health,
    RecommendRequest,
    RecommendResponse,
    UserFeatures,
)

__all__ = ["build_app"]

_encode = msgspec.json.Encoder().encode
_recommend_decoder = msgspec.json.Decoder(RecommendRequest)


def _json(body: Any, status: int = 200) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


def _error(status: int, error: str, detail: str, problems: list[Any] | None = None) -> Response:
    return _json(ErrorBody(error, detail, problems or []), status)


Handler = Callable[[Request], Awaitable[Response]]


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
            return _error(503, "log_unavailable", f"{exc}; nothing was written, retry later")
        except BackpressureError as exc:
            response = _error(429, "backpressure", f"{exc}; nothing was written")
            response.headers["Retry-After"] = str(exc.retry_after_s)
            return response
        return _json(Accepted(accepted), 202)

    async def post_recommend(request: Request) -> Response:
        try:
            req = _recommend_decoder.decode(await request.body())
        except msgspec.ValidationError as exc:
            return _error(400, "invalid_request", str(exc))
        except msgspec.DecodeError as exc:
            return _error(400, "invalid_request", f"malformed JSON: {exc}")
        rec = runtime.pipeline.recommend(req.user_id, min(req.n, runtime.config.serving.max_n))
        return _json(RecommendResponse(rec.items, rec.degraded, rec.request_id))

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
        end = runtime.log.end_offset()
        lag = max(0, end - runtime.log.committed(runtime.config.stream.group))
        served = {k: v for k, v in runtime.artifact_versions().items() if v is not None}
        return _json(Health("ok", end, lag, len(runtime.catalog), served))

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(_: Request) -> Response:
        return Response(spec, media_type="application/json")

    return Starlette(
        routes=[
            Route("/v1/events", _timed("events", post_events), methods=["POST"]),
            Route("/v1/recommend", _timed("recommend", post_recommend), methods=["POST"]),
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
