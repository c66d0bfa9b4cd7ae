"""A small closed-loop HTTP/1.1 load generator on raw asyncio sockets with keep-alive.

Why hand-written: the benchmarks must run from `pip install` alone (no wrk/oha binary), and a
general HTTP client (httpx) costs more CPU per request than the servers we measure, which on a
2-core machine would measure the client. This one sends pre-encoded requests and parses only
the status line and Content-Length, on uvloop (a dependency of the server already): on this
2-core machine its CPU is taken from the server it measures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import msgspec
import numpy as np

try:
    import uvloop
except ImportError:  # not on Windows
    uvloop = None  # type: ignore[assignment]

__all__ = ["LoadResult", "run_load"]


class LoadResult(msgspec.Struct, frozen=True):
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    # From when each request was due by the schedule, not from when it went out: a slow
    # answer delays the connection's next requests, and this counts that wait (what wrk2
    # calls correcting for coordinated omission). Equal to p99_ms in closed-loop runs.
    p99_scheduled_ms: float


def _request(host: str, port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _connection(
    *,
    host: str,
    port: int,
    requests: Sequence[bytes],
    until: float,
    interval: float,
    offset: float,
    latencies: list[float],
    late: list[float],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    next_at = time.perf_counter() + offset
    try:
        while (now := time.perf_counter()) < until:
            scheduled = now
            if interval > 0:
                if now < next_at:
                    await asyncio.sleep(next_at - now)
                scheduled = next_at
                next_at += interval
            started = time.perf_counter()
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            at = head.lower().find(b"content-length:")
            length = int(head[at + 15 : head.index(b"\r\n", at)]) if at >= 0 else 0
            await reader.readexactly(length)
            done = time.perf_counter()
            latencies.append(done - started)
            late.append(done - scheduled)
            if not head.startswith(b"HTTP/1.1 2"):
                errors.append(1)
    finally:
        writer.close()


def run_load(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    *,
    seconds: float,
    connections: int = 16,
    rate: float | None = None,
) -> LoadResult:
    """Send POSTs over `connections` keep-alive connections for `seconds`. With `rate`
    (requests/s in total) each connection paces itself; otherwise closed loop, flat out."""
    requests = [_request(host, port, path, b) for b in bodies]
    latencies: list[float] = []
    late: list[float] = []
    errors: list[int] = []
    interval = connections / rate if rate else 0.0

    async def main() -> float:
        until = time.perf_counter() + seconds
        started = time.perf_counter()
        await asyncio.gather(
            *(
                _connection(
                    host=host,
                    port=port,
                    requests=requests[c::connections] or requests,
                    until=until,
                    interval=interval,
                    # Paced connections start a slot apart, so that the requests arrive
                    # evenly spread, not as bursts of `connections` at once.
                    offset=c / rate if rate else 0.0,
                    latencies=latencies,
                    late=late,
                    errors=errors,
                )
                for c in range(connections)
            )
        )
        return time.perf_counter() - started

    elapsed = uvloop.run(main()) if uvloop is not None else asyncio.run(main())
    lat = np.asarray(latencies) * 1000
    return LoadResult(
        requests=len(latencies),
        errors=len(errors),
        seconds=round(elapsed, 2),
        rps=round(len(latencies) / elapsed, 1),
        p50_ms=round(float(np.percentile(lat, 50)), 3) if lat.size else 0.0,
        p99_ms=round(float(np.percentile(lat, 99)), 3) if lat.size else 0.0,
        p99_scheduled_ms=round(float(np.percentile(np.asarray(late) * 1000, 99)), 3)
        if lat.size
        else 0.0,
    )
