"""The HTTP API through Starlette's test client (in-process ASGI, real runtime)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from starlette.testclient import TestClient

from tastemaker.catalog import Catalog
from tastemaker.deployment.runtime import Runtime
from tastemaker.serving.api import build_app
from tests.conftest import make_config


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(build_app(runtime)) as c:
        yield c


def ev(i: int, item: str, **kw: object) -> dict[str, object]:
    return {
        "event_id": f"e{i}",
        "user_id": "alice",
        "item_id": item,
        "type": "click",
        "ts": 1.76e9 + i,
        **kw,
    }


def test_post_events_accepts_and_appends(
    client: TestClient, runtime: Runtime, catalog: Catalog
) -> None:
    r = client.post("/v1/events", json={"events": [ev(1, catalog.ids[0]), ev(2, catalog.ids[1])]})
    assert r.status_code == 202
    assert r.json() == {"accepted": 2}
    assert runtime.log.end_offsets()[0] == 2


def test_a_bad_batch_is_refused_whole_and_names_each_problem(
    client: TestClient, runtime: Runtime, catalog: Catalog
) -> None:
    events = [
        ev(1, catalog.ids[0]),
        ev(2, catalog.ids[0], type="teleport"),
        ev(3, catalog.ids[0], ts="yesterday"),
    ]
    r = client.post("/v1/events", json={"events": events})
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "invalid_batch"
    assert [(p["index"], p["field"]) for p in body["problems"]] == [(1, "type"), (2, "ts")]
    assert body["detail"].startswith("2 invalid event(s), 2 problem(s); nothing was written")
    assert runtime.log.end_offsets()[0] == 0  # nothing of the batch was written


@pytest.mark.parametrize(
    "payload", [b"{", b'{"user_id": ""}', b'{"user_id": "a", "n": 0}', b'{"user_id": "a", "x": 1}']
)
def test_bad_recommend_requests_get_400_json(client: TestClient, payload: bytes) -> None:
    r = client.post("/v1/recommend", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_request"
    assert r.json()["detail"]


def test_recommend_features_health_metrics_openapi(
    client: TestClient, runtime: Runtime, catalog: Catalog
) -> None:
    client.post("/v1/events", json={"events": [ev(1, catalog.ids[0]), ev(2, catalog.ids[1])]})
    runtime.processor.drain()
    r = client.post("/v1/recommend", json={"user_id": "alice", "n": 3})
    assert r.status_code == 200
    items = r.json()["items"]
    assert 1 <= len(items) <= 3
    assert set(items[0]) == {"item_id", "score", "sources"}
    f = client.get("/v1/users/alice/features").json()
    assert f["user_id"] == "alice"
    assert f["features"]["profile"]["counts"]["value"] == {"click": 2}
    assert "_session" not in f["features"]["session"]
    assert client.get("/v1/users/nobody/features").json() == {"user_id": "nobody", "features": {}}
    h = client.get("/healthz").json()
    assert h == {
        "status": "ok",
        "log_end_offset": 2,
        "stream_lag": 0,
        "items": len(catalog),
        "artifacts": {},
        "pid": os.getpid(),  # the process answering (a worker's, with `serve --workers N`)
        "reasons": [],
    }
    assert client.get("/livez").json() == {"status": "ok", "pid": os.getpid()}
    ready = client.get("/readyz")
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")
    metrics = client.get("/metrics").text
    assert "tastemaker_events_accepted_total" in metrics
    assert 'tastemaker_request_seconds_count{endpoint="recommend"}' in metrics
    spec = msgspec.json.decode(client.get("/openapi.json").content)
    assert set(spec["paths"]) >= {
        "/v1/events",
        "/v1/recommend",
        "/v1/users/{user_id}/features",
        "/livez",
        "/readyz",
    }
    event_schema = spec["components"]["schemas"]["Event"]
    assert set(event_schema["required"]) == {"event_id", "user_id", "item_id", "type", "ts"}


def test_a_failing_log_answers_503_and_writes_nothing(tmp_path: Path, catalog: Catalog) -> None:
    config = make_config(tmp_path, catalog)
    log = msgspec.structs.replace(config.log, url=config.log.url + "?busy_timeout_s=0.05")
    runtime = Runtime.from_config(msgspec.structs.replace(config, log=log))
    other_writer = sqlite3.connect(tmp_path / "log" / "events.sqlite3", timeout=0)
    other_writer.execute("BEGIN EXCLUSIVE")  # another process holds the database
    try:
        with TestClient(build_app(runtime)) as client:
            r = client.post("/v1/events", json={"events": [ev(1, catalog.ids[0])]})
    finally:
        other_writer.rollback()
        other_writer.close()
    assert r.status_code == 503
    assert r.json()["error"] == "log_unavailable"
    assert runtime.log.end_offsets()[0] == 0
    runtime.close()


def test_backpressure_answers_429_with_retry_after_and_drops_nothing(
    tmp_path: Path, catalog: Catalog
) -> None:
    config = make_config(tmp_path, catalog)
    stream = msgspec.structs.replace(config.stream, max_lag_events=10, retry_after_s=3)
    runtime = Runtime.from_config(msgspec.structs.replace(config, stream=stream))
    with TestClient(build_app(runtime)) as client:
        first = client.post(
            "/v1/events", json={"events": [ev(i, catalog.ids[0]) for i in range(8)]}
        )
        second = client.post(
            "/v1/events", json={"events": [ev(i, catalog.ids[0]) for i in range(8, 13)]}
        )
        refused = client.post("/v1/events", json={"events": [ev(99, catalog.ids[0])]})
        assert (first.status_code, second.status_code, refused.status_code) == (202, 202, 429)
        assert refused.headers["Retry-After"] == "3"
        assert refused.json()["error"] == "backpressure"
        assert runtime.log.end_offsets()[0] == 13  # the refused batch was not written
        assert runtime.processor.drain() == 13  # every accepted event is applied
        again = client.post("/v1/events", json={"events": [ev(99, catalog.ids[0])]})
        assert again.status_code == 202
    runtime.close()
