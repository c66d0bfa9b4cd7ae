"""/readyz and /healthz over real failures: a log that cannot be written, a stalled stream."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
from starlette.testclient import TestClient

from tastemaker.catalog import Catalog
from tastemaker.deployment.runtime import Runtime
from tastemaker.serving.api import build_app
from tests.conftest import make_config, wait_until


def ev(i: int, item: str) -> dict[str, object]:
    return {"event_id": f"e{i}", "user_id": "ann", "item_id": item, "type": "view", "ts": 1.76e9}


def test_a_locked_log_opens_its_breaker_and_readiness_says_why(
    tmp_path: Path, catalog: Catalog
) -> None:
    config = make_config(tmp_path, catalog)
    log = msgspec.structs.replace(config.log, url=config.log.url + "?busy_timeout_s=0.05")
    serving = msgspec.structs.replace(config.serving, breaker_failures=3, breaker_cooldown_s=0.5)
    runtime = Runtime.from_config(msgspec.structs.replace(config, log=log, serving=serving))
    item = str(catalog.ids[0])
    other_writer = sqlite3.connect(tmp_path / "log" / "events.sqlite3", timeout=0)
    other_writer.execute("BEGIN EXCLUSIVE")  # another process holds the database
    try:
        with TestClient(build_app(runtime)) as client:
            for i in range(3):
                r = client.post("/v1/events", json={"events": [ev(i, item)]})
                assert r.status_code == 503
            assert runtime.breakers["log"].state == "open"
            r = client.post("/v1/events", json={"events": [ev(9, item)]})
            assert r.status_code == 503
            assert "circuit open" in r.json()["detail"]  # refused without trying
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert any(x.startswith("log:") for x in ready.json()["reasons"])
            health = client.get("/healthz")
            assert (health.status_code, health.json()["status"]) == (200, "degraded")
            assert client.get("/livez").status_code == 200
            other_writer.rollback()
            wait_until(lambda: client.get("/readyz").status_code == 200, timeout=10)
            r = client.post("/v1/events", json={"events": [ev(10, item)]})
            assert r.status_code == 202
    finally:
        other_writer.close()
        runtime.close()


def test_a_stream_that_applies_nothing_makes_the_process_not_ready(
    tmp_path: Path, catalog: Catalog
) -> None:
    config = make_config(tmp_path, catalog)
    serving = msgspec.structs.replace(config.serving, stream_stall_s=0.3)
    runtime = Runtime.from_config(msgspec.structs.replace(config, serving=serving))
    try:
        with TestClient(build_app(runtime)) as client:
            client.post("/v1/events", json={"events": [ev(1, str(catalog.ids[0]))]})
            assert client.get("/readyz").status_code == 200  # behind, not yet for long
            wait_until(lambda: client.get("/readyz").status_code == 503, timeout=10)
            reasons = client.get("/readyz").json()["reasons"]
            assert reasons == [reasons[0]]
            assert reasons[0].startswith("stream: 1 events behind")
            assert client.get("/healthz").json()["stream_lag"] == 1
            runtime.processor.drain()
            assert client.get("/readyz").status_code == 200
    finally:
        runtime.close()
