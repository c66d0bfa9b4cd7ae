"""Per-API-key rate limits: a token bucket per key, in each API process.

Written here rather than taken from a library: it is a dozen lines over a dict, on the hot
path, and the ASGI rate-limit packages either need a Redis round trip per request or do not
let each key have its own rate. The limit is per process: with `--workers N` each worker
allows `rate` per key, so set `rate_limit_rps` to the total divided by N, or set
`serving.rate_limit_url` for one limit shared by every process (`redis.py`).
"""

from __future__ import annotations

import threading
import time

from tastemaker.serving.ratelimit.base import Limits

__all__ = ["MemoryRateLimiter"]


class MemoryRateLimiter(Limits):
    """Token buckets in this process (`memory://`)."""

    blocking = False

    def __init__(self, rate: float, burst: int, per_key: dict[str, float] | None = None) -> None:
        super().__init__(rate, burst, per_key)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float:
        """0 if the request may go ahead, else the seconds until a token is available."""
        rate = self.rate_of(key)
        if rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate

    def close(self) -> None:
        """Nothing to release: the buckets are this process's memory."""
