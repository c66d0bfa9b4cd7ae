"""The circuit breaker's states, on a controlled clock."""

from __future__ import annotations

import pytest

from tastemaker.deployment.breaker import CircuitBreaker, StoreUnavailableError
from tastemaker.metrics import METRICS
from tastemaker.store import StoreError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Backend:
    """Counts the calls that reached it; fails while `failing`."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = True

    def read(self) -> str:
        self.calls += 1
        if self.failing:
            raise StoreError("read timed out")
        return "row"


def make(clock: Clock, name: str = "test-store") -> CircuitBreaker:
    return CircuitBreaker(
        name,
        failures=3,
        window_s=10.0,
        cooldown_s=5.0,
        counted=(StoreError,),
        open_error=StoreUnavailableError,
        clock=clock,
    )


def state_metric(name: str) -> float | None:
    return METRICS.registry.get_sample_value("tastemaker_breaker_state", {"backend": name})


def test_opens_after_n_failures_in_the_window_and_fails_fast() -> None:
    clock, backend = Clock(), Backend()
    b = make(clock, "store-a")
    for _ in range(2):
        with pytest.raises(StoreError):
            b.call(backend.read)
        clock.now += 6.0  # 12 s apart in all: never 3 within 10 s
    with pytest.raises(StoreError):
        b.call(backend.read)
    assert b.state == "closed"
    for _ in range(2):
        with pytest.raises(StoreError):
            b.call(backend.read)
    assert b.state == "open"
    assert state_metric("store-a") == 1.0
    calls = backend.calls
    for _ in range(100):
        with pytest.raises(StoreUnavailableError, match="circuit open"):
            b.call(backend.read)
    assert backend.calls == calls  # not one reached the backend


def test_one_probe_after_the_cooldown_closes_it_on_success() -> None:
    clock, backend = Clock(), Backend()
    b = make(clock, "store-b")
    for _ in range(3):
        with pytest.raises(StoreError):
            b.call(backend.read)
    clock.now += 5.0
    assert b.allow()  # the probe
    assert b.state == "half_open"
    assert state_metric("store-b") == 2.0
    assert not b.allow()  # only one probe at a time
    b.succeeded()
    assert b.state == "closed"
    assert state_metric("store-b") == 0.0
    backend.failing = False
    assert b.call(backend.read) == "row"


def test_a_failed_probe_opens_it_for_another_cooldown() -> None:
    clock, backend = Clock(), Backend()
    b = make(clock)
    for _ in range(3):
        with pytest.raises(StoreError):
            b.call(backend.read)
    clock.now += 5.0
    calls = backend.calls
    with pytest.raises(StoreError, match="timed out"):
        b.call(backend.read)  # the probe reaches the backend and fails
    assert backend.calls == calls + 1
    assert b.state == "open"
    clock.now += 4.0
    with pytest.raises(StoreUnavailableError):
        b.call(backend.read)
    clock.now += 1.0
    backend.failing = False
    assert b.call(backend.read) == "row"
    assert b.state == "closed"


def test_errors_that_are_not_the_backends_neither_open_nor_close_it() -> None:
    clock = Clock()
    b = make(clock)

    def bug() -> None:
        raise ValueError("a bad argument")

    for _ in range(10):
        with pytest.raises(ValueError, match="bad argument"):
            b.call(bug)
    assert b.state == "closed"
    b.failed(StoreError("x"))
    b.failed(StoreError("x"))
    b.failed(StoreError("x"))
    clock.now += 5.0
    with pytest.raises(ValueError, match="bad argument"):
        b.call(bug)  # the probe ended without news: the next call may probe
    assert b.state == "half_open"
    assert b.allow()
