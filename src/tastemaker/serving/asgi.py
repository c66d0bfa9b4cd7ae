"""ASGI entry point for multi-worker serving: each worker builds its app from the config file
named by `TASTEMAKER_CONFIG`. Workers never run the stream or the batch jobs; `tastemaker
serve` starts one `tastemaker stream` process beside them, which runs the in-process job
scheduler when `offline.schedule_interval_s` > 0."""

from __future__ import annotations

import msgspec
from starlette.applications import Starlette

from tastemaker.config import load_config
from tastemaker.deployment.runtime import Runtime, freeze_loaded_heap
from tastemaker.serving.api import build_app

__all__ = ["create_app"]


def create_app() -> Starlette:
    config = load_config()
    config = msgspec.structs.replace(
        config, stream=msgspec.structs.replace(config.stream, run_in_server=False)
    )
    runtime = Runtime.from_config(config)
    runtime.watch_artifacts()  # each worker picks up new artifact versions itself
    runtime.watch_catalog()  # and the item changes other workers accepted
    app = build_app(runtime)
    freeze_loaded_heap()
    return app
