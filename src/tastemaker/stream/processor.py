"""The stream processor: log -> dedup -> sessionize -> aggregate -> one store write -> commit.

Exactly-once effect on an at-least-once log, twice over:
- the log position a batch ends at is written in the same store write as the state it
  produced (one LMDB transaction embedded, one MULTI/EXEC on a standalone Redis), and a
  restarted processor resumes from the store's position: a batch is never applied twice;
- the ids of applied events are written in that same write as the store's idempotency keys,
  so an event a client sent twice (at-least-once delivery upstream) counts once within
  `stream.dedup_window_s`.
The log's own committed offset is written after, for lag monitoring.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import operator
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, cast

import numpy as np
import numpy.typing as npt

from tastemaker.catalog import Catalog
from tastemaker.config import Config
from tastemaker.events import Event
from tastemaker.events.tombstones import has_tombstones, without_erased
from tastemaker.features import Popularity, update_covisitation
from tastemaker.features.aggregations import DEFAULT_WEIGHTS
from tastemaker.features.base import TYPES, FactBatch, factorize
from tastemaker.features.layout import (
    COVIS,
    GLOBAL_ROW,
    OFFSETS,
    POPULAR,
    PROFILE,
    SESSION,
    STATS,
    item_row,
    offsets_row,
    pending_row,
    shard_column,
    shard_of,
    user_row,
)
from tastemaker.log import EventLog, LogConsumer, LogRecord
from tastemaker.metrics import METRICS
from tastemaker.store import (
    Cell,
    Mutation,
    OnlineStore,
    PreparedWrite,
    PreparedWrites,
    RowData,
)
from tastemaker.stream.sessions import assign_sessions

__all__ = ["BatchResult", "StreamProcessor"]

log = logging.getLogger(__name__)

# Session bookkeeping columns live beside the declared session features.
_SESSION_STATE = "_session"
# The declared session feature listing the session's items (co-visitation links new items
# to them across batches).
_SESSION_ITEMS = "session_items"
_TYPE_CODE = {t: i for i, t in enumerate(TYPES)}
# A feature with no stored cell, as `_apply` looks it up: no state, older than any event.
_NO_CELL = Cell(-np.inf, None)
_cell_value = operator.attrgetter("value")
_cell_ts = operator.attrgetter("ts")
# Each event type's weight (by type code) in popularity and co-visitation.
_TYPE_WEIGHT = np.array([DEFAULT_WEIGHTS.get(t, 0.0) for t in TYPES])
# Adaptive batch sizes (`BatchSizer`): the first limit, before any batch was timed, and the
# least one (a batch's fixed costs, the popular lists and the log and store round trips,
# are paid per batch).
_FIRST_BATCH = 50_000
_MIN_BATCH = 1_000
_ENGAGED = frozenset(t for t in TYPES if DEFAULT_WEIGHTS.get(t, 0.0) > 0)


class _Columns(NamedTuple):
    """A batch's events as columns, in log order: item ids, their catalog rows (-1 for items
    not in the catalog), times and event-type codes."""

    item_ids: list[str]
    rows: npt.NDArray[np.int64]
    ts: npt.NDArray[np.float64]
    type: npt.NDArray[np.int64]


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


class _HeldMaps:
    """The partition's own co-visitation cells (its column of an item's neighbour map) as it
    last wrote them, kept between batches: at most `limit`, the least recently written
    dropped first (a full map is ~5.7 KB). Only this partition's stream writes that column,
    so what it holds is what the store holds, or what the write in flight will store; the
    whole shard is dropped when the partition is rewound or given away. A cell held longer
    than the family's TTL is read again: the store may have expired it.

    Why: the maps of hot items were read and decoded again every batch (on Redis, with the
    other partitions' maps of the item beside them)."""

    __slots__ = ("_cells", "_limit", "_ttl_s")

    def __init__(self, limit: int, ttl_s: float) -> None:
        self._limit = limit
        self._ttl_s = ttl_s
        self._cells: dict[str, tuple[Cell, float]] = {}

    def fresh(self, keys: Iterable[str]) -> dict[str, Cell | None]:
        """The cells held for those of `keys` held less than the TTL ago (typed so that a
        caller adds the stored cells of the others, None where there is none)."""
        since = time.time() - self._ttl_s
        held = self._cells
        return {k: h[0] for k in keys if (h := held.get(k)) is not None and h[1] > since}

    def hold(self, cells: Mapping[str, Cell]) -> None:
        """Hold `cells` as just written, then drop the least recently written past the
        limit."""
        if not self._limit:
            return
        now = time.time()
        held = self._cells
        for key, cell in cells.items():
            held.pop(key, None)  # to the most recent end
            held[key] = (cell, now)
        if (over := len(held) - self._limit) > 0:
            for key in list(itertools.islice(held, over)):
                del held[key]

    def __len__(self) -> int:
        return len(self._cells)


class _Shard:
    """What one log partition's stream owns: the position its stored state reflects and its
    share of the item-level aggregates (popularity, trending, per region; the stream clock).
    Each partition has one reader at a time, so its share has one writer."""

    __slots__ = (
        "clock",
        "neighbours",
        "partition",
        "pending",
        "pending_since",
        "popularity",
        "position",
        "regions",
        "trending",
    )

    def __init__(self, partition: int, n_items: int, config: Config) -> None:
        s = config.stream
        self.partition = partition
        self.position = 0
        self.popularity = Popularity(n_items, s.popularity_half_life_s)
        self.trending = Popularity(n_items, s.trending_half_life_s)
        # Popularity per region (events' context.region), for `stream.max_regions` regions.
        self.regions: dict[str, Popularity] = {}
        self.clock = 0.0
        self.neighbours = _HeldMaps(s.covis_held_maps, config.store.covis_ttl_s)
        # The co-visitation pairs of the batches applied since the neighbour maps were last
        # merged (`_wait`), oldest first, as catalog rows (each a slot in the store too), and
        # when the oldest was applied (`time.monotonic()`; for pairs loaded from the store,
        # the load).
        self.pending: list[_Pairs] = []
        self.pending_since = 0.0

    def trackers(self) -> list[Popularity]:
        return [self.popularity, self.trending, *self.regions.values()]


class _Computed(NamedTuple):
    """A batch's effect, ready to write: the mutations (with the log position), the ids of
    the events applied (the idempotency keys) and, per user, its newest event time."""

    mutations: list[Mutation]
    seen: list[str]
    newest_ts: dict[str, float]


class _Done(NamedTuple):
    """What is left to do once a batch's store write has landed."""

    shard: _Shard
    last_offset: int
    records: int
    events: int
    users: set[str]
    newest_ts: dict[str, float]
    started: float


class _InFlight:
    """A batch whose store write is encoded, then started (sent) once the next batch has
    read what it needs, and finished (its replies read) before that batch's own write.
    Until it lands, reads go through it: `cells` are the (row, family) cells it writes,
    `seen` the event ids it records."""

    __slots__ = ("cells", "done", "seen", "started", "write")

    def __init__(
        self,
        write: PreparedWrite,
        done: _Done,
        cells: dict[tuple[str, str], dict[str, Cell]],
        seen: set[str],
    ) -> None:
        self.write = write
        self.started = False
        self.done = done
        self.cells = cells
        self.seen = seen


class _Reads(NamedTuple):
    """The stored state a batch needs, read before the previous batch's write goes to the
    server (a read sent behind that write would wait for it): which event ids were applied
    before, the users' profile and session families, and the co-visitation family of the
    items the batch may link (`covis_keys`: the item rows read, present or not; others are
    read when needed)."""

    seen: set[str]
    states: dict[str, RowData]
    covis: dict[str, RowData]
    covis_keys: set[str]


class _Pairs(NamedTuple):
    """Co-visitation pairs of a batch as catalog rows: `src` co-visited with `dst`. Waiting
    pairs hold each link once, `src` < `dst`; `_both_ways` gives the links of each item."""

    src: npt.NDArray[np.int64]
    dst: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float64]


