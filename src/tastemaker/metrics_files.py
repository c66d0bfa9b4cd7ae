"""The directory of prometheus-client's multiprocess mode under `tastemaker serve`: a dead
process's files folded into one, and scrapes that never see a fold half done.

Each process that ever ran leaves its counter and histogram files (64 KiB each), and every
scrape reads every file: a stream process restarted through an hour-long outage would leave
hundreds. So when the supervisor sees a child exit, it adds that child's counters and
histograms into `counter_dead.db` and `histogram_dead.db` and removes its files; the sums a
scrape reports do not change. The fold writes the new sums, then removes the dead files: a
scrape between the two steps would count the dead process twice, or, having listed a file
the fold removed, fail. So the fold holds an exclusive lock on a file of the directory and a
scrape a shared one (`DeploymentCollector`): scrapes wait only while a fold runs, a few
milliseconds after a process died; the fold does not wait for a scrape, it is tried again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

__all__ = ["DeploymentCollector", "fold_dead_process"]

_LOCK = "scrape.lock"  # not *.db: never read as metrics
_SUMMED = ("counter", "histogram", "summary")  # gauges of a dead process are dropped


@contextlib.contextmanager
def _locked(directory: str, operation: int) -> Iterator[None]:
    with open(os.path.join(directory, _LOCK), "ab") as lock:
        fcntl.flock(lock.fileno(), operation)
        yield  # closing the file releases the lock


class DeploymentCollector(MultiProcessCollector):
    """prometheus-client's collector over every process's files, read under the directory's
    shared lock."""

    def __init__(self, registry: CollectorRegistry | None, path: str | None = None) -> None:
        super().__init__(registry, path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Any]:
        with _locked(self._path, fcntl.LOCK_SH):
            return list(super().collect())  # type: ignore[no-untyped-call]


def fold_dead_process(pid: int, directory: str) -> bool:
    """Process `pid` exited: its `live*` gauges are dropped, and its counters and histograms
    added into the directory's `*_dead.db` files, its own removed. False if a scrape held the
    lock (the counters are then left for a later call: the supervisor never waits on a
    worker); called again once done, does nothing."""
    mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    files = [(typ, os.path.join(directory, f"{typ}_{pid}.db")) for typ in _SUMMED]
    files = [(typ, path) for typ, path in files if os.path.exists(path)]
    if not files:
        return True
    try:
        with _locked(directory, fcntl.LOCK_EX | fcntl.LOCK_NB):
            for typ, path in files:
                _fold(path, os.path.join(directory, f"{typ}_dead.db"))
    except BlockingIOError:
        return False
    return True


def _fold(dead: str, into: str) -> None:
    """`into` := `into` + `dead`, key by key (a key names the metric, sample and labels:
    equal keys are one series), through a temporary file renamed over `into`."""
    totals: dict[str, float] = {}
    for path in (into, dead):
        if os.path.exists(path):
            for key, value, _, _ in MmapedDict.read_all_values_from_file(path):  # type: ignore[no-untyped-call]
                totals[key] = totals.get(key, 0.0) + value
    temporary = into + ".tmp"  # not *.db: a scrape never reads it
    with contextlib.suppress(FileNotFoundError):
        os.remove(temporary)
    out = MmapedDict(temporary)  # type: ignore[no-untyped-call]
    try:
        for key, value in totals.items():
            out.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
    finally:
        out.close()  # type: ignore[no-untyped-call]
    os.replace(temporary, into)
    os.remove(dead)
