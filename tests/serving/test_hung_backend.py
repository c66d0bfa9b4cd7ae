"""A hung Redis (SIGSTOP) under the API: the event loop keeps answering, recommend answers
degraded within its deadline, the store's breaker opens, readiness says why, and all of it
recovers when Redis does."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import msgspec
import pytest
import redis
from httpx2 import Response
from starlette.testclient import TestClient

from tastemaker.catalog import Catalog
from tastemaker.config import ServingConfig, StoreConfig
from tastemaker.data.synthetic import Shop
from tastemaker.deployment.runtime import Runtime
from tastemaker.recommend.pipeline import Request
from tastemaker.serving.api import build_app
from tastemaker.testing.servers import redis_server
from tests.conftest import make_config, wait_until

T = TypeVar("T")


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A Valkey of this test's own (it is stopped): its URL and process id."""
    with redis_server(tmp_path / "valkey") as url:
        client = redis.Redis.from_url(url)
        pid = int(client.info("server")["process_id"])
        client.close()
        try:
            yield url, pid
        finally:
            os.kill(pid, signal.SIGCONT)  # whatever the test did, so it can be stopped


@pytest.fixture
def runtime(
    tmp_path: Path, catalog: Catalog, shop: Shop, valkey: tuple[str, int]
) -> Iterator[Runtime]:
    serving = ServingConfig(
        deadline_ms=300.0,
        budget_features_ms=100.0,
        budget_retrieve_ms=150.0,
        breaker_failures=3,
        breaker_cooldown_s=1.0,
        health_timeout_ms=300.0,
        cache_ttl_s=0.0,  # every recommend reads the store
        rate_limit_rps=10_000.0,  # the limiter's buckets on the same (hung) server
        rate_limit_url=valkey[0],
    )
    config = make_config(tmp_path, catalog, serving=serving)
    config = msgspec.structs.replace(config, store=StoreConfig(url=valkey[0]))
    rt = Runtime.from_config(config)
    rt.ingestor.ingest(next(iter(shop.events(chunk_users=100))))
    rt.processor.drain()
    yield rt
    rt.close()


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    started = time.monotonic()
    result = fn()
    return time.monotonic() - started, result


def test_a_hung_store_stalls_nothing_and_trips_the_breaker(
    runtime: Runtime, shop: Shop, valkey: tuple[str, int]
) -> None:
    users = [str(u) for u in shop.user_ids[:50]]
    with TestClient(build_app(runtime)) as client:
        before = client.post("/v1/recommend", json={"user_id": users[0], "n": 5}).json()
        assert before["degraded"] is False
        assert client.get("/readyz").status_code == 200
        os.kill(valkey[1], signal.SIGSTOP)

        def recommend(user: str) -> tuple[float, Response]:
            return timed(lambda: client.post("/v1/recommend", json={"user_id": user, "n": 5}))

        with ThreadPoolExecutor(8) as pool:
            answers = pool.map(recommend, users * 2)
            # While the recommends wait on the hung store, the loop answers the rest.
            others = [timed(lambda: client.get("/openapi.json")) for _ in range(10)]
            others += [timed(lambda: client.get("/livez")) for _ in range(10)]
            answered = list(answers)
        assert max(took for took, _ in others) < 1.0
        assert all(r.status_code == 200 for _, r in others)
        assert max(took for took, _ in answered) < 1.0
        bodies = [r.json() for _, r in answered]
        assert all(b["degraded"] and len(b["items"]) == 5 for b in bodies)
        assert runtime.breakers["store"].state in ("open", "half_open")
        metrics = client.get("/metrics").text
        assert 'tastemaker_breaker_opened_total{backend="store"}' in metrics
        assert 'tastemaker_breaker_opened_total{backend="ratelimit"}' in metrics

        ids = [str(i) for i in runtime.catalog.ids[:20]]
        body = {"user_id": users[1], "item_ids": ids}
        took, rank = timed(lambda: client.post("/v1/rank", json=body))
        assert took < 1.0
        assert rank.json()["degraded"] is True
        assert sorted(it["item_id"] for it in rank.json()["items"]) == sorted(ids)
        took, similar = timed(lambda: client.get(f"/v1/items/{ids[0]}/similar?n=5"))
        assert took < 1.0
        assert len(similar.json()["items"]) == 5

        took, ready = timed(lambda: client.get("/readyz"))
        assert took < 1.0
        assert ready.status_code == 503
        assert any(r.startswith("store:") for r in ready.json()["reasons"])
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "degraded"
        features = client.get(f"/v1/users/{users[0]}/features")
        assert features.status_code == 503
        assert features.json()["error"] == "store_unavailable"

        os.kill(valkey[1], signal.SIGCONT)
        # After the cool-down one probe finds the store again and closes the breaker.
        wait_until(lambda: client.get("/readyz").status_code == 200, timeout=10)
        assert runtime.breakers["store"].state == "closed"
        after = client.post("/v1/recommend", json={"user_id": users[0], "n": 5}).json()
        assert after["degraded"] is False


def test_the_deadline_fallbacks_read_no_store(runtime: Runtime, valkey: tuple[str, int]) -> None:
    """What a request answers when its store work missed the deadline: computed without the
    store (which is hung here), at once."""
    p = runtime.pipeline
    os.kill(valkey[1], signal.SIGSTOP)
    ids = [str(i) for i in runtime.catalog.ids[:20]]
    took, rec = timed(lambda: p.fallback("someone", Request(n=5), "deadline"))
    assert (rec.degraded, rec.fallbacks, len(rec.items)) == (True, ["deadline"], 5)
    took2, ranked = timed(lambda: p.rank("someone", ids, Request(n=20), fallback="deadline"))
    assert (ranked.degraded, ranked.fallbacks) == (True, ["deadline"])
    assert sorted(i.item_id for i in ranked.items) == sorted(ids)
    took3, similar = timed(lambda: p.similar(ids[0], 5, use_store=False))
    assert len(similar) == 5
    assert "covisitation" not in {s for it in similar for s in it.sources}
    assert max(took, took2, took3) < 1.0
    assert runtime.breakers["store"].recent_failures == 0  # the store was never called