_NO_READS = _Reads(set(), {}, {}, set())
_NO_PAIRS = _Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
# The column of `offsets_row(group)` that counts a partition's waiting co-visitation slots.
_PENDING = "covis_pending"
# A slot's column: its pairs once each (`_pack_pairs`). Slots written before held each pair
# both ways in `_LEGACY_SLOT`; they are still read.
_SLOT = "links"
_LEGACY_SLOT = "pairs"


def _pack_pairs(pairs: _Pairs, ids: npt.NDArray[Any]) -> list[Any]:
    """Co-visitation pairs as a slot stores them: the items' ids (catalog rows can change
    between runs, with the catalog file) and, as little-endian bytes, each pair's two
    indexes into them and its weight."""
    both = np.concatenate([pairs.src, pairs.dst])
    # The items' positions among them by a mark per catalog row, not `np.unique`'s sort
    # (that sort was a visible share of a drain).
    mark = np.zeros(ids.size, dtype=np.bool_)
    mark[both] = True
    index = (np.cumsum(mark) - 1)[both]
    k = pairs.src.size
    return [
        ids[mark].tolist(),
        index[:k].astype("<u4").tobytes(),
        index[k:].astype("<u4").tobytes(),
        pairs.weights.astype("<f8").tobytes(),
    ]


def _unpack_pairs(value: list[Any], index: Mapping[str, int], *, halves: bool = True) -> _Pairs:
    """`_pack_pairs`'s inverse on the catalog of this run, each pair as its lower row first
    (the order of two items' rows can differ between catalog files): pairs with an item it
    does not hold any more are dropped. A slot stored both ways of each pair (`halves`
    False: the column `_LEGACY_SLOT`, before slots held each pair once) is read as one way."""
    ids, src_bytes, dst_bytes, weights = value
    src, dst = np.frombuffer(src_bytes, "<u4"), np.frombuffer(dst_bytes, "<u4")
    rows = np.fromiter((index.get(i, -1) for i in ids), np.int64, len(ids))
    a, b = rows[src], rows[dst]
    keep = (a >= 0) & (b >= 0)
    if not halves:
        keep &= src < dst
    a, b = a[keep], b[keep]
    return _Pairs(np.minimum(a, b), np.maximum(a, b), np.frombuffer(weights, "<f8")[keep].copy())


def _joined(parts: Sequence[_Pairs]) -> _Pairs:
    """Pairs of several batches as one."""
    return _Pairs(
        np.concatenate([p.src for p in parts]),
        np.concatenate([p.dst for p in parts]),
        np.concatenate([p.weights for p in parts]),
    )


def _summed(pairs: _Pairs, n_items: int) -> _Pairs:
    """The pairs summed per (item, other), in that order. Weights are small integers, so
    the sums are exact whatever the order they are added in."""
    if not pairs.src.size:
        return _NO_PAIRS
    keys = pairs.src * n_items + pairs.dst
    order = np.argsort(keys)
    keys = keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    src, dst = np.divmod(keys[starts], n_items)
    return _Pairs(src, dst, np.add.reduceat(pairs.weights[order], starts))


def _both_ways(pairs: _Pairs, n_items: int) -> _Pairs:
    """Pairs held one way (the lower row first, `_covisit_pairs`) as links both ways, in
    (item, other) order, as `_covisitation` takes them."""
    src = np.concatenate([pairs.src, pairs.dst])
    dst = np.concatenate([pairs.dst, pairs.src])
    order = np.argsort(src * n_items + dst)
    return _Pairs(src[order], dst[order], np.concatenate([pairs.weights, pairs.weights])[order])


def _cells_by_key(mutations: Iterable[Mutation]) -> dict[tuple[str, str], dict[str, Cell]]:
    """The cells a write stores per (row, family), mutations of the same one merged."""
    out: dict[tuple[str, str], dict[str, Cell]] = {}
    for m in mutations:
        key = (m.row, m.family)
        cells = out.get(key)
        out[key] = m.cells if cells is None else {**cells, **m.cells}
    return out


# How long `_PausedCollector` may keep the collector paused across batches.
_MAX_PAUSE_S = 10.0


class _PausedCollector:
    """Python's cyclic garbage collector paused, for one batch (`_collector_paused`) or over a
    run of overlapped batches (`drain`, `run`), and restored as `pause` found it. Resumed
    after every batch, it walked more than it had to: with a write in flight (Redis) the
    batch's cells, the log's buffered records and their entry ids are still alive then, and
    the first allocation after the resume walked all of them (a long young collection,
    once a batch). So over a run the
    collector resumes only once no write is in flight (the log ran dry, or the batch wrote in
    place), or after `_MAX_PAUSE_S` of one pause. A drain makes no cyclic garbage per batch
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
        is younger than `_MAX_PAUSE_S`."""
        if self._since is None or (held and time.monotonic() - self._since < _MAX_PAUSE_S):
            return
        self._since = None
        if self._resume:
            gc.enable()


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused for one microbatch. A batch holds tens of
    thousands of young containers (events, states, cells, mutations) until its store write,
    and the collector walked them again and again as they piled up, a large share of a
    drain's time. Almost all of them die by
    reference counting when the batch ends; the few cycles wait for the next collection,
    which runs between batches. Nested pauses leave the collector as the outermost found it.
    It is paused for the whole process: in `serve` with the stream in a thread, the API
    threads' cycles are also collected after the batch (a batch takes well under a second)."""
    collector = _PausedCollector()
    collector.pause()
    try:
        yield
    finally:
        collector.release(held=False)


