"""The one ingest path: validate a batch whole, then append it to the log.

`POST /v1/events` and `tastemaker demo`'s replay both go through here, so the demo exercises
exactly what production traffic does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from tastemaker.events import (
    Event,
    EventLimits,
    EventProblem,
    InvalidBatchError,
    check_events,
    decode_batch,
)
from tastemaker.log import EventLog, LogError
from tastemaker.metrics import METRICS

__all__ = ["BackpressureError", "Ingestor"]


class BackpressureError(RuntimeError):
    """The stream is too far behind; the client should retry after `retry_after_s`."""

    def __init__(self, lag: int, retry_after_s: int) -> None:
        self.lag = lag
        self.retry_after_s = retry_after_s
        super().__init__(f"the stream is {lag} events behind; retry in {retry_after_s} s")


class Ingestor:
    """Validates and appends events; nothing of an invalid batch reaches the log, and nothing
    is appended while the stream is more than `max_lag_events` behind (`BackpressureError`):
    refusing is how no accepted event is ever dropped or left waiting for minutes."""

    def __init__(
        self,
        log: EventLog,
        *,
        group: str,
        max_lag_events: int,
        retry_after_s: int = 1,
        on_accepted: Callable[[set[str]], None] | None = None,
        admit: Callable[[Sequence[Event]], list[Event]] | None = None,
        limits: EventLimits | None = None,
        max_json_depth: int = 32,
    ) -> None:
        self.log = log
        self.limits = EventLimits() if limits is None else limits
        self.max_json_depth = max_json_depth
        self.group = group
        self.max_lag_events = max_lag_events
        self.retry_after_s = retry_after_s
        self.on_accepted = on_accepted  # told the users of every accepted batch
        # Drops the events that must not be stored (users who withdrew consent:
        # `privacy.ConsentRegistry.admit`) before anything is appended.
        self.admit = admit
        self._lag = 0
        self._lag_at = -1.0
        self._appended = 0
        self._refreshing = threading.Lock()

    def lag(self, *, fresh: bool = False) -> int:
        """Events in the log that the stream processor has not committed (the largest lag of
        any partition: one partition far behind is enough to refuse).

        Asking the log costs a round trip per partition on Redis or Kafka, so a request never
        waits for it: the answer is refreshed in the background at most every 100 ms, and what
        this process appended since is added. `fresh` asks the log now (before refusing)."""
        if fresh:
            return self._refresh()
        now = time.monotonic()
        if now - self._lag_at >= 0.1 and not self._refreshing.locked():
            self._lag_at = now
            threading.Thread(target=self._refresh, name="tastemaker-lag", daemon=True).start()
        return self._lag + self._appended

    def _refresh(self) -> int:
        with self._refreshing:
            appended = self._appended
            try:
                self._lag = max(self.log.lag(self.group).values(), default=0)
            except LogError:
                return self._lag + self._appended  # the append will say what is wrong
            self._appended -= appended
            self._lag_at = time.monotonic()
            return self._lag + self._appended

    def ingest_json(self, body: bytes) -> int:
        """Decode `{"events": [...]}` and append it. Raises `InvalidBatchError` or
        `BackpressureError`."""
        try:
            events = decode_batch(body, self.limits, max_depth=self.max_json_depth)
        except InvalidBatchError as exc:
            METRICS.events_rejected.inc(max(1, len(exc.problems)))
            raise
        return self._append(events)

    def ingest(self, events: Sequence[Event]) -> int:
        """Append already-typed events durably, once they are within the limits (else
        `InvalidBatchError`); returns how many were accepted."""
        found = check_events(events, self.limits, time.time())
        if found:
            METRICS.events_rejected.inc(len(found))
            raise InvalidBatchError([EventProblem(i, field, error) for i, field, error in found])
        return self._append(events)

    def _append(self, events: Sequence[Event]) -> int:
        """Append valid events durably; returns how many were accepted (stored)."""
        if self.admit is not None:
            events = self.admit(events)
            if not events:
                return 0
        lag = self.lag()
        if lag > self.max_lag_events and (lag := self.lag(fresh=True)) > self.max_lag_events:
            METRICS.backpressure.inc()
            raise BackpressureError(lag, self.retry_after_s)
        self.log.append(events)
        self._appended += len(events)
        METRICS.events_accepted.inc(len(events))
        if self.on_accepted is not None:
            self.on_accepted({e.user_id for e in events})
        return len(events)
