"""The OnlineStore conformance suite, run against every backend on real storage.

TTL checks need time to pass: the embedded store takes a clock the test moves; a Redis
server keeps its own time, so there the clock really sleeps. TTLs are short (1 s and 3 s) and
every check keeps at least 0.3 s of margin either side of an expiry.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tastemaker.store import (
    Cell,
    EmbeddedStore,
    FamilySpec,
    Mutation,
    OnlineStore,
    StoreError,
    open_store,
)
from tastemaker.store.redis import RedisStore

FAMILIES = [
    FamilySpec("profile", ttl_s=3.0),
    FamilySpec("session", ttl_s=1.0),
    FamilySpec("stats", None),
]
BACKENDS = ["embedded", "redis", "redis-cluster"]
_namespaces = itertools.count()


class Clock:
    """Time as the store sees it. `advance` moves a fake clock, or sleeps for real servers."""

    def __init__(self, real: bool) -> None:
        self.real = real
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if self.real:
            time.sleep(seconds)
        self.now += seconds


Factory = Callable[[], OnlineStore]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock(backend: str) -> Clock:
    return Clock(real=backend != "embedded")


@pytest.fixture
def make_store(
    backend: str, clock: Clock, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Factory]:
    """Opens stores of the backend; every store of one test sees the same data, and no other
    test's (a fresh key prefix per test on the shared servers)."""
    opened: list[OnlineStore] = []
    prefix = f"t{next(_namespaces)}:"

    def factory() -> OnlineStore:
        store: OnlineStore
        if backend == "embedded":
            store = EmbeddedStore(
                tmp_path / "store", FAMILIES, map_size=64 << 20, seen_ttl_s=1.0, clock=clock
            )
        else:
            url = request.getfixturevalue(
                "redis_url" if backend == "redis" else "redis_cluster_url"
            )
            store = RedisStore.from_url(url, FAMILIES, prefix=prefix, seen_ttl_s=1.0)
        opened.append(store)
        return store

    yield factory
    for s in opened:
        s.close()


@pytest.fixture
def store(make_store: Factory) -> OnlineStore:
    return make_store()


def put(store: OnlineStore, row: str, family: str, ts: float, **cols: object) -> None:
    store.write([Mutation(row, family, {c: Cell(ts, v) for c, v in cols.items()})])


def test_multi_get_many_rows_and_families_in_one_call(store: OnlineStore) -> None:
    store.write(
        [
            Mutation("u:1", "profile", {"a": Cell(1.0, 1), "b": Cell(1.0, [1.5, 2.5])}),
            Mutation("u:1", "session", {"s": Cell(2.0, "x")}),
            Mutation("u:2", "profile", {"a": Cell(3.0, {"k": 0.5})}),
        ]
    )
    got = store.get(["u:1", "u:2", "u:3"], ["profile", "session"])
    assert got == {
        "u:1": {
            "profile": {"a": Cell(1.0, 1), "b": Cell(1.0, [1.5, 2.5])},
            "session": {"s": Cell(2.0, "x")},
        },
        "u:2": {"profile": {"a": Cell(3.0, {"k": 0.5})}},
    }
    assert store.get(["u:1"], ["stats"]) == {}
    assert store.get([], ["profile"]) == {}


def test_values_round_trip_exactly(store: OnlineStore) -> None:
    values: dict[str, object] = {
        "f64": 0.1,
        "f32": 0.5,
        "neg": -2.75,
        "big": 1e300,
        "int": 7,
        "bigint": 2**62,
        "str": "grüße ✓",
        "empty": "",
        "none": None,
        "true": True,
        "list": [1, 2.5, "x", None],
        "nested": {"t": 1.7e9, "v": {"a": 0.25, "b": []}},
        "empty_map": {},
        "empty_list": [],
        "long": list(range(300)),
    }
    put(store, "r", "profile", 5.0, **values)
    cells = store.get(["r"], ["profile"])["r"]["profile"]
    assert {c: cell.value for c, cell in cells.items()} == values
    assert all(type(cells[c].value) is type(v) for c, v in values.items())


