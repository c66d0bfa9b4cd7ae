from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tastemaker.events import Event, EventType
from tastemaker.log import open_log
from tastemaker.log.base import EventLog
from tastemaker.offline import Archiver, Lake
from tests.conftest import T0, event

DAY = 86400.0


def sample_events(n: int, start: float = T0, step: float = 3600.0) -> list[Event]:
    return [
        event(
            f"e{i}",
            f"u{i % 7}",
            f"i{i % 11}",
            EventType.CLICK if i % 3 else EventType.VIEW,
            start + i * step,
            **({"value": 4.5} if i % 5 == 0 else {}),
            **(
                {"session_id": "s1", "context": {"device": "mobile", "extra": {"a": "b"}}}
                if i == 3
                else {}
            ),
        )
        for i in range(n)
    ]


@pytest.fixture
def log(tmp_path: Path) -> EventLog:
    return open_log(f"embedded://{tmp_path}/log?fsync=never")


def test_archive_round_trips_every_event_and_splits_by_day(log: EventLog, tmp_path: Path) -> None:
    events = sample_events(60)  # 60 hours: three days
    log.append(events)
    lake = Lake(str(tmp_path / "lake"))
    result = Archiver(log, lake).run_once(batch_size=25)
    assert (result.events, result.watermark) == (60, 60)
    assert lake.days() == ["2025-10-09", "2025-10-10", "2025-10-11"]
    assert lake.events() == events  # every field, context included, in time order
    assert lake.watermark() == 60


