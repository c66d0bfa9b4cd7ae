"""Faults under HTTP load, one a test: Valkey killed and restarted from its AOF, Valkey hung,
the stream process killed three times, an API worker killed, the embedded log's disk full.

Each runs `tastemaker serve --workers 2` with one stream process under a 12 s load (40
recommends and 40 event batches of 10 clicks a second, each batch for a user of its own),
breaks one part from second 3 or so, and asserts (tests/faults/checks.py):
- no answer outside what the endpoint may give: no 5xx but 503 `log_unavailable` on an
  event POST, no lost connection (but the killed worker's), `/livez` always 200;
- p99 latency during the fault within `Bounds` (recommend 2 s, events 6.5 s, /healthz 2 s,
  /livez and /openapi.json 1 s);
- accepted == applied: once the stream has drained (`/healthz` lag 0), every batch answered
  202 is applied exactly once, and one never accepted once or not at all (its sends refused
  or lost were sent again with the same event ids).
"""

from __future__ import annotations

import os
import signal
import time

import httpx2
import pytest

from tests.faults.checks import Window, judge, summary
from tests.faults.conftest import OnDisk, OnValkey
from tests.faults.harness import Served, descendants
from tests.faults.load import Load

pytestmark = pytest.mark.slow


def _verdict(load: Load, served: Served, fault: Window, problems: list[str]) -> None:
    text = summary(load, fault)
    print(text)  # the numbers, for `pytest -s`
    assert not problems, "\n".join(
        ["", *problems, "", text, "", "serve's output ends:", served.log_tail(15)]
    )


def test_valkey_killed_and_restarted_from_its_aof(on_valkey: OnValkey) -> None:
    load = Load(on_valkey.served.url, on_valkey.items)
    load.start()
    load.sleep_until(3.0)
    start = load.now()
    on_valkey.valkey.kill()
    load.sleep_until(8.0)
    on_valkey.valkey.start()  # same port, same directory: the AOF is loaded
    fault = Window(start, load.now() + 1.0)
    load.join()
    _verdict(load, on_valkey.served, fault, judge(load, on_valkey.served.url, fault))


def test_valkey_hung(on_valkey: OnValkey) -> None:
    load = Load(on_valkey.served.url, on_valkey.items)
    load.start()
    load.sleep_until(3.0)
    start = load.now()
    on_valkey.valkey.hang()  # SIGSTOP: connections stay open, nothing answers
    load.sleep_until(10.0)
    on_valkey.valkey.resume()
    fault = Window(start, load.now() + 1.0)
    load.join()
    _verdict(load, on_valkey.served, fault, judge(load, on_valkey.served.url, fault))


def _restarted(served: Served, killed: set[int], within: float) -> int | None:
    """The pid of a stream process started in place of the killed ones, if one is within
    `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        fresh = [p for p in served.stream_pids() if p not in killed]
        if fresh:
            return fresh[0]
        time.sleep(0.05)
    return None


def test_stream_process_killed_three_times(on_valkey: OnValkey) -> None:
    served = on_valkey.served
    pids = served.stream_pids()
    assert len(pids) == 1, f"serve --stream-workers 1 runs one stream process, found {pids}"
    load = Load(served.url, on_valkey.items)
    load.start()
    problems, killed = [], set[int]()
    pid: int | None = pids[0]
    for at in (2.0, 5.0, 8.0):
        load.sleep_until(at)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
        # Supervised: started again within a second; 5 s allowed on a loaded CI machine.
        if (pid := _restarted(served, killed, within=5.0)) is None:
            problems.append(f"the stream process killed at {at:.0f} s was not restarted")
            break
    fault = Window(2.0, load.now() + 1.0)
    load.join()
    problems += judge(load, served.url, fault)
    _verdict(load, served, fault, problems)


def _worker_pids(served: Served, connections: int = 8) -> set[int]:
    return {served.worker_pid() for _ in range(connections)}


def test_api_worker_killed(on_valkey: OnValkey) -> None:
    served = on_valkey.served
    load = Load(served.url, on_valkey.items)
    load.start()
    load.sleep_until(4.0)
    victim = served.worker_pid()
    killed_at = load.now()
    os.kill(victim, signal.SIGKILL)
    load.join()
    # Requests in flight on the killed worker's connections are lost with it (as with any
    # server); nothing started a second after the kill may be.
    problems = judge(
        load,
        served.url,
        Window(killed_at, killed_at + 3.0),
        lost_connections=Window(killed_at - 0.5, killed_at + 1.0),
    )
    pids = _worker_pids(served)
    if len(pids) != 2 or victim in pids:
        problems.append(f"after the kill of {victim} the workers answering are {sorted(pids)}")
    _verdict(load, served, Window(killed_at, killed_at + 3.0), problems)


def test_embedded_log_disk_full(on_full_disk: OnDisk) -> None:
    served, disk = on_full_disk.served, on_full_disk.disk
    streams = set(served.stream_pids())
    workers = [p for p in descendants(served.proc.pid) if p not in streams]
    load = Load(served.url, on_full_disk.items)
    load.start()
    load.sleep_until(3.0)
    start = load.now()
    disk.fill(victims=workers)
    load.sleep_until(8.0)
    disk.free()
    fault = Window(start, load.now() + 1.0)
    load.join()
    problems = judge(load, served.url, fault)
    during = [s for s in load.samples if s.endpoint == "events" and fault.holds(s)]
    if all(s.status == 202 for s in during):
        problems.append(f"the disk fault ({disk.how}) refused no event POST: it did not bite")
    _verdict(load, served, fault, problems)


def test_load_sends_what_it_is_told(on_valkey: OnValkey) -> None:
    """The harness itself: with no fault every check passes, and each batch is one user's
    ten clicks, applied once."""
    load = Load(on_valkey.served.url, on_valkey.items, seconds=3.0)
    load.start()
    load.join()
    fault = Window(0.0, 3.0)
    problems = judge(load, on_valkey.served.url, fault)
    with httpx2.Client(base_url=on_valkey.served.url) as client:
        assert client.get("/healthz").status_code == 200
    _verdict(load, on_valkey.served, fault, problems)
