"""What only the Redis backend has: key layout, compactness, timeouts."""

from __future__ import annotations

import time

import pytest
import redis

from tastemaker.store import Cell, FamilySpec, Mutation, StoreError
from tastemaker.store.redis import RedisStore, StoreTimeoutError

FAMILIES = [FamilySpec("profile", ttl_s=60.0), FamilySpec("stats", None)]


def test_one_key_per_row_family_with_ttl_and_compact_values(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url, FAMILIES, prefix="layout:")
    store.write(
        [Mutation("u:42", "profile", {f"feature_{i}": Cell(5.0, float(i) / 4) for i in range(25)})]
    )
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = [str(k) for k in raw.keys("layout:*")]
    assert "layout:tm:schema" in keys
    data_keys = [k for k in keys if k != "layout:tm:schema"]
    assert len(data_keys) == 1
    assert data_keys[0].startswith("layout:{u:42}")
    assert 0 < raw.pttl(data_keys[0]) <= 60_000
    # Names replaced by 1-byte ids, one shared timestamp, float32-exact floats in 5 bytes:
    # version + array (2); header: array (1), ts (9), 25 ids (3 + 25), no own timestamps (1),
    # 25 sizes (3 + 25); values (3 + 25 * 5).
    assert raw.strlen(data_keys[0]) == 2 + 1 + 9 + 28 + 1 + 28 + 3 + 25 * 5
    store.write([Mutation("i:1", "stats", {"pop": Cell(1.0, 2)})])
    stats_key = next(k for k in raw.keys("layout:{i:1}*"))
    assert raw.pttl(stats_key) == -1  # no TTL on a family without one
    raw.close()
    store.close()


def test_a_slow_server_raises_a_typed_timeout(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url, FAMILIES, prefix="slow:", timeout_s=0.1)
    admin = redis.Redis.from_url(redis_url)
    admin.client_pause(600)
    started = time.monotonic()
    with pytest.raises(StoreTimeoutError):
        store.get(["u:1"], ["profile"])
    assert time.monotonic() - started < 0.5
    admin.client_unpause()
    admin.close()
    store.close()


def test_an_unreachable_server_is_a_store_error() -> None:
    with pytest.raises(StoreError):
        RedisStore.from_url("redis://127.0.0.1:1/0", FAMILIES, timeout_s=0.2)


def test_batch_writes_have_their_own_longer_timeout(redis_url: str) -> None:
    """The stream's microbatch writes may take longer than a request's read budget."""
    store = RedisStore.from_url(
        redis_url, FAMILIES, prefix="wt:", timeout_s=0.1, write_timeout_s=3.0
    )
    admin = redis.Redis.from_url(redis_url)
    admin.client_pause(400, all=False)  # writes wait 0.4 s on the server; reads go on
    started = time.monotonic()
    store.write([Mutation(f"u:{i}", "profile", {"a": Cell(1.0, i)}) for i in range(100)])
    assert time.monotonic() - started >= 0.3
    assert store.get(["u:99"], ["profile"])["u:99"]["profile"]["a"] == Cell(1.0, 99)
    admin.close()
    store.close()
