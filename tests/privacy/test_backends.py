"""Erasure through each backend's own method: the log's `erase_users` (every log backend),
the store's `forget`, and the embedded log's retention."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from tastemaker.events import EventType
from tastemaker.features.layout import default_families
from tastemaker.log import EmbeddedEventLog, EventLog, LogRecord, open_log
from tastemaker.privacy import tombstone
from tastemaker.store import Cell, Mutation, OnlineStore, open_store
from tests.conftest import T0, event

BACKENDS = ["embedded", "embedded-3", "redis", "kafka"]


def _url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    name = uuid.uuid4().hex[:10]
    if backend == "embedded":
        return f"embedded://{tmp_path}/log"
    if backend == "embedded-3":
        return f"embedded://{tmp_path}/log?partitions=3"
    if backend == "redis":
        return f"{request.getfixturevalue('redis_url')}?partitions=3&prefix=t{name}"
    return f"kafka://{request.getfixturevalue('kafka_servers')}/t{name}?partitions=3"


@pytest.fixture(params=BACKENDS)
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    backend = open_log(_url(request.param, request, tmp_path))
    yield backend
    backend.close()


def _all(log: EventLog) -> list[LogRecord]:
    return [r for p in range(log.partitions) for r in log.read(p, 0, 10**6)]


def test_erase_users_deletes_every_record_of_the_users_and_nothing_else(log: EventLog) -> None:
    users = [f"u{i}" for i in range(6)]
    # Interleaved in one append, so the erased user's records sit inside the chunks.
    log.append([event(f"{u}-{k}", u, f"i{k}") for k in range(5) for u in users])
    log.append([tombstone("u2"), event("u2-late", "u2", "i9")])
    before = {r.event.event_id: r.offset for r in _all(log)}
    erased = log.erase_users(["u2", "u4", "nobody"])
    after = _all(log)
    if isinstance(log, EmbeddedEventLog) or type(log).__name__ == "RedisStreamsLog":
        assert sorted(erased) == sorted(
            [f"u{u}-{k}" for u in (2, 4) for k in range(5)] + ["u2-late"]
        )
        assert {r.event.user_id for r in after if r.event.type is not EventType.ERASE} == {
            "u0",
            "u1",
            "u3",
            "u5",
        }
    else:  # Kafka cannot delete single records (docs/privacy.md)
        assert erased == []
        assert len(after) == len(before)
    # The tombstone stays (the stream must apply it); the rest keep their offsets.
    assert [r.event.type for r in after].count(EventType.ERASE) == 1
    assert all(before[r.event.event_id] == r.offset for r in after)
    for p in range(log.partitions):  # reads from any position still see offsets in order
        records = log.read(p, 0, 10**6)
        for r in records:
            rest = log.read(p, r.offset, 10**6)
            assert [x.offset for x in rest] == [x.offset for x in records if x.offset > r.offset]


def test_a_consumer_after_an_erasure_reads_the_rest_in_order(log: EventLog) -> None:
    log.append([event(f"{u}-{k}", u, "i") for k in range(30) for u in ("a", "b")])
    log.erase_users(["a"])
    consumer = log.consumer("g", "m1")
    got: list[LogRecord] = []
    deadline = time.monotonic() + 30
    while len(got) < 30 and time.monotonic() < deadline:
        consumer.assignment()
        got.extend(consumer.poll(7))
    consumer.close()
    b = [r.event.event_id for r in got if r.event.user_id == "b"]
    assert b == [f"b-{k}" for k in range(30)]


def test_embedded_erasure_rewrites_chunks_into_gapless_runs(tmp_path: Path) -> None:
    log = EmbeddedEventLog(tmp_path)
    try:
        log.append([event(f"e{k}", "x" if k % 3 == 0 else "y", "i") for k in range(3000)])
        assert len(log.erase_users(["x"])) == 1000
        records = log.read(0, 0, 10**6)
        assert len(records) == 2000
        assert [r.offset for r in records] == [k + 1 for k in range(3000) if k % 3]
        assert log.read(0, 1500, 3)[0].offset == 1502  # a read starting inside a run
        log.commit("stream", {0: records[-1].offset})
        assert log.lag("stream") == {0: 0}
    finally:
        log.close()


def test_retention_deletes_only_chunks_every_group_committed_past(tmp_path: Path) -> None:
    log = EmbeddedEventLog(tmp_path)
    try:
        for day in range(4):  # one chunk per append, ten records each
            log.append([event(f"d{day}-{k}", "u", "i", ts=T0 + day * 86400) for k in range(10)])
        now = T0 + 3 * 86400 + 60
        # No group committed: nothing goes, however old.
        assert log.trim(max_age_s=3600, max_records=None, groups=["stream"], now=now) == 0
        log.commit("stream", {0: 40})
        # The archiver is required and has not read: still nothing.
        assert (
            log.trim(max_age_s=3600, max_records=None, groups=["stream", "archiver"], now=now) == 0
        )
        log.commit("archiver", {0: 20})
        # Old and read by both: the first two days (the third is past the archiver).
        assert (
            log.trim(max_age_s=3600, max_records=None, groups=["stream", "archiver"], now=now) == 20
        )
        assert log.read(0, 0, 100)[0].offset == 21
        log.commit("archiver", {0: 40})
        # By size: the newest ten records are kept whatever their age.
        assert log.trim(max_age_s=None, max_records=10, groups=["stream"], now=now) == 10
        assert [r.offset for r in log.read(0, 0, 100)] == list(range(31, 41))
        assert log.end_offsets() == {0: 40}
        assert log.lag("stream") == {0: 0}
    finally:
        log.close()


@pytest.fixture(params=["embedded", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    families = default_families(profile_ttl_s=3600, session_ttl_s=3600, covis_ttl_s=3600)
    if request.param == "embedded":
        url = f"embedded://{tmp_path}/store"
    else:
        url = f"{request.getfixturevalue('redis_url')}?prefix=s{uuid.uuid4().hex[:8]}:"
    backend = open_store(url, families)
    yield backend
    backend.close()


def test_forget_deletes_idempotency_keys_only(store: OnlineStore) -> None:
    store.write([Mutation("u:a", "profile", {"n": Cell(T0, 1)})], seen=["e1", "e2", "e3"])
    store.forget(["e1", "e3", "never-seen"])
    assert store.seen(["e1", "e2", "e3"]) == {"e2"}
    assert store.get(["u:a"], ["profile"])["u:a"]["profile"]["n"].value == 1
    store.forget([])


def test_trim_log_applies_the_configured_retention(tmp_path: Path) -> None:
    from tastemaker.config import LogConfig, local_config
    from tastemaker.privacy import trim_log

    config = local_config(tmp_path)
    log = open_log(config.log.url)
    try:
        log.append([event(f"e{k}", "u", "i", ts=T0) for k in range(10)])
        log.commit(config.stream.group, {0: 10})
        assert trim_log(log, config) == 0  # no retention configured
        kept = msgspec.structs.replace(config, log=LogConfig(url=config.log.url, retention_s=60))
        assert trim_log(log, kept) == 0  # the archiver (required by default) has not read
        log.commit("archiver", {0: 10})
        assert trim_log(log, kept) == 10
        assert log.read(0, 0, 10) == []
    finally:
        log.close()
