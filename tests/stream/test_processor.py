from __future__ import annotations

import gc
import shutil
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from tastemaker.catalog import Catalog
from tastemaker.config import LogConfig, StoreConfig
from tastemaker.data.synthetic import Shop
from tastemaker.deployment.runtime import Runtime
from tastemaker.events import Event, EventType
from tastemaker.features.layout import COVIS, GLOBAL_ROW, OFFSETS, POPULAR, PROFILE, SESSION
from tastemaker.log import total_lag
from tastemaker.metrics import METRICS
from tastemaker.store import Cell, PreparedWrite, PreparedWrites, StoreError
from tastemaker.stream import collector as collector_module
from tastemaker.stream.collector import PausedCollector
from tastemaker.stream.covisitation import HeldMaps, Pairs, pack_pairs, unpack_pairs
from tests.conftest import T0, event, make_config


def all_rows(rt: Runtime, catalog: Catalog, users: list[str]) -> dict[str, Any]:
    rows = [f"u:{u}" for u in users] + [f"i:{i}" for i in catalog.ids] + [GLOBAL_ROW]
    return rt.store.get(rows, [PROFILE, SESSION, "stats", COVIS, POPULAR])


def shop_events(shop: Shop, limit: int) -> list[Event]:
    return next(iter(shop.events(chunk_users=100)))[:limit]


def test_ingesting_the_same_events_twice_leaves_identical_features(
    runtime: Runtime, shop: Shop, catalog: Catalog
) -> None:
    events = shop_events(shop, 1500)
    users = sorted({e.user_id for e in events})
    runtime.ingestor.ingest(events)
    assert runtime.processor.drain() == len(events)
    once = all_rows(runtime, catalog, users)
    runtime.ingestor.ingest(events[:700])  # a client retry of a whole batch
    runtime.ingestor.ingest(events)
    assert runtime.processor.drain() == 0
    assert all_rows(runtime, catalog, users) == once


def test_duplicates_inside_one_batch_count_once(runtime: Runtime, catalog: Catalog) -> None:
    item = str(catalog.ids[0])
    e = event("dup", "u1", item, EventType.CLICK)
    runtime.ingestor.ingest([e, e, e])
    result = runtime.processor.process_once()
    assert result is not None
    assert (result.events, result.duplicates) == (1, 2)
    profile = runtime.pipeline.user_features("u1")[PROFILE]
    assert profile["counts"].value == {"click": 1}


def test_one_event_id_for_two_users_is_two_events(runtime: Runtime, catalog: Catalog) -> None:
    """An event id is an idempotency key among its user's events: the same id sent later for
    another user is applied, not dropped as a copy; for the same user it is a copy."""
    item = str(catalog.ids[0])
    runtime.ingestor.ingest([event("e1", "ann", item, EventType.CLICK)])
    runtime.processor.drain()
    runtime.ingestor.ingest([event("e1", "bob", item, EventType.CLICK)])
    runtime.ingestor.ingest([event("e1", "ann", item, EventType.CLICK, T0 + 5)])
    assert runtime.processor.drain() == 1
    for user in ("ann", "bob"):
        profile = runtime.pipeline.user_features(user)[PROFILE]
        assert profile["counts"].value == {"click": 1}, user


def test_features_reflect_the_users_events(runtime: Runtime, catalog: Catalog) -> None:
    a, b = str(catalog.ids[0]), str(catalog.ids[1])
    brand_b = str(catalog.brand_names[catalog.brand[1]])
    runtime.ingestor.ingest(
        [
            event("1", "u1", a, EventType.VIEW, T0),
            event("2", "u1", b, EventType.CLICK, T0 + 10),
            event("3", "u1", b, EventType.PURCHASE, T0 + 20, value=12.0),
        ]
    )
    runtime.processor.drain()
    data = runtime.pipeline.user_features("u1")
    p, s = data[PROFILE], data[SESSION]
    assert p["counts"].value == {"view": 1, "click": 1, "purchase": 1}
    assert p["last_items"].value == [b, a]
    assert p["last_clicked_brand"].value == brand_b
    assert p["purchased"].value == [b]
    assert sum(p["price_hist"].value) == 3
    assert len(p["click_centroid"].value) == catalog.dim
    assert p["counts"].ts == T0 + 20  # cell time is event time
    assert s["session_items"].value == [b, a]
    assert s["_session"].value["id"] == f"u1/{int(T0 * 1000)}"
    # a and b were engaged with in one session: they are co-visited both ways
    covis = runtime.store.get([f"i:{a}", f"i:{b}"], [COVIS])
    assert covis[f"i:{a}"][COVIS]["neighbours"].value == {b: 2.0 + 8.0}
    assert covis[f"i:{b}"][COVIS]["neighbours"].value == {a: 2.0 + 8.0}


