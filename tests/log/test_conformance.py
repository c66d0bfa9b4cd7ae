"""The EventLog conformance suite, parametrized over every backend: embedded (SQLite, one
partition and three), Redis Streams (a Valkey server the tests start) and Kafka (a Tansu
broker the tests start). Group sharing and takeover run where there are partitions to share
(the embedded log with three)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tastemaker.log import (
    EventLog,
    LogConsumer,
    LogError,
    LogRecord,
    open_log,
    partition_of,
    total_lag,
)
from tests.conftest import event, wait_until

BACKENDS = ["embedded", "embedded-3", "redis", "kafka"]
SHARING = ["embedded-3", "redis", "kafka"]


def _url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    name = uuid.uuid4().hex[:10]
    if backend == "embedded":
        return f"embedded://{tmp_path}/log"
    if backend == "embedded-3":
        return f"embedded://{tmp_path}/log?partitions=3"
    if backend == "redis":
        base = request.getfixturevalue("redis_url")
        return f"{base}?partitions=3&prefix=t{name}&lease_s=2"
    servers = request.getfixturevalue("kafka_servers")
    return f"kafka://{servers}/t{name}?partitions=3"


@pytest.fixture(params=BACKENDS)
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    backend = open_log(_url(request.param, request, tmp_path))
    yield backend
    backend.close()


def _read_all(log: EventLog, partition: int) -> list[LogRecord]:
    return log.read(partition, 0, 10**6)


def _drain(consumer: LogConsumer, want: int, timeout: float = 30.0) -> list[LogRecord]:
    got: list[LogRecord] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        consumer.assignment()
        got.extend(consumer.poll(100))
    return got


def test_a_users_events_stay_in_order_in_one_partition(log: EventLog) -> None:
    users = [f"u{i}" for i in range(12)]
    log.append([event(f"{u}-{k}", u, "i") for k in range(3) for u in users])
    log.append([event(f"{u}-3", u, "i") for u in users])
    seen: dict[str, list[str]] = {}
    for p in range(log.partitions):
        records = _read_all(log, p)
        offsets = [r.offset for r in records]
        assert offsets == sorted(set(offsets))
        for r in records:
            assert r.partition == p == partition_of(r.event.user_id, log.partitions)
            seen.setdefault(r.event.user_id, []).append(r.event.event_id)
    assert seen == {u: [f"{u}-{k}" for k in range(4)] for u in users}
    if log.partitions > 1:  # twelve users spread over the partitions
        assert sum(1 for p in range(log.partitions) if _read_all(log, p)) > 1


def test_read_after_an_offset_and_a_limit(log: EventLog) -> None:
    log.append([event(str(i), "u", "i") for i in range(5)])
    p = partition_of("u", log.partitions)
    records = _read_all(log, p)
    assert [r.event.event_id for r in records] == ["0", "1", "2", "3", "4"]
    second = log.read(p, records[0].offset, 2)
    assert [r.event.event_id for r in second] == ["1", "2"]
    assert log.read(p, records[-1].offset, 10) == []
    assert log.end_offsets()[p] == records[-1].offset
    assert set(log.end_offsets()) == set(range(log.partitions))


def test_events_round_trip_unchanged(log: EventLog) -> None:
    e = event(
        "x",
        "u",
        "i",
        ts=1.7e9 + 0.125,
        value=3.5,
        session_id="s1",
        context={"device": "mobile", "region": "eu", "extra": {"ab": "b"}},
    )
    log.append([e])
    assert _read_all(log, partition_of("u", log.partitions))[0].event == e


def test_groups_commit_independently_and_never_backwards(log: EventLog) -> None:
    log.append([event(str(i), "u", "i") for i in range(5)])
    p = partition_of("u", log.partitions)
    offsets = [r.offset for r in _read_all(log, p)]
    assert log.committed("g1") == dict.fromkeys(range(log.partitions), 0)
    assert total_lag(log, "g1") == 5
    log.commit("g1", {p: offsets[2]})
    log.commit("g2", {p: offsets[0]})
    log.commit("g1", {p: offsets[1]})  # a stale commit never moves a group backwards
    assert (log.committed("g1")[p], log.committed("g2")[p]) == (offsets[2], offsets[0])
    assert log.lag("g1")[p] == 2


def test_empty_append_writes_nothing(log: EventLog) -> None:
    log.append([])
    assert all(_read_all(log, p) == [] for p in range(log.partitions))
    assert log.end_offsets() == dict.fromkeys(range(log.partitions), 0)


def test_a_consumer_reads_every_partition_once_and_resumes_after_its_commits(
    log: EventLog,
) -> None:
    log.append([event(f"e{i}", f"u{i % 7}", "i") for i in range(60)])
    first = log.consumer("grp", "a")
    got = _drain(first, 60)
    assert Counter(r.event.event_id for r in got) == Counter(f"e{i}" for i in range(60))
    for r in got:  # each poll is one partition's records, in order
        assert r.partition == partition_of(r.event.user_id, log.partitions)
    # Commit all but the last record of one partition, then leave.
    last: dict[int, list[int]] = {}
    for r in got:
        last.setdefault(r.partition, []).append(r.offset)
    held_back = next(iter(last))
    for p, offsets in last.items():
        first.commit(p, offsets[-2] if p == held_back else offsets[-1])
    first.close()
    assert total_lag(log, "grp") == 1
    log.append([event("late", "u0", "i")])
    again = log.consumer("grp", "b")
    more = _drain(again, 2)
    again.close()
    held = [r for r in got if r.partition == held_back][-1].event.event_id
    # The uncommitted record is read again, then the new one; nothing else.
    assert sorted(r.event.event_id for r in more) == sorted([held, "late"])


def test_commits_inside_one_read_acknowledge_exactly_the_records_up_to_them(
    log: EventLog,
) -> None:
    """A read's records committed in steps (the Redis Streams consumer acknowledges a read's
    entry ids up to the committed offset, splitting the read): a new member of the group
    gets exactly the records after the last commit."""
    log.append([event(f"e{i}", "u", "i") for i in range(10)])
    p = partition_of("u", log.partitions)
    first = log.consumer("steps", "a")
    got = _drain(first, 10)
    assert [r.event.event_id for r in got] == [f"e{i}" for i in range(10)]
    for step in (2, 3, 6):
        first.commit(p, got[step].offset)
        # The Redis Streams consumer reads its commit's replies later: lag may lag it.
        wait_until(lambda step=step: total_lag(log, "steps") == 9 - step)
    first.close()
    again = log.consumer("steps", "b")
    rest = _drain(again, 3)
    assert [r.event.event_id for r in rest] == ["e7", "e8", "e9"]
    again.commit(p, rest[-1].offset)
    wait_until(lambda: total_lag(log, "steps") == 0)
    again.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", SHARING)
def test_members_share_the_partitions_and_take_over_a_dead_members_messages(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = _url(backend, request, tmp_path)
    log = open_log(url)
    log.append([event(f"e{i}", f"u{i % 11}", "i") for i in range(90)])
    # Member `a` is a process of its own, killed with SIGKILL once it has read (and never
    # committed) records of the partitions it owns: no goodbye, its leases or its group
    # session simply stop being renewed.
    a = subprocess.Popen(
        [sys.executable, "-c", _MEMBER, url], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    b = log.consumer("grp", "b")
    read_by_b: list[LogRecord] = []
    read_by_a: list[str] = []
    uncommitted = 0  # records `b` could not commit (a rebalance under way): read again

    def b_polls() -> None:
        nonlocal uncommitted
        records = b.poll(100)
        read_by_b.extend(records)
        if records:  # as the stream processor does, after applying them
            try:
                b.commit(records[0].partition, records[-1].offset)
            except LogError:
                uncommitted += len(records)

    try:
        assert a.stdout is not None
        line = a.stdout.readline()  # the first record `a` read
        assert line, "member a exited before reading anything"
        read_by_a.append(line.strip())

        def shared() -> bool:
            b_polls()
            return 0 < len(b.assignment()) < 3

        wait_until(shared, timeout=40, interval=0.1)
        a.send_signal(signal.SIGKILL)
        a.wait()
        read_by_a += [x.strip() for x in a.stdout.read().splitlines()]
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
        if a.stdout is not None:
            a.stdout.close()
    started = time.monotonic()

    def b_owns_everything() -> bool:
        b_polls()
        return b.assignment() == {0, 1, 2}

    wait_until(b_owns_everything, timeout=30, interval=0.1)
    took = time.monotonic() - started
    assert took < 10, f"takeover took {took:.1f} s"
    deadline = time.monotonic() + 20
    while len({r.event.event_id for r in read_by_b}) < 90 and time.monotonic() < deadline:
        b.assignment()
        b_polls()
    # `b` read everything: its own partitions and all `a` had read without committing; twice
    # only what it could not commit itself.
    counts = Counter(r.event.event_id for r in read_by_b)
    assert set(counts) == {f"e{i}" for i in range(90)}
    assert sum(counts.values()) - 90 <= uncommitted
    assert set(read_by_a) <= {f"e{i}" for i in range(90)}
    b.close()
    log.close()


# A group member that prints the id of every record it reads and never commits.
_MEMBER = """
import sys
from tastemaker.log import open_log
consumer = open_log(sys.argv[1]).consumer("grp", "a")
while True:
    consumer.assignment()
    for r in consumer.poll(100):
        print(r.event.event_id, flush=True)
