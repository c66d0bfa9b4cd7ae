"""What a fault test asserts once the load is done: the answers it got, their latency during
the fault, and that every accepted batch was applied exactly once (accepted == applied)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx2
import numpy as np

from tests.faults.load import CLICKS, Batch, Bounds, Load, Sample

__all__ = ["Window", "judge", "summary"]

# The answers each endpoint may give under a fault. Events: 202, or a refusal that wrote
# nothing or tells the client to resend (503 `log_unavailable`, 429 `backpressure`). The
# others answer 200 whatever is down: a degraded recommendation, a `/healthz` that says
# "degraded" in its JSON.
_ALLOWED: dict[str, set[tuple[int, str]]] = {
    "recommend": {(200, "")},
    "events": {(202, ""), (503, "log_unavailable"), (429, "backpressure")},
    "livez": {(200, "")},
    "healthz": {(200, "")},
    "openapi": {(200, "")},
}


@dataclass(frozen=True)
class Window:
    """Seconds since the load started: from the fault's start to its end."""

    start: float
    end: float

    def holds(self, s: Sample) -> bool:
        return self.start <= s.started <= self.end


def p99(samples: Iterable[Sample]) -> float:
    seconds = [s.seconds for s in samples]
    return float(np.percentile(seconds, 99)) if seconds else 0.0


def summary(load: Load, fault: Window) -> str:
    """Requests and answers per endpoint, and p99 during the fault (for the failure message
    and the test's output)."""
    lines = [f"fault window {fault.start:.1f}-{fault.end:.1f} s of a {load.seconds:.0f} s load"]
    for endpoint in _ALLOWED:
        mine = [s for s in load.samples if s.endpoint == endpoint]
        answers = Counter(f"{s.status}{'/' + s.error if s.error else ''}" for s in mine)
        during = [s for s in mine if fault.holds(s)]
        lines.append(
            f"  {endpoint}: {len(mine)} requests {dict(answers)}; during the fault "
            f"{len(during)}, p99 {p99(during) * 1000:.0f} ms, max "
            f"{max((s.seconds for s in during), default=0) * 1000:.0f} ms"
        )
    accepted = sum(b.accepted for b in load.batches)
    resent = sum(len(b.answers) > 1 for b in load.batches)
    lines.append(f"  batches: {len(load.batches)}, accepted {accepted}, resent {resent}")
    return "\n".join(lines)


def _allowed(s: Sample, lost_connections: Window | None) -> bool:
    if (s.status, s.error) in _ALLOWED[s.endpoint]:
        return True
    # A killed worker takes the connections it holds with it.
    return s.status == 0 and lost_connections is not None and lost_connections.holds(s)


def _answers(load: Load, lost_connections: Window | None) -> list[str]:
    """Any answer not allowed for its endpoint; connections lost or timed out, except those
    started in `lost_connections`."""
    problems = []
    wrong = Counter(
        (s.endpoint, s.status, s.error) for s in load.samples if not _allowed(s, lost_connections)
    )
    for (endpoint, status, error), n in sorted(wrong.items()):
        what = f"no answer ({error})" if status == 0 else f"{status} {error}".strip()
        kind = "a 5xx" if status >= 500 else "not allowed"
        problems.append(f"{endpoint}: {n} x {what} ({kind})")
    return problems


def _latency(load: Load, fault: Window, bounds: Bounds) -> list[str]:
    problems = []
    limits = {"recommend": bounds.recommend, "events": bounds.events, "healthz": bounds.healthz}
    for endpoint in _ALLOWED:
        during = [s for s in load.samples if s.endpoint == endpoint and fault.holds(s)]
        limit = limits.get(endpoint, bounds.probes)
        if (got := p99(during)) > limit:
            problems.append(
                f"{endpoint}: p99 {got:.2f} s during the fault, over the bound of {limit} s "
                f"({len(during)} requests, slowest {max(s.seconds for s in during):.2f} s)"
            )
    return problems