def test_items_not_in_the_catalog_count_beside_catalog_items(
    runtime: Runtime, catalog: Catalog
) -> None:
    """An item the catalog does not hold (yet) is still an item of the user's lists; it has
    no category, brand, price or embedding, and is linked to no other item."""
    a, b = str(catalog.ids[0]), str(catalog.ids[1])
    runtime.ingestor.ingest(
        [
            event("1", "u1", "ghost-1", EventType.VIEW, T0),
            event("2", "u1", a, EventType.CLICK, T0 + 10),
            event("3", "u2", "ghost-2", EventType.VIEW, T0 + 11),
            event("4", "u1", "ghost-2", EventType.PURCHASE, T0 + 20),
            event("5", "u1", b, EventType.VIEW, T0 + 30),
            event("6", "u1", "ghost-1", EventType.VIEW, T0 + 40),
        ]
    )
    runtime.processor.drain()
    p = runtime.pipeline.user_features("u1")[PROFILE]
    assert p["last_items"].value == ["ghost-1", b, "ghost-2", a]
    assert p["purchased"].value == ["ghost-2"]
    assert sum(p["price_hist"].value) == 2  # the catalog items' prices only
    assert runtime.pipeline.user_features("u2")[PROFILE]["last_items"].value == ["ghost-2"]
    covis = runtime.store.get([f"i:{a}", f"i:{b}"], [COVIS])
    assert covis[f"i:{a}"][COVIS]["neighbours"].value == {b: 1.0}  # the later fact's weight


def test_a_new_session_resets_session_features_only(runtime: Runtime, catalog: Catalog) -> None:
    a, b = str(catalog.ids[0]), str(catalog.ids[1])
    runtime.ingestor.ingest([event("1", "u1", a, ts=T0)])
    runtime.processor.drain()
    runtime.ingestor.ingest([event("2", "u1", b, ts=T0 + 3 * 3600)])
    runtime.processor.drain()
    data = runtime.pipeline.user_features("u1")
    assert data[SESSION]["session_items"].value == [b]
    assert data[SESSION]["session_counts"].value == {"view": 1}
    assert data[PROFILE]["last_items"].value == [b, a]
    # items of different sessions are not co-visited
    assert runtime.store.get([f"i:{a}"], [COVIS]) == {}


def test_unknown_items_update_counts_but_not_item_features(runtime: Runtime) -> None:
    runtime.ingestor.ingest([event("1", "u1", "not-in-catalog", EventType.CLICK)])
    runtime.processor.drain()
    p = runtime.pipeline.user_features("u1")[PROFILE]
    assert p["counts"].value == {"click": 1}
    assert "category_intensity" not in p
    assert "click_centroid" not in p


def test_restart_resumes_from_the_committed_offset(runtime: Runtime, shop: Shop) -> None:
    events = shop_events(shop, 400)
    runtime.ingestor.ingest(events[:200])
    runtime.processor.drain()
    assert runtime.log.committed(runtime.config.stream.group) == {0: 200}
    runtime.processor.close()  # the first process stops: it leaves the group
    restarted = Runtime(runtime.config, runtime.catalog)
    try:
        assert restarted.processor.position == 200
        assert (
            restarted.processor.popularity.log_score == runtime.processor.popularity.log_score
        ).all()
        restarted.ingestor.ingest(events[200:])
        assert restarted.processor.drain() == 200
    finally:
        restarted.close()


