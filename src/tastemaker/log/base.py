"""The EventLog protocol: a durable, append-only, partitioned log with consumer groups.

A log has `partitions` partitions; an event goes to partition `partition_of(user_id)`, so one
user's events stay in order. Offsets are per partition, start above 0 and only grow; they
need not be dense (a Redis Streams offset encodes the entry id).

Two ways to read:
- by position (`read`, `commit`, `committed`): a reader that keeps its own positions, such as
  the archiver, or a tool;
- as a member of a consumer group (`consumer`): the group shares the partitions among its
  live members, one owner per partition at a time; a partition whose owner died is taken over
  by another member together with the messages the dead one had read and not committed.
  Delivery is at-least-once: a consumer must tolerate records it has already applied
  (the stream processor keeps its position with its state and skips them).
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

import msgspec

from tastemaker.events import Event

__all__ = ["EventLog", "LogConsumer", "LogError", "LogRecord", "partition_of"]


class LogError(RuntimeError):
    """The log could not append or read (disk full, file unwritable, I/O error, database
    locked too long, server unreachable or too slow).

    `maybe_written` is False when nothing of a failed append was written, True when some or
    all of it may have been (the reply of a Redis MULTI/EXEC timed out, a Kafka append failed
    part way, SQLite's commit failed while syncing): the caller resends the same events with
    the same ids, and the stream processor drops the copies by event id."""

    def __init__(self, message: str, *, maybe_written: bool = False) -> None:
        super().__init__(message)
        self.maybe_written = maybe_written


class LogRecord(msgspec.Struct, frozen=True):
    """An event and its position in the log."""

    offset: int
    event: Event
    partition: int = 0


def partition_of(user_id: str, partitions: int) -> int:
    """The partition of a user's events: CRC-32 of the id, stable across processes and
    languages (Python's `hash` is salted per process)."""
    if partitions == 1:
        return 0
    return zlib.crc32(user_id.encode()) % partitions


class LogConsumer(Protocol):
    """One member of a consumer group."""

    def assignment(self) -> frozenset[int]:
        """The partitions this member owns now. Cheap; renews the member's claim on them
        (leases, heartbeats) when due, takes over partitions whose owner is gone, and gives
        some up when more members join."""
        ...

    def poll(self, limit: int) -> list[LogRecord]:
        """Up to `limit` records of one owned partition, in offset order, without blocking
        long; [] when none of the owned partitions has anything. After a partition is taken
        over, the records its previous owner read and did not commit come first."""
        ...

    def commit(self, partition: int, offset: int) -> None:
        """Everything of `partition` up to and including `offset` is done."""
        ...

    def seek(self, partition: int, offset: int) -> None:
        """Read `partition` again from after `offset`: the records polled since were not
        applied (the batch failed). Records at or before `offset` may come again too."""
        ...

    def close(self) -> None:
        """Leave the group: give up the partitions at once (not only when leases expire)."""
        ...


class EventLog(Protocol):
    """Append-only event log, at-least-once to its consumers.

    `append` returns only once the events are durable by the backend's policy; a consumer
    group reads from its committed offsets, so anything read but not committed before a crash
    is read again.
    """

    partitions: int

    def append(self, events: Sequence[Event]) -> None:
        """Append all events atomically (all or none), each to its user's partition."""
        ...

    def read(self, partition: int, after: int, limit: int) -> list[LogRecord]:
        """Up to `limit` records of `partition` with offset > `after`, in offset order."""
        ...

    def commit(self, group: str, positions: Mapping[int, int]) -> None:
        """Record that `group` has processed each partition up to and including its offset.
        A position never moves backwards."""
        ...

    def committed(self, group: str) -> dict[int, int]:
        """The last offset `group` committed, for every partition (0 if none)."""
        ...

    def end_offsets(self) -> dict[int, int]:
        """The offset of the newest record of every partition (0 when empty)."""
        ...

    def lag(self, group: str) -> dict[int, int]:
        """Records of each partition that `group` has not committed (or, where the backend
        can only tell that, not yet read)."""
        ...

    def consumer(self, group: str, member: str) -> LogConsumer:
        """Join consumer group `group` as `member` (a name unique among live members)."""
        ...

    def erase_users(self, user_ids: Collection[str]) -> list[str]:
        """Erasure: delete every record of these users (tombstones, `EventType.ERASE`, are
        kept: the stream must still apply them) where the backend can delete single records,
        and return the event ids deleted. A backend that cannot (Kafka) deletes nothing and
        returns []; docs/privacy.md says what each backend does."""
        ...

    def close(self) -> None:
        """Release files and connections; further calls are errors."""
        ...
