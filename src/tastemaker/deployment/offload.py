"""Backend calls off the event loop, on a bounded pool of threads, under a hard timeout.

A request handler that called the store on the event loop stalled every other request of
the process while the store was slow (a hung Redis made `GET /openapi.json` take seconds).
Handlers hand their backend work to `Offloader.run` instead, which waits at most the
request's time: past it the handler answers without the work (its fallback), and the work,
if it had not started yet, never runs. The pool is the process's own and bounded
(`serving.backend_threads`); the circuit breakers keep a hung backend from filling it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["DeadlineExceededError", "Offloader"]

P = ParamSpec("P")
T = TypeVar("T")


class DeadlineExceededError(TimeoutError):
    """The backend work did not finish within the request's time."""


class Offloader:
    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tastemaker-backend")

    async def run(
        self, timeout_s: float, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`fn(*args, **kwargs)` on the pool; raises `DeadlineExceededError` after `timeout_s`.
        A call still queued then is cancelled; one already running finishes in its thread
        (the backend's own timeouts and breaker bound it)."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        # Not `wait_for`: a TimeoutError raised by `fn` itself must stay what it is.
        done, _ = await asyncio.wait({future}, timeout=max(timeout_s, 0.0))
        if not done:
            future.cancel()
            raise DeadlineExceededError(f"not done within {timeout_s * 1000:.0f} ms")
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