"""


def test_log_persists_across_reopen(tmp_path: Path) -> None:
    url = f"embedded://{tmp_path}/log?fsync=never"
    first = open_log(url)
    first.append([event("a", "u", "i")])
    first.commit("g", {0: 1})
    first.close()
    again = open_log(url)
    assert [r.event.event_id for r in again.read(0, 0, 10)] == ["a"]
    assert again.committed("g") == {0: 1}
    again.close()


def test_bad_urls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported event log URL"):
        open_log(f"s3://{tmp_path}")
    with pytest.raises(ValueError, match="fsync"):
        open_log(f"embedded://{tmp_path}?fsync=sometimes")
    with pytest.raises(ValueError, match="partitions"):
        open_log(f"embedded://{tmp_path}?partitions=0")
    with pytest.raises(ValueError, match="no topic"):
        open_log("kafka://127.0.0.1:9092")
    with pytest.raises(ValueError, match="no scheme"):
        open_log(str(tmp_path))


def test_redis_streams_trims_entries_older_than_the_retention(redis_url: str) -> None:
    url = f"{redis_url}?partitions=1&prefix=trim{uuid.uuid4().hex[:8]}&retention_s=0.5"
    old = open_log(url)
    old.append([event(f"old{i}", "u", "i") for i in range(1000)])
    old.close()
    time.sleep(0.6)
    new = open_log(url)  # a new process: its first append trims
    new.append([event(f"new{i}", "u", "i") for i in range(10)])
    kept = [r.event.event_id for r in new.read(0, 0, 10_000)]
    new.close()
    # Trimming is approximate (whole stream nodes of 100 entries), never of recent entries.
    assert kept[-10:] == [f"new{i}" for i in range(10)]
    assert len(kept) <= 110


def test_a_seek_reads_again_every_record_after_it(log: EventLog) -> None:
    """The stream processor's rewind after a failed batch: every record after the offset
    sought comes again, in order, before or with the records appended since; records at or
    before it may come again too."""
    log.append([event(f"e{i}", "u", "i") for i in range(10)])
    p = partition_of("u", log.partitions)
    consumer = log.consumer("seek", "a")
    got = _drain(consumer, 10)
    assert [r.event.event_id for r in got] == [f"e{i}" for i in range(10)]
    log.append([event(f"f{i}", "u", "i") for i in range(3)])
    consumer.seek(p, got[3].offset)
    again: list[LogRecord] = []
    deadline = time.monotonic() + 30
    while "f2" not in {r.event.event_id for r in again} and time.monotonic() < deadline:
        consumer.assignment()
        again.extend(consumer.poll(100))
    consumer.close()
    after = [r.event.event_id for r in again if r.offset > got[3].offset]
    assert after == [f"e{i}" for i in range(4, 10)] + ["f0", "f1", "f2"]
