"""The rate limiter's Protocol: a token bucket per API key, `rate` requests/s with bursts of
`burst`, or the key's own rate. Backends: `memory.py` (per process), `redis.py` (shared by
every process); chosen by URL in `open_rate_limiter`."""

from __future__ import annotations

import math
from typing import Protocol

__all__ = ["Limits", "RateLimiter", "retry_after"]


class RateLimiter(Protocol):
    # Whether `acquire` waits on I/O: the API runs such a limiter off the event loop, under
    # the request's deadline.
    blocking: bool

    def enabled(self) -> bool:
        """Whether any key is limited at all (a disabled limiter is never asked)."""
        ...

    def acquire(self, key: str) -> float:
        """0 if the request may go ahead, else the seconds until a token is available."""
        ...

    def close(self) -> None: ...


class Limits:
    """The limits of every key: `rate` requests/s with bursts of `burst`, or its own rate."""

    def __init__(self, rate: float, burst: int, per_key: dict[str, float] | None = None) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.per_key = dict(per_key or {})

    def enabled(self) -> bool:
        return self.rate > 0 or bool(self.per_key)

    def rate_of(self, key: str) -> float:
        return self.per_key.get(key, self.rate)


def retry_after(seconds: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
