from __future__ import annotations

from tastemaker.data.synthetic import Shop
from tastemaker.deployment.runtime import Runtime
from tastemaker.events import EventType
from tastemaker.store import StoreError
from tests.conftest import T0, event


def loaded(runtime: Runtime, shop: Shop) -> Runtime:
    for events in shop.events(chunk_users=100):
        runtime.ingestor.ingest(events)
    runtime.processor.drain()
    return runtime


def test_unknown_user_before_any_event_gets_catalog_items(runtime: Runtime) -> None:
    rec = runtime.pipeline.recommend("nobody", 3)
    assert len(rec.items) == 3
    assert rec.items[0].sources == ["catalog"]


def test_cold_start_gets_the_most_popular_items(runtime: Runtime, shop: Shop) -> None:
    loaded(runtime, shop)
    rec = runtime.pipeline.recommend("nobody", 5)
    cfg = runtime.config.serving
    p = runtime.processor
    allowed = set(runtime.catalog.ids[p.popularity.top(cfg.popular_candidates)]) | set(
        runtime.catalog.ids[p.trending.top(cfg.trending_candidates)]
    )
    assert len(rec.items) == 5
    assert {i.item_id for i in rec.items} <= allowed
    assert all(set(i.sources) <= {"popular", "trending"} for i in rec.items)
    assert runtime.catalog.ids[p.popularity.top(1)][0] in {i.item_id for i in rec.items}


def test_known_users_get_personal_items_that_say_where_they_came_from(
    runtime: Runtime, shop: Shop
) -> None:
    loaded(runtime, shop)
    user = str(shop.user_ids[0])
    rec = runtime.pipeline.recommend(user, 10)
    assert len(rec.items) == 10
    assert not rec.degraded
    scores = [i.score for i in rec.items]
    assert scores == sorted(scores, reverse=True)
    assert len({i.item_id for i in rec.items}) == 10
    allowed = {"popular", "trending", "covisitation", "session", "category", "ann"}
    assert all(i.sources and set(i.sources) <= allowed for i in rec.items)
    assert any("covisitation" in i.sources or "category" in i.sources for i in rec.items)
    assert rec.items != runtime.pipeline.recommend("nobody", 10).items


def test_bought_items_are_never_recommended(runtime: Runtime, shop: Shop) -> None:
    loaded(runtime, shop)
    user = str(shop.user_ids[1])
    first = runtime.pipeline.recommend(user, 5).items
    bought = [i.item_id for i in first[:3]]
    runtime.ingestor.ingest(
        [
            event(f"buy-{i}", user, item, EventType.PURCHASE, T0 + 86400 * 30)
            for i, item in enumerate(bought)
        ]
    )
    runtime.processor.drain()
    after = {i.item_id for i in runtime.pipeline.recommend(user, 50).items}
    assert after.isdisjoint(bought)


def test_store_failure_degrades_to_popular(runtime: Runtime, shop: Shop) -> None:
    loaded(runtime, shop)
    runtime.pipeline.recommend("warm-the-cache", 3)

    def broken(*_: object) -> None:
        raise StoreError("store down")

    runtime.pipeline.user_features = broken  # type: ignore[assignment,method-assign]
    rec = runtime.pipeline.recommend(str(shop.user_ids[0]), 3)
    assert rec.degraded
    assert len(rec.items) == 3
    assert all(i.sources == ["popular"] for i in rec.items)
