"""The embedded log's storage: an append's records of one partition in chunks of up to
`_CHUNK` (`log/embedded.py`). Reads that start or stop inside a chunk, lag counted in
chunks, and a log in the older row-per-record layout opened by this code."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import msgspec
import pytest

from tastemaker.events import Event
from tastemaker.log import EmbeddedEventLog
from tastemaker.log.base import partition_of
from tastemaker.log.embedded import _CHUNK
from tests.conftest import T0, event


def _events(n: int, users: int = 7, prefix: str = "e") -> list[Event]:
    return [event(f"{prefix}{k}", f"u{k % users}", f"i{k % 13}", ts=T0 + k) for k in range(n)]


def _read_all(log: EmbeddedEventLog, partition: int, limits: list[int]) -> list[tuple[int, str]]:
    """Every record of `partition`, read with the limits in turn (cycled), each read after
    the last record the previous one returned."""
    out: list[tuple[int, str]] = []
    after, k = 0, 0
    while records := log.read(partition, after, limits[k % len(limits)]):
        assert len(records) <= limits[k % len(limits)]
        assert records[0].offset > after  # else this loop would never end
        out.extend((r.offset, r.event.event_id) for r in records)
        after, k = records[-1].offset, k + 1
    return out


def test_one_partition_has_dense_offsets_across_chunks_and_appends(tmp_path: Path) -> None:
    log = EmbeddedEventLog(tmp_path / "log")
    first = _events(2 * _CHUNK + 5)
    log.append(first)
    log.append(_events(3, prefix="x"))
    records = log.read(0, 0, 10 * _CHUNK)
    assert [r.offset for r in records] == list(range(1, 2 * _CHUNK + 9))
    assert [r.event for r in records[: len(first)]] == first
    assert [r.event.event_id for r in records[-3:]] == ["x0", "x1", "x2"]
    assert log.end_offsets() == {0: 2 * _CHUNK + 8}
    rows = sqlite3.connect(log.path).execute("SELECT count(*) FROM chunks").fetchone()[0]
    assert rows == 4  # 1,000 + 1,000 + 5 records, then the second append's 3
    log.close()


@pytest.mark.parametrize("partitions", [1, 3])
def test_reads_starting_and_stopping_inside_chunks_return_each_record_once_in_order(
    tmp_path: Path, partitions: int
) -> None:
    log = EmbeddedEventLog(tmp_path / "log", partitions=partitions)
    appended = [_events(n, users=29, prefix=f"a{j}-") for j, n in enumerate((2_500, 1, 1_234, 999))]
    for batch in appended:
        log.append(batch)
    rng = random.Random(7)
    for p in range(partitions):
        whole = _read_all(log, p, [10**9])
        expected = [
            e.event_id
            for batch in appended
            for e in batch
            if partition_of(e.user_id, partitions) == p
        ]
        assert [i for _, i in whole] == expected
        offsets = [o for o, _ in whole]
        assert len(offsets) > 1_000  # more than a chunk in every partition
        assert offsets == sorted(set(offsets))
        for limits in ([1], [7, 999, 1_000, 1_001], [rng.randint(1, 3_000) for _ in range(20)]):
            assert _read_all(log, p, limits) == whole
        # After any offset: exactly the records after it.
        for at in rng.sample(offsets, 20):
            got = log.read(p, at, 10**9)
            assert [(r.offset, r.event.event_id) for r in got] == [w for w in whole if w[0] > at]
    log.close()


def test_lag_counts_the_records_of_a_partly_committed_chunk(tmp_path: Path) -> None:
    log = EmbeddedEventLog(tmp_path / "log", partitions=2)
    events = _events(3_000, users=11)
    log.append(events)
    per_partition = {p: [e for e in events if partition_of(e.user_id, 2) == p] for p in (0, 1)}
    assert log.lag("g") == {p: len(per_partition[p]) for p in (0, 1)}
    records = log.read(0, 0, 1_234)  # ends inside partition 0's second chunk
    log.commit("g", {0: records[-1].offset})
    assert log.lag("g") == {0: len(per_partition[0]) - 1_234, 1: len(per_partition[1])}
    log.close()


def _old_log(path: Path, events: list[Event], partitions: int | None) -> None:
    """A log in the older layout: a row per record in `events`, its offset the row
    id; without the partition column when `partitions` is None (before partitions)."""
    path.mkdir(parents=True)
    db = sqlite3.connect(path / "events.sqlite3")
    column = "" if partitions is None else ", partition INTEGER NOT NULL DEFAULT 0"
    db.execute(
        "CREATE TABLE events (offset INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL"
        f"{column})"
    )
    encode = msgspec.msgpack.encode
    if partitions is None:
        db.executemany("INSERT INTO events(payload) VALUES (?)", [(encode(e),) for e in events])
    else:
        db.executemany(
            "INSERT INTO events(payload, partition) VALUES (?, ?)",
            [(encode(e), partition_of(e.user_id, partitions)) for e in events],
        )
    db.commit()
    db.close()


@pytest.mark.parametrize("partitions", [None, 1, 3])
def test_a_log_written_a_row_per_record_is_read_at_its_offsets_and_appended_to(
    tmp_path: Path, partitions: int | None
) -> None:
    old = _events(50)
    _old_log(tmp_path / "log", old, partitions)
    n = partitions or 1
    log = EmbeddedEventLog(tmp_path / "log", partitions=n)
    tables = {r[0] for r in sqlite3.connect(log.path).execute("SELECT name FROM sqlite_master")}
    assert "events" not in tables
    new = _events(10, prefix="n")
    log.append(new)
    for p in range(n):
        got = log.read(p, 0, 1_000)
        mine = [i for i, e in enumerate(old) if partition_of(e.user_id, n) == p]
        # The old records at the offsets they had (their row ids), then the new ones after.
        assert [(r.offset, r.event) for r in got[: len(mine)]] == [(i + 1, old[i]) for i in mine]
        assert [r.event for r in got[len(mine) :]] == [
            e for e in new if partition_of(e.user_id, n) == p
        ]
        assert all(r.offset > 50 for r in got[len(mine) :])
    log.close()
    # Opened again: nothing migrated twice.
    again = EmbeddedEventLog(tmp_path / "log", partitions=n)
    assert sum(len(again.read(p, 0, 1_000)) for p in range(n)) == 60
    again.close()
