"""A served demo shop and a real Chromium for the console's browser tests and its render-time
benchmark (`benchmarks/console_render.py`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from tastemaker.catalog import save_catalog
from tastemaker.config import ServingConfig, dump_config, local_config
from tastemaker.data.synthetic import Shop, ShopSpec, generate_shop
from tastemaker.testing.servers import free_port, wait_for_http

__all__ = ["PAGES", "chromium_path", "missing", "post_json", "served_shop"]

# The console's pages as the tests and the benchmark open them; `{user}`/`{item}`: a user
# with events and an item of the demo shop.
PAGES = {
    "overview": "/console",
    "users": "/console/users?user_id={user}&n=10&explain=true",
    "items": "/console/items?item_id={item}",
    "experiments": "/console/experiments",
}


def chromium_path() -> str | None:
    """`TASTEMAKER_CHROMIUM`, else a Chromium on PATH (Debian's package: `chromium`)."""
    given = os.environ.get("TASTEMAKER_CHROMIUM")
    if given:
        return given
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def missing() -> str | None:
    """What the browser tests lack, named (None: nothing)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright (pip install playwright: the dev extra)"
    if chromium_path() is None:
        return "a Chromium browser (apt-get install chromium, or set TASTEMAKER_CHROMIUM)"
    return None


def post_json(url: str, body: Any) -> Any:
    request = urllib.request.Request(
        url,
        msgspec.json.encode(body),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return msgspec.json.decode(response.read())


@contextlib.contextmanager
def served_shop(
    root: Path, users: int = 300, items: int = 400, *, batch_jobs: bool = False
) -> Iterator[tuple[str, Shop]]:
    """`tastemaker serve` (stream in the server) over a small synthetic shop on a free
    loopback port, every event of the shop posted (and with `batch_jobs`, `tastemaker jobs
    run` over them, so artifacts exist); yields its URL and the shop."""
    shop = generate_shop(ShopSpec(n_users=users, n_items=items, n_categories=8, n_brands=20))
    root.mkdir(parents=True, exist_ok=True)
    save_catalog(shop.catalog(), root / "catalog.parquet")
    port = free_port()
    config = local_config(root, serving=ServingConfig(port=port, deadline_ms=2_000.0))
    path = dump_config(config, root / "config.toml")
    log = root / "serve.log"
    with log.open("wb") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "tastemaker", "serve", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=err.fileno(),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/healthz", server, timeout=60, log=log)
        for events in shop.events():
            for i in range(0, len(events), 1000):
                post_json(url + "/v1/events", {"events": events[i : i + 1000]})
        if batch_jobs:
            run = [sys.executable, "-m", "tastemaker", "jobs", "run", "--config", str(path)]
            subprocess.run(run, check=True, capture_output=True, timeout=600)
        yield url, shop
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
