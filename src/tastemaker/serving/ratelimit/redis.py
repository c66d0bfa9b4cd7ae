"""Per-API-key rate limits shared by every API process, on a Redis server.

The same token bucket as `MemoryRateLimiter`, kept in one hash per key (`<prefix>{rl:<key>}`) and
updated by a Lua script, so N workers on M machines share one limit per key. The server's
clock is used (`TIME`), so the processes' clocks do not matter. If the server cannot be
reached the limiter lets the request through (it is a guard against abuse, not a reason to
fail requests) and counts it in `tastemaker_rate_limit_errors`; a circuit breaker then lets
it through without trying until a probe finds the server again.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from tastemaker.deployment.breaker import CircuitBreaker
from tastemaker.metrics import METRICS
from tastemaker.serving.ratelimit.base import Limits

__all__ = ["RedisRateLimiter"]

log = logging.getLogger(__name__)


class _CircuitOpen(redis.ConnectionError):
    """The limiter's circuit is open: the server was not asked."""


# KEYS[1] bucket; ARGV rate, burst. Returns 0 (go ahead) or the milliseconds to wait.
_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - last) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
"""


class RedisRateLimiter(Limits):
    """Token buckets on a Redis server (`redis://`), shared by every process."""

    blocking = True

    def __init__(
        self,
        url: str,
        rate: float,
        burst: int,
        per_key: dict[str, float] | None = None,
        *,
        prefix: str = "",
        timeout_s: float = 0.05,
        breaker: tuple[int, float, float] = (5, 10.0, 5.0),
    ) -> None:
        """`breaker`: its failures, window and cool-down (`serving.breaker_*`)."""
        super().__init__(rate, burst, per_key)
        self.prefix = prefix
        failures, window_s, cooldown_s = breaker
        self.breaker = CircuitBreaker(
            "ratelimit",
            failures=failures,
            window_s=window_s,
            cooldown_s=cooldown_s,
            counted=(redis.RedisError,),
            open_error=_CircuitOpen,
        )
        self._client: Any = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._script = self._client.register_script(_SCRIPT)

    def acquire(self, key: str) -> float:
        """0 if the request may go ahead, else the seconds until a token is available."""
        rate = self.rate_of(key)
        if rate <= 0:
            return 0.0
        try:
            wait_ms = self.breaker.call(
                self._script, keys=[f"{self.prefix}{{rl:{key}}}"], args=[rate, self.burst]
            )
        except redis.RedisError as exc:
            if not isinstance(exc, _CircuitOpen):
                log.warning("rate limiter unreachable; letting the request through: %s", exc)
            METRICS.rate_limit_errors.inc()
            return 0.0
        return float(wait_ms) / 1000.0

    def close(self) -> None:
        self._client.close()
