"""Python's cyclic garbage collector paused while the stream holds a microbatch's objects."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator

__all__ = ["MAX_PAUSE_S", "PausedCollector", "collector_paused"]

# How long `PausedCollector` may keep the collector paused across batches.
MAX_PAUSE_S = 10.0


class PausedCollector:
    """Python's cyclic garbage collector paused, for one batch (`collector_paused`) or over a
    run of overlapped batches (`drain`, `run`), and restored as `pause` found it. Resumed
    after every batch, it walked more than it had to: with a write in flight (Redis) the
    batch's cells, the log's buffered records and their entry ids are still alive then, and
    the first allocation after the resume walked all of them (a long young collection,
    once a batch). So over a run the
    collector resumes only once no write is in flight (the log ran dry, or the batch wrote in
    place), or after `MAX_PAUSE_S` of one pause. A drain makes no cyclic garbage per batch
    (a collection after a whole drain with the collector off finds none), so the longer pause
    costs no memory; other threads' cycles (the API in `serve`) wait for the resume."""

    def __init__(self) -> None:
        self._since: float | None = None  # when the pause began; None: not paused
        self._resume = False  # whether the collector was enabled when it began

    def pause(self) -> None:
        if self._since is None:
            self._resume = gc.isenabled()
            self._since = time.monotonic()
            gc.disable()

    def release(self, *, held: bool) -> None:
        """Resume the collector, unless the batch's objects are still `held` and the pause
        is younger than `MAX_PAUSE_S`."""
        if self._since is None or (held and time.monotonic() - self._since < MAX_PAUSE_S):
            return
        self._since = None
        if self._resume:
            gc.enable()


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused for one microbatch. A batch holds tens of
    thousands of young containers (events, states, cells, mutations) until its store write,
    and the collector walked them again and again as they piled up, a large share of a
    drain's time. Almost all of them die by
    reference counting when the batch ends; the few cycles wait for the next collection,
    which runs between batches. Nested pauses leave the collector as the outermost found it.
    It is paused for the whole process: in `serve` with the stream in a thread, the API
    threads' cycles are also collected after the batch (a batch takes well under a second)."""
    collector = PausedCollector()
    collector.pause()
    try:
        yield
    finally:
        collector.release(held=False)