def test_a_standby_member_takes_over_with_the_state_written_meanwhile(
    tmp_path: Path, shop: Shop, catalog: Catalog
) -> None:
    """Two processors in one group on a one-partition log: the second stands by (loading the
    partition's state when it starts), then takes over when the first leaves, from the
    state the first wrote meanwhile, not the one it loaded."""
    events = shop_events(shop, 400)
    reference = Runtime(make_config(tmp_path / "ref", catalog), catalog)
    for part in (events[:200], events[200:]):  # the same batches as the pair's
        reference.ingestor.ingest(part)
        assert reference.processor.drain() == 200
    config = make_config(tmp_path / "pair", catalog)
    first, standby = Runtime(config, catalog), Runtime(config, catalog)
    try:
        assert first.processor.consumer.assignment() == {0}
        assert standby.processor.process_once() is None  # the partition is the first's
        first.ingestor.ingest(events[:200])
        assert first.processor.drain() == 200
        assert standby.processor.process_once() is None
        first.processor.close()  # leaves the group
        first.ingestor.ingest(events[200:])
        assert standby.processor.drain() == 200
        assert standby.processor.position == reference.processor.position
        assert (
            standby.processor.popularity.log_score == reference.processor.popularity.log_score
        ).all()
        users = sorted({e.user_id for e in events})
        assert all_rows(standby, catalog, users) == all_rows(reference, catalog, users)
    finally:
        for rt in (reference, first, standby):
            rt.close()


def test_restarting_after_every_batch_changes_nothing(tmp_path: Path, shop: Shop) -> None:
    """Item-level rows (popularity, co-visitation, top lists) survive restarts even though
    events of different users interleave out of time order in the log."""
    catalog = shop.catalog()
    events = [e for chunk in shop.events(chunk_users=100) for e in chunk]  # 3 time-sorted runs
    users = sorted({e.user_id for e in events})
    snapshots = []
    for name, restart in (("steady", False), ("restarts", True)):
        config = make_config(tmp_path / name, catalog)
        config = msgspec.structs.replace(
            config, stream=msgspec.structs.replace(config.stream, batch_size=500)
        )
        rt = Runtime(config, catalog)
        rt.ingestor.ingest(events)
        while rt.processor.process_once() is not None:
            if restart:
                rt.close()
                rt = Runtime(config, catalog)
        snapshots.append(all_rows(rt, catalog, users))
        rt.close()
    assert snapshots[0] == snapshots[1]


def test_the_stored_position_prevents_replays_beyond_the_dedup_window(
    tmp_path: Path, catalog: Catalog
) -> None:
    config = make_config(tmp_path, catalog)
    # Idempotency keys that expire at once: only the stored position can prevent a replay.
    config = msgspec.structs.replace(
        config, stream=msgspec.structs.replace(config.stream, dedup_window_s=0.001)
    )
    item = str(catalog.ids[0])
    rt = Runtime(config, catalog)
    rt.ingestor.ingest([event(str(i), "u1", item, EventType.CLICK, T0 + i) for i in range(3)])
    rt.log.commit = lambda *_: None  # type: ignore[method-assign]  # dies before the log commit
    assert rt.processor.process_once() is not None
    rt.close()
    time.sleep(0.01)
    again = Runtime(config, catalog)
    try:
        assert again.log.committed(config.stream.group) == {0: 0}  # the log never heard of it
        assert again.processor.position == 3
        assert again.processor.drain() == 0
        assert again.pipeline.user_features("u1")[PROFILE]["counts"].value == {"click": 3}
    finally:
        again.close()


def test_a_log_that_lost_applied_records_has_its_new_records_applied(
    tmp_path: Path, catalog: Catalog
) -> None:
    """A log that lost records the store had applied (its tail, to a power loss with fsync
    "never"), or was recreated, hands out offsets the stored position already covers: its new
    events are applied, not skipped as applied, and the ones applied before count once."""
    config = make_config(tmp_path, catalog)
    item = str(catalog.ids[0])
    rt = Runtime(config, catalog)
    rt.ingestor.ingest([event(str(i), "u1", item, EventType.CLICK, T0 + i) for i in range(5)])
    assert rt.processor.drain() == 5
    rt.close()
    shutil.rmtree(tmp_path / "log")  # the store is kept
    again = Runtime(config, catalog)
    try:
        again.ingestor.ingest(
            [
                event("4", "u1", item, EventType.CLICK, T0 + 4),  # applied before: a retry
                event("new-1", "u1", item, EventType.CLICK, T0 + 10),
                event("new-2", "u1", item, EventType.CLICK, T0 + 11),
            ]
        )
        assert again.processor.drain() == 2
        assert again.processor.position == 3
        assert again.pipeline.user_features("u1")[PROFILE]["counts"].value == {"click": 7}
    finally:
        again.close()