def drain(base_url: str, timeout: float) -> str | None:
    """Wait until `/healthz` says the stream lag is 0; the problem if it does not in time."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx2.Client(base_url=base_url, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                r = client.get("/healthz")
                last = f"{r.status_code} {r.text[:200]}"
                if r.status_code == 200 and r.json().get("stream_lag") == 0:
                    return None
            except httpx2.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.25)
    return f"the stream did not catch up within {timeout:.0f} s after the load: /healthz {last}"


def clicks_of(base_url: str, users: Sequence[str]) -> dict[str, int | str]:
    """Each user's applied clicks (`profile.counts.click` of GET /v1/users/{id}/features),
    or what went wrong reading them."""

    def one(client: httpx2.Client, user: str) -> int | str:
        got = ""
        for _ in range(20):  # a 503 (a read past its deadline on a busy machine) is retried
            try:
                r = client.get(f"/v1/users/{user}/features")
            except httpx2.HTTPError as exc:
                got = f"no answer ({type(exc).__name__})"
                continue
            if r.status_code == 200:
                counts = r.json()["features"].get("profile", {}).get("counts", {"value": {}})
                return int(counts["value"].get("click", 0))
            got = f"{r.status_code} {r.text[:100]}"
            if r.status_code != 503:
                break
            time.sleep(0.25)
        return got

    with (
        httpx2.Client(base_url=base_url, timeout=10) as client,
        ThreadPoolExecutor(4) as pool,
    ):
        return dict(zip(users, pool.map(lambda u: one(client, u), users), strict=True))


def _wrong(batch: Batch, clicks: int | str) -> bool:
    """Accepted: applied exactly once. Never accepted: applied once or not at all."""
    if batch.accepted:
        return clicks != CLICKS
    return clicks not in (0, CLICKS)


def _applied(load: Load, base_url: str) -> list[str]:
    batches = {b.user: b for b in load.batches}
    clicks = clicks_of(base_url, list(batches))
    wrong = [u for u in batches if _wrong(batches[u], clicks[u])]
    # The last microbatch's write may still be landing when the lag reads 0: look again.
    for _ in range(10):
        if not wrong:
            break
        time.sleep(0.5)
        clicks.update(clicks_of(base_url, wrong))
        wrong = [u for u in wrong if _wrong(batches[u], clicks[u])]
    if not wrong:
        return []
    lost = [u for u in wrong if batches[u].accepted and clicks[u] == 0]
    doubled = [u for u in wrong if isinstance(c := clicks[u], int) and c > CLICKS]
    lines = [
        f"accepted != applied: {len(wrong)} of {len(batches)} batches wrong "
        f"({len(lost)} accepted and never applied, {len(doubled)} applied more than once; "
        f"{sum(b.accepted for b in batches.values())} accepted); e.g."
    ]
    for u in wrong[:8]:
        b = batches[u]
        lines.append(
            f"    {u}: {'accepted' if b.accepted else 'never accepted'}, clicks applied "
            f"{clicks[u]} (once = {CLICKS}); answers {b.history()}"
        )
    return ["\n".join(lines)]


def judge(
    load: Load,
    base_url: str,
    fault: Window,
    bounds: Bounds | None = None,
    *,
    lost_connections: Window | None = None,
    drain_s: float = 30.0,
) -> list[str]:
    """Every way the run broke a promise, after the stream has drained (or failed to)."""
    problems = []
    if len(load.batches) < load.planned_batches // 2:
        problems.append(f"only {len(load.batches)} of {load.planned_batches} batches were sent")
    if not any(fault.holds(a) for b in load.batches for a in b.answers):
        problems.append("no event batch was sent during the fault")
    problems += _answers(load, lost_connections)
    problems += _latency(load, fault, bounds or Bounds())
    if (stuck := drain(base_url, drain_s)) is not None:
        problems.append(stuck)
    problems += _applied(load, base_url)
    return problems
