"""Health endpoints an orchestrator can use: `/livez`, `/readyz` and `/healthz`.

- `/livez`: the process answers (its event loop runs); no backend is asked. 200 always.
- `/readyz`: the store and the log answer and the stream is not stalled: 200, else 503 with
  the reasons.
- `/healthz`: a JSON summary (log end, stream lag, items, artifacts) with `status` "ok" or
  "degraded" and the reasons; always 200.

None of them waits on a hung backend: the probe runs on the backend threads, through the
circuit breakers (an open circuit answers at once), and is given `serving.health_timeout_ms`;
past it the answer reports the timeout, with the last figures the probe read.
"""

from __future__ import annotations

import os
import threading
import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tastemaker.deployment.offload import DeadlineExceededError
from tastemaker.deployment.runtime import Runtime
from tastemaker.features.layout import PROFILE
from tastemaker.log import LogError
from tastemaker.serving.schemas import Health, Liveness, Readiness
from tastemaker.store import StoreError

__all__ = ["HealthMonitor", "Probe", "health_routes"]

_encode = msgspec.json.Encoder().encode
# A row no one writes: reading it is one round trip that touches no data.
_PROBE_ROW = "tastemaker:health-probe"


class Probe(msgspec.Struct, frozen=True):
    log_end_offset: int
    stream_lag: int
    reasons: list[str]  # empty: every check passed


class HealthMonitor:
    """Probes the runtime's backends (through their breakers) and the stream's progress."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._last = Probe(0, 0, [])
        self._lock = threading.Lock()
        self._committed = -1  # the group's committed offsets, summed, when they last moved
        self._moved_at = time.monotonic()

    def probe(self) -> Probe:
        """Ask the backends now (blocking: run it on the backend threads)."""
        rt = self.runtime
        group = rt.config.stream.group
        end, lag = self._last.log_end_offset, self._last.stream_lag
        reasons: list[str] = []
        try:
            end = sum(rt.guarded_log.end_offsets().values())
            lag = sum(rt.guarded_log.lag(group).values())
            committed = sum(rt.guarded_log.committed(group).values())
        except LogError as exc:
            reasons.append(f"log: {exc}")
        else:
            stalled = self._stalled_for(lag, committed)
            if stalled > rt.config.serving.stream_stall_s:
                reasons.append(f"stream: {lag} events behind and none applied for {stalled:.0f} s")
        try:
            rt.guarded_store.get([_PROBE_ROW], [PROFILE])
        except StoreError as exc:
            reasons.append(f"store: {exc}")
        if rt.stream_stopped():
            reasons.append("stream: this process's stream thread has stopped")
        probe = Probe(end, lag, reasons)
        self._last = probe
        return probe

    def _stalled_for(self, lag: int, committed: int) -> float:
        """Seconds the stream has been behind without committing anything (0: it is not)."""
        now = time.monotonic()
        with self._lock:
            if lag <= 0 or committed != self._committed:
                self._committed = committed
                self._moved_at = now
            return now - self._moved_at

    async def current(self) -> Probe:
        """A probe within `serving.health_timeout_ms`, else the last figures and why."""
        timeout_ms = self.runtime.config.serving.health_timeout_ms
        try:
            return await self.runtime.offload.run(timeout_ms / 1000, self.probe)
        except DeadlineExceededError:
            last = self._last
            reason = f"health probe: the backends did not answer within {timeout_ms:.0f} ms"
            return Probe(last.log_end_offset, last.stream_lag, [reason])


def _json(body: msgspec.Struct, status: int = 200) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


def health_routes(runtime: Runtime) -> list[Route]:
    monitor = HealthMonitor(runtime)

    async def livez(_: Request) -> Response:
        return _json(Liveness("ok", os.getpid()))

    async def readyz(_: Request) -> Response:
        probe = await monitor.current()
        if probe.reasons:
            return _json(Readiness("not_ready", probe.reasons, os.getpid()), 503)
        return _json(Readiness("ready", [], os.getpid()))

    async def healthz(_: Request) -> Response:
        probe = await monitor.current()
        served = {k: v for k, v in runtime.artifact_versions().items() if v is not None}
        status = "degraded" if probe.reasons else "ok"
        health = Health(
            status,
            probe.log_end_offset,
            probe.stream_lag,
            len(runtime.catalog),
            served,
            os.getpid(),
            probe.reasons,
        )
        return _json(health)

    return [
        Route("/livez", livez, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
