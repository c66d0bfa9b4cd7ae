"""Per-API-key rate limits (`base.RateLimiter`), chosen by URL in `open_rate_limiter`."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

from tastemaker.serving.ratelimit.base import Limits, RateLimiter, retry_after
from tastemaker.serving.ratelimit.memory import MemoryRateLimiter

__all__ = ["Limits", "MemoryRateLimiter", "RateLimiter", "open_rate_limiter", "retry_after"]

_REDIS_OPTIONS = frozenset({"prefix", "timeout_ms"})


def open_rate_limiter(
    url: str | None,
    rate: float,
    burst: int,
    per_key: dict[str, float] | None = None,
    *,
    breaker: tuple[int, float, float] = (5, 10.0, 5.0),
) -> RateLimiter:
    """Open the rate limiter a URL names (`serving.rate_limit_url`):

    - None or `memory://`: token buckets in this process; each process allows the full rate;
    - `redis://HOST:PORT/DB?prefix=&timeout_ms=50` (or `rediss://`): token buckets on a Redis
      or Valkey server, one limit per key shared by every process; `prefix` is prepended to
      every key, `timeout_ms` bounds each call (past it the request is let through).
      `breaker` is its circuit breaker's failures, window and cool-down.

    An option the scheme does not take is refused (`ValueError`). The registry is this
    function: one explicit branch per backend.
    """
    parts = urlsplit(url or "memory://")
    options = dict(parse_qsl(parts.query))
    if parts.scheme == "memory":
        if parts.netloc or parts.path or options:
            raise ValueError(f"rate limiter URL {url!r}: memory:// takes no path or options")
        return MemoryRateLimiter(rate, burst, per_key)
    if parts.scheme in ("redis", "rediss"):
        unknown = sorted(set(options) - _REDIS_OPTIONS)
        if unknown:
            raise ValueError(
                f"rate limiter URL {url!r}: unknown option(s) {', '.join(unknown)}; "
                f"{parts.scheme}:// takes {', '.join(sorted(_REDIS_OPTIONS))}"
            )
        try:
            timeout_s = float(options.get("timeout_ms", "50")) / 1000
        except ValueError as exc:
            raise ValueError(f"rate limiter URL {url!r}: timeout_ms: {exc}") from exc
        from tastemaker.serving.ratelimit.redis import RedisRateLimiter  # imports redis-py

        return RedisRateLimiter(
            urlunsplit(parts._replace(query="")),
            rate,
            burst,
            per_key,
            prefix=options.get("prefix", ""),
            timeout_s=timeout_s,
            breaker=breaker,
        )
    raise ValueError(
        f"unsupported rate limiter URL {url!r}: expected memory:// or redis://HOST:PORT/DB"
    )
