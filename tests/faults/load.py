"""A bounded HTTP load on a served tastemaker, recorded, and what the record must show.

Threads send `POST /v1/recommend` and `POST /v1/events` at fixed rates for a fixed time, and
probe `GET /livez`, `GET /healthz` and `GET /openapi.json`. Each event batch is ten clicks of
a user of its own, so the user's `profile.counts` feature says how many times the batch was
applied: 10 clicks once, 20 twice, 0 never. A batch answered 503 or 429, or lost with its
connection, is sent again with the same event ids (as the API tells clients to) until it is
answered 202 or `resend_s` has passed.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx2
import msgspec

__all__ = ["Batch", "Bounds", "Load", "Sample"]

CLICKS = 10  # events a batch, all clicks of the batch's own user
TIMEOUT_S = 10.0  # a request not answered in this long is a failure


@dataclass(frozen=True)
class Sample:
    """One request: what, when (seconds since the load started), how long, and the answer
    (`status` 0: no answer, the connection failed or timed out; `error` then names why)."""

    endpoint: str
    started: float
    seconds: float
    status: int
    error: str = ""


@dataclass
class Batch:
    """One user's ten clicks and every answer to sending them."""

    user: str
    event_ids: list[str]
    answers: list[Sample] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return any(a.status == 202 for a in self.answers)

    def history(self) -> str:
        return ", ".join(
            f"{a.started:.1f}s:{a.status}{'/' + a.error if a.error else ''}" for a in self.answers
        )


@dataclass(frozen=True)
class Bounds:
    """p99 latency bounds (seconds) over the requests started during the fault.

    Generous for a shared 2-core CI machine, yet far below what a blocked event loop costs:
    a handler waiting on a hung backend holds every request of its worker for the backend's
    socket timeout (5 s for the log, 0.25 s a store read, many reads a request).
    - recommend: 2 s. The production deadline is 50 ms; a degraded answer is allowed, a wait
      on the backend is not.
    - events: 6.5 s. An append may wait for the log's timeout (5 s by default) before the
      breaker opens; after that a refusal is immediate. Less than the 7 s hang: an append
      that waits for the backend to come back is caught.
    - healthz: 2 s. It asks the backends, with a timeout of its own (0.5 s by default).
    - probes (/livez, /openapi.json): 1 s. They call no backend.
    """

    recommend: float = 2.0
    events: float = 6.5
    healthz: float = 2.0
    probes: float = 1.0


def _error_of(response: httpx2.Response) -> str:
    if response.status_code < 300:
        return ""
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return "not JSON"
    return str(body.get("error", "no error field")) if isinstance(body, dict) else "not an object"


class Load:
    """The load: `recommend_rps` recommends and `batch_rps` event batches a second for
    `seconds`, over `threads` connections each, and `probe_rps` of each probe."""

    def __init__(
        self,
        base_url: str,
        items: Sequence[str],
        *,
        seconds: float = 12.0,
        recommend_rps: float = 40.0,
        batch_rps: float = 40.0,
        probe_rps: float = 4.0,
        threads: int = 3,
        resend_s: float = 20.0,
    ) -> None:
        self.base_url = base_url
        self.items = list(items)
        self.seconds = seconds
        self.resend_s = resend_s
        self.run_id = uuid.uuid4().hex[:8]
        self.samples: list[Sample] = []
        self.batches: list[Batch] = []
        self._lock = threading.Lock()
        self._t0 = 0.0
        plan: list[tuple[str, float]] = [("recommend", recommend_rps / threads)] * threads
        plan += [("events", batch_rps / threads)] * threads
        plan += [(p, probe_rps) for p in ("livez", "healthz", "openapi")]
        self.planned_batches = int(seconds * batch_rps)
        self._threads = [
            threading.Thread(target=self._run, args=(i, kind, rps), name=kind, daemon=True)
            for i, (kind, rps) in enumerate(plan)
        ]

    def now(self) -> float:
        """Seconds since the load started."""
        return time.monotonic() - self._t0

    def start(self) -> None:
        self._t0 = time.monotonic()
        for t in self._threads:
            t.start()

    def sleep_until(self, t: float) -> None:
        time.sleep(max(0.0, t - self.now()))

    def join(self) -> None:
        for t in self._threads:
            t.join(timeout=self.seconds + self.resend_s + 2 * TIMEOUT_S)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"load threads still running: {alive}"

    # -- the threads ---------------------------------------------------------------------

    def _run(self, index: int, kind: str, rps: float) -> None:
        rng = random.Random(f"{self.run_id}-{index}")
        act: Callable[[httpx2.Client, int], None] = {
            "recommend": lambda c, _: self._recommend(c, rng),
            "events": lambda c, k: self._send_batch(c, rng, f"{index}-{k}"),
        }.get(kind, lambda c, _: self._probe(c, kind))
        interval = 1.0 / rps
        with httpx2.Client(base_url=self.base_url, timeout=TIMEOUT_S) as client:
            k = 0
            while (due := k * interval) < self.seconds:
                self.sleep_until(due)
                act(client, k)
                k += 1

    def _request(
        self, client: httpx2.Client, endpoint: str, method: str, path: str, body: object = None
    ) -> Sample:
        started = self.now()
        t = time.perf_counter()
        try:
            if body is None:
                response = client.request(method, path)
            else:
                response = client.request(
                    method,
                    path,
                    content=msgspec.json.encode(body),
                    headers={"content-type": "application/json"},
                )
            status, error = response.status_code, _error_of(response)
            sample = Sample(endpoint, started, time.perf_counter() - t, status, error)
        except httpx2.HTTPError as exc:
            sample = Sample(endpoint, started, time.perf_counter() - t, 0, type(exc).__name__)
        with self._lock:
            self.samples.append(sample)
        return sample

    def _recommend(self, client: httpx2.Client, rng: random.Random) -> None:
        with self._lock:
            known = self.batches[-50:]
        # Half for users the load has sent events for (their features are read), half cold.
        user = rng.choice(known).user if known and rng.random() < 0.5 else f"cold-{rng.random()}"
        self._request(client, "recommend", "POST", "/v1/recommend", {"user_id": user, "n": 10})

    def _probe(self, client: httpx2.Client, kind: str) -> None:
        self._request(client, kind, "GET", "/openapi.json" if kind == "openapi" else f"/{kind}")

    def _send_batch(self, client: httpx2.Client, rng: random.Random, name: str) -> None:
        user = f"fault-{self.run_id}-{name}"
        batch = Batch(user, [f"{user}-e{i}" for i in range(CLICKS)])
        with self._lock:
            self.batches.append(batch)
        ts = time.time()
        body = {
            "events": [
                {"event_id": e, "user_id": user, "item_id": rng.choice(self.items)}
                | {"type": "click", "ts": ts + i * 0.001}
                for i, e in enumerate(batch.event_ids)
            ]
        }
        give_up = self.now() + self.resend_s
        while True:
            answer = self._request(client, "events", "POST", "/v1/events", body)
            batch.answers.append(answer)
            if answer.status not in (0, 429, 503) or self.now() > give_up:
                return
            time.sleep(0.5)  # the same ids again, as a client is told to
