"""The EventLog protocol: a durable, append-only log with consumer-group offsets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec

from tastemaker.events import Event

__all__ = ["EventLog", "LogError", "LogRecord"]


class LogError(RuntimeError):
    """The log could not append or read (disk full, file unwritable, database locked too
    long). Nothing of a failed append was written."""


class LogRecord(msgspec.Struct, frozen=True):
    """An event and its position in the log. Offsets start at 1 and only grow."""

    offset: int
    event: Event


class EventLog(Protocol):
    """Append-only event log, at-least-once to its consumers.

    `append` returns only once the events are durable by the backend's policy; a consumer
    group reads from its committed offset, so anything read but not committed before a crash
    is read again.
    """

    def append(self, events: Sequence[Event]) -> int:
        """Append all events atomically (all or none); return the offset of the last one."""
        ...

    def read(self, after: int, limit: int) -> list[LogRecord]:
        """Up to `limit` records with offset > `after`, in offset order."""
        ...

    def commit(self, group: str, offset: int) -> None:
        """Record that `group` has processed everything up to and including `offset`."""
        ...

    def committed(self, group: str) -> int:
        """The last offset `group` committed (0 if none)."""
        ...

    def end_offset(self) -> int:
        """The offset of the newest record (0 when empty)."""
        ...

    def close(self) -> None:
        """Release files and connections; further calls are errors."""
        ...
