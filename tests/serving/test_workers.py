"""`tastemaker serve --workers N`: the supervisor deals connections to its worker processes
round-robin, starts a dead worker again, and stops when a worker cannot start."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from tastemaker.catalog import Catalog
from tastemaker.config import StoreConfig, dump_config
from tastemaker.testing.servers import free_port, wait_for_http
from tests.conftest import make_config, wait_until

pytestmark = pytest.mark.slow


def write_config(tmp_path: Path, catalog: Catalog, port: int, **sections: object) -> Path:
    config = make_config(tmp_path, catalog, **sections)
    serving = msgspec.structs.replace(config.serving, port=port)
    stream = msgspec.structs.replace(config.stream, run_in_server=False)
    return dump_config(
        msgspec.structs.replace(config, serving=serving, stream=stream), tmp_path / "c.toml"
    )


def serve(path: Path, workers: int, stderr: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    argv = ["serve", "--config", str(path), "--workers", str(workers)]
    return subprocess.Popen(
        [sys.executable, "-m", "tastemaker", *argv],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def served(tmp_path: Path, catalog: Catalog) -> Iterator[int]:
    """A `serve --workers 2` on a free port; yields the port."""
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        server = serve(write_config(tmp_path, catalog, port), 2, stderr=err.fileno())
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", server, timeout=60, log=log)
        yield port
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, log.read_text()


def pid_of(conn: http.client.HTTPConnection) -> int:
    """The pid of the worker answering on this (keep-alive) connection."""
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200
    pid: int = msgspec.json.decode(body)["pid"]
    return pid


def test_keep_alive_connections_are_dealt_evenly_over_the_workers(served: int) -> None:
    conns = [http.client.HTTPConnection("127.0.0.1", served, timeout=10) for _ in range(8)]
    try:
        pids = [pid_of(c) for c in conns]
        # Each connection stays with its worker; the eight are four and four.
        assert [pid_of(c) for c in conns] == pids
        assert sorted(Counter(pids).values()) == [4, 4]
        assert os.getpid() not in pids
    finally:
        for c in conns:
            c.close()


def test_a_killed_worker_is_started_again_and_connections_go_to_the_live_ones(
    served: int,
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", served, timeout=10)
    victim = pid_of(conn)
    conn.close()
    os.kill(victim, signal.SIGKILL)
    # A connection dealt while the worker is being killed dies with it (its clients see a
    # reset, as with any server); once the supervisor has seen it exit, none is dealt to it.
    wait_until(lambda: gone(victim), timeout=10)

    def answers() -> set[int]:
        pids = set()
        for _ in range(6):
            c = http.client.HTTPConnection("127.0.0.1", served, timeout=10)
            try:
                pids.add(pid_of(c))
            finally:
                c.close()
        return pids

    # New connections are answered throughout (never given to the dead worker), and a new
    # worker takes the dead one's place.
    seen: list[set[int]] = []

    def both_workers_answer() -> bool:
        seen.append(answers())
        return len(seen[-1]) == 2

    wait_until(both_workers_answer, timeout=60, interval=0.2)
    assert all(victim not in pids for pids in seen)
    # Counted once, in the metrics of the deployment (summed over its processes).
    conn = http.client.HTTPConnection("127.0.0.1", served, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    assert "\ntastemaker_worker_restarts_total 1.0\n" in text


def test_serve_stops_when_a_worker_cannot_start(tmp_path: Path, catalog: Catalog) -> None:
    """Nothing listens at the store's URL: the workers fail at start, and so does serve."""
    port = free_port()
    path = write_config(
        tmp_path, catalog, port, store=StoreConfig(url=f"redis://127.0.0.1:{free_port()}/0")
    )
    server = serve(path, 2, stderr=subprocess.PIPE)
    try:
        _, err = server.communicate(timeout=60)
    finally:
        server.kill()
    assert server.returncode != 0
    assert b"exited with status" in err
