"""Consumer groups on the embedded log: members of one machine share the partitions through
file locks (`log/embedded.py`, `_GroupLocks`). The SIGKILL takeover of a member that is a
process of its own is in the conformance suite; these check the sharing itself."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from tastemaker.log import EmbeddedEventLog, LogConsumer
from tests.conftest import event, wait_until


def _members(log: EmbeddedEventLog, group: str) -> list[Path]:
    return sorted((log.path.parent / "groups" / group / "members").glob("*.lock"))


def _settled(*wanted: tuple[LogConsumer, frozenset[int]]) -> bool:
    return all(c.assignment() == owned for c, owned in wanted)


def test_members_share_the_partitions_fairly_and_hand_them_over_at_once(
    tmp_path: Path,
) -> None:
    log = EmbeddedEventLog(tmp_path / "log", partitions=3)
    a = log.consumer("grp", "a")
    assert a.assignment() == {0, 1, 2}  # alone: every partition
    b = log.consumer("grp", "b")
    # `a` gives up what is over its share, highest first, and `b` takes it.
    wait_until(lambda: _settled((a, frozenset({0, 1})), (b, frozenset({2}))), timeout=5)
    assert len(_members(log, "grp")) == 2
    assert log.group_members("grp") == (2, 3)
    assert log.group_owners("grp") == {0: "a", 1: "a", 2: "b"}
    # Another group shares nothing with this one.
    other = log.consumer("other", "c")
    assert other.assignment() == {0, 1, 2}
    other.close()
    a.close()  # leaves: `b` takes everything at its next rebalance
    wait_until(lambda: b.assignment() == {0, 1, 2}, timeout=5)
    assert log.group_owners("grp") == {0: "b", 1: "b", 2: "b"}
    assert len(_members(log, "grp")) == 1
    b.close()
    assert _members(log, "grp") == []
    assert log.group_members("grp") == (0, 0)
    log.close()


def test_a_taken_over_partition_is_read_from_the_groups_committed_offset(
    tmp_path: Path,
) -> None:
    log = EmbeddedEventLog(tmp_path / "log", partitions=2)
    log.append([event(f"e{i}", f"u{i % 5}", "i") for i in range(40)])
    a = log.consumer("grp", "a")
    a.assignment()
    got = {p: a.poll(100) for p in (0, 1)}
    assert sum(map(len, got.values())) == 40
    for p, records in got.items():  # all but the last two of each partition are done
        a.commit(p, records[-3].offset)
    b = log.consumer("grp", "b")
    a.close()
    wait_until(lambda: b.assignment() == {0, 1}, timeout=5)
    again = [r.event.event_id for _ in range(3) for r in b.poll(100)]
    assert sorted(again) == sorted(r.event.event_id for p in got for r in got[p][-2:])
    b.close()
    log.close()


# Dropping a consumer without `close` warns that its files were left open: that is the point.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_member_dropped_without_leaving_gives_its_partitions_back(tmp_path: Path) -> None:
    log = EmbeddedEventLog(tmp_path / "log", partitions=2)
    a = log.consumer("grp", "a")
    assert a.assignment() == {0, 1}
    b = log.consumer("grp", "b")
    assert b.assignment() == frozenset()
    del a  # its lock files are closed with it, as a dead process's are by the kernel
    gc.collect()
    wait_until(lambda: b.assignment() == {0, 1}, timeout=5)
    assert len(_members(log, "grp")) == 1  # the dead member's file is removed
    b.close()
    log.close()
