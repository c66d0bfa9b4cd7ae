"""The stream's write path, chosen once from the store: pipelined on a store with
`PreparedWrites` (Redis: a batch's write is applied by the server while the next batch is
computed), direct otherwise (the embedded store writes in place, Python work under the
GIL).

Either way the stream reads its stored state through the write in flight (`get`, `seen`):
its cells are newer than the stored ones, and the stream, their only writer, built them on
what it read. A batch's write `lands` (the callback: commit its log position, report it) or
`fails` (the callback: rewind its partition) before the next one starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Generic, Protocol, TypeVar

from tastemaker.store import Cell, Mutation, OnlineStore, PreparedWrite, PreparedWrites, RowData

__all__ = ["BatchWrites", "DirectWrites", "PipelinedWrites", "open_writes"]

D = TypeVar("D")


class BatchWrites(Protocol[D]):
    """A microbatch's store write, and the reads of the next batch. `D` is what the caller
    keeps of a batch until its write lands."""

    @property
    def read_ahead(self) -> bool:
        """Whether a batch's reads may wait behind a write in flight, so that it reads all
        it may need at once, before that write is sent."""

    @property
    def in_flight(self) -> D | None:
        """The batch whose write is in flight, if any."""

    def get(self, rows: Sequence[str], families: Iterable[str]) -> dict[str, RowData]: ...

    def seen(self, ids: list[str]) -> set[str]: ...

    def send(self) -> None:
        """Send the write in flight, if it was not sent (once the next batch has read)."""

    def write(self, mutations: list[Mutation], seen: list[str], done: D, *, overlap: bool) -> None:
        """Write a batch's effect after the write in flight lands; with `overlap`, it may
        stay in flight (until `flush`, or the next `write`)."""

    def flush(self) -> None:
        """Wait for the write in flight, if any: it lands, or fails and is raised."""


class DirectWrites(Generic[D]):
    """Each batch written in one call, in place."""

    read_ahead = False
    in_flight = None

    def __init__(self, store: OnlineStore, landed: Callable[[D], None]) -> None:
        self._store = store
        self._landed = landed

    def get(self, rows: Sequence[str], families: Iterable[str]) -> dict[str, RowData]:
        return self._store.get(rows, list(families))

    def seen(self, ids: list[str]) -> set[str]:
        return self._store.seen(ids)

    def send(self) -> None:
        pass

    def write(self, mutations: list[Mutation], seen: list[str], done: D, *, overlap: bool) -> None:
        del overlap
        if mutations:
            self._store.write(mutations, seen=seen)
        self._landed(done)

    def flush(self) -> None:
        pass


class _InFlight(Generic[D]):
    """A batch whose store write is encoded, then started (sent) once the next batch has
    read what it needs, and finished (its replies read) before that batch's own write.
    Until it lands, reads go through it: `cells` are the (row, family) cells it writes,
    `seen` the event ids it records."""

    __slots__ = ("cells", "done", "seen", "started", "write")

    def __init__(
        self,
        write: PreparedWrite,
        done: D,
        cells: dict[tuple[str, str], dict[str, Cell]],
        seen: set[str],
    ) -> None:
        self.write = write
        self.started = False
        self.done = done
        self.cells = cells
        self.seen = seen


class PipelinedWrites(Generic[D]):
    """A batch's write encoded now, sent once the next batch has done its reads (`send`),
    and its replies read before that batch's own write (`flush`), all on this thread. (A
    writer thread that sent it and waited took much longer than the server ran it, most
    likely waiting for the GIL each time it woke; sent from here, the write is done by the
    time the next batch is computed.)"""

    read_ahead = True

    def __init__(
        self,
        store: OnlineStore,
        prepared: PreparedWrites,
        landed: Callable[[D], None],
        failed: Callable[[D], None],
    ) -> None:
        self._store = store
        self._prepared = prepared  # the same store, as one that prepares writes
        self._landed = landed
        self._failed = failed
        self._job: _InFlight[D] | None = None

    @property
    def in_flight(self) -> D | None:
        return None if self._job is None else self._job.done

    def get(self, rows: Sequence[str], families: Iterable[str]) -> dict[str, RowData]:
        families = list(families)
        found = self._store.get(rows, families)
        job = self._job
        if job is None:
            return found
        pending = job.cells
        for row in rows:
            for family in families:
                cells = pending.get((row, family))
                if cells is not None:
                    data = found.setdefault(row, {})
                    stored = data.get(family)
                    data[family] = cells if stored is None else {**stored, **cells}
        return found

    def seen(self, ids: list[str]) -> set[str]:
        seen = self._store.seen(ids)
        if self._job is not None:
            seen.update(self._job.seen.intersection(ids))
        return seen

    def send(self) -> None:
        job = self._job
        if job is not None and not job.started:
            job.started = True
            job.write.start()

    def write(self, mutations: list[Mutation], seen: list[str], done: D, *, overlap: bool) -> None:
        if not (mutations and overlap):
            self.flush()  # the previous batch's write lands before this one's starts
            if mutations:
                self._store.write(mutations, seen=seen)
            self._landed(done)
            return
        # Encoded while the server may still apply the previous write, which lands before
        # this one is sent (`send`, after the next batch's reads).
        job = _InFlight(
            self._prepared.prepare_write(mutations, seen=seen),
            done,
            _cells_by_key(mutations),
            set(seen),
        )
        self.flush()
        self._job = job

    def flush(self) -> None:
        job, self._job = self._job, None
        if job is None:
            return
        try:
            job.write.finish()
        except BaseException:
            self._failed(job.done)
            raise
        self._landed(job.done)


def open_writes(
    store: OnlineStore, landed: Callable[[D], None], failed: Callable[[D], None]
) -> BatchWrites[D]:
    """The write path for `store`: pipelined where it prepares writes, direct otherwise."""
    if isinstance(store, PreparedWrites):
        return PipelinedWrites(store, store, landed, failed)
    return DirectWrites(store, landed)


def _cells_by_key(mutations: Iterable[Mutation]) -> dict[tuple[str, str], dict[str, Cell]]:
    """The cells a write stores per (row, family), mutations of the same one merged."""
    out: dict[tuple[str, str], dict[str, Cell]] = {}
    for m in mutations:
        key = (m.row, m.family)
        cells = out.get(key)
        out[key] = m.cells if cells is None else {**cells, **m.cells}
    return out
