"""The stream processor: log -> dedup -> sessionize -> aggregate -> one store write -> commit.

Exactly-once effect on an at-least-once log, twice over:
- the log position a batch ends at is written in the same store write as the state it
  produced (one LMDB transaction embedded, one MULTI/EXEC on a standalone Redis), and a
  restarted processor resumes from the store's position: a batch is never applied twice;
- the ids of applied events are written in that same write as the store's idempotency keys,
  so an event a client sent twice (at-least-once delivery upstream) counts once within
  `stream.dedup_window_s`.
The log's own committed offset is written after, for lag monitoring.

This module is the loop: polling, partition ownership, rewinds and acknowledgements. A
batch's effect is computed by `MicrobatchFold` (`stream/microbatch.py`), written through the
write path chosen for the store (`stream/writes.py`), sized by `BatchSizer`
(`stream/batching.py`), with the garbage collector paused (`stream/collector.py`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from tastemaker.catalog import Catalog
from tastemaker.config import Config
from tastemaker.events import Event
from tastemaker.events.tombstones import has_tombstones, without_erased
from tastemaker.features import Popularity
from tastemaker.features.layout import OFFSETS, offsets_row, shard_column, user_row
from tastemaker.log import EventLog, LogConsumer, LogRecord
from tastemaker.metrics import METRICS
from tastemaker.store import Cell, Mutation, OnlineStore
from tastemaker.stream.batching import BatchSizer
from tastemaker.stream.collector import PausedCollector, collector_paused
from tastemaker.stream.covisitation import NO_PAIRS
from tastemaker.stream.item_stats import ItemStats
from tastemaker.stream.microbatch import Computed, MicrobatchFold
from tastemaker.stream.writes import BatchWrites, open_writes

__all__ = ["BatchResult", "Shard", "StreamProcessor"]

log = logging.getLogger(__name__)


class BatchResult:
    """What one microbatch did."""

    __slots__ = ("duplicates", "events", "last_offset", "partition", "users")

    def __init__(
        self, events: int, duplicates: int, users: set[str], last_offset: int, partition: int = 0
    ) -> None:
        self.events = events
        self.duplicates = duplicates
        self.users = users
        self.last_offset = last_offset
        self.partition = partition


class Shard:
    """What one log partition's stream owns: the position its stored state reflects and its
    share of the item statistics. Each partition has one reader at a time, so its share has
    one writer."""

    __slots__ = ("items", "partition", "position")

    def __init__(self, partition: int, position: int, items: ItemStats) -> None:
        self.partition = partition
        self.position = position
        self.items = items


class _Done(NamedTuple):
    """What is left to do once a batch's store write has landed."""

    shard: Shard
    last_offset: int
    records: int
    events: int
    users: set[str]
    newest_ts: dict[str, float]
    started: float