def test_rerunning_the_archiver_writes_nothing_twice(log: EventLog, tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    log.append(sample_events(30))
    Archiver(log, lake).run_once(batch_size=7)
    files = lake.files()
    assert Archiver(log, lake).run_once(batch_size=7).events == 0
    assert lake.files() == files
    more = sample_events(10, start=T0 + 40 * 3600)
    log.append([event(f"x{e.event_id}", e.user_id, e.item_id, e.type, e.ts) for e in more])
    assert Archiver(log, lake).run_once(batch_size=7).events == 10
    assert len(lake.read()) == 40


def test_one_event_id_for_two_users_is_two_events_in_the_lake(
    log: EventLog, tmp_path: Path
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    log.append([event("e1", "ann", "i1", EventType.CLICK, T0)])
    Archiver(log, lake).run_once(batch_size=7)
    log.append([event("e1", "bob", "i1", EventType.CLICK, T0 + 1)])
    log.append([event("e1", "ann", "i1", EventType.CLICK, T0 + 2)])  # a resend: a copy
    Archiver(log, lake).run_once(batch_size=7)
    assert [(e.user_id, e.event_id) for e in lake.events()] == [("ann", "e1"), ("bob", "e1")]


def test_a_batch_cut_short_is_written_again_without_duplicates(
    log: EventLog, tmp_path: Path
) -> None:
    log.append(sample_events(40))
    lake = Lake(str(tmp_path / "lake"))
    Archiver(log, lake).run_once(batch_size=20)
    # A crash after writing some files of the next batch, before the offset was committed:
    log.append(
        [event(f"n{i}", "u1", "i1", EventType.CLICK, T0 + (100 + i) * 3600) for i in range(30)]
    )
    records = log.read(0, 40, 20)
    lake.append(records[:10])
    assert lake.watermark() == 50
    result = Archiver(log, lake).run_once(batch_size=15)
    assert result.removed_partial == 1
    table = lake.read()
    assert table.num_rows == 70
    assert len(set(table["offset"].to_pylist())) == 70


def test_readers_drop_repeated_event_ids(log: EventLog, tmp_path: Path) -> None:
    events = sample_events(5)
    log.append(events)
    log.append(events[:2])  # a client resent two events
    lake = Lake(str(tmp_path / "lake"))
    assert Archiver(log, lake).run_once(batch_size=3).duplicates == 2
    assert lake.events() == events
    assert lake.read(after=5).num_rows == 0  # their later copies were never written
    log.append(events[4:])  # and again, in a later run
    assert Archiver(log, lake).run_once().duplicates == 1
    assert lake.events() == events


def test_compaction_merges_small_files_and_keeps_every_event(log: EventLog, tmp_path: Path) -> None:
    events = sample_events(48, step=60.0)  # one day
    log.append(events)
    lake = Lake(str(tmp_path / "lake"))
    Archiver(log, lake).run_once(batch_size=5)
    assert len(lake.files()) == 10
    assert lake.compact(min_files=4) == 10
    assert len(lake.files()) == 1
    assert lake.events() == events
    assert lake.watermark() == 48


def test_compaction_cleans_up_after_a_crash_between_write_and_delete(
    log: EventLog, tmp_path: Path
) -> None:
    log.append(sample_events(10, step=60.0))
    lake = Lake(str(tmp_path / "lake"))
    Archiver(log, lake).run_once(batch_size=5)
    lake._write(lake.read(), lake.days()[0], 1, 10)  # the merged file, smalls not yet removed
    assert len(lake.files()) == 3
    assert lake.compact(min_files=99) == 2
    assert [(f.first, f.last) for f in lake.files()] == [(1, 10)]


def test_retention_removes_old_day_partitions(log: EventLog, tmp_path: Path) -> None:
    log.append(sample_events(5, step=DAY))
    lake = Lake(str(tmp_path / "lake"))
    Archiver(log, lake).run_once()
    gone = lake.expire(retention_days=2, now=T0 + 4 * DAY + 1)
    assert gone == ["2025-10-09", "2025-10-10"]
    assert [e.event_id for e in lake.events()] == ["e2", "e3", "e4"]


def test_any_fsspec_url_works(log: EventLog) -> None:
    lake = Lake(f"memory://lake-{uuid.uuid4().hex}")
    events = sample_events(30)
    log.append(events)
    Archiver(log, lake).run_once(batch_size=8)
    assert lake.events() == events
    assert lake.compact(min_files=2) > 0
    assert lake.events() == events


def test_erasure_removes_a_users_events_from_the_lake(log: EventLog, tmp_path: Path) -> None:
    events = sample_events(21)
    log.append(events)
    lake = Lake(str(tmp_path / "lake"))
    Archiver(log, lake).run_once(batch_size=10)
    assert lake.delete_users(["u3"]) == 3
    assert lake.events() == [e for e in events if e.user_id != "u3"]


@pytest.mark.parametrize("backend", ["embedded", "redis"])
def test_a_partitioned_log_is_archived_once_in_one_lake_sequence(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "redis":
        url = f"{request.getfixturevalue('redis_url')}?partitions=3&prefix=a{uuid.uuid4().hex[:6]}"
    else:
        url = f"embedded://{tmp_path}/plog?partitions=3&fsync=never"
    plog = open_log(url)
    events = sample_events(50)
    plog.append(events[:30])
    lake = Lake(str(tmp_path / "lake"))
    first = Archiver(plog, lake).run_once(batch_size=4)
    assert (first.events, first.watermark) == (30, 30)
    # More events, then a run that dies after writing a file of its first batch: that file
    # is past the saved lake offset, so the next run removes it and writes the batch again.
    plog.append(events[30:])
    p = next(p for p in range(3) if plog.read(p, plog.committed("archiver")[p], 1))
    records = plog.read(p, plog.committed("archiver")[p], 2)
    lake.append(records, 31, 32)
    second = Archiver(plog, lake).run_once(batch_size=4)
    assert second.removed_partial == 1
    assert second.watermark == 50
    table = lake.read()
    assert sorted(table["offset"].to_pylist()) == list(range(1, 51))  # one dense sequence
    assert sorted(e.event_id for e in lake.events()) == sorted(e.event_id for e in events)
    assert sum(plog.lag("archiver").values()) == 0
    plog.close()