class _Sessions(NamedTuple):
    """A batch's sessions (`_sessionize`): per fact in user order, whether it is in its
    user's current session and that session's number (unique in the batch); per user,
    whether the current session is the stored one, its newest event time, its session state
    cell and its current session's number."""

    in_session: npt.NDArray[np.bool_]
    same: list[bool]
    newest: list[float]
    mutations: list[dict[str, Cell]]
    of_fact: npt.NDArray[np.int64]
    current: npt.NDArray[np.int64]


class BatchSizer:
    """How many records the next poll may take: under a backlog, about what the recent
    batches processed in `target_s` (the loop's time from one poll to the next, which holds
    the batch's reads, computation and store write), between `_MIN_BATCH` and `cap`; with
    `target_s` 0, always `cap`. A fixed count is a different wait on every machine and
    feature set; a time keeps a saturated batch, and the freshness of the events that wait
    for it, near `target_s` everywhere. Larger batches cost less an event (a user's row and an
    item's neighbour map are read, merged and written once a batch, whatever the number of
    their events in it). Only a batch that filled its limit measures the rate: a shorter
    one means the log ran dry, and the time after it is spent waiting, not working."""

    __slots__ = ("_cap", "_last", "_limit", "_target_s")

    def __init__(self, cap: int, target_s: float) -> None:
        self._cap = cap
        self._target_s = target_s
        self._limit = cap if target_s == 0 else min(cap, _FIRST_BATCH)
        self._last: tuple[float, int] | None = None  # a full batch's poll time and size

    def limit(self, now: float) -> int:
        """The limit for a poll at `now` (`time.perf_counter()`)."""
        last, self._last = self._last, None
        if last is not None and self._target_s and (elapsed := now - last[0]) > 0:
            fits = round(last[1] * self._target_s / elapsed)
            # At most doubled a batch, so one quick batch does not make the next a long one.
            self._limit = max(min(self._cap, _MIN_BATCH), min(fits, 2 * last[1], self._cap))
        return self._limit

    def polled(self, now: float, records: int, limit: int) -> None:
        """A poll at `now` with `limit` returned `records`."""
        self._last = (now, records) if records >= limit else None


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
        self.shards: dict[int, _Shard] = {}
        self._shard = self._load_shard(0) if self.partitions == 1 else None
        if getattr(store, "is_cluster", False):
            log.warning(
                "the online store is a Redis Cluster: a batch's writes to several nodes are not "
                "atomic together, so a crash mid-write can lose or double-count that batch "
                "(exactly-once holds on standalone Redis and the embedded store; docs/stream.md)"
            )
        self._index_catalog(catalog)
        self._stop = threading.Event()
        # drain() and run() overlap each batch's store write with the next batch's work (on a
        # store with PreparedWrites): the write in flight, sent and not yet waited for.
        self._in_flight: _InFlight | None = None
        self._next_catalog: Catalog | None = None
        self._lag_at = 0.0
        self._sizer = BatchSizer(config.stream.batch_size, config.stream.batch_target_s)

    # The single-partition view (the embedded log, the offline replay).
    @property
    def position(self) -> int:
        return self._one().position

    @property
    def popularity(self) -> Popularity:
        return self._one().popularity

    @property
    def trending(self) -> Popularity:
        return self._one().trending

    def _one(self) -> _Shard:
        return self.shards[0] if self.partitions == 1 else self._current()

    def _current(self) -> _Shard:
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
            grow = len(catalog) - shard.popularity.log_score.size
            if grow > 0:
                for tracker in shard.trackers():
                    tracker.log_score = np.concatenate([tracker.log_score, np.full(grow, -np.inf)])
        self._index_catalog(catalog)

    def _index_catalog(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._category_rows = [
            np.flatnonzero(catalog.category == c).astype(np.int64)
            for c in range(len(catalog.category_names))
        ]
        # The vocabularies of the catalog's category and brand codes, as the facts' keys.
        self._category_names = [str(c) for c in catalog.category_names.tolist()]
        self._brand_names = [str(b) for b in catalog.brand_names.tolist()]
        # Item ids by catalog row: the `item_id` key's vocabulary (`_item_codes`).
        self._item_names = [str(i) for i in catalog.ids.tolist()]

    def _col(self, name: str) -> str:
        return shard_column(name, self._current().partition, self.partitions)

    def _load_shard(self, partition: int) -> _Shard:
        """A partition's state as stored: its position (the log's committed offset can only
        lag behind it: it is written after the store) and its popularity shares."""
        shard = self.shards[partition] = _Shard(partition, len(self.catalog), self.config)
        group = self.config.stream.group
        row = offsets_row(group)
        column = shard_column("log", partition, self.partitions)
        offsets = self.store.get([row], [OFFSETS]).get(row, {}).get(OFFSETS, {})
        cell = offsets.get(column)
        stored = 0 if cell is None else int(cell.value)
        waiting = offsets.get(shard_column(_PENDING, partition, self.partitions))
        shard.position = max(stored, self.log.committed(group).get(partition, 0))
        end = self.log.end_offsets().get(partition, 0)
        if shard.position > end:
            # The log lost records this state includes (its tail, to a power loss with
            # fsync "never"), or was emptied or recreated: its new records may reuse offsets
            # at or before the position, and would be skipped as applied. Every record there
            # is read instead; those applied before are dropped by event id.
            log.warning(
                "partition %d: the stored position %d is past the log's newest record %d "
                "(the log lost records or was recreated); reading it from its start",
                partition,
                shard.position,
                end,
            )
            shard.position = 0
        mine = partition if self.partitions > 1 else None
        rows = [item_row(i) for i in self.catalog.ids]
        for r, data in self.store.get(rows, [STATS]).items():
            row_index = self.catalog.index[r[2:]]
            for col, c in data[STATS].items():
                name, p = shard_of(col)
                if p != mine:
                    continue
                if name == "pop_log":
                    tracker = shard.popularity
                elif name == "trend_log":
                    tracker = shard.trending
                elif name.startswith("pop_log@"):  # one region's popularity
                    tracker = self._region(shard, name.removeprefix("pop_log@"))
                else:
                    continue
                tracker.log_score[row_index] = float(c.value)
                shard.clock = max(shard.clock, c.ts)
        lists = self.store.get([GLOBAL_ROW], [POPULAR]).get(GLOBAL_ROW, {}).get(POPULAR, {})
        shard.clock = max(
            [shard.clock, *(c.ts for col, c in lists.items() if shard_of(col)[1] == mine)]
        )
        if waiting is not None and waiting.value:
            shard.clock = max(shard.clock, waiting.ts)
            slots = [pending_row(group, partition, i) for i in range(int(waiting.value))]
            found = self.store.get(slots, [OFFSETS])
            for slot in slots:
                cells = found.get(slot, {}).get(OFFSETS, {})
                pairs = cells.get(_SLOT) or cells.get(_LEGACY_SLOT)
                if pairs is None:  # written in one store write with the count: never
                    raise RuntimeError(f"partition {partition}: {slot} is missing from the store")
                halves = _SLOT in cells
                shard.pending.append(_unpack_pairs(pairs.value, self.catalog.index, halves=halves))
            shard.pending_since = time.monotonic()
        METRICS.covis_waiting.labels(str(partition)).set(len(shard.pending))
        return shard

    def _region(self, shard: _Shard, region: str) -> Popularity:
        tracker = shard.regions.get(region)
        if tracker is None:
            s = self.config.stream
            tracker = shard.regions[region] = Popularity(
                len(self.catalog), s.popularity_half_life_s
            )
        return tracker

    def _tick(self, batch_max_ts: float) -> float:
        """The timestamp of item-level cells: the newest event time seen so far. Events of
        different users interleave in the log, so a batch's own newest event can be older
        than an earlier batch's; stamping shared rows with it would make the store's
        newer-wins rule drop the write."""
        shard = self._current()
        shard.clock = max(shard.clock, batch_max_ts)
        return shard.clock

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
        with _collector_paused():
            return self._process_once(overlap=False, merge_after_s=0.0)

    def _process_once(self, *, overlap: bool, merge_after_s: float) -> BatchResult | None:
        """One microbatch. With `overlap`, on a store with `PreparedWrites` (Redis), its store
        write is encoded and left in flight: the next call sends it after its own reads,
        computes while the server applies it, then waits for it before starting its own.
        On Redis most of a write's time is waiting for the server, which the next batch's
        computation covers. When the log has nothing
        new, co-visitation pairs that have waited `merge_after_s` are merged into the maps."""
        s = self.config.stream
        started = time.perf_counter()
        if (pending := self._next_catalog) is not None:
            self.flush()
            self._next_catalog = None
            self.set_catalog(pending)
        self._follow_assignment()
        limit = self._sizer.limit(started)
        METRICS.batch_limit.set(limit)
        records = self.consumer.poll(limit)
        self._sizer.polled(started, len(records), limit)
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
        computed = _Computed([], [], {})
        try:
            if fresh_records:
                # The position travels in the same store write as the state it produced:
                # after a crash the state and the position agree, whatever the log's commit.
                position = Mutation(
                    offsets_row(s.group),
                    OFFSETS,
                    {self._col("log"): Cell(float(last_offset), last_offset)},
                )
                events = [r.event for r in fresh_records]
                if has_tombstones(events):
                    events = self._erase(events)
                fold = len(shard.pending) + 1 >= s.covis_fold_batches
                reads = self._read_ahead(events, fold=fold)
                self._send()  # the previous batch's write: the server runs it meanwhile
                computed = self._compute(events, [position], reads, fold=fold)
            done = _Done(
                shard,
                last_offset,
                len(records),
                len(computed.seen),
                set(computed.newest_ts),
                computed.newest_ts,
                started,
            )
            if computed.mutations and overlap and isinstance(self.store, PreparedWrites):
                # Encoded while the server may still apply the previous write, which lands
                # before this one is sent (`_send`, after the next batch's reads).
                job = self._start_write(self.store, computed, done)
                self.flush()
                self._in_flight = job
            else:
                self.flush()  # the previous batch's write lands before this one's starts
                if computed.mutations:
                    self.store.write(computed.mutations, seen=computed.seen)
                self._finish(done, time.time())
        except BaseException:
            # The batch is read again, and the partition's item shares (updated in memory
            # before the failed write) are reloaded from the store.
            with contextlib.suppress(BaseException):
                self.flush()
            self._rewind(p)
            raise
        n_events = len(computed.seen)
        return BatchResult(n_events, len(fresh_records) - n_events, done.users, last_offset, p)

    def _erase(self, events: list[Event]) -> list[Event]:
        """Apply the batch's erasure tombstones (`events.tombstones`): the previous write
        lands, then the erased users' rows are deleted, before this batch reads any state."""
        kept, users = without_erased(events)
        self.flush()
        self.store.delete_rows([user_row(u) for u in sorted(users)])
        if self.on_users_changed is not None:
            self.on_users_changed(users)
        return kept

    def _batch_shard(self, records: list[LogRecord]) -> _Shard | None:
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
            if p not in self.shards and (job := self._in_flight) and job.done.shard.partition == p:
                unread = False  # a flush that fails rewinds `p` to its stored position itself
                self.flush()  # the partition's stored position and shares are in that write
                unread = True
            return self.shards.get(p) or self._load_shard(p)
        except BaseException:
            if unread:
                self.consumer.seek(p, records[0].offset - 1)
            raise

    def _start_write(self, store: PreparedWrites, computed: _Computed, done: _Done) -> _InFlight:
        """Encode the batch's write now; it is sent once the next batch has done its reads
        (`_send`) and its replies read at `flush`, all on this thread. (A writer thread
        that sent it and waited took much longer than the server ran it, most likely
        waiting for the GIL each time it woke; sent from here, the write is done by the time
        the next batch is computed.)"""
        return _InFlight(
            store.prepare_write(computed.mutations, seen=computed.seen),
            done,
            _cells_by_key(computed.mutations),
            set(computed.seen),
        )

    def _send(self) -> None:
        """Send the prepared write in flight, if it has not been sent."""
        job = self._in_flight
        if job is not None and not job.started:
            job.started = True
            job.write.start()

    def flush(self) -> None:
        """Send the store write in flight, if any, wait for it and finish its batch (commit
        its log position, metrics, `on_users_changed`). A write that failed is raised here,
        after its partition was rewound to the stored position to be read again."""
        job, self._in_flight = self._in_flight, None
        if job is None:
            return
        try:
            job.write.finish()
        except BaseException:
            self._rewind(job.done.shard.partition)
            raise
        self._finish(job.done, time.time())

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
        """Apply events (duplicates by id dropped) and write the state they produce, with
        `extra` mutations, in one store write. Returns the number applied and their users.
        The garbage collector is paused meanwhile, as for a whole microbatch.
        The log-driven loop and the offline replay (point-in-time training sets) both come
        through here, so both compute features with the same code."""
        with _collector_paused():
            listed = list(events)
            reads = self._read_ahead(listed, fold=True)
            computed = self._compute(listed, extra, reads, fold=True)
            self.flush()
            if computed.mutations:
                self.store.write(computed.mutations, seen=computed.seen)
            return len(computed.seen), set(computed.newest_ts)

    def _compute(
        self, events: list[Event], extra: Sequence[Mutation], reads: _Reads, *, fold: bool
    ) -> _Computed:
        """The batch's effect; with `fold`, its co-visitation pairs and those waiting are
        merged into the neighbour maps, otherwise it waits (`_wait`)."""
        fresh = self._drop_duplicates(events, reads.seen)
        if not fresh:
            return _Computed(list(extra), [], {})
        mutations, newest_ts, pairs = self._apply(fresh, reads, fold=fold)
        if pairs is not None:  # not merged: they wait
            mutations.extend(self._wait(self._current(), pairs))
        mutations.extend(extra)
        return _Computed(mutations, [e.event_id for e in fresh], newest_ts)

    def _read_ahead(self, events: list[Event], *, fold: bool) -> _Reads:
        """What `_compute` reads from the store, in multi-gets: the events' ids, the users'
        rows, and, where the previous write may still be in flight (`PreparedWrites`), the
        co-visitation rows of the items the batch may link (its engaged items and the items
        of the stored sessions it may continue)."""
        seen = self._seen([e.event_id for e in events])
        rows = [user_row(u) for u in dict.fromkeys([e.user_id for e in events])]
        states = self._get(rows, [PROFILE, SESSION])
        if not fold or not isinstance(self.store, PreparedWrites):
            # No maps merged, or no write in flight to wait behind: `_covisitation` reads
            # exactly the rows it links, when it needs them (reading them here makes an
            # embedded drain slower: more rows, held decoded through the whole batch).
            return _Reads(seen, states, {}, set())
        engaged = [e for e in events if e.type in _ENGAGED]
        items = {e.item_id for e in engaged}
        for row in {user_row(e.user_id) for e in engaged}:  # only they can link items
            prior = states.get(row, {}).get(SESSION, {}).get(_SESSION_ITEMS)
            if prior is not None:
                items.update(prior.value)
        shard = self._current()
        if shard.pending:  # merged with the batch's own
            waiting = np.unique(np.concatenate([a for p in shard.pending for a in p[:2]]))
            items.update(self.catalog.ids[waiting].tolist())
        wanted = [item_row(i) for i in items]
        held = shard.neighbours.fresh(wanted)
        keys = [k for k in wanted if k not in held]
        return _Reads(seen, states, self._get(keys, [COVIS]), set(keys))

    # Reads of the stored state go through the write in flight, whose cells are newer than
    # the stored ones: this processor is their only writer (its partitions' users; its own
    # columns of item rows, stamped with the stream clock), and it built them on what it read.

    def _get(self, rows: Sequence[str], families: Iterable[str]) -> dict[str, RowData]:
        families = list(families)
        found = self.store.get(rows, families)
        job = self._in_flight
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

    def _seen(self, ids: list[str]) -> set[str]:
        seen = self.store.seen(ids)
        if self._in_flight is not None:
            seen.update(self._in_flight.seen.intersection(ids))
        return seen

    @staticmethod
    def _drop_duplicates(events: list[Event], seen: set[str]) -> list[Event]:
        """Events whose id is not in `seen` (applied before), each id once."""
        seen = set(seen)
        fresh: list[Event] = []
        for e in events:
            if e.event_id not in seen:
                seen.add(e.event_id)  # a repeat inside the batch is a duplicate too
                fresh.append(e)
        return fresh

    def _apply(
        self, events: list[Event], reads: _Reads, *, fold: bool
    ) -> tuple[list[Mutation], dict[str, float], _Pairs | None]:
        """The batch's mutations, its users' newest event times and, unless `fold`, its
        co-visitation pairs (summed) to wait with it; with `fold` they are merged into the
        maps with the waiting ones."""
        # The events' columns, once, in log order: the item statistics take them as they
        # are, the features in user order (`order_array`).
        item_ids = [e.item_id for e in events]
        columns = _Columns(
            item_ids=item_ids,
            rows=self.catalog.rows(item_ids),
            ts=np.fromiter((e.ts for e in events), np.float64, len(events)),
            type=np.fromiter((_TYPE_CODE[e.type] for e in events), np.int64, len(events)),
        )
        codes: dict[str, int] = {}
        user_of = np.fromiter(
            (codes.setdefault(e.user_id, len(codes)) for e in events), np.int64, len(events)
        )
        users = list(codes)  # in order of first appearance, as the mutations are
        rows = [user_row(u) for u in users]
        states = reads.states
        # Grouped by user, each user's facts in time order (ties in log order: stable).
        order_array = np.lexsort((columns.ts, user_of))
        starts_array = np.zeros(len(users) + 1, dtype=np.int64)
        np.cumsum(np.bincount(user_of, minlength=len(users)), out=starts_array[1:])
        session_cells = [states.get(row, {}).get(SESSION, {}) for row in rows]
        profile_cells = [states.get(row, {}).get(PROFILE, {}) for row in rows]
        batch = self._fact_batch(starts_array, order_array, columns)
        sessions = _sessionize(
            events,
            users,
            session_cells,
            order_array,
            starts_array,
            ts=batch.ts,
            gap=self.config.stream.session_gap_s,
        )
        in_session, same_session, newest, session_mutations = sessions[:4]
        item_rows = batch.embedding_rows  # the catalog rows, in user order
        # Co-visitation: the engaged facts' catalog rows (-1 for the others) and weights, and
        # the stored items of the sessions that go on.
        weight = _TYPE_WEIGHT[batch.type]
        engaged = np.where((weight > 0) & (item_rows >= 0), item_rows, -1)
        window = self.config.stream.covis_window
        index = self.catalog.index
        priors: dict[int, list[int]] = {}
        for u, (same, cells) in enumerate(zip(same_session, session_cells, strict=True)):
            prior = cells.get(_SESSION_ITEMS) if same else None
            if prior is not None:  # most recent first, as `last_n` keeps them
                known = [index.get(i) for i in reversed(prior.value)]
                priors[int(sessions.current[u])] = [r for r in known if r is not None][-window:]
        covis_pairs = _covisit_pairs(engaged, weight, sessions.of_fact, priors, window)
        # Session features only see the facts of the session the user is in now; a new
        # session starts them from nothing.
        session_batch = batch.take(in_session)
        out: dict[str, list[dict[str, Cell]]] = {
            PROFILE: [{} for _ in users],
            SESSION: session_mutations,
        }
        n_users = len(users)
        newest_array = np.asarray(newest, dtype=np.float64)
        for agg in self.config.features:
            name = agg.name
            # Each user's stored cell of the feature (`_NO_CELL` where none is stored or a new
            # session starts it from nothing), gathered with C-level `map`s, cheaper than a
            # listcomp per step; the cells themselves are most of what is left.
            if agg.family == PROFILE:
                olds = list(
                    map(dict.get, profile_cells, itertools.repeat(name), itertools.repeat(_NO_CELL))
                )
                facts = batch
            else:
                olds = [
                    cells.get(name, _NO_CELL) if same else _NO_CELL
                    for cells, same in zip(session_cells, same_session, strict=True)
                ]
                facts = session_batch
            values = list(map(_cell_value, olds))
            news = agg.apply_batch(values, facts)
            # Only the users whose state changed (a new object: an aggregation gives an
            # unchanged state back as the very object) get a new cell, at their newest event's
            # time or the stored cell's, whichever is later.
            changed = np.flatnonzero(
                np.fromiter(map(operator.is_not, news, values), np.bool_, n_users)
            )
            if changed.size == 0:
                continue
            stamps = np.maximum(
                newest_array[changed],
                np.fromiter(map(_cell_ts, map(olds.__getitem__, changed.tolist())), np.float64),
            ).tolist()
            family = out[agg.family]
            for i, ts in zip(changed.tolist(), stamps, strict=True):
                new = news[i]
                if new is not None:
                    family[i][name] = Cell(ts, new)
        # A changed family is written whole: the stored cells as read (their own times) with
        # the changed ones over them. The stored result is what merging only the changed
        # cells gives. `whole`: this processor is the rows' only writer, so the stores set
        # them as sent without reading them first (LMDB puts them; Redis runs
        # `set_whole.lua` instead of its merge script).
        stored = {PROFILE: profile_cells, SESSION: session_cells}
        mutations = [
            Mutation(row, family, {**stored[family][i], **cells[i]}, whole=True)
            for family, cells in out.items()
            for i, row in enumerate(rows)
            if cells[i]
        ]
        items, waiting = self._apply_items(events, columns, covis_pairs, reads, fold=fold)
        mutations.extend(items)
        return mutations, dict(zip(users, newest, strict=True)), waiting

    def _fact_batch(
        self, starts: npt.NDArray[np.int64], take: npt.NDArray[np.int64], columns: _Columns
    ) -> FactBatch:
        """The events taken in `take` order (grouped by user, `starts` apart) joined with the
        catalog, as columns."""
        cat = self.catalog
        rows = columns.rows[take]
        known = rows >= 0
        if len(cat):
            safe = np.where(known, rows, 0)
            category = np.where(known, cat.category[safe], -1).astype(np.int64)
            brand = np.where(known, cat.brand[safe], -1).astype(np.int64)
            price = np.where(known, cat.price[safe].astype(np.float64), np.nan)
        else:  # no item yet (a catalog `tastemaker init` made): no event's item is known
            category = brand = np.full(len(rows), -1, np.int64)
            price = np.full(len(rows), np.nan)
        return FactBatch(
            starts,
            ts=columns.ts[take],
            type_=columns.type[take],
            keys={
                "category": (category, self._category_names),
                "brand": (brand, self._brand_names),
                "item_id": self._item_codes(rows, take, columns.item_ids),
            },
            price=price,
            embedding_rows=(rows, cat.embedding),
        )

    def _item_codes(
        self, rows: npt.NDArray[np.int64], take: npt.NDArray[np.int64], item_ids: list[str]
    ) -> tuple[npt.NDArray[np.int64], list[str]]:
        """The `item_id` key of facts whose catalog rows are `rows` (taken from the events
        at `take`): the row itself, the catalog's ids the vocabulary; items not in the catalog
        are coded after them, which spares factorizing every fact's id in Python; the
        aggregations order values by the facts, never by code."""
        unknown = np.flatnonzero(rows < 0)
        if not unknown.size:
            return rows, self._item_names
        extra, names = factorize([item_ids[i] for i in take[unknown].tolist()])
        codes = rows.copy()
        codes[unknown] = len(self._item_names) + extra
        return codes, self._item_names + names

    def _apply_items(
        self,
        events: list[Event],
        columns: _Columns,
        covis_pairs: _Pairs,
        reads: _Reads,
        *,
        fold: bool,
    ) -> tuple[list[Mutation], _Pairs | None]:
        s = self.config.stream
        cat = self.catalog
        rows, ts = columns.rows, columns.ts
        weights = _TYPE_WEIGHT[columns.type]
        shard = self._current()
        shard.popularity.add(rows, ts, weights)
        shard.trending.add(rows, ts, weights)
        touched = np.unique(rows[(rows >= 0) & (weights > 0)])
        now_ts = self._tick(float(ts.max()))
        pop, trend = shard.popularity.log_score, shard.trending.log_score
        pop_col, trend_col = self._col("pop_log"), self._col("trend_log")
        cells: dict[int, dict[str, Cell]] = {
            r: {pop_col: Cell(now_ts, p), trend_col: Cell(now_ts, t)}
            for r, p, t in zip(
                touched.tolist(), pop[touched].tolist(), trend[touched].tolist(), strict=True
            )
        }
        # Per region (events' context.region, the first `max_regions` seen): its own
        # popularity, kept per item beside the global one so a restart restores it exactly.
        regions = np.array([e.context.region or "" for e in events], dtype=object)
        touched_regions = []
        for region in sorted(set(regions.tolist()) - {""}):
            if region not in shard.regions and len(shard.regions) >= s.max_regions:
                continue
            tracker = self._region(shard, region)
            mask = (regions == region) & (rows >= 0) & (weights > 0)
            tracker.add(rows[mask], ts[mask], weights[mask])
            region_col = self._col("pop_log@" + region)
            for r in np.unique(rows[mask]).tolist():
                cells[r][region_col] = Cell(now_ts, float(tracker.log_score[r]))
            touched_regions.append(region)
        ids = cat.ids[np.fromiter(cells, np.int64, len(cells))].tolist()
        out = [
            Mutation(item_row(str(i)), STATS, c) for i, c in zip(ids, cells.values(), strict=True)
        ]
        waiting: _Pairs | None = None
        if not fold:
            waiting = _summed(covis_pairs, len(cat))  # about half as many in a bench batch
        else:
            out.extend(self._merge(shard, covis_pairs, now_ts, reads))
        if touched.size:
            out.append(self._popular_lists(now_ts, touched, touched_regions))
        return out, waiting

    def _wait(self, shard: _Shard, pairs: _Pairs) -> list[Mutation]:
        """The co-visitation pairs of a batch that does not merge them into the neighbour
        maps wait in the next slot (`pending_row`), written with the batch's state and
        position, so a restart reads them back (`_load_shard`).

        Why: merging every batch rewrote a hot item's map each time, a fifth of an embedded
        drain (docs/stream.md). Over
        `stream.covis_fold_batches` batches a map is merged and written once. The maps lag
        by those batches at most; the users' own features do not wait."""
        group = self.config.stream.group
        slot = len(shard.pending)
        if not slot:
            shard.pending_since = time.monotonic()
        shard.pending.append(pairs)
        METRICS.covis_waiting.labels(str(shard.partition)).set(slot + 1)
        packed = Cell(shard.clock, _pack_pairs(pairs, self.catalog.ids))
        count = Cell(shard.clock, slot + 1)
        return [
            Mutation(pending_row(group, shard.partition, slot), OFFSETS, {_SLOT: packed}),
            Mutation(offsets_row(group), OFFSETS, {self._col(_PENDING): count}),
        ]

    def _merge(self, shard: _Shard, pairs: _Pairs, now_ts: float, reads: _Reads) -> list[Mutation]:
        """The shard's waiting co-visitation pairs and `pairs` merged into the neighbour maps:
        the maps' mutations and, if any waited, the one that sets their count to 0."""
        waited = shard.pending
        n_items = len(self.catalog)
        joined = _summed(_joined([*waited, pairs]), n_items)
        out = (
            self._covisitation(_both_ways(joined, n_items), now_ts, reads)
            if joined.src.size
            else []
        )
        if waited:
            shard.pending = []
            METRICS.covis_waiting.labels(str(shard.partition)).set(0)
            count = {self._col(_PENDING): Cell(now_ts, 0)}
            out.append(Mutation(offsets_row(self.config.stream.group), OFFSETS, count))
        return out

    def _merge_waiting(self, after_s: float) -> None:
        """The log ran dry: merge the co-visitation pairs that have waited `after_s` in each
        partition this member owns into the neighbour maps, so the maps catch up while there
        is time. A partition not loaded (just taken over from a member that died, or rewound
        after a failed write) is loaded first: pairs may wait in the store for it."""
        for p in sorted(self.consumer.assignment()):
            shard = self.shards.get(p) or self._load_shard(p)
            if not shard.pending or time.monotonic() - shard.pending_since < after_s:
                continue
            self._shard = shard
            try:
                self.store.write(self._merge(shard, _NO_PAIRS, shard.clock, _NO_READS))
            except BaseException:
                self._rewind(p)
                raise

    def _covisitation(self, pairs: _Pairs, now_ts: float, reads: _Reads) -> list[Mutation]:
        """Co-visitation pairs summed per (item, other) (`_summed`) merged into each item's
        stored neighbour map (the strongest `covis_max_neighbours` kept). Weights are small
        integers, so summing before adding gives the same values as adding pair by pair."""
        s = self.config.stream
        cat = self.catalog
        items, others, sums = pairs.src, pairs.dst, pairs.weights.tolist()
        starts = np.flatnonzero(np.r_[True, items[1:] != items[:-1]])
        ends = np.r_[starts[1:], items.size].tolist()
        other_ids = cat.ids[others].tolist()
        keys = [item_row(str(i)) for i in cat.ids[items[starts]].tolist()]
        col = self._col("neighbours")
        held = self._current().neighbours
        olds = held.fresh(keys)  # the others are read below
        if missing := [k for k in keys if k not in olds]:
            stored = reads.covis
            if unread := [k for k in missing if k not in reads.covis_keys]:
                stored = {**stored, **self._get(unread, [COVIS])}  # not read ahead
            for k in missing:
                olds[k] = stored.get(k, {}).get(COVIS, {}).get(col)
        cells: dict[str, Cell] = {}
        for key, a, b in zip(keys, starts.tolist(), ends, strict=True):
            old = olds[key]
            merged = update_covisitation(
                None if old is None else old.value,
                zip(other_ids[a:b], sums[a:b], strict=True),
                s.covis_max_neighbours,
            )
            cells[key] = Cell(now_ts, merged)
        held.hold(cells)
        return [Mutation(key, COVIS, {col: cell}) for key, cell in cells.items()]

    def _popular_lists(
        self, ts: float, touched: np.ndarray[Any, Any], regions: Sequence[str] = ()
    ) -> Mutation:
        s = self.config.stream
        cat = self.catalog
        shard = self._current()
        pop = shard.popularity
        col = self._col

        def listing(rows: np.ndarray[Any, Any], tracker: Popularity = pop) -> list[Any]:
            return [cat.ids[rows].tolist(), np.round(tracker.log_score[rows], 6).tolist()]

        cells = {
            col("all"): Cell(ts, listing(pop.top(s.top_popular))),
            col("trending"): Cell(ts, listing(shard.trending.top(s.top_popular), shard.trending)),
        }
        for c in np.unique(cat.category[touched]):
            rows = pop.top(s.top_per_category, among=self._category_rows[int(c)])
            cells[col("c:" + str(cat.category_names[c]))] = Cell(ts, listing(rows))
        for region in regions:
            tracker = shard.regions[region]
            cells[col("r:" + region)] = Cell(ts, listing(tracker.top(s.top_popular), tracker))
        return Mutation(GLOBAL_ROW, POPULAR, cells)

    # -- running --------------------------------------------------------------------------

    def drain(self, timeout_s: float = 60.0) -> int:
        """Process until the group has committed everything in the log (or `timeout_s`
        passes); returns the number of events applied. On a log whose group membership
        settles asynchronously (Kafka's first join takes seconds) it waits for it."""
        total = 0
        deadline = time.monotonic() + timeout_s
        collector = _PausedCollector()
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
        self, collector: _PausedCollector, *, merge_after_s: float
    ) -> BatchResult | None:
        """One batch whose write may stay in flight, under `collector`'s pause."""
        collector.pause()
        try:
            return self._process_once(overlap=True, merge_after_s=merge_after_s)
        finally:
            collector.release(held=self._in_flight is not None)

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
        collector = _PausedCollector()
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


