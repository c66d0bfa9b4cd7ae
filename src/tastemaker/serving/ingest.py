"""The one ingest path: validate a batch whole, then append it to the log.

`POST /v1/events` and `tastemaker demo`'s replay both go through here, so the demo exercises
exactly what production traffic does.
"""

from __future__ import annotations

from collections.abc import Sequence

from tastemaker.events import Event, InvalidBatchError, decode_batch
from tastemaker.log import EventLog
from tastemaker.metrics import METRICS

__all__ = ["Ingestor"]


class Ingestor:
    """Validates and appends events; nothing of an invalid batch reaches the log."""

    def __init__(self, log: EventLog) -> None:
        self.log = log

    def ingest_json(self, body: bytes) -> int:
        """Decode `{"events": [...]}` and append it. Raises `InvalidBatchError`."""
        try:
            events = decode_batch(body)
        except InvalidBatchError as exc:
            METRICS.events_rejected.inc(max(1, len(exc.problems)))
            raise
        return self.ingest(events)

    def ingest(self, events: Sequence[Event]) -> int:
        """Append already-typed events durably; returns how many were accepted."""
        self.log.append(events)
        METRICS.events_accepted.inc(len(events))
        return len(events)
