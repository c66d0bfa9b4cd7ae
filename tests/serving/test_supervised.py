"""`tastemaker serve --workers 2` with a stream process, as an operator runs it: the
supervisor starts a killed stream process again (one that cannot start, ever more slowly),
and one scrape of `/metrics` on any worker reports the whole deployment."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tastemaker.catalog import Catalog
from tastemaker.config import dump_config
from tastemaker.serving.workers import _metrics_directory, _Supervisor, restart_delay
from tastemaker.testing.servers import free_port, wait_for_http
from tests.conftest import make_config, wait_until

pytestmark = pytest.mark.slow


@dataclass
class Deployment:
    port: int
    server: subprocess.Popen[bytes]
    items: list[str]
    log: Path

    def request(self, method: str, path: str, body: object = None) -> tuple[int, bytes, int]:
        """(status, body, pid of the worker that answered), on a new connection: dealt to
        the workers in turn. The pid comes from `/healthz` on the same connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", "/healthz")
            health = conn.getresponse()
            pid: int = msgspec.json.decode(health.read())["pid"]
            payload = None if body is None else msgspec.json.encode(body)
            headers = {} if body is None else {"Content-Type": "application/json"}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, response.read(), pid
        finally:
            conn.close()

    def post_clicks(self, user: str, n: int) -> None:
        events = [
            {
                "event_id": f"{user}-{i}",
                "user_id": user,
                "item_id": self.items[i % len(self.items)],
                "type": "click",
                "ts": time.time(),
            }
            for i in range(n)
        ]
        status, body, _ = self.request("POST", "/v1/events", {"events": events})
        assert status == 202, body

    def clicks(self, user: str) -> int:
        status, body, _ = self.request("GET", f"/v1/users/{user}/features")
        assert status == 200, body
        counts = msgspec.json.decode(body)["features"].get("profile", {}).get("counts")
        return 0 if counts is None else int(counts["value"].get("click", 0))

    def processed(self) -> float:
        return self.scrape()[0].get("tastemaker_events_processed_total{}", 0.0)

    def scrape(self) -> tuple[dict[str, float], int]:
        """Every sample of one `/metrics` answer by name and labels, and the worker's pid."""
        status, body, pid = self.request("GET", "/metrics")
        assert status == 200
        samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}"] = s.value
        return samples, pid


