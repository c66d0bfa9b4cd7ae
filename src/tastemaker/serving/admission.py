"""Whether a request goes ahead now (its API key's rate), and how long it may wait for its
backend work (its deadline plus the grace)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tastemaker.config import ServingConfig
from tastemaker.deployment.offload import DeadlineExceededError, Offloader
from tastemaker.metrics import METRICS
from tastemaker.serving.auth import client_name
from tastemaker.serving.ratelimit import RateLimiter, retry_after
from tastemaker.serving.responses import error

__all__ = ["Admission"]


class Admission:
    def __init__(self, serving: ServingConfig, limiter: RateLimiter, offload: Offloader) -> None:
        self.serving = serving
        self.limiter = limiter
        self.offload = offload

    def within(self, deadline_ms: float | None) -> float:
        """Seconds a request waits for its backend work: its deadline plus the grace."""
        s = self.serving
        return ((s.deadline_ms if deadline_ms is None else deadline_ms) + s.deadline_grace_ms) / 1e3

    async def refused(self, request: Request) -> Response | None:
        """429 when the request's API key is over its rate: the authenticated key's name,
        else (auth off) the `X-API-Key` header, else "anonymous"."""
        limiter = self.limiter
        if not limiter.enabled():
            return None
        key = client_name(request.scope) or request.headers.get("x-api-key", "anonymous")
        if limiter.blocking:
            try:
                wait = await self.offload.run(self.within(None), limiter.acquire, key)
            except DeadlineExceededError:
                METRICS.rate_limit_errors.inc()  # let through, as when Redis fails
                wait = 0.0
        else:
            wait = limiter.acquire(key)
        if wait <= 0:
            return None
        METRICS.rate_limited.inc()
        response = error(429, "rate_limited", f"API key {key!r} is over its request rate")
        response.headers["Retry-After"] = retry_after(wait)
        return response