def _sessionize(
    events: list[Event],
    users: list[str],
    session_cells: list[dict[str, Cell]],
    order: npt.NDArray[np.int64],
    starts: npt.NDArray[np.int64],
    *,
    ts: npt.NDArray[np.float64],
    gap: float,
) -> _Sessions:
    """Sessionization of the batch (`_Sessions`), `assign_sessions`'s rules over all users at
    once, facts taken in `order` (grouped by user, `starts` apart, each user's in time
    order; `ts` their times in that order). A fact opens a session when it comes more than
    the gap after its user's latest event so far (the stored `last_ts`, then the batch's
    earlier facts: they are in time order); a user with a client-sent `session_id` in the
    batch goes through `assign_sessions` itself."""
    n_users = len(users)
    user = np.repeat(np.arange(n_users), np.diff(starts))
    firsts, lasts = starts[:-1], starts[1:] - 1
    olds = [cells.get(_SESSION_STATE) for cells in session_cells]
    stored_last = np.fromiter(
        (-np.inf if c is None else float(c.value["last_ts"]) for c in olds), np.float64, n_users
    )
    previous = np.empty_like(ts)
    previous[1:] = ts[:-1]
    previous[firsts] = -np.inf
    opens = ts - np.maximum(previous, stored_last[user]) > gap
    # Sessions numbered within each user: 0 is the stored one, 1.. those the batch opens.
    number = np.cumsum(opens, dtype=np.int64)
    number -= np.repeat(number[firsts] - opens[firsts], np.diff(starts))
    final = number[lasts]
    opened_at = np.zeros(n_users, dtype=np.int64)  # the fact opening the final session
    np.maximum.at(opened_at, user[opens], np.flatnonzero(opens))
    in_session = number == final[user]
    client = {e.user_id for e in events if e.session_id is not None}
    same_session: list[bool] = []
    newest: list[float] = []
    session_mutations: list[dict[str, Cell]] = []
    ts_list = ts.tolist()
    for u, (user_id, old) in enumerate(zip(users, olds, strict=True)):
        lo, hi = int(firsts[u]), int(lasts[u]) + 1
        newest_ts = ts_list[hi - 1]
        state: dict[str, Any]
        if user_id in client:
            ordered = [events[i] for i in order[lo:hi].tolist()]
            ids, found = assign_sessions(user_id, ordered, None if old is None else old.value, gap)
            state = cast("dict[str, Any]", found)
            local: dict[str, int] = {}  # the user's sessions numbered as they come
            number[lo:hi] = [local.setdefault(sid, len(local)) for sid in ids]
            final[u] = local[str(state["id"])]
            in_session[lo:hi] = number[lo:hi] == final[u]
            same = old is not None and state["id"] == old.value["id"]
        elif final[u] == 0 and old is not None:  # the stored session goes on
            state = {**old.value, "last_ts": max(float(old.value["last_ts"]), newest_ts)}
            same = True
        else:
            start = ts_list[int(opened_at[u])]
            state = {"id": f"{user_id}/{int(start * 1000)}", "started": start}
            state["last_ts"] = newest_ts
            same = False
        same_session.append(same)
        newest.append(newest_ts)
        session_mutations.append({_SESSION_STATE: Cell(newest_ts, state)})
    span = int(number.max()) + 1 if number.size else 1
    return _Sessions(
        in_session,
        same_session,
        newest,
        session_mutations,
        user * span + number,
        np.arange(n_users, dtype=np.int64) * span + final,
    )


