"""Consent through the API, and tombstones applied by the stream and the archiver on a log
that keeps the erased user's records (as Kafka does)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tastemaker.catalog import Catalog
from tastemaker.config import Config
from tastemaker.deployment.runtime import Runtime
from tastemaker.events import EventType, InvalidBatchError, decode_batch
from tastemaker.events.tombstones import without_erased
from tastemaker.features.layout import user_row
from tastemaker.metrics import METRICS
from tastemaker.offline.lake import Archiver, Lake
from tastemaker.privacy import tombstone
from tastemaker.serving.api import build_app
from tests.conftest import event


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(build_app(runtime)) as c:
        yield c


def _ev(i: int, user: str, item: str) -> dict[str, object]:
    return {
        "event_id": f"{user}-{i}",
        "user_id": user,
        "item_id": item,
        "type": "click",
        "ts": 1.76e9 + i,
    }


def test_withdrawn_consent_drops_events_erases_and_serves_generic_answers(
    client: TestClient, runtime: Runtime, catalog: Catalog
) -> None:
    items = catalog.ids
    assert (
        client.post(
            "/v1/events", json={"events": [_ev(i, "carol", items[i]) for i in range(5)]}
        ).status_code
        == 202
    )
    runtime.processor.drain()
    assert runtime.store.get([user_row("carol")], ["profile"])
    r = client.post("/v1/users/carol/consent", json={"personalization": False})
    assert r.status_code == 200, r.text
    assert r.json()["personalization"] is False
    assert r.json()["erased"]["store_rows"] == 1
    dropped = METRICS.events_dropped_no_consent._value.get()
    end = sum(runtime.log.end_offsets().values())
    batch = [_ev(10, "carol", items[3]), _ev(11, "dave", items[4])]
    r = client.post("/v1/events", json={"events": batch})
    assert r.status_code == 202
    assert r.json() == {"accepted": 1}
    assert METRICS.events_dropped_no_consent._value.get() == dropped + 1
    assert "tastemaker_events_dropped_no_consent_total" in client.get("/metrics").text
    runtime.processor.drain()
    new = [
        r.event.user_id
        for p in range(runtime.log.partitions)
        for r in runtime.log.read(p, end - 1, 100)
        if r.event.type is not EventType.ERASE
    ]
    assert new == ["dave"]
    assert runtime.store.get([user_row("carol")], ["profile", "session"]) == {}
    cold = client.post("/v1/recommend", json={"user_id": "nobody", "n": 5}).json()["items"]
    hers = client.post("/v1/recommend", json={"user_id": "carol", "n": 5}).json()["items"]
    assert hers == cold
    # Consent given again: new events are stored and applied as before.
    r = client.post("/v1/users/carol/consent", json={"personalization": True})
    assert r.json() == {"user_id": "carol", "personalization": True, "erased": None}
    r = client.post("/v1/events", json={"events": [_ev(20, "carol", items[6])]})
    assert r.json() == {"accepted": 1}
    runtime.processor.drain()
    assert runtime.store.get([user_row("carol")], ["profile"])


def test_privacy_routes_refuse_bad_input(client: TestClient) -> None:
    assert client.post("/v1/users/x/consent", json={"personalization": "no"}).status_code == 400
    assert (
        client.post(
            "/v1/users/x/consent", content=b"{", headers={"Content-Type": "application/json"}
        ).status_code
        == 400
    )
    assert client.delete("/v1/users/" + "x" * 257).status_code == 400
    spec = client.get("/openapi.json").json()
    assert {"/v1/users/{user_id}", "/v1/users/{user_id}/consent"} <= set(spec["paths"])
    assert "erase" not in spec["components"]["schemas"]["EventType"]["enum"]


def test_clients_cannot_send_a_tombstone() -> None:
    body = (
        b'{"events": [{"event_id": "e", "user_id": "u", "item_id": "*", "type": "erase", '
        b'"ts": 1.76e9}]}'
    )
    with pytest.raises(InvalidBatchError, match=r"events\[0\]\.type: 'erase' is written by"):
        decode_batch(body)


def test_a_tombstone_drops_the_users_earlier_events_of_its_batch() -> None:
    events = [
        event("a1", "a", "i"),
        event("b1", "b", "i"),
        tombstone("a"),
        event("a2", "a", "i"),
    ]
    kept, users = without_erased(events)
    assert [e.event_id for e in kept] == ["b1", "a2"]
    assert users == {"a"}


def test_the_stream_and_the_archiver_apply_tombstones_of_records_left_in_the_log(
    runtime: Runtime, catalog: Catalog, tmp_path: Path
) -> None:
    items = catalog.ids
    log, store = runtime.log, runtime.store
    log.append([event(f"x{i}", "x", items[i], EventType.CLICK) for i in range(3)])
    runtime.processor.drain()
    lake = Lake(str(tmp_path / "lake"))
    Archiver(log, lake).run_once()
    assert len(lake.read()) == 3
    # More of x's events in flight, then the tombstone: nothing deleted from the log (as on
    # Kafka), all in one batch of the stream.
    log.append([event("x9", "x", items[9], EventType.CLICK), event("y1", "y", items[1])])
    log.append([tombstone("x")])
    log.append([event("x10", "x", items[10], EventType.CLICK)])  # after the erasure: kept
    runtime.processor.drain()
    profile = store.get([user_row("x"), user_row("y")], ["profile"])
    assert profile[user_row("x")]["profile"]["counts"].value == {"click": 1}
    assert user_row("y") in profile
    Archiver(log, lake).run_once()
    archived = lake.read().column("event_id").to_pylist()
    assert sorted(archived) == ["x10", "y1"]


def test_another_process_cache_does_not_serve_an_erased_users_answer(
    runtime: Runtime, config: Config, catalog: Catalog
) -> None:
    from tastemaker.deployment.privacy import erase_users

    other = Runtime.from_config(config)  # another API worker on the same store
    try:
        items = catalog.ids
        runtime.ingestor.ingest([event(f"w{i}", "w", items[i], EventType.CLICK) for i in range(4)])
        runtime.processor.drain()
        assert not other.pipeline.recommend("w", 5).cached
        assert other.pipeline.recommend("w", 5).cached
        erase_users(runtime, ["w"])
        assert not other.pipeline.recommend("w", 5).cached
    finally:
        other.close()
