"""The EventLog conformance suite, parametrized over every backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tastemaker.log import EventLog, open_log
from tests.conftest import event


@pytest.fixture(params=["embedded"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    backend = open_log({"embedded": f"embedded://{tmp_path}/log"}[request.param])
    yield backend
    backend.close()


def test_append_returns_growing_offsets_and_read_returns_in_order(log: EventLog) -> None:
    assert log.end_offset() == 0
    first = log.append([event("a", "u", "i"), event("b", "u", "i")])
    second = log.append([event("c", "u", "i")])
    assert (first, second) == (2, 3)
    records = log.read(0, 10)
    assert [r.offset for r in records] == [1, 2, 3]
    assert [r.event.event_id for r in records] == ["a", "b", "c"]
    assert [r.event.event_id for r in log.read(1, 1)] == ["b"]
    assert log.read(3, 10) == []


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
    assert log.read(0, 1)[0].event == e


def test_consumer_groups_commit_independently(log: EventLog) -> None:
    log.append([event(str(i), "u", "i") for i in range(5)])
    assert log.committed("g1") == 0
    log.commit("g1", 3)
    log.commit("g2", 1)
    log.commit("g1", 2)  # a stale commit never moves a group backwards
    assert (log.committed("g1"), log.committed("g2")) == (3, 1)


def test_empty_append_writes_nothing(log: EventLog) -> None:
    assert log.append([]) == 0
    assert log.read(0, 10) == []


def test_log_persists_across_reopen(tmp_path: Path) -> None:
    url = f"embedded://{tmp_path}/log?fsync=never"
    first = open_log(url)
    first.append([event("a", "u", "i")])
    first.commit("g", 1)
    first.close()
    again = open_log(url)
    assert [r.event.event_id for r in again.read(0, 10)] == ["a"]
    assert again.committed("g") == 1
    again.close()


def test_bad_urls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported event log URL"):
        open_log(f"kafka://{tmp_path}")
    with pytest.raises(ValueError, match="fsync"):
        open_log(f"embedded://{tmp_path}?fsync=sometimes")
    with pytest.raises(ValueError, match="no scheme"):
        open_log(str(tmp_path))
