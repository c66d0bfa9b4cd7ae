"""Rank, similar, filters, explanations, deadlines and fallbacks, the cache, rate limits."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from starlette.testclient import TestClient

from tastemaker.catalog import Catalog
from tastemaker.config import Config
from tastemaker.data.synthetic import Shop
from tastemaker.deployment.runtime import Runtime
from tastemaker.events import EventType
from tastemaker.recommend.pipeline import RecommendPipeline, Request
from tastemaker.retrieval import Candidates, RetrievalContext
from tastemaker.serving.api import build_app
from tastemaker.testing.servers import free_port
from tests.conftest import event, make_config


def serving(config: Config, **kw: object) -> Config:
    return msgspec.structs.replace(config, serving=msgspec.structs.replace(config.serving, **kw))


@pytest.fixture
def warm(runtime: Runtime, shop: Shop) -> Runtime:
    runtime.ingestor.ingest(next(iter(shop.events(chunk_users=100))))
    runtime.processor.drain()
    return runtime


@pytest.fixture
def client(warm: Runtime) -> Iterator[TestClient]:
    with TestClient(build_app(warm)) as c:
        yield c


def user_of(shop: Shop) -> str:
    return str(shop.user_ids[0])


def test_filters_hold_for_every_item(client: TestClient, shop: Shop, catalog: Catalog) -> None:
    cat = str(catalog.category_names[0])
    body = {"user_id": user_of(shop), "n": 20, "filters": {"categories": [cat], "price_max": 100}}
    r = client.post("/v1/recommend", json=body)
    assert r.status_code == 200
    items = r.json()["items"]
    assert items
    for it in items:
        row = catalog.index[it["item_id"]]
        assert catalog.category_names[catalog.category[row]] == cat
        assert catalog.price[row] <= 100
    bad = client.post("/v1/recommend", json={"user_id": "u", "filters": {"price_min": -1}})
    assert bad.status_code == 400
    assert "price_min" in bad.json()["detail"]


def test_explanations_name_sources_and_top_features(client: TestClient, shop: Shop) -> None:
    r = client.post("/v1/recommend", json={"user_id": user_of(shop), "n": 5, "explain": True})
    items = r.json()["items"]
    assert all(it["sources"] for it in items)
    assert all(1 <= len(it["because"]) <= 3 for it in items)
    assert all(c["contribution"] > 0 for it in items for c in it["because"])
    plain = client.post("/v1/recommend", json={"user_id": user_of(shop), "n": 5}).json()
    assert all("because" not in it for it in plain["items"])


def test_rank_orders_the_clients_candidates(
    client: TestClient, shop: Shop, catalog: Catalog
) -> None:
    ids = [str(i) for i in catalog.ids[:30]]
    r = client.post("/v1/rank", json={"user_id": user_of(shop), "item_ids": ids})
    assert r.status_code == 200
    got = [it["item_id"] for it in r.json()["items"]]
    assert sorted(got) == sorted(ids)
    scores = [it["score"] for it in r.json()["items"]]
    assert scores == sorted(scores, reverse=True)
    r = client.post("/v1/rank", json={"user_id": "u", "item_ids": [ids[0], "nope", "nada"]})
    assert r.status_code == 400
    assert r.json()["error"] == "unknown_items"
    assert "nope" in r.json()["detail"]


def test_similar_items(client: TestClient, catalog: Catalog) -> None:
    item = str(catalog.ids[0])
    r = client.get(f"/v1/items/{item}/similar?n=7")
    assert r.status_code == 200
    items = r.json()["items"]
    assert len(items) == 7
    assert item not in [it["item_id"] for it in items]
    assert "embedding" in {s for it in items for s in it["sources"]}
    assert client.get("/v1/items/nope/similar").status_code == 404
    assert client.get(f"/v1/items/{item}/similar?n=zero").status_code == 400


def test_an_impossible_deadline_falls_back_and_says_so(client: TestClient, shop: Shop) -> None:
    r = client.post(
        "/v1/recommend", json={"user_id": user_of(shop), "n": 5, "deadline_ms": 0.001}
    ).json()
    assert r["degraded"] is True
    assert any(f.startswith("retrieve:") for f in r["fallbacks"])
    assert len(r["items"]) == 5  # popular items still answer
    assert all("popular" in it["sources"] for it in r["items"])


def test_a_failing_retriever_is_skipped(warm: Runtime, shop: Shop) -> None:
    class Broken:
        name = "category"

        def retrieve(self, ctx: RetrievalContext, k: int) -> Candidates:
            raise RuntimeError(f"boom for {ctx.user_id}, k={k}")

    p = warm.pipeline
    p.retrievers = [(Broken(), 10) if r.name == "category" else (r, k) for r, k in p.retrievers]
    rec = p.recommend(user_of(shop), 5)
    assert rec.degraded
    assert rec.fallbacks == ["retrieve:category"]
    assert len(rec.items) == 5


def test_the_cache_answers_until_the_user_does_something(warm: Runtime, shop: Shop) -> None:
    user = user_of(shop)
    p = warm.pipeline
    first = p.recommend(user, 5)
    again = p.recommend(user, 5)
    assert (first.cached, again.cached) == (False, True)
    assert again.items == first.items
    assert again.request_id != first.request_id
    # A new event accepted by this process invalidates at once...
    item = next(i for i in warm.catalog.ids if i not in {x.item_id for x in first.items})
    warm.ingestor.ingest([event("fresh-1", user, str(item), EventType.CLICK, 1.7605e9)])
    assert not p.recommend(user, 5).cached
    # ...and another process, whose own cache still holds it, sees the stored features move.
    other = RecommendPipeline(warm.config, warm.store, warm.catalog)
    other.recommend(user, 5)
    assert other.recommend(user, 5).cached
    warm.processor.drain()
    assert not other.recommend(user, 5).cached
    # Requests with an exclusion list or a fixed time are never cached.
    assert not p.recommend(user, 5, exclude=["x"]).cached


def test_recently_shown_items_are_not_recommended_again(warm: Runtime, shop: Shop) -> None:
    user = user_of(shop)
    shown = [i.item_id for i in warm.pipeline.recommend(user, 5).items]
    warm.ingestor.ingest(
        [
            event(f"imp-{k}", user, item, EventType.IMPRESSION, 1.7605e9)
            for k, item in enumerate(shown)
        ]
    )
    warm.processor.drain()
    again = {i.item_id for i in warm.pipeline.recommend(user, 5).items}
    assert not again & set(shown)


def test_rate_limits_per_api_key(tmp_path: Path, catalog: Catalog) -> None:
    config = serving(
        make_config(tmp_path, catalog),
        rate_limit_rps=0.001,
        rate_limit_burst=3,
        api_key_rps={"big": 1_000_000.0},
    )
    rt = Runtime.from_config(config)
    try:
        with TestClient(build_app(rt)) as c:
            codes = [
                c.post(
                    "/v1/recommend", json={"user_id": "u"}, headers={"X-API-Key": "small"}
                ).status_code
                for _ in range(5)
            ]
            assert codes == [200, 200, 200, 429, 429]
            r = c.post("/v1/recommend", json={"user_id": "u"}, headers={"X-API-Key": "small"})
            assert r.json()["error"] == "rate_limited"
            assert int(r.headers["Retry-After"]) >= 1
            big = [
                c.post(
                    "/v1/recommend", json={"user_id": "u"}, headers={"X-API-Key": "big"}
                ).status_code
                for _ in range(10)
            ]
            assert big == [200] * 10
    finally:
        rt.close()


def test_pipeline_request_options_reach_the_answer(warm: Runtime, shop: Shop) -> None:
    rec = warm.pipeline.recommend(user_of(shop), request=Request(n=3, explain=True))
    assert len(rec.items) == 3
    assert all(i.because for i in rec.items)


def test_popular_items_follow_the_requests_region(runtime: Runtime, catalog: Catalog) -> None:
    eu_items = [str(i) for i in catalog.ids[:5]]
    us_items = [str(i) for i in catalog.ids[5:10]]
    events = [
        event(
            f"{region}{k}-{j}",
            f"u{k}",
            item,
            EventType.PURCHASE,
            1.76e9 + k,
            context={"region": region},
        )
        for region, items in (("eu", eu_items), ("us", us_items))
        for j, item in enumerate(items)
        for k in range(3 if region == "eu" else 5)
    ]
    runtime.ingestor.ingest(events)
    runtime.processor.drain()
    p = runtime.pipeline
    eu = {i.item_id for i in p.recommend("new", request=Request(n=5, region="eu")).items}
    us = {i.item_id for i in p.recommend("new", request=Request(n=5, region="us")).items}
    anywhere = {i.item_id for i in p.recommend("new", request=Request(n=5)).items}
    assert eu == set(eu_items)
    assert us == set(us_items)
    assert anywhere == set(us_items)  # more US purchases overall
    # A restarted stream processor keeps the regions' lists.
    fresh = runtime.processor.__class__(runtime.config, runtime.log, runtime.store, runtime.catalog)
    assert set(fresh.shards[0].items.regions) == {"eu", "us"}


def test_request_context_reaches_the_features(warm: Runtime, shop: Shop) -> None:
    from tastemaker.ranking import FEATURE_NAMES

    p = warm.pipeline
    ctx = p.context(user_of(shop), device="mobile")
    cands = p.candidates(ctx)
    x = p.features(ctx, cands, now=6 * 3600.0)  # 06:00 UTC
    assert (x[:, FEATURE_NAMES.index("device_mobile")] == 1.0).all()
    assert x[0, FEATURE_NAMES.index("hour_sin")] == pytest.approx(1.0)
    assert x[0, FEATURE_NAMES.index("hour_cos")] == pytest.approx(0.0, abs=1e-6)


def test_a_shared_rate_limit_holds_across_processes(redis_url: str) -> None:
    from tastemaker.serving.ratelimit.redis import RedisRateLimiter

    prefix = f"rl-{uuid.uuid4().hex[:8]}:"
    a = RedisRateLimiter(redis_url, 0.5, 3, {"vip": 1000.0}, prefix=prefix)
    b = RedisRateLimiter(redis_url, 0.5, 3, {"vip": 1000.0}, prefix=prefix)  # another worker
    try:
        waits = [lim.acquire("k") for lim in (a, b, a, b, a)]
        assert waits[:3] == [0.0, 0.0, 0.0]  # the burst, shared
        assert 1.0 <= waits[3] <= 2.1  # then one token every 2 s
        assert a.acquire("vip") == 0.0  # every key has its own bucket
    finally:
        a.close()
        b.close()
    # An unreachable limiter lets requests through rather than failing them.
    down = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", 0.5, 1)
    assert down.acquire("k") == 0.0
    down.close()