def child_processes(parent: int) -> dict[int, str]:
    """The live children of `parent` (pid -> command line), from /proc. A zombie (exited,
    not reaped by its parent) is left out: it would be shown as `<defunct>`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # exited meanwhile
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent and state != "Z":
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode()
    return found


def stream_pids(server: subprocess.Popen[bytes]) -> list[int]:
    return [pid for pid, cmd in child_processes(server.pid).items() if " stream " in cmd]


@pytest.fixture
def deployment(tmp_path: Path, catalog: Catalog) -> Iterator[Deployment]:
    """`serve --workers 2 --log-format json`: two API workers and one stream process
    (stream.run_in_server)."""
    port = free_port()
    config = make_config(tmp_path, catalog)
    config = msgspec.structs.replace(
        config, serving=msgspec.structs.replace(config.serving, port=port)
    )
    path = dump_config(config, tmp_path / "c.toml")
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "tastemaker", "serve", "--config", str(path)),
                *("--workers", "2", "--log-format", "json"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err.fileno(),
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", server, timeout=60, log=log)
        yield Deployment(port, server, list(catalog.ids[:20]), log)
    finally:
        children = child_processes(server.pid)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, log.read_text()
    assert len(children) == 3  # it stopped its two workers and its stream process
    wait_until(lambda: not any(map(alive, children)), timeout=10)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_stream_process_is_started_again_and_applies_later_events(
    deployment: Deployment,
) -> None:
    server = deployment.server
    wait_until(lambda: len(stream_pids(server)) == 1, timeout=10)
    deployment.post_clicks("before", 3)  # applied by the first stream process
    wait_until(lambda: deployment.clicks("before") == 3, timeout=60, interval=0.2)
    wait_until(lambda: deployment.processed() == 3, timeout=10, interval=0.1)
    for round_ in range(3):
        (victim,) = stream_pids(server)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        # Reaped (no `<defunct>`) and replaced by a new stream process.
        wait_until(
            lambda: stream_pids(server) not in ([], [victim]),  # noqa: B023
            timeout=5,
            interval=0.05,
        )
        assert time.monotonic() - killed_at < 3.0  # within a second, unless the machine lags
        assert victim not in child_processes(server.pid)
        user = f"after-kill-{round_}"
        deployment.post_clicks(user, 3)
        wait_until(lambda: deployment.clicks(user) == 3, timeout=60, interval=0.2)  # noqa: B023
        wait_until(lambda: deployment.processed() == 6 + 3 * round_, timeout=10, interval=0.1)  # noqa: B023
    samples, _ = deployment.scrape()
    assert samples["tastemaker_stream_restarts_total{}"] == 3
    assert samples["tastemaker_worker_restarts_total{}"] == 0
    # The dead processes' counts stay in the sums.
    assert samples["tastemaker_events_processed_total{}"] == 12
    # Every process logs JSON lines; the supervisor logged each restart.
    records = [msgspec.json.decode(line) for line in deployment.log.read_text().splitlines()]
    restarts = [r for r in records if r["message"].startswith("stream process 0 exited")]
    assert [(r["level"], r["logger"], r["pid"]) for r in restarts] == [
        ("WARNING", "tastemaker.serving.workers", server.pid)
    ] * 3
    assert "status -9" in restarts[0]["message"]


def test_every_scrape_reports_the_sum_over_the_processes(deployment: Deployment) -> None:
    for u in range(6):  # over new connections: half to each worker
        deployment.post_clicks(f"user-{u}", 4)

    wait_until(lambda: deployment.processed() == 24, timeout=60, interval=0.2)
    # The lag is measured about once a second by the stream process.
    wait_until(
        lambda: deployment.scrape()[0].get("tastemaker_stream_lag_events{partition=0}") == 0,
        timeout=10,
        interval=0.2,
    )
    pids = set()
    for _ in range(6):
        samples, pid = deployment.scrape()
        pids.add(pid)
        assert samples["tastemaker_events_processed_total{}"] == 24  # the stream process's
        assert samples["tastemaker_events_accepted_total{}"] == 24  # both workers'
        assert samples["tastemaker_stream_lag_events{partition=0}"] == 0
        assert samples["tastemaker_feature_freshness_seconds_count{}"] >= 6  # a row a user
        assert samples["tastemaker_stream_batch_events_count{}"] >= 1
        assert samples["tastemaker_stream_restarts_total{}"] == 0
    assert len(pids) == 2  # the scrapes were answered by both workers


@pytest.mark.parametrize(
    ("lived_s", "status", "backoff_s", "delay_s"),
    [
        (5.0, -9, 0.0, 0.0),  # killed: at once
        (0.4, -9, 0.0, 0.6),  # killed soon after its start: one start a second at most
        (5.0, 0, 0.0, 0.0),  # stopped
        (0.2, 2, 0.0, 1.0),  # failed at start: 1 s, then doubling
        (0.2, 2, 1.0, 2.0),
        (3.0, 2, 8.0, 10.0),  # at most 10 s
        (60.0, 1, 8.0, 0.0),  # failed after a while: at once, the backoff forgotten
    ],
)
def test_when_a_stream_process_is_started_again(
    lived_s: float, status: int, backoff_s: float, delay_s: float
) -> None:
    assert restart_delay(100.0, 100.0 + lived_s, status, backoff_s) == pytest.approx(delay_s)


def test_a_stream_process_that_cannot_start_is_retried_ever_more_slowly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stream process that exits with status 2 at once (as `tastemaker stream` does when
    its log is unreachable): started again after 1 s, 2 s, 4 s."""
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    command = [sys.executable, "-c", "raise SystemExit(2)"]
    try:
        with _metrics_directory() as directory:
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
            supervisor = _Supervisor("127.0.0.1", 0, 0, env, stream_command=command, streams=1)
            stop = threading.Timer(5.0, lambda: setattr(supervisor, "stopping", True))
            stop.start()
            supervisor.run()
            restarts = supervisor.metrics.stream_restarts.get()
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    waits = [r.getMessage().rsplit(" in ", 1)[1] for r in caplog.records if "exited" in r.message]
    assert waits[:3] == ["1.0 s", "2.0 s", "4.0 s"]
    assert restarts == 2  # at ~1 s and ~3 s; the next is due at ~7 s
