"""What only the Redis backend has: key layout, compactness, timeouts."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import msgspec
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
    # the fixed header (14: version, flags, cells, ts, cells with their own ts), 25 ids,
    # 25 one-byte sizes, the values' array header (3) and the values (25 * 5).
    assert raw.strlen(data_keys[0]) == 14 + 25 + 25 + 3 + 25 * 5
    store.write([Mutation("i:1", "stats", {"pop": Cell(1.0, 2)})])
    stats_key = next(k for k in raw.keys("layout:{i:1}*"))
    assert raw.pttl(stats_key) == -1  # no TTL on a family without one
    raw.close()
    store.close()


def test_wide_families_and_large_values_merge_on_the_server(redis_url: str) -> None:
    """Column ids above 255 (two-byte ids), more columns than the script unpacks at once,
    values above 255 and 65,535 bytes (two- and four-byte sizes), cells with their own ts."""
    store = RedisStore.from_url(redis_url, FAMILIES, prefix="wide:")
    cols = {f"c{i}": Cell(1.0, i) for i in range(5000)}
    cols["big"] = Cell(1.0, "x" * 70_000)
    cols["mid"] = Cell(1.0, list(range(200)))
    store.write([Mutation("r", "profile", cols)])
    update = {f"c{i}": Cell(2.0 if i % 2 else 0.5, -i) for i in range(0, 5000, 7)}
    update["new"] = Cell(1.5, 0.25)
    store.write([Mutation("r", "profile", update)])
    want = dict(cols)
    want.update({c: cell for c, cell in update.items() if c not in cols or cell.ts >= 1.0})
    assert store.get(["r"], ["profile"])["r"]["profile"] == want
    store.close()


def test_version_3_values_are_read_and_merged(redis_url: str) -> None:
    """Values written by tastemaker before version 4 of the encoding stay readable, and the
    next write merges into them."""
    store = RedisStore.from_url(redis_url, FAMILIES, prefix="v3:")
    store.write([Mutation("seed", "profile", {"a": Cell(1.0, 0), "b": Cell(1.0, 0)})])
    raw = redis.Redis.from_url(redis_url)
    ids = [int(raw.hget("v3:tm:schema", f"c:{c}") or 0) for c in ("a", "b")]
    values = [msgspec.msgpack.encode(v) for v in ("old", [1, 2])]
    header = msgspec.msgpack.encode([3.0, ids, [ids[1], 2.0], [len(v) for v in values]])
    key = store._key("r", "profile")
    raw.set(key, b"\x03\x92" + header + b"\x92" + b"".join(values))
    assert store.get(["r"], ["profile"])["r"]["profile"] == {
        "a": Cell(3.0, "old"),
        "b": Cell(2.0, [1, 2]),
    }
    store.write([Mutation("r", "profile", {"b": Cell(2.5, "new"), "c": Cell(1.0, 7)})])
    assert (raw.get(key) or b"")[:1] == b"\x04"
    assert store.get(["r"], ["profile"])["r"]["profile"] == {
        "a": Cell(3.0, "old"),
        "b": Cell(2.5, "new"),
        "c": Cell(1.0, 7),
    }
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


def test_reads_survive_the_server_dropping_their_connection(redis_url: str) -> None:
    """Each thread reads on its own connection; one the server closed (an idle timeout, a
    restart, CLIENT KILL) is replaced on the next read instead of failing it."""
    store = RedisStore.from_url(redis_url, FAMILIES, prefix="drop:")
    store.write([Mutation("u:1", "profile", {"a": Cell(1.0, 5)})])
    assert store.get(["u:1"], ["profile"])["u:1"]["profile"]["a"].value == 5
    admin = redis.Redis.from_url(redis_url)
    assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
    assert store.get(["u:1"], ["profile"])["u:1"]["profile"]["a"].value == 5
    admin.close()
    store.close()


def test_threads_read_on_their_own_connections(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url, FAMILIES, prefix="threads:")
    store.write([Mutation(f"u:{i}", "profile", {"a": Cell(1.0, i)}) for i in range(50)])

    def reads(offset: int) -> list[int]:
        return [
            store.get([f"u:{i}"], ["profile"])[f"u:{i}"]["profile"]["a"].value
            for i in range(offset, 50)
        ]

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(reads, range(4)))
    assert got == [list(range(offset, 50)) for offset in range(4)]
    store.close()


def test_a_write_after_the_server_lost_its_scripts_or_our_connection_lands_whole(
    redis_url: str,
) -> None:
    """Batch writes are one MULTI/EXEC of script calls: a script the server no longer holds
    (SCRIPT FLUSH, a restart) is loaded first, and a write connection the server closed is
    replaced. Either way every cell and idempotency key of the batch lands, merged
    newer-wins with what was stored (rows and event ids in UTF-8)."""
    store = RedisStore.from_url(redis_url, FAMILIES, prefix="reload:")
    store.write([Mutation("u:1", "profile", {"a": Cell(1.0, 1), "b": Cell(9.0, "kept")})])
    admin = redis.Redis.from_url(redis_url)
    admin.script_flush()
    batch = [
        Mutation("u:1", "profile", {"a": Cell(2.0, 2), "b": Cell(3.0, "older")}),
        Mutation("ü:2", "profile", {"a": Cell(2.0, [1.5, "x"])}),
    ]
    store.write(batch, seen=["e1", "é2"])
    got = store.get(["u:1", "ü:2"], ["profile"])
    assert got["u:1"]["profile"] == {"a": Cell(2.0, 2), "b": Cell(9.0, "kept")}
    assert got["ü:2"]["profile"] == {"a": Cell(2.0, [1.5, "x"])}
    assert store.seen(["e1", "é2", "e3"]) == {"e1", "é2"}
    assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
    store.write([Mutation("u:1", "profile", {"a": Cell(4.0, 4)})], seen=["e4"])
    assert store.get(["u:1"], ["profile"])["u:1"]["profile"]["a"] == Cell(4.0, 4)
    assert store.seen(["e4"]) == {"e4"}
    admin.close()
    store.close()


def _user_rows(users: int, ts: float, shift: int = 0) -> list[Mutation]:
    return [
        Mutation(
            f"u:{i}",
            family,
            {f"{family}_{j}": Cell(ts, (i * 31 + j + shift) % 300) for j in range(25)},
        )
        for i in range(users)
        for family in ("profile", "stats")
    ]


def _multi_calls(admin: redis.Redis) -> int:
    return int(admin.info("commandstats").get("cmdstat_multi", {}).get("calls", 0))


def test_a_large_plain_write_is_sent_in_chunks_with_the_same_bytes_and_rules(
    redis_url: str,
) -> None:
    """A write of many keys and no idempotency keys (a bulk load) is sent chunk by chunk as
    it is encoded, without MULTI/EXEC: the stored bytes equal one MULTI/EXEC's, and newer
    still wins cell by cell."""
    admin = redis.Redis.from_url(redis_url)
    chunked = RedisStore.from_url(redis_url, FAMILIES, prefix="chunked:")
    whole = RedisStore.from_url(redis_url, FAMILIES, prefix="whole:")
    first = _user_rows(700, 5.0)  # 1,400 keys: three chunks
    multis = _multi_calls(admin)
    chunked.write(first)
    assert _multi_calls(admin) == multis
    whole.prepare_write(first).finish()  # always one MULTI/EXEC
    assert _multi_calls(admin) == multis + 1
    # Older cells for the first half, newer for the second: only the newer ones land.
    update = _user_rows(350, 3.0, shift=1) + _user_rows(700, 9.0, shift=2)[700:]
    chunked.write(update)
    whole.prepare_write(update).finish()
    keys = [chunked._key(m.row, m.family) for m in first]
    assert admin.mget(keys) == admin.mget([whole._key(m.row, m.family) for m in first])
    got = chunked.get([f"u:{i}" for i in range(700)], ["profile", "stats"])
    for m in _user_rows(350, 5.0) + _user_rows(700, 9.0, shift=2)[700:]:
        assert got[m.row][m.family] == m.cells
    chunked.close()
    whole.close()
    admin.close()


def test_a_chunked_write_reloads_lost_scripts_and_reports_a_failed_chunk(redis_url: str) -> None:
    """After SCRIPT FLUSH the chunks are sent again with the script loaded. A chunk the
    server refuses (here a key of another type) raises StoreError naming the server's error;
    the other chunks landed (each key's merge is atomic, the batch is not), and the
    connection stays usable."""
    admin = redis.Redis.from_url(redis_url)
    store = RedisStore.from_url(redis_url, FAMILIES, prefix="chunkfail:")
    rows = _user_rows(700, 5.0)
    admin.script_flush()
    store.write(rows)
    assert store.get(["u:699"], ["stats"])["u:699"]["stats"] == rows[-1].cells
    admin.delete(store._key("u:350", "profile"))
    admin.rpush(store._key("u:350", "profile"), "not a family value")
    with pytest.raises(StoreError, match=r"WRONGTYPE|wrong kind"):
        store.write(_user_rows(700, 6.0, shift=1))
    assert store.get(["u:0", "u:699"], ["profile"]) == {
        "u:0": {"profile": _user_rows(1, 6.0, shift=1)[0].cells},
        "u:699": {"profile": _user_rows(700, 6.0, shift=1)[-2].cells},
    }
    store.write([Mutation("u:1", "profile", {"x": Cell(7.0, 1)})])
    assert store.get(["u:1"], ["profile"])["u:1"]["profile"]["x"] == Cell(7.0, 1)
    store.close()
    admin.close()