class StreamProcessor:
    """Consumes the event log as member `config.stream.member` of consumer group
    `config.stream.group`, one microbatch of one partition at a time."""

    def __init__(
        self,
        config: Config,
        log_: EventLog,
        store: OnlineStore,
        catalog: Catalog,
        on_users_changed: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.config = config
        self.log = log_
        self.store = store
        self.catalog = catalog
        self.on_users_changed = on_users_changed
        self.partitions = log_.partitions
        self.member = config.stream.member or f"{socket.gethostname()}-{os.getpid()}"
        self._consumer: LogConsumer | None = None
        self._owned: frozenset[int] = frozenset()  # the assignment `_follow_assignment` saw
        self.shards: dict[int, Shard] = {}
        # drain() and run() overlap each batch's store write with the next batch's work on a
        # store that prepares writes (`writes.PipelinedWrites`); reads go through the write.
        self._writes: BatchWrites[_Done] = open_writes(store, self._landed, self._failed)
        self._fold = MicrobatchFold(config, catalog)
        self._shard = self._load_shard(0) if self.partitions == 1 else None
        if getattr(store, "is_cluster", False):
            log.warning(
                "the online store is a Redis Cluster: a batch's writes to several nodes are not "
                "atomic together, so a crash mid-write can lose or double-count that batch "
                "(exactly-once holds on standalone Redis and the embedded store; docs/stream.md)"
            )
        self._stop = threading.Event()
        self._next_catalog: Catalog | None = None
        self._lag_at = 0.0
        self._sizer = BatchSizer(config.stream.batch_size, config.stream.batch_target_s)

    # The single-partition view (the embedded log, the offline replay).
    @property
    def position(self) -> int:
        return self._one().position

    @property
    def popularity(self) -> Popularity:
        return self._one().items.popularity

    @property
    def trending(self) -> Popularity:
        return self._one().items.trending

    @property
    def in_flight(self) -> bool:
        """Whether a batch's store write is in flight (sent, or to be sent, not waited for)."""
        return self._writes.in_flight is not None

    def _one(self) -> Shard:
        return self.shards[0] if self.partitions == 1 else self._current()

    def _current(self) -> Shard:
        if self._shard is None:
            raise RuntimeError("no partition is being processed")
        return self._shard

    @property
    def consumer(self) -> LogConsumer:
        """This processor's membership in the group, joined on first use."""
        if self._consumer is None:
            self._consumer = self.log.consumer(self.config.stream.group, self.member)
        return self._consumer

    def follow_catalog(self, catalog: Catalog) -> None:
        """Switch to `catalog` before the next microbatch (safe from another thread)."""
        self._next_catalog = catalog

    def set_catalog(self, catalog: Catalog) -> None:
        """Follow the living catalog: rows never move, new items get empty popularity."""
        for shard in self.shards.values():
            shard.items.set_catalog(catalog)
        self.catalog = catalog
        self._fold.set_catalog(catalog)

    def _load_shard(self, partition: int) -> Shard:
        """A partition's state as stored: its position (the log's committed offset can only
        lag behind it: it is written after the store) and its item statistics."""
        group = self.config.stream.group
        row = offsets_row(group)
        offsets = self.store.get([row], [OFFSETS]).get(row, {}).get(OFFSETS, {})
        cell = offsets.get(shard_column("log", partition, self.partitions))
        stored = 0 if cell is None else int(cell.value)
        position = max(stored, self.log.committed(group).get(partition, 0))
        end = self.log.end_offsets().get(partition, 0)
        if position > end:
            # The log lost records this state includes (its tail, to a power loss with
            # fsync "never"), or was emptied or recreated: its new records may reuse offsets
            # at or before the position, and would be skipped as applied. Every record there
            # is read instead; those applied before are dropped by event id.
            log.warning(
                "partition %d: the stored position %d is past the log's newest record %d "
                "(the log lost records or was recreated); reading it from its start",
                partition,
                position,
                end,
            )
            position = 0
        items = ItemStats.load(
            self.config, self.catalog, self.store, partition, self.partitions, reader=self._writes
        )
        shard = self.shards[partition] = Shard(partition, position, items)
        return shard

    # -- one microbatch -------------------------------------------------------------------

    def _follow_assignment(self) -> None:
        """Drop the state of partitions this member no longer owns (another member writes
        them now), and of those it has just been given: another member may have written them
        since this one loaded them (a standby of a one-partition log loads partition 0 when
        it starts). A partition's state is loaded again at its first batch."""
        owned = self.consumer.assignment()
        changed = owned ^ self._owned
        self._owned = owned
        for p in changed:
            self.shards.pop(p, None)
            if p == 0 and self.partitions == 1:
                self._shard = None
        if self.partitions == 1 and 0 not in self.shards:
            self._shard = self._load_shard(0)  # the single-partition view needs one

    def process_once(self) -> BatchResult | None:
        """Read and apply one microbatch of one partition, and write its state before
        returning; None when the partitions this member owns have nothing new."""
        with collector_paused():
            return self._process_once(overlap=False, merge_after_s=0.0)

    def _process_once(self, *, overlap: bool, merge_after_s: float) -> BatchResult | None:
        """One microbatch. With `overlap`, on a pipelined write path (Redis), its store
        write is left in flight: the next call sends it after its own reads, computes while
        the server applies it, then waits for it before starting its own. On Redis most of
        a write's time is waiting for the server, which the next batch's computation
        covers. When the log has nothing new, co-visitation pairs that have waited
        `merge_after_s` are merged into the maps."""
        started = time.perf_counter()
        records = self._poll(started)
        if not records:
            self.flush()
            self._merge_waiting(merge_after_s)
            self._report_lag()
            return None
        p = records[0].partition
        shard = self._batch_shard(records)
        if shard is None:
            return None
        self._shard = shard
        last_offset = records[-1].offset
        # At-least-once: a record this state already reflects (a batch applied before a crash,
        # redelivered or taken over from a dead member) is skipped, not applied again.
        fresh_records = self._unapplied(records, shard.position)
        computed = Computed([], [], {})
        try:
            if fresh_records:
                computed = self._compute(shard, fresh_records, last_offset)
            users = set(computed.newest_ts)
            n_events = len(computed.seen)
            done = _Done(
                shard, last_offset, len(records), n_events, users, computed.newest_ts, started
            )
            self._writes.write(computed.mutations, computed.seen, done, overlap=overlap)
        except BaseException:
            # The batch is read again, and the partition's item shares (updated in memory
            # before the failed write) are reloaded from the store.
            with contextlib.suppress(BaseException):
                self.flush()
            self._rewind(p)
            raise
        return BatchResult(n_events, len(fresh_records) - n_events, users, last_offset, p)

    def _poll(self, started: float) -> list[LogRecord]:
        """The next batch's records, after following a new catalog and the assignment."""
        if (pending := self._next_catalog) is not None:
            self.flush()
            self._next_catalog = None
            self.set_catalog(pending)
        self._follow_assignment()
        limit = self._sizer.limit(started)
        METRICS.batch_limit.set(limit)
        records = self.consumer.poll(limit)
        self._sizer.polled(started, len(records), limit)
        return records

    def _compute(self, shard: Shard, records: list[LogRecord], last_offset: int) -> Computed:
        """The effect of a batch's unapplied records, with the position it reaches: that
        travels in the same store write as the state it produced, so after a crash the state
        and the position agree, whatever the log's commit."""
        s = self.config.stream
        column = shard_column("log", shard.partition, self.partitions)
        position = Mutation(
            offsets_row(s.group), OFFSETS, {column: Cell(float(last_offset), last_offset)}
        )
        events = [r.event for r in records]
        if has_tombstones(events):
            events = self._erase(events)
        merge = len(shard.items.pending) + 1 >= s.covis_fold_batches
        covis = merge and self._writes.read_ahead
        reads = self._fold.read(self._writes, events, shard.items, covis=covis)
        self._writes.send()  # the previous batch's write: the server runs it meanwhile
        return self._fold.compute(events, [position], reads, shard.items, merge=merge)

    def _erase(self, events: list[Event]) -> list[Event]:
        """Apply the batch's erasure tombstones (`events.tombstones`): the previous write
        lands, then the erased users' rows are deleted, before this batch reads any state."""
        kept, users = without_erased(events)
        self.flush()
        self.store.delete_rows([user_row(u) for u in sorted(users)])
        if self.on_users_changed is not None:
            self.on_users_changed(users)
        return kept

    def _batch_shard(self, records: list[LogRecord]) -> Shard | None:
        """The state of the partition of a batch just polled, loaded if need be; None when
        the partition was taken away since the poll (the new owner reads the records again).
        If this fails the records are read again: the consumer's read position is past them,
        and the next batch's stored position would be too."""
        p = records[0].partition
        unread = True
        try:
            if p not in self.consumer.assignment():
                if self.partitions > 1:
                    self.shards.pop(p, None)
                return None
            in_flight = self._writes.in_flight
            if p not in self.shards and in_flight is not None and in_flight.shard.partition == p:
                unread = False  # a flush that fails rewinds `p` to its stored position itself
                self.flush()  # the partition's stored position and shares are in that write
                unread = True
            return self.shards.get(p) or self._load_shard(p)
        except BaseException:
            if unread:
                self.consumer.seek(p, records[0].offset - 1)
            raise

    def flush(self) -> None:
        """Send the store write in flight, if any, wait for it and finish its batch (commit
        its log position, metrics, `on_users_changed`). A write that failed is raised here,
        after its partition was rewound to the stored position to be read again."""
        self._writes.flush()

    def _landed(self, done: _Done) -> None:
        self._finish(done, time.time())

    def _failed(self, done: _Done) -> None:
        self._rewind(done.shard.partition)

    def _finish(self, done: _Done, written_at: float) -> None:
        """A batch's state is in the store: acknowledge it to the log and report it."""
        p = done.shard.partition
        self.consumer.commit(p, done.last_offset)  # acknowledges; for lag and other readers
        done.shard.position = done.last_offset
        METRICS.events_processed.inc(done.events)
        METRICS.duplicates_dropped.inc(done.records - done.events)
        METRICS.batch_seconds.observe(time.perf_counter() - done.started)
        METRICS.batch_events.observe(done.records)
        newest = np.fromiter(done.newest_ts.values(), np.float64, len(done.newest_ts))
        METRICS.freshness_seconds.observe_many(np.maximum(written_at - newest, 0.0))  # a row each
        self._report_lag()
        if done.users and self.on_users_changed is not None:
            self.on_users_changed(done.users)

    def _rewind(self, p: int) -> None:
        """Read partition `p` again from its stored position, with its item shares reloaded
        from the store (they were updated in memory before the write that did not land)."""
        shard = self.shards.pop(p, None)  # dropped first, whatever the seek does
        if self.partitions == 1:
            self._shard = None
        if shard is not None:
            self.consumer.seek(p, shard.position)
        if self.partitions == 1:
            self._shard = self._load_shard(0)

    @staticmethod
    def _unapplied(records: list[LogRecord], position: int) -> list[LogRecord]:
        if records[0].offset > position:
            return records
        return [r for r in records if r.offset > position]

    def _report_lag(self) -> None:
        """Lag per partition on /metrics, at most once a second (it can cost a round trip)."""
        now = time.monotonic()
        if now - self._lag_at < 1.0:
            return
        self._lag_at = now
        for p, lag in self.log.lag(self.config.stream.group).items():
            METRICS.lag_events.labels(str(p)).set(lag)

    def apply_events(
        self, events: Sequence[Event], extra: Sequence[Mutation] = ()
    ) -> tuple[int, set[str]]:
        """Apply events (duplicates by id dropped) to the single partition's state, and write
        the state they produce, with `extra` mutations, in one store write. Returns the
        number applied and their users. The garbage collector is paused meanwhile."""
        with collector_paused():
            listed = list(events)
            items = self._current().items
            covis = self._writes.read_ahead
            reads = self._fold.read(self._writes, listed, items, covis=covis)
            computed = self._fold.compute(listed, extra, reads, items, merge=True)
            self.flush()
            if computed.mutations:
                self.store.write(computed.mutations, seen=computed.seen)
            return len(computed.seen), set(computed.newest_ts)

    def _merge_waiting(self, after_s: float) -> None:
        """The log ran dry: merge the co-visitation pairs that have waited `after_s` in each
        partition this member owns into the neighbour maps, so the maps catch up while there
        is time. A partition not loaded (just taken over from a member that died, or rewound
        after a failed write) is loaded first: pairs may wait in the store for it."""
        for p in sorted(self.consumer.assignment()):
            shard = self.shards.get(p) or self._load_shard(p)
            items = shard.items
            if not items.pending or time.monotonic() - items.pending_since < after_s:
                continue
            self._shard = shard
            try:
                self.store.write(items.merged(NO_PAIRS, items.clock))
            except BaseException:
                self._rewind(p)
                raise

    # -- running --------------------------------------------------------------------------

    def drain(self, timeout_s: float = 60.0) -> int:
        """Process until the group has committed everything in the log (or `timeout_s`
        passes); returns the number of events applied. On a log whose group membership
        settles asynchronously (Kafka's first join takes seconds) it waits for it."""
        total = 0
        deadline = time.monotonic() + timeout_s
        collector = PausedCollector()
        try:
            while True:
                # Idle: the last write is flushed and the waiting pairs merged.
                result = self._overlapped(collector, merge_after_s=0.0)
                if result is not None:
                    total += result.events
                    continue
                if sum(self.log.lag(self.config.stream.group).values()) == 0:
                    return total
                if time.monotonic() > deadline:
                    return total
                time.sleep(0.02)
        finally:
            collector.release(held=False)

    def _overlapped(
        self, collector: PausedCollector, *, merge_after_s: float
    ) -> BatchResult | None:
        """One batch whose write may stay in flight, under `collector`'s pause."""
        collector.pause()
        try:
            return self._process_once(overlap=True, merge_after_s=merge_after_s)
        finally:
            collector.release(held=self.in_flight)

    def run(self) -> None:
        """Process until `stop()`; sleeps `poll_interval_s` when idle. Errors are logged and
        retried after a pause, never allowed to kill the worker silently. Each batch's
        store write overlaps the next batch's reading and computing; the last one is waited
        for when the log runs dry and before returning.

        Co-visitation pairs waiting when the log runs dry are merged into the maps once they
        have waited `covis_merge_after_s`, not at every pause: under a steady load the log
        runs dry between most batches, and a merge there is a store write of its own that
        delays the next batch (freshness suffers). Those still waiting at the end are merged
        on the way out."""
        merge_after_s = self.config.stream.covis_merge_after_s
        collector = PausedCollector()
        try:
            while not self._stop.is_set():
                try:
                    result = self._overlapped(collector, merge_after_s=merge_after_s)
                except Exception:
                    log.exception("stream batch failed; retrying")
                    METRICS.stream_errors.inc()
                    collector.release(held=False)
                    self._stop.wait(1.0)
                    continue
                if result is None:
                    self._stop.wait(self.config.stream.poll_interval_s)
            self._flush_quietly()
        finally:
            collector.release(held=False)  # whatever ended the loop
        try:
            self._merge_waiting(0.0)
        except Exception:
            log.exception("merging the waiting co-visitation pairs failed; they stay stored")
            METRICS.stream_errors.inc()

    def stop(self) -> None:
        self._stop.set()

    def _flush_quietly(self) -> None:
        """Flush on the way out; a write that fails now is logged (its batch stays unapplied
        and is read again by whoever owns the partition next)."""
        try:
            self.flush()
        except Exception:
            log.exception("the last stream batch's store write failed; it will be read again")
            METRICS.stream_errors.inc()

    def close(self) -> None:
        """Wait for the write in flight, then leave the consumer group: its partitions go to
        the other members at once."""
        self._flush_quietly()
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