def test_a_columnar_write_equals_the_same_cells_written_as_mutations(
    store: OnlineStore,
) -> None:
    n = 40  # enough rows for the column-wise encoder
    rows = [f"u:{i}" for i in range(n)]
    columns: dict[str, Any] = {
        "f32": np.linspace(0, 1, n, dtype=np.float32),
        "f64": np.linspace(0, 1, n) / 3,
        "i": np.arange(n, dtype=np.int64) * 1000 - 7,
        "u": np.arange(n, dtype=np.uint8),
        "s": [f"brand{i:03d}" for i in range(n)],
        "mixed": [None, True, 2, 2.5, "x", [1], {"k": 0.25}, -1] * (n // 8),
    }
    store.write_columns("profile", rows, columns, 5.0)
    columns["long"] = ["y" * 100] * n  # beyond the column-wise width: the per-value path
    store.write_columns("profile", rows, {"long": columns["long"]}, 5.0)
    put(store, "u:0", "profile", 9.0, i=-1)  # newer: kept by the next bulk write
    store.write_columns("profile", rows[:2], {"i": np.array([1, 2]), "z": [0, 0]}, 6.0)
    got = store.get(rows, ["profile"])
    for k, row in enumerate(rows):
        want = {c: Cell(5.0, _plain(columns[c][k])) for c in columns}
        if k < 2:
            want["i"] = Cell(9.0, -1) if k == 0 else Cell(6.0, 2)
            want["z"] = Cell(6.0, 0)
        assert got[row]["profile"] == want
        assert all(type(got[row]["profile"][c].value) is type(want[c].value) for c in want)


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it is stored as."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def test_a_columnar_write_checks_its_columns(store: OnlineStore) -> None:
    with pytest.raises(StoreError, match="3 values for 2 rows"):
        store.write_columns("profile", ["a", "b"], {"x": [1, 2, 3]}, 1.0)
    with pytest.raises(StoreError, match="unknown family"):
        store.write_columns("nope", ["a"], {"x": [1]}, 1.0)
    assert store.get(["a", "b"], ["profile"]) == {}


def test_values_kept_by_a_merge_round_trip_exactly(store: OnlineStore) -> None:
    """The cells a write does not replace come back as they were written, whatever their
    type (the embedded merge copies them as stored bytes, the Redis script splices them)."""
    values: dict[str, object] = {
        "f64": 0.1,
        "f32": 0.5,
        "int": 7,
        "str": "grüße ✓",
        "none": None,
        "list": [1, 2.5, "x", None],
        "nested": {"t": 1.7e9, "v": {"a": 0.25, "b": []}},
        "long": list(range(300)),
    }
    put(store, "r", "profile", 5.0, **values)
    put(store, "r", "profile", 6.0, extra="new", f64=0.2)  # a new column and a newer cell
    put(store, "r", "profile", 4.0, int=8, list=[])  # older: both ignored
    cells = store.get(["r"], ["profile"])["r"]["profile"]
    assert {c: cell.value for c, cell in cells.items()} == {**values, "extra": "new", "f64": 0.2}
    assert all(type(cells[c].value) is type(v) for c, v in values.items())
    assert {c: cell.ts for c, cell in cells.items()} == {
        **dict.fromkeys(values, 5.0),
        "extra": 6.0,
        "f64": 6.0,
    }


def test_columns_merge_and_older_writes_never_win(store: OnlineStore) -> None:
    put(store, "r", "profile", 10.0, a=1, b=1)
    put(store, "r", "profile", 5.0, a=2, c=3)  # older: a keeps 1, c is new so it is taken
    put(store, "r", "profile", 10.0, b=4)  # equal timestamp overwrites (replays are idempotent)
    put(store, "r", "profile", 10.5, d=0.125)
    cells = store.get(["r"], ["profile"])["r"]["profile"]
    assert cells == {
        "a": Cell(10.0, 1),
        "b": Cell(10.0, 4),
        "c": Cell(5.0, 3),
        "d": Cell(10.5, 0.125),
    }


def test_a_family_sent_whole_keeps_every_cell_newer_than_what_it_sends(
    store: OnlineStore,
) -> None:
    """A writer that read a family sends it back whole: changed cells at a new time, the
    others with the times it read (the stream does). The Redis merge script takes such a
    value as it is only when every cell is newer or equal; here it must merge cell by cell."""
    store.write([Mutation("r", "profile", {"a": Cell(10.0, 1), "b": Cell(20.0, 2)})])
    whole = {"a": Cell(15.0, 10), "b": Cell(10.0, 20)}  # a newer, b older than stored
    store.write([Mutation("r", "profile", whole)])
    assert store.get(["r"], ["profile"])["r"]["profile"] == {
        "a": Cell(15.0, 10),
        "b": Cell(20.0, 2),
    }
    store.write([Mutation("r", "profile", {"a": Cell(30.0, 3), "b": Cell(20.0, 4)})])
    assert store.get(["r"], ["profile"])["r"]["profile"] == {"a": Cell(30.0, 3), "b": Cell(20.0, 4)}
    many = {f"c{i}": Cell(40.0 + (i % 3), i) for i in range(300)}  # two-byte column ids
    store.write([Mutation("r", "profile", many)])
    stored = store.get(["r"], ["profile"])["r"]["profile"]
    assert list(stored)[:2] == ["a", "b"]
    older = {k: Cell(c.ts - 1.0 if k == "c7" else c.ts + 1.0, -1) for k, c in stored.items()}
    store.write([Mutation("r", "profile", older)])
    cells = store.get(["r"], ["profile"])["r"]["profile"]
    assert cells["c7"] == many["c7"]
    assert cells["c8"] == Cell(many["c8"].ts + 1.0, -1)
    assert cells["a"] == Cell(31.0, -1)
    newer = {k: Cell(c.ts + 1.0, -2) for k, c in cells.items()}
    store.write([Mutation("r", "profile", newer)])
    assert store.get(["r"], ["profile"])["r"]["profile"] == newer


def test_mutations_of_one_batch_merge_newest_first(store: OnlineStore) -> None:
    store.write(
        [
            Mutation("r", "profile", {"a": Cell(2.0, "new")}),
            Mutation("r", "profile", {"a": Cell(1.0, "old"), "b": Cell(1.0, "b")}),
        ]
    )
    assert store.get(["r"], ["profile"])["r"]["profile"] == {
        "a": Cell(2.0, "new"),
        "b": Cell(1.0, "b"),
    }


def test_a_mutation_marked_whole_by_its_only_writer_stores_what_a_merge_would(
    store: OnlineStore, clock: Clock
) -> None:
    """`Mutation.whole`: the stream sends back a user's family as it read it with its changes
    over it. A backend may write it without reading the stored family (the embedded store
    does), so what is stored must be what merging cell by cell gives, and the family's TTL
    restarts as with any write."""
    put(store, "r", "session", 1.0, a=1, b=[1, 2], c={"k": 0.5})
    read = store.get(["r"], ["session"])["r"]["session"]
    changed = {**read, "b": Cell(2.0, [3, 1, 2]), "d": Cell(2.0, "new")}
    store.write([Mutation("r", "session", changed, whole=True)])
    assert store.get(["r"], ["session"])["r"]["session"] == {
        "a": Cell(1.0, 1),
        "b": Cell(2.0, [3, 1, 2]),
        "c": Cell(1.0, {"k": 0.5}),
        "d": Cell(2.0, "new"),
    }
    clock.advance(0.7)
    again = {**store.get(["r"], ["session"])["r"]["session"], "a": Cell(3.0, 2)}
    store.write([Mutation("r", "session", again, whole=True), Mutation("new", "session", {})])
    clock.advance(0.7)  # 1.4 s after the first write, 0.7 s after the whole one
    assert store.get(["r"], ["session"])["r"]["session"] == again
    clock.advance(0.6)
    assert store.get(["r"], ["session"]) == {}


def test_a_whole_mutation_is_stored_as_sent_and_a_shared_key_is_merged(
    store: OnlineStore,
) -> None:
    """A whole family is written as sent, without a merge: its writer vouches that it holds
    every stored cell (here it breaks that promise, to show no merge ran). Two mutations of
    one key in a write are merged as always, whole or not."""
    put(store, "r", "profile", 5.0, a=1, b=2)
    store.write([Mutation("r", "profile", {"a": Cell(1.0, 0)}, whole=True)])
    assert store.get(["r"], ["profile"])["r"]["profile"] == {"a": Cell(1.0, 0)}
    store.write(
        [
            Mutation("r", "profile", {"a": Cell(3.0, 3)}, whole=True),
            Mutation("r", "profile", {"b": Cell(2.0, 2)}, whole=True),
        ]
    )
    assert store.get(["r"], ["profile"])["r"]["profile"] == {
        "a": Cell(3.0, 3),
        "b": Cell(2.0, 2),
    }


def test_ttl_expires_a_family_after_its_last_write(store: OnlineStore, clock: Clock) -> None:
    put(store, "r", "session", 1.0, a=1)
    put(store, "r", "profile", 1.0, a=1)
    clock.advance(0.5)
    assert "session" in store.get(["r"], ["session"])["r"]
    put(store, "r", "session", 2.0, b=2)  # a write refreshes the family's TTL
    clock.advance(0.7)  # 1.2 s after the first write, 0.7 s after the last
    assert store.get(["r"], ["session"])["r"]["session"] == {"a": Cell(1.0, 1), "b": Cell(2.0, 2)}
    clock.advance(0.6)
    assert store.get(["r"], ["session", "profile"]) == {"r": {"profile": {"a": Cell(1.0, 1)}}}
    clock.advance(1.5)
    assert store.get(["r"], ["profile"]) == {}


def test_a_write_without_cells_keeps_the_cells_and_restarts_the_ttl(
    store: OnlineStore, clock: Clock
) -> None:
    put(store, "r", "session", 1.0, a=1)
    clock.advance(0.7)
    store.write([Mutation("r", "session", {})])
    clock.advance(0.7)  # 1.4 s after the first write, 0.7 s after the empty one
    assert store.get(["r"], ["session"])["r"]["session"] == {"a": Cell(1.0, 1)}


def test_expired_values_are_not_merged_into_new_writes(store: OnlineStore, clock: Clock) -> None:
    put(store, "r", "session", 1.0, old=1)
    clock.advance(1.3)
    put(store, "r", "session", 0.5, new=2)
    assert store.get(["r"], ["session"])["r"]["session"] == {"new": Cell(0.5, 2)}


def test_families_without_ttl_never_expire(store: OnlineStore, clock: Clock) -> None:
    put(store, "i:1", "stats", 1.0, pop=0.5)
    clock.advance(1.2)
    assert store.get(["i:1"], ["stats"])["i:1"]["stats"]["pop"] == Cell(1.0, 0.5)


def test_delete_rows_erases_every_family_and_nothing_else(store: OnlineStore) -> None:
    for row in ("u:1", "u:10", "u:2"):
        put(store, row, "profile", 1.0, a=1)
        put(store, row, "session", 1.0, a=1)
    store.delete_rows(["u:1", "u:missing"])
    got = store.get(["u:1", "u:10", "u:2"], ["profile", "session"])
    assert set(got) == {"u:10", "u:2"}
    assert set(got["u:10"]) == {"profile", "session"}


def test_unknown_family_is_a_typed_error(store: OnlineStore) -> None:
    with pytest.raises(StoreError, match="unknown family 'nope'"):
        store.get(["r"], ["nope"])
    with pytest.raises(StoreError, match="unknown family"):
        put(store, "r", "nope", 1.0, a=1)


def test_a_batch_is_all_or_nothing(store: OnlineStore) -> None:
    with pytest.raises(StoreError):
        store.write(
            [
                Mutation("r", "profile", {"a": Cell(1.0, 1)}),
                Mutation("r", "nope", {"a": Cell(1.0, 1)}),
            ]
        )
    assert store.get(["r"], ["profile"]) == {}


def test_data_persists_across_reopen_and_is_shared(make_store: Factory) -> None:
    first = make_store()
    put(first, "r", "profile", 1.0, a="kept")
    other = make_store()  # another client (process) sees the write, new column included
    assert other.get(["r"], ["profile"])["r"]["profile"]["a"] == Cell(1.0, "kept")
    put(other, "r", "profile", 2.0, added_by_other=1)
    assert first.get(["r"], ["profile"])["r"]["profile"]["added_by_other"] == Cell(2.0, 1)
    first.close()
    again = make_store()
    assert again.get(["r"], ["profile"])["r"]["profile"]["a"] == Cell(1.0, "kept")


def test_read_your_writes_across_many_rows(store: OnlineStore) -> None:
    rows = [f"u:{i}" for i in range(200)]  # spread over every node of a cluster
    for i, row in enumerate(rows):
        put(store, row, "profile", float(i), n=i)
        assert store.get([row], ["profile"])[row]["profile"]["n"].value == i
    got = store.get(rows, ["profile"])
    assert [got[r]["profile"]["n"].value for r in rows] == list(range(200))


def test_idempotency_keys_are_recorded_with_the_write(store: OnlineStore) -> None:
    assert store.seen(["e1", "e2"]) == set()
    store.write([Mutation("u:1", "profile", {"a": Cell(1.0, 1)})], seen=["e1", "e2"])
    assert store.seen(["e1", "e2", "e3"]) == {"e1", "e2"}
    store.write([], seen=["e3"])
    assert store.seen(["e3", "e4"]) == {"e3"}
    assert store.seen([]) == set()
    # An id asked twice (an event delivered twice into one batch) is answered once.
    assert store.seen(["e3", "e4", "e3", "e4"]) == {"e3"}


def test_idempotency_keys_expire(store: OnlineStore, clock: Clock) -> None:
    store.write([], seen=["old"])
    clock.advance(0.5)
    store.write([], seen=["new"])
    clock.advance(0.7)
    assert store.seen(["old", "new"]) == {"new"}


def test_a_failed_batch_records_no_idempotency_keys(store: OnlineStore) -> None:
    with pytest.raises(StoreError):
        store.write([Mutation("r", "nope", {"a": Cell(1.0, 1)})], seen=["e1"])
    assert store.seen(["e1"]) == set()


def test_sweep_removes_only_expired(tmp_path: Path) -> None:
    clock = Clock(real=False)
    store = EmbeddedStore(tmp_path / "s", FAMILIES, map_size=64 << 20, clock=clock)
    put(store, "a", "session", 1.0, x=1)
    put(store, "b", "profile", 1.0, x=1)
    clock.advance(2.0)
    assert store.sweep() == 1
    assert set(store.get(["a", "b"], ["session", "profile"])) == {"b"}
    store.close()


def test_open_store_by_url(tmp_path: Path, redis_url: str) -> None:
    store = open_store(f"embedded://{tmp_path}/s?map_size_gb=1", FAMILIES)
    put(store, "r", "profile", 1.0, a=1)
    assert store.get(["r"], ["profile"])
    store.close()
    remote = open_store(redis_url + "?timeout_ms=500&prefix=url-test:", FAMILIES)
    assert isinstance(remote, RedisStore)
    remote.close()
    with pytest.raises(ValueError, match="unsupported online store URL"):
        open_store("memcached://localhost:11211", FAMILIES)
    large = open_store(f"embedded://{tmp_path}/large?readahead=0", FAMILIES)
    put(large, "r", "profile", 1.0, a=1)
    assert large.get(["r"], ["profile"])
    large.close()
    with pytest.raises(ValueError, match="readahead must be 0 or 1"):
        open_store(f"embedded://{tmp_path}/x?readahead=yes", FAMILIES)
