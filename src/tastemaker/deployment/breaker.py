"""Circuit breakers: a hung or failing backend costs one probe call, not a timeout per request.

A breaker per backend (the online store, the event log, the shared rate limiter's Redis)
watches its calls. After `serving.breaker_failures` failures (errors, timeouts included)
within `serving.breaker_window_s` it opens: every call fails at once, as the backend's own
error type, so callers take the fallback they already have for a failing backend. After
`serving.breaker_cooldown_s` it lets one call through (half-open); that call's success closes
the breaker, its failure opens it for another cool-down. A call that fails for a reason other
than the backend (a bug, bad input) neither opens nor closes it.

`GuardedStore` and `GuardedLog` put a breaker around every call of a store or a log with the
same synchronous interface, so the recommend pipeline, which evaluation and tests also run
in-process, works unchanged on top of them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

from tastemaker.config import ServingConfig
from tastemaker.events import Event
from tastemaker.log import EventLog, LogConsumer, LogError, LogRecord
from tastemaker.metrics import METRICS
from tastemaker.store import FamilySpec, Mutation, OnlineStore, RowData, StoreError

__all__ = [
    "CircuitBreaker",
    "GuardedLog",
    "GuardedStore",
    "LogUnavailableError",
    "StoreUnavailableError",
    "breaker",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_STATE_VALUE = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}


class StoreUnavailableError(StoreError):
    """The store's circuit is open: the call was not made."""


class LogUnavailableError(LogError):
    """The log's circuit is open: the call was not made (nothing was written)."""


class CircuitBreaker:
    """Closed, open or half-open; thread-safe. `call` runs a function under it; `failures`
    are the exception types that count against the backend; `open_error` makes the error a
    refused call raises."""

    def __init__(
        self,
        name: str,
        *,
        failures: int,
        window_s: float,
        cooldown_s: float,
        counted: tuple[type[BaseException], ...] = (Exception,),
        open_error: Callable[[str], Exception] = RuntimeError,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failures = failures
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self.counted = counted
        self.open_error = open_error
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._recent: deque[float] = deque()  # times of the failures within the window
        self._opened_at = 0.0
        self._probing = False
        self._last_error = ""
        self._gauge = METRICS.breaker_state.labels(name)
        self._gauge.set(0)

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def recent_failures(self) -> int:
        """Failures counted towards opening (within the window, while closed)."""
        with self._lock:
            return len(self._recent)

    def describe(self) -> str:
        """Why calls are refused (for health answers); "" while closed."""
        with self._lock:
            if self._state == CLOSED:
                return ""
            since = self._clock() - self._opened_at
            return f"circuit {self._state} for {since:.1f} s (last failure: {self._last_error})"

    def allow(self) -> bool:
        """Whether a call may go to the backend now; in half-open, only one at a time."""
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown_s:
                self._set(HALF_OPEN)
            if self._state == CLOSED:
                return True
            if self._state == HALF_OPEN and not self._probing:
                self._probing = True
                return True
        METRICS.breaker_rejected.labels(self.name).inc()
        return False

    def succeeded(self) -> None:
        with self._lock:
            if self._state == HALF_OPEN and self._probing:
                self._probing = False
                self._recent.clear()
                self._set(CLOSED)
                log.warning("%s circuit closed: the backend answered again", self.name)

    def failed(self, exc: BaseException) -> None:
        now = self._clock()
        with self._lock:
            self._last_error = f"{type(exc).__name__}: {exc}"[:300]
            if self._state == HALF_OPEN and self._probing:
                self._probing = False
                self._open(now)
            elif self._state == CLOSED:
                self._recent.append(now)
                while self._recent and now - self._recent[0] > self.window_s:
                    self._recent.popleft()
                if len(self._recent) >= self.failures:
                    self._open(now)
                    log.warning(
                        "%s circuit open after %d failures in %.0f s (last: %s); failing "
                        "fast, one probe every %.0f s",
                        self.name,
                        len(self._recent),
                        self.window_s,
                        self._last_error,
                        self.cooldown_s,
                    )

    def released(self) -> None:
        """A call ended without telling anything about the backend."""
        with self._lock:
            if self._state == HALF_OPEN and self._probing:
                self._probing = False

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if not self.allow():
            raise self.open_error(f"{self.name} unavailable: {self.describe()}")
        try:
            result = fn(*args, **kwargs)
        except self.counted as exc:
            self.failed(exc)
            raise
        except BaseException:
            self.released()
            raise
        self.succeeded()
        return result

    def _open(self, now: float) -> None:
        """The caller holds the lock."""
        self._opened_at = now
        self._recent.clear()
        self._set(OPEN)
        METRICS.breaker_opened.labels(self.name).inc()

    def _set(self, state: str) -> None:
        self._state = state
        self._gauge.set(_STATE_VALUE[state])


def breaker(
    name: str,
    serving: ServingConfig,
    counted: tuple[type[BaseException], ...],
    open_error: Callable[[str], Exception],
) -> CircuitBreaker:
    """A breaker with the config's thresholds."""
    return CircuitBreaker(
        name,
        failures=serving.breaker_failures,
        window_s=serving.breaker_window_s,
        cooldown_s=serving.breaker_cooldown_s,
        counted=counted,
        open_error=open_error,
    )


class GuardedStore:
    """An `OnlineStore` whose every call goes through `breaker`; raises
    `StoreUnavailableError` (a `StoreError`) while the circuit is open."""

    def __init__(self, store: OnlineStore, breaker: CircuitBreaker) -> None:
        self.inner = store
        self.breaker = breaker

    @property
    def families(self) -> Mapping[str, FamilySpec]:
        return self.inner.families

    def get(self, rows: Sequence[str], families: Iterable[str]) -> dict[str, RowData]:
        return self.breaker.call(self.inner.get, rows, families)

    def write(self, mutations: Sequence[Mutation], *, seen: Sequence[str] = ()) -> None:
        self.breaker.call(self.inner.write, mutations, seen=seen)

    def write_columns(
        self, family: str, rows: Sequence[str], columns: Mapping[str, Any], ts: float
    ) -> None:
        self.breaker.call(self.inner.write_columns, family, rows, columns, ts)

    def seen(self, keys: Sequence[str]) -> set[str]:
        return self.breaker.call(self.inner.seen, keys)

    def delete_rows(self, rows: Sequence[str]) -> None:
        self.breaker.call(self.inner.delete_rows, rows)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class GuardedLog:
    """An `EventLog` whose reads, appends and commits go through `breaker`; raises
    `LogUnavailableError` (a `LogError`: nothing was written) while the circuit is open.
    Consumers are the inner log's own (the stream processor has its own retries)."""

    def __init__(self, event_log: EventLog, breaker: CircuitBreaker) -> None:
        self.inner = event_log
        self.breaker = breaker
        self.partitions = event_log.partitions

    def append(self, events: Sequence[Event]) -> None:
        self.breaker.call(self.inner.append, events)

    def read(self, partition: int, after: int, limit: int) -> list[LogRecord]:
        return self.breaker.call(self.inner.read, partition, after, limit)

    def commit(self, group: str, positions: Mapping[int, int]) -> None:
        self.breaker.call(self.inner.commit, group, positions)

    def committed(self, group: str) -> dict[int, int]:
        return self.breaker.call(self.inner.committed, group)

    def end_offsets(self) -> dict[int, int]:
        return self.breaker.call(self.inner.end_offsets)

    def lag(self, group: str) -> dict[int, int]:
        return self.breaker.call(self.inner.lag, group)

    def consumer(self, group: str, member: str) -> LogConsumer:
        return self.inner.consumer(group, member)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
