"""App factories for the framework comparison: the same runtime and pipeline behind Starlette
(tastemaker's API) and behind Litestar. Each reads the config named by TASTEMAKER_CONFIG.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from tastemaker.config import load_config
from tastemaker.deployment.runtime import Runtime
from tastemaker.serving.api import build_app
from tastemaker.serving.schemas import RecommendRequest, RecommendResponse


def _runtime() -> Runtime:
    config = load_config(os.environ["TASTEMAKER_CONFIG"])
    stream = msgspec.structs.replace(config.stream, run_in_server=False)
    return Runtime.from_config(msgspec.structs.replace(config, stream=stream))


def starlette_app() -> Any:
    """tastemaker's own API (Starlette + msgspec)."""
    return build_app(_runtime())


def litestar_app() -> Any:
    """The recommend endpoint on Litestar, which decodes and encodes msgspec Structs itself."""
    from litestar import Litestar, get, post

    runtime = _runtime()

    @post("/v1/recommend", status_code=200)
    async def recommend(data: RecommendRequest) -> RecommendResponse:
        rec = runtime.pipeline.recommend(data.user_id, int(data.n))
        return RecommendResponse(rec.items, rec.degraded)

    @get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar(route_handlers=[recommend, healthz], openapi_config=None)