def test_trending_favours_recent_events_and_session_neighbours_use_the_session(
    runtime: Runtime, catalog: Catalog
) -> None:
    old, new = str(catalog.ids[0]), str(catalog.ids[1])
    # `old` got many views a day ago, `new` a few in the last minutes.
    events = [event(f"o{i}", f"u{i}", old, ts=T0 - 86400 + i) for i in range(30)]
    events += [event(f"n{i}", f"v{i}", new, ts=T0 + i) for i in range(5)]
    runtime.ingestor.ingest(events)
    runtime.processor.drain()
    p = runtime.processor
    assert catalog.ids[p.popularity.top(1)][0] == old  # 3-day half-life: volume wins
    assert catalog.ids[p.trending.top(1)][0] == new  # 1-hour half-life: recency wins
    lists = runtime.store.get([GLOBAL_ROW], [POPULAR])[GLOBAL_ROW][POPULAR]
    assert lists["trending"].value[0][0] == new


class _FlakyWrites:
    """Every `every`-th store write fails (0: none), whether the store writes in one call or
    prepares a write to send and finish later (`PreparedWrites`); counts the prepared writes
    sent before being finished (overlapped with the caller's work)."""

    def __init__(self, store: Any, every: int) -> None:
        self.calls = 0
        self.overlapped = 0
        self.every = every
        if isinstance(store, PreparedWrites):
            prepare = store.prepare_write
            store.prepare_write = lambda *a, **kw: _Flaky(self, prepare(*a, **kw))  # type: ignore[method-assign]
        else:
            write = store.write
            store.write = lambda *a, **kw: self.send(partial(write, *a, **kw))

    def send(self, send: Callable[[], None]) -> None:
        self.calls += 1
        if self.every and self.calls % self.every == 0:
            raise StoreError("injected: the store is unreachable")
        send()


class _Flaky:
    def __init__(self, flaky: _FlakyWrites, write: PreparedWrite) -> None:
        self.flaky, self.write, self.started = flaky, write, False

    def start(self) -> None:
        self.started = True
        self.write.start()

    def finish(self) -> None:
        self.flaky.overlapped += self.started
        self.flaky.send(self.write.finish)


@pytest.mark.parametrize(
    ("log_backend", "store_backend"),
    [("embedded", "embedded"), ("redis", "embedded"), ("embedded", "redis"), ("redis", "redis")],
)
def test_a_failed_store_write_is_retried_with_nothing_lost_or_doubled(
    tmp_path: Path,
    shop: Shop,
    log_backend: str,
    store_backend: str,
    request: pytest.FixtureRequest,
) -> None:
    """A batch whose store write fails is read again from the log (the consumer seeks back),
    and the partition's in-memory item shares are reloaded, not applied twice. The steady
    run applies one batch at a time (`process_once`, each write waited for); the failing one
    drains, which on a Redis store overlaps each batch's write with the next batch's work:
    a failed write is then found after the next batch was computed on top of it, and both
    are read again."""
    catalog = shop.catalog()
    events = [e for chunk in shop.events(chunk_users=100) for e in chunk]
    users = sorted({e.user_id for e in events})
    snapshots = []
    for name, failing in (("steady", False), ("failing", True)):
        config = make_config(tmp_path / name, catalog)
        tag = f"{name}{uuid.uuid4().hex[:6]}"
        if log_backend == "redis":
            url = request.getfixturevalue("redis_url")
            config = msgspec.structs.replace(
                config, log=LogConfig(url=f"{url}?partitions=3&prefix={tag}")
            )
        if store_backend == "redis":
            url = request.getfixturevalue("redis_url")
            config = msgspec.structs.replace(config, store=StoreConfig(url=f"{url}?prefix={tag}s:"))
        config = msgspec.structs.replace(
            config, stream=msgspec.structs.replace(config.stream, batch_size=500)
        )
        rt = Runtime(config, catalog)
        rt.ingestor.ingest(events)
        flaky = _FlakyWrites(rt.store, every=3 if failing else 0)
        failures = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if failing:
                    if rt.processor.drain(timeout_s=5) == 0 and total_lag(rt.log, "features") == 0:
                        break
                elif rt.processor.process_once() is None and total_lag(rt.log, "features") == 0:
                    break
            except StoreError:
                failures += 1
        assert total_lag(rt.log, "features") == 0, "the stream never caught up"
        assert (failures > 0) == failing
        # The drain's writes overlapped the next batch on Redis; the steady run's never did.
        assert (flaky.overlapped > 0) == (failing and store_backend == "redis")
        snapshots.append(all_rows(rt, catalog, users))
        rt.close()
    assert snapshots[0] == snapshots[1]