def _covisit_pairs(
    rows: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    session: npt.NDArray[np.int64],
    priors: Mapping[int, list[int]],
    window: int,
) -> _Pairs:
    """Each engaged fact (`rows` >= 0: catalog rows, facts in time order within each user) is
    linked, with its weight, to the `window` distinct items its session engaged with last
    before it (a session that goes on starts from its stored items, `priors`: oldest first).
    The fact's own item counts among those `window` but is not linked to itself. Each link
    is one pair, its lower row first (`src` < `dst`); links go both ways (`_both_ways`).

    With numpy over the whole batch: the sessions' items laid out one session after another,
    each fact looks back one step at a time, all facts at once; an item counts when it is
    its last engagement before the fact (its next one in the session is at the fact or
    after), and a fact stops looking once it has found `window` items or its session's start."""
    facts = np.flatnonzero(rows >= 0)
    codes = [code for code, items in priors.items() for _ in items]
    seq_session = np.concatenate([np.asarray(codes, np.int64), session[facts]])
    seq_rows = np.concatenate(
        [np.asarray([r for items in priors.values() for r in items], np.int64), rows[facts]]
    )
    seq_weights = np.concatenate([np.zeros(len(codes)), weights[facts]])
    # A session's stored items first (in their order), then its facts in time order.
    layout = np.lexsort((np.arange(seq_rows.size), seq_session))
    seq_session, seq_rows, seq_weights = seq_session[layout], seq_rows[layout], seq_weights[layout]
    n = seq_rows.size
    # Where each item is engaged next in its session (n: never again).
    by_item = np.lexsort((np.arange(n), seq_rows, seq_session))
    sorted_sessions, sorted_rows = seq_session[by_item], seq_rows[by_item]
    again = (sorted_sessions[1:] == sorted_sessions[:-1]) & (sorted_rows[1:] == sorted_rows[:-1])
    following = np.full(n, n, dtype=np.int64)
    following[by_item[:-1][again]] = by_item[1:][again]
    looking = np.flatnonzero(layout >= len(codes))  # the facts, not the stored items
    found = np.zeros(looking.size, dtype=np.int64)
    fact_parts: list[npt.NDArray[np.int64]] = []
    other_parts: list[npt.NDArray[np.int64]] = []
    back = 1
    while looking.size:
        earlier = looking - back
        inside = earlier >= 0
        inside[inside] = seq_session[earlier[inside]] == seq_session[looking[inside]]
        looking, earlier, found = looking[inside], earlier[inside], found[inside]
        counts = following[earlier] >= looking  # its last engagement before the fact
        link = counts & (seq_rows[earlier] != seq_rows[looking])
        fact_parts.append(looking[link])
        other_parts.append(earlier[link])
        found += counts
        more = found < window
        looking, found = looking[more], found[more]
        back += 1
    fact_at = np.concatenate(fact_parts) if fact_parts else np.zeros(0, np.int64)
    other_at = np.concatenate(other_parts) if other_parts else np.zeros(0, np.int64)
    item, other = seq_rows[fact_at], seq_rows[other_at]
    # Each link once, its lower row first: links go both ways, and half as many pairs are
    # cheaper to sort and pack while they wait. `_both_ways` makes them links both ways at
    # the merge.
    return _Pairs(np.minimum(item, other), np.maximum(item, other), seq_weights[fact_at])
