"""The HTTP API on Starlette, with msgspec doing all decoding, validation and encoding.

Why Starlette and not a bigger framework: the endpoints are few and hot, and measured on
`POST /v1/recommend` Starlette with msgspec had the least overhead (docs/http-framework.md).
The handlers live by concern: `ingest_api.py` (events, items), `recommend_api.py`
(recommend, rank, similar, features), `health.py`, `privacy_api.py`, `console/`.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tastemaker import __version__
from tastemaker.deployment.runtime import Runtime
from tastemaker.metrics import METRICS
from tastemaker.serving.admission import Admission
from tastemaker.serving.auth import install_auth
from tastemaker.serving.console import console_routes
from tastemaker.serving.guards import RequestGuard
from tastemaker.serving.health import health_routes
from tastemaker.serving.ingest_api import IngestHandlers
from tastemaker.serving.openapi import openapi_document
from tastemaker.serving.privacy_api import privacy_routes
from tastemaker.serving.ratelimit import open_rate_limiter
from tastemaker.serving.recommend_api import RecommendHandlers
from tastemaker.serving.responses import ServingLimits, encode

__all__ = ["build_app"]


def build_app(runtime: Runtime) -> Starlette:
    """The ASGI app over an open runtime."""
    spec = encode(openapi_document(__version__, runtime.config, runtime.catalog.dim))
    s = runtime.config.serving
    limits = ServingLimits(s.max_json_depth, runtime.config.events.max_id_bytes)
    limiter = open_rate_limiter(
        s.rate_limit_url,
        s.rate_limit_rps,
        s.rate_limit_burst,
        s.api_key_rps,
        breaker=(s.breaker_failures, s.breaker_window_s, s.breaker_cooldown_s),
    )
    admission = Admission(s, limiter, runtime.offload)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(_: Request) -> Response:
        return Response(spec, media_type="application/json")

    app = Starlette(
        routes=[
            *IngestHandlers(runtime, admission, limits).routes(),
            *RecommendHandlers(runtime, admission, limits).routes(),
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
