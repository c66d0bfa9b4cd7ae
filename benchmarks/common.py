"""Helpers shared by the benchmarks: a prepared demo shop and server processes."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tastemaker.catalog import save_catalog
from tastemaker.config import dump_config, local_config
from tastemaker.data.synthetic import ShopSpec, generate_shop
from tastemaker.serving.runtime import Runtime
from tastemaker.testing.servers import free_port, wait_for_http

__all__ = ["free_port", "prepare_shop", "server"]


def prepare_shop(directory: Path, spec: ShopSpec) -> tuple[Path, list[str]]:
    """Generate a shop, ingest and process all its events; return the config path and the ids
    of users that have features."""
    directory.mkdir(parents=True, exist_ok=True)
    shop = generate_shop(spec)
    save_catalog(shop.catalog(), directory / "catalog.parquet")
    config = local_config(directory, fsync="never")
    config_path = dump_config(config, directory / "config.toml")
    runtime = Runtime.from_config(config)
    for events in shop.events():
        runtime.ingestor.ingest(events)
    runtime.processor.drain()
    runtime.close()
    return config_path, [str(u) for u in shop.user_ids]


@contextlib.contextmanager
def server(argv: list[str], port: int, env: dict[str, str]) -> Iterator[None]:
    """Run a server command until the block ends; wait until /healthz answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=60)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=15)
