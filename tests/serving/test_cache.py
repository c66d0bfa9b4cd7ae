"""The recommend cache: thread safety, per-user invalidation, and the catalog's deletions."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from tastemaker.catalog import Catalog, ItemChange
from tastemaker.data.synthetic import Shop
from tastemaker.deployment.runtime import Runtime
from tastemaker.ranking.rerank import Filters
from tastemaker.recommend.cache import CacheKey, RecommendCache
from tastemaker.recommend.pipeline import Recommendation, RecommendedItem, Request


def key(cache: RecommendCache, user: str, n: int = 10) -> CacheKey:
    k = cache.key(user, Request(n=n))
    assert k is not None
    return k


def answer(catalog: Catalog, first: int, n: int = 5) -> Recommendation:
    items = [RecommendedItem(str(i), 1.0, ["popular"]) for i in catalog.ids[first : first + n]]
    return Recommendation(items)


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Threads switch every microsecond, so an unlocked dict access meets a concurrent change
    within the test's few thousand operations rather than once in thousands of requests."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("fast_switching")
def test_reads_writes_and_invalidations_race_safely(catalog: Catalog) -> None:
    cache = RecommendCache(ttl_s=300.0, size=50_000)
    users = [f"u{i}" for i in range(1000)]
    keys = [key(cache, u, n) for u in users for n in range(1, 31)]
    rec = answer(catalog, 0)
    for k in keys:
        cache.put(k, (1.0, 1), rec, catalog)
    errors: list[BaseException] = []
    readers_done = threading.Event()
    start = threading.Barrier(5)

    def run(work: Callable[[], None]) -> None:
        start.wait()
        try:
            work()
        except BaseException as exc:
            errors.append(exc)
            readers_done.set()

    def read(part: int) -> Callable[[], None]:
        def work() -> None:
            # A version that no longer matches makes `get` drop the entry: a read that
            # writes, racing the invalidations' walks over the cache.
            for k in keys[part::3]:
                cache.get(k, (2.0, 1), catalog, None)

        return work

    def write() -> None:
        for k in keys[::7]:
            if readers_done.is_set():
                return
            cache.put(k, (1.0, 1), rec, catalog)

    def invalidate() -> None:
        i = 0
        while not readers_done.is_set():
            cache.invalidate({users[i % len(users)], "nobody"})
            i += 7

    workers = [read(0), read(1), read(2), write, invalidate]
    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads[:3]:
        t.join()
    readers_done.set()
    for t in threads[3:]:
        t.join()
    assert errors == [], errors[:3]
    # The index by user and the eviction order still describe the same entries.
    held = [k for k in keys if cache.get(k, (1.0, 1), catalog, None)]
    assert len(held) == len(cache)


def test_invalidation_forgets_only_the_users_answers(catalog: Catalog) -> None:
    cache = RecommendCache(ttl_s=300.0, size=100)
    a5, a10, b5 = key(cache, "a", 5), key(cache, "a", 10), key(cache, "b", 5)
    for k in (a5, a10, b5):
        cache.put(k, (1.0, 1), answer(catalog, 0), catalog)
    cache.invalidate({"a", "nobody"})
    assert cache.get(a5, (1.0, 1), catalog, None) is None
    assert cache.get(a10, (1.0, 1), catalog, None) is None
    assert cache.get(b5, (1.0, 1), catalog, None) is not None
    assert len(cache) == 1


def test_a_full_cache_drops_its_oldest_tenth(catalog: Catalog) -> None:
    cache = RecommendCache(ttl_s=300.0, size=20)
    keys = [key(cache, f"u{i}") for i in range(21)]
    for k in keys:
        cache.put(k, (1.0, 1), answer(catalog, 0), catalog)
    assert len(cache) == 19  # 20, then the oldest 2 dropped for the 21st
    assert cache.get(keys[0], (1.0, 1), catalog, None) is None
    assert cache.get(keys[2], (1.0, 1), catalog, None) is not None


def test_a_cached_answer_never_shows_an_item_deleted_since(runtime: Runtime, shop: Shop) -> None:
    runtime.ingestor.ingest(next(iter(shop.events(chunk_users=100))))
    runtime.processor.drain()
    user = str(shop.user_ids[0])
    p = runtime.pipeline
    first = p.recommend(user, 5)
    assert p.recommend(user, 5).cached
    gone = first.items[0].item_id
    runtime.upsert_items([ItemChange(gone, deleted=True)])
    after = p.recommend(user, 5)
    assert not after.cached
    assert gone not in {i.item_id for i in after.items}
    # An unrelated change keeps the (still true) answer cached.
    other = next(str(i) for i in runtime.catalog.ids if i not in {x.item_id for x in after.items})
    runtime.upsert_items([ItemChange(other, deleted=True)])
    assert p.recommend(user, 5).cached


def test_a_cached_answer_follows_the_filters_after_a_price_change(
    runtime: Runtime, shop: Shop, catalog: Catalog
) -> None:
    runtime.ingestor.ingest(next(iter(shop.events(chunk_users=100))))
    runtime.processor.drain()
    user = str(shop.user_ids[0])
    p = runtime.pipeline
    cap = float(catalog.price.max())
    req = Request(n=5, filters=Filters(price_max=cap))
    first = p.recommend(user, request=req)
    assert p.recommend(user, request=req).cached
    item = first.items[0].item_id
    row = runtime.catalog.index[item]
    c = runtime.catalog
    change = ItemChange(
        item,
        title=str(c.titles[row]),
        category=str(c.category_names[c.category[row]]),
        brand=str(c.brand_names[c.brand[row]]),
        price=cap + 1.0,
        embedding=[float(v) for v in c.embedding[row]],
    )
    runtime.upsert_items([change])
    after = p.recommend(user, request=req)
    assert not after.cached
    assert item not in {i.item_id for i in after.items}
