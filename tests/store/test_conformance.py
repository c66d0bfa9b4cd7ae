"""The OnlineStore conformance suite, parametrized over every backend.

Each backend gets a store whose clock the test controls, so TTLs are checked exactly."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

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

FAMILIES = [
    FamilySpec("profile", ttl_s=100.0),
    FamilySpec("session", ttl_s=10.0),
    FamilySpec("stats", None),
]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


Factory = Callable[[Clock], OnlineStore]


@pytest.fixture(params=["embedded"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    opened: list[OnlineStore] = []

    def factory(clock: Clock) -> OnlineStore:
        assert request.param == "embedded"  # one branch per backend as backends arrive
        store = EmbeddedStore(tmp_path / "store", FAMILIES, map_size=64 << 20, clock=clock)
        opened.append(store)
        return store

    yield factory
    for s in opened:
        s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(make_store: Factory, clock: Clock) -> OnlineStore:
    return make_store(clock)


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


def test_columns_merge_and_older_writes_never_win(store: OnlineStore) -> None:
    put(store, "r", "profile", 10.0, a=1, b=1)
    put(store, "r", "profile", 5.0, a=2, c=3)  # older: a keeps 1, c is new so it is taken
    put(store, "r", "profile", 10.0, b=4)  # equal timestamp overwrites (replays are idempotent)
    cells = store.get(["r"], ["profile"])["r"]["profile"]
    assert cells == {"a": Cell(10.0, 1), "b": Cell(10.0, 4), "c": Cell(5.0, 3)}


def test_ttl_expires_a_family_after_its_last_write(store: OnlineStore, clock: Clock) -> None:
    put(store, "r", "session", 1.0, a=1)
    put(store, "r", "profile", 1.0, a=1)
    clock.now += 9.0
    assert "session" in store.get(["r"], ["session"])["r"]
    put(store, "r", "session", 2.0, b=2)  # a write refreshes the family's TTL
    clock.now += 9.0
    assert store.get(["r"], ["session"])["r"]["session"] == {"a": Cell(1.0, 1), "b": Cell(2.0, 2)}
    clock.now += 1.0
    assert store.get(["r"], ["session", "profile"]) == {"r": {"profile": {"a": Cell(1.0, 1)}}}
    clock.now += 1000.0
    assert store.get(["r"], ["profile"]) == {}


def test_expired_values_are_not_merged_into_new_writes(store: OnlineStore, clock: Clock) -> None:
    put(store, "r", "session", 1.0, old=1)
    clock.now += 11.0
    put(store, "r", "session", 0.5, new=2)
    assert store.get(["r"], ["session"])["r"]["session"] == {"new": Cell(0.5, 2)}


def test_families_without_ttl_never_expire(store: OnlineStore, clock: Clock) -> None:
    put(store, "i:1", "stats", 1.0, pop=0.5)
    clock.now += 10**9
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


def test_data_persists_across_reopen(make_store: Factory, clock: Clock) -> None:
    first = make_store(clock)
    put(first, "r", "profile", 1.0, a="kept")
    first.close()
    again = make_store(clock)
    assert again.get(["r"], ["profile"])["r"]["profile"]["a"] == Cell(1.0, "kept")


def test_sweep_removes_only_expired(tmp_path: Path, clock: Clock) -> None:
    store = EmbeddedStore(tmp_path / "s", FAMILIES, map_size=64 << 20, clock=clock)
    put(store, "a", "session", 1.0, x=1)
    put(store, "b", "profile", 1.0, x=1)
    clock.now += 50
    assert store.sweep() == 1
    assert set(store.get(["a", "b"], ["session", "profile"])) == {"b"}
    store.close()


def test_open_store_by_url(tmp_path: Path) -> None:
    store = open_store(f"embedded://{tmp_path}/s?map_size_gb=1", FAMILIES)
    put(store, "r", "profile", 1.0, a=1)
    assert store.get(["r"], ["profile"])
    store.close()
    with pytest.raises(ValueError, match="unsupported online store URL"):
        open_store("redis://localhost:6379/0", FAMILIES)