def test_the_garbage_collector_is_paused_for_a_batch_and_restored_after(
    runtime: Runtime, catalog: Catalog
) -> None:
    item = str(catalog.ids[0])
    enabled_during: list[bool] = []
    write = runtime.store.write

    def spy(*args: Any, **kw: Any) -> None:
        enabled_during.append(gc.isenabled())
        if len(enabled_during) == 2:
            raise StoreError("injected")
        write(*args, **kw)

    runtime.store.write = spy  # type: ignore[method-assign]
    assert gc.isenabled()
    runtime.ingestor.ingest([event("g1", "u1", item, EventType.CLICK)])
    assert runtime.processor.process_once() is not None
    assert gc.isenabled()
    runtime.ingestor.ingest([event("g2", "u1", item, EventType.CLICK)])
    with pytest.raises(StoreError):
        runtime.processor.process_once()
    assert gc.isenabled()  # restored after a failed batch too
    gc.disable()
    try:  # a caller that had paused it keeps it paused
        assert runtime.processor.process_once() is not None
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert enabled_during == [False, False, False]


@pytest.mark.parametrize("store_backend", ["embedded", "redis"])
def test_the_collector_stays_paused_between_batches_only_while_a_write_is_in_flight(
    tmp_path: Path,
    shop: Shop,
    store_backend: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`drain` on a Redis store leaves each batch's write in flight during the next batch:
    the collector is not resumed in between (it would walk that write's cells), only when
    the log runs dry. The embedded store writes in place: resumed after every batch. Either
    way it is enabled again when `drain` returns, and after a batch that failed."""
    catalog = shop.catalog()
    events = shop_events(shop, 1000)
    config = make_config(tmp_path, catalog)
    if store_backend == "redis":
        url = request.getfixturevalue("redis_url")
        store = StoreConfig(url=f"{url}?prefix=gc{uuid.uuid4().hex[:6]}:")
        config = msgspec.structs.replace(config, store=store)
    config = msgspec.structs.replace(
        config, stream=msgspec.structs.replace(config.stream, batch_size=200)
    )
    rt = Runtime(config, catalog)
    rt.ingestor.ingest(events)
    found: list[bool] = []  # whether the collector ran when each batch began
    pause = PausedCollector.pause

    def spy(self: PausedCollector) -> None:
        found.append(gc.isenabled())
        pause(self)

    monkeypatch.setattr(PausedCollector, "pause", spy)
    assert gc.isenabled()
    assert rt.processor.drain() == len(events)
    assert gc.isenabled()
    batches = len(events) // 200
    assert len(found) >= batches + 1  # and the idle call that found the log dry
    if store_backend == "redis":
        assert found[0]
        assert not any(found[1:batches])
    else:
        assert all(found)
    # Paused no longer than `MAX_PAUSE_S`, even with a write in flight.
    monkeypatch.setattr(collector_module, "MAX_PAUSE_S", 0.0)
    rt.ingestor.ingest(shop_events(shop, 1400)[1000:])
    found.clear()
    assert rt.processor.drain() == 400
    assert all(found)
    # A batch that fails resumes it too.
    monkeypatch.setattr(collector_module, "MAX_PAUSE_S", 60.0)
    rt.ingestor.ingest(shop_events(shop, 1800)[1400:])

    def failing(*_args: Any, **_kw: Any) -> None:
        raise StoreError("injected")

    monkeypatch.setattr(rt.store, "write", failing)
    if isinstance(rt.store, PreparedWrites):
        monkeypatch.setattr(rt.store, "prepare_write", failing)
    with pytest.raises(StoreError):
        rt.processor.drain()
    assert gc.isenabled()
    rt.close()


def test_run_resumes_the_collector_whatever_ends_it(
    tmp_path: Path, shop: Shop, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run` stopped by an exception it does not catch (a KeyboardInterrupt, say) while a
    Redis write is in flight leaves the collector as it found it."""

    class Interrupted(BaseException):
        pass

    catalog = shop.catalog()
    store = StoreConfig(url=f"{redis_url}?prefix=gcrun{uuid.uuid4().hex[:6]}:")
    config = make_config(tmp_path, catalog, store=store)
    config = msgspec.structs.replace(
        config, stream=msgspec.structs.replace(config.stream, batch_size=200)
    )
    rt = Runtime(config, catalog)
    rt.ingestor.ingest(shop_events(shop, 1000))
    consumer = rt.processor.consumer
    poll = consumer.poll
    polls = 0
    in_flight: list[bool] = []

    def interrupted_poll(limit: int) -> list[Any]:
        nonlocal polls
        polls += 1
        if polls == 3:
            in_flight.append(rt.processor.in_flight)
            raise Interrupted
        return poll(limit)

    monkeypatch.setattr(consumer, "poll", interrupted_poll)
    assert gc.isenabled()
    with pytest.raises(Interrupted):
        rt.processor.run()
    assert in_flight == [True]  # the collector was held paused for it
    assert gc.isenabled()
    monkeypatch.undo()
    rt.close()


def test_a_paused_collector_restores_what_it_found() -> None:
    collector = PausedCollector()
    collector.pause()
    collector.pause()  # one pause, however many batches
    assert not gc.isenabled()
    collector.release(held=True)
    assert not gc.isenabled()
    collector.release(held=False)
    assert gc.isenabled()
    gc.disable()
    try:  # a caller that had paused it keeps it paused
        collector.pause()
        collector.release(held=False)
        assert not gc.isenabled()
    finally:
        gc.enable()


def _close(a: Any, b: Any) -> bool:
    """Equal, floats to 1e-9 relative or 1.01e-6 absolute (sums in another order, the
    centroid's rounding to 6 decimals)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= max(1e-9 * abs(b), 1.01e-6)
    return bool(a == b)


def test_user_features_do_not_depend_on_how_the_events_are_cut_into_batches(
    tmp_path: Path, shop: Shop
) -> None:
    """The features are computed over whole microbatches; the same events in batches of
    5,000 and of 37 give the same user features (floats summed in another order agree to
    1e-9)."""
    catalog = shop.catalog()
    events = shop_events(shop, 3000)
    users = sorted({e.user_id for e in events})
    snapshots = []
    for size in (5000, 37):
        config = make_config(tmp_path / str(size), catalog)
        config = msgspec.structs.replace(
            config, stream=msgspec.structs.replace(config.stream, batch_size=size)
        )
        rt = Runtime(config, catalog)
        rt.ingestor.ingest(events)
        rt.processor.drain()
        rows = rt.store.get([f"u:{u}" for u in users], [PROFILE, SESSION])
        snapshots.append(
            {
                (row, fam, col): cell.value
                for row, data in rows.items()
                for fam, cells in data.items()
                for col, cell in cells.items()
            }
        )
        rt.close()
    whole, pieces = snapshots
    assert whole.keys() == pieces.keys()
    different = [k for k in whole if not _close(whole[k], pieces[k])]
    assert not different, [(k, whole[k], pieces[k]) for k in different[:3]]


def test_repeats_read_while_the_first_write_is_in_flight_count_once(
    tmp_path: Path, shop: Shop, redis_url: str
) -> None:
    """On a Redis store the processor reads the next batch while the previous one's write is
    in flight: events repeated in that next batch (a client's retry) are recognised through
    the write in flight, not only through the store."""
    catalog = shop.catalog()
    events = shop_events(shop, 1200)
    users = sorted({e.user_id for e in events})
    snapshots = []
    for name, chunks in (
        ("once", [events]),
        ("twice", [events[i : i + 200] for i in range(0, 1200, 200)]),
    ):
        config = make_config(
            tmp_path / name,
            catalog,
            store=StoreConfig(url=f"{redis_url}?prefix={name}{uuid.uuid4().hex[:6]}:"),
        )
        config = msgspec.structs.replace(
            config, stream=msgspec.structs.replace(config.stream, batch_size=200)
        )
        rt = Runtime(config, catalog)
        for chunk in chunks:
            rt.ingestor.ingest(chunk)
            if name == "twice":
                rt.ingestor.ingest(chunk)  # each batch's repeat is the next batch
        assert rt.processor.drain() == len(events)
        snapshots.append(all_rows(rt, catalog, users))
        rt.close()
    assert snapshots[0] == snapshots[1]


def test_held_neighbour_maps_drop_the_least_recently_written_and_the_expired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    held = HeldMaps(limit=2, ttl_s=60.0)
    a, b, c = Cell(1.0, {"x": 1.0}), Cell(2.0, {"y": 1.0}), Cell(3.0, {})
    held.hold({"i:a": a, "i:b": b})
    held.hold({"i:a": a})  # written again: now the most recent
    held.hold({"i:c": c})  # over the limit: i:b, the least recently written, goes
    assert held.fresh(["i:a", "i:b", "i:c", "i:d"]) == {"i:a": a, "i:c": c}
    now[0] += 61.0  # the store may have expired them: read again
    assert held.fresh(["i:a", "i:c"]) == {}
    nothing = HeldMaps(limit=0, ttl_s=60.0)
    nothing.hold({"i:a": a})
    assert len(nothing) == 0


def test_held_neighbour_maps_give_the_stored_maps(tmp_path: Path, shop: Shop) -> None:
    """The same events through a stream that keeps neighbour maps between batches and one
    that reads them from the store every batch leave the same rows."""
    catalog = shop.catalog()
    events = [e for chunk in shop.events(chunk_users=100) for e in chunk]
    users = sorted({e.user_id for e in events})
    snapshots = []
    for name, limit in (("held", 10_000), ("small", 7), ("read", 0)):
        config = make_config(tmp_path / name, catalog)
        stream = msgspec.structs.replace(config.stream, batch_size=700, covis_held_maps=limit)
        rt = Runtime(msgspec.structs.replace(config, stream=stream), catalog)
        rt.ingestor.ingest(events)
        rt.processor.drain()
        snapshots.append(all_rows(rt, catalog, users))
        rt.close()
    assert snapshots[0] == snapshots[1] == snapshots[2]


@pytest.mark.parametrize("store_backend", ["embedded", "redis"])
def test_co_visitation_pairs_wait_in_the_store_and_survive_a_restart(
    tmp_path: Path, shop: Shop, store_backend: str, request: pytest.FixtureRequest
) -> None:
    """A batch's co-visitation pairs wait in the store (a slot each, written with the
    batch's state) until `covis_fold_batches` batches have some or the log runs dry. A
    processor stopped with pairs waiting leaves them to the next one, which merges them (and
    drops resent events as ever): every row ends as in a stream that was never stopped.
    (The neighbour maps do not end as in a stream that merges every batch: a map is cut to
    `covis_max_neighbours` at each merge, so links at the margin differ; the same items
    have maps.)"""
    catalog = shop.catalog()
    events = [e for chunk in shop.events(chunk_users=100) for e in chunk]
    users = sorted({e.user_id for e in events})
    first = events[:1500]  # three batches
    # Then the first 300 again (at-least-once senders resend), then the rest.
    rest = events[:300] + events[1500:]
    tag = uuid.uuid4().hex[:6]

    def runtime(name: str, fold: int) -> Runtime:
        config = make_config(tmp_path / name, catalog)
        if store_backend == "redis":
            url = request.getfixturevalue("redis_url")
            config = msgspec.structs.replace(
                config, store=StoreConfig(url=f"{url}?prefix={name}{tag}:")
            )
        stream = msgspec.structs.replace(config.stream, batch_size=500, covis_fold_batches=fold)
        return Runtime(msgspec.structs.replace(config, stream=stream), catalog)

    def maps(rt: Runtime) -> dict[str, Any]:
        found = rt.store.get([f"i:{i}" for i in catalog.ids], [COVIS])
        return {row: data[COVIS]["neighbours"].value for row, data in found.items()}

    def waiting(rt: Runtime) -> Any:
        return rt.store.get(["o:features"], [OFFSETS])["o:features"][OFFSETS]["covis_pending"]

    expected = {}
    for name, fold in (("every", 1), ("uninterrupted", 4)):
        reference = runtime(name, fold)
        reference.ingestor.ingest(first)
        reference.ingestor.ingest(rest)
        reference.processor.drain()
        expected[fold] = (maps(reference), all_rows(reference, catalog, users))
        reference.close()
    assert len(expected[4][0]) > 100
    assert set(expected[4][0]) == set(expected[1][0])

    rt = runtime("waiting", 4)
    rt.ingestor.ingest(first)
    for _ in range(3):
        assert rt.processor.process_once() is not None
    assert maps(rt) == {}  # three batches of pairs wait
    assert waiting(rt).value == 3
    gauge = ("tastemaker_stream_covis_waiting_batches", {"partition": "0"})
    assert METRICS.registry.get_sample_value(*gauge) == 3
    rt.ingestor.ingest(rest)
    rt.close()

    rt = runtime("waiting", 4)  # the same store and log: a restart
    assert len(rt.processor.shards[0].items.pending) == 3
    result = rt.processor.process_once()  # the fourth: the resent 300, 200 new; all merged
    assert result is not None
    assert (result.events, result.duplicates) == (200, 300)
    assert rt.processor.shards[0].items.pending == []
    assert METRICS.registry.get_sample_value(*gauge) == 0
    assert maps(rt)
    rt.processor.drain()  # more batches wait, then the dry log merges them
    assert waiting(rt).value == 0
    assert (maps(rt), all_rows(rt, catalog, users)) == expected[4]
    rt.close()


def test_waiting_pairs_are_stored_by_item_id_and_read_back_on_the_current_catalog() -> None:
    ids = np.array(["a", "b", "c", "d", "e"], dtype=object)
    pairs = Pairs(np.array([0, 1, 2]), np.array([2, 3, 3]), np.array([2.0, 8.0, 1.0]))
    packed = msgspec.msgpack.decode(msgspec.msgpack.encode(pack_pairs(pairs, ids)))
    assert packed[0] == ["a", "b", "c", "d"]  # only the items of the pairs
    # The same catalog: the same pairs.
    back = unpack_pairs(packed, {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4})
    assert [x.tolist() for x in back] == [x.tolist() for x in pairs]
    # Another catalog file: rows follow the ids, the lower row first again; pairs of an item
    # it lacks ("d") are dropped.
    back = unpack_pairs(packed, {"c": 0, "a": 1, "b": 2})
    assert back.src.tolist() == [0]
    assert back.dst.tolist() == [1]
    assert back.weights.tolist() == [2.0]


def _fail_the_next_read_of(store: Any, family: str) -> list[StoreError]:
    """The next `store.get` of `family` fails; the failures still to come."""
    get = store.get
    failures = [StoreError("injected: the store did not answer")]

    def flaky(rows: Any, families: Any) -> Any:
        if family in families and failures:
            raise failures.pop()
        return get(rows, families)

    store.get = flaky
    return failures


def _first_batch(rt: Runtime) -> None:
    while rt.processor.process_once() is None:
        pass


def test_a_partition_whose_state_fails_to_load_is_loaded_whole_at_the_next_batch(
    tmp_path: Path, shop: Shop, catalog: Catalog
) -> None:
    """The store fails while a partition's item statistics load (after its position was
    read): the next batch loads the partition again instead of working on a half-loaded
    state (no popularity, position 0), and the stored rows end as in a run without the
    fault."""
    events = shop_events(shop, 600)
    users = sorted({e.user_id for e in events})
    snapshots = []
    for name in ("reference", "fault"):
        log = LogConfig(url=f"embedded://{tmp_path / name}/log?partitions=2")
        config = make_config(tmp_path / name, catalog, log=log)
        first = Runtime(config, catalog)
        first.ingestor.ingest(events[:300])
        first.processor.drain()
        first.close()
        rt = Runtime(config, catalog)  # a restart: partitions load at their first batch
        rt.ingestor.ingest(events[300:])
        if name == "fault":
            failures = _fail_the_next_read_of(rt.store, "stats")
            with pytest.raises(StoreError):
                _first_batch(rt)
            assert not failures
        rt.processor.drain()
        snapshots.append(all_rows(rt, catalog, users))
        rt.close()
    assert snapshots[0] == snapshots[1]
