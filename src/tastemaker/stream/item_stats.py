"""One partition's item statistics: popularity, trending, popularity per region, the top
lists, and co-visitation (the pairs waiting in the store, the neighbour maps it merges them
into).

Each log partition has one reader at a time, which owns the partition's share of these
(its columns of the item rows, `shard_column`): what it holds in memory is what it stored,
or what the write in flight will store. The store is read through a `StoreReader` it is
given (the stream's reads through its write in flight; the replay's store itself).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from tastemaker.catalog import Catalog
from tastemaker.config import Config
from tastemaker.events import Event
from tastemaker.features import Popularity, update_covisitation
from tastemaker.features.aggregations import DEFAULT_WEIGHTS
from tastemaker.features.base import TYPES
from tastemaker.features.fold import EventColumns
from tastemaker.features.layout import (
    COVIS,
    GLOBAL_ROW,
    OFFSETS,
    POPULAR,
    STATS,
    item_row,
    offsets_row,
    pending_row,
    shard_column,
    shard_of,
)
from tastemaker.metrics import METRICS
from tastemaker.store import Cell, Mutation, RowData
from tastemaker.stream.covisitation import (
    HeldMaps,
    Pairs,
    both_ways,
    joined,
    pack_pairs,
    summed,
    unpack_pairs,
)

__all__ = ["ENGAGED", "NO_COVIS", "TYPE_WEIGHT", "CovisReads", "ItemStats", "StoreReader"]

# Each event type's weight (by type code) in popularity and co-visitation.
TYPE_WEIGHT = np.array([DEFAULT_WEIGHTS.get(t, 0.0) for t in TYPES])
ENGAGED = frozenset(t for t in TYPES if DEFAULT_WEIGHTS.get(t, 0.0) > 0)
# The column of `offsets_row(group)` that counts a partition's waiting co-visitation slots.
_PENDING = "covis_pending"
# A slot's column: its pairs, each link once (`pack_pairs`).
_SLOT = "links"


class StoreReader(Protocol):
    def get(self, rows: Sequence[str], families: Iterable[str]) -> dict[str, RowData]: ...


class CovisReads(NamedTuple):
    """The co-visitation rows a batch read ahead (`rows`) and which it tried (`keys`:
    present or not); others are read when needed."""

    rows: dict[str, RowData]
    keys: set[str]


NO_COVIS = CovisReads({}, set())


class ItemStats:
    """One partition's share of the item-level state, and the mutations that store it."""

    def __init__(
        self, config: Config, catalog: Catalog, reader: StoreReader, partition: int, partitions: int
    ) -> None:
        s = config.stream
        self._config = config
        self._reader = reader
        self.partition = partition
        self._partitions = partitions
        self.popularity = Popularity(len(catalog), s.popularity_half_life_s)
        self.trending = Popularity(len(catalog), s.trending_half_life_s)
        # Popularity per region (events' context.region), for `stream.max_regions` regions.
        self.regions: dict[str, Popularity] = {}
        self.clock = 0.0  # the newest event time seen: the item cells' timestamp (`tick`)
        self.neighbours = HeldMaps(s.covis_held_maps, config.store.covis_ttl_s)
        # The co-visitation pairs of the batches applied since the neighbour maps were last
        # merged (`wait`), oldest first, as catalog rows (each a slot in the store too), and
        # when the oldest was applied (`time.monotonic()`; for pairs loaded from the store,
        # the load).
        self.pending: list[Pairs] = []
        self.pending_since = 0.0
        self.set_catalog(catalog)

    @classmethod
    def load(
        cls,
        config: Config,
        catalog: Catalog,
        store: StoreReader,
        partition: int,
        partitions: int,
        *,
        reader: StoreReader | None = None,
    ) -> ItemStats:
        """The partition's share as `store` holds it: the item accumulators, the clock and
        the pairs that wait to be merged. Later reads go to `reader` (default: `store`)."""
        stats = cls(config, catalog, reader or store, partition, partitions)
        mine = partition if partitions > 1 else None
        rows = [item_row(i) for i in catalog.ids]
        for r, data in store.get(rows, [STATS]).items():
            row_index = catalog.index[r[2:]]
            for col, c in data[STATS].items():
                name, p = shard_of(col)
                if p != mine:
                    continue
                if name == "pop_log":
                    tracker = stats.popularity
                elif name == "trend_log":
                    tracker = stats.trending
                elif name.startswith("pop_log@"):  # one region's popularity
                    tracker = stats.region(name.removeprefix("pop_log@"))
                else:
                    continue
                tracker.log_score[row_index] = float(c.value)
                stats.clock = max(stats.clock, c.ts)
        lists = store.get([GLOBAL_ROW], [POPULAR]).get(GLOBAL_ROW, {}).get(POPULAR, {})
        stats.clock = max(
            [stats.clock, *(c.ts for col, c in lists.items() if shard_of(col)[1] == mine)]
        )
        stats._load_pending(store)
        return stats

    def _load_pending(self, store: StoreReader) -> None:
        group = self._config.stream.group
        row = offsets_row(group)
        offsets = store.get([row], [OFFSETS]).get(row, {}).get(OFFSETS, {})
        waiting = offsets.get(self._col(_PENDING))
        if waiting is not None and waiting.value:
            self.clock = max(self.clock, waiting.ts)
            slots = [pending_row(group, self.partition, i) for i in range(int(waiting.value))]
            found = store.get(slots, [OFFSETS])
            for slot in slots:
                pairs = found.get(slot, {}).get(OFFSETS, {}).get(_SLOT)
                if pairs is None:  # written in one store write with the count: never
                    raise RuntimeError(f"partition {self.partition}: {slot} is missing")
                self.pending.append(unpack_pairs(pairs.value, self._catalog.index))
            self.pending_since = time.monotonic()
        METRICS.covis_waiting.labels(str(self.partition)).set(len(self.pending))

    def set_catalog(self, catalog: Catalog) -> None:
        """Follow the living catalog: rows never move, new items get empty popularity."""
        self._catalog = catalog
        grow = len(catalog) - self.popularity.log_score.size
        if grow > 0:
            for tracker in [self.popularity, self.trending, *self.regions.values()]:
                tracker.log_score = np.concatenate([tracker.log_score, np.full(grow, -np.inf)])
        self._category_rows = [
            np.flatnonzero(catalog.category == c).astype(np.int64)
            for c in range(len(catalog.category_names))
        ]

    def _col(self, name: str) -> str:
        return shard_column(name, self.partition, self._partitions)

    def region(self, region: str) -> Popularity:
        tracker = self.regions.get(region)
        if tracker is None:
            s = self._config.stream
            tracker = self.regions[region] = Popularity(
                len(self._catalog), s.popularity_half_life_s
            )
        return tracker

    def tick(self, batch_max_ts: float) -> float:
        """The timestamp of item-level cells: the newest event time seen so far. Events of
        different users interleave in the log, so a batch's own newest event can be older
        than an earlier batch's; stamping shared rows with it would make the store's
        newer-wins rule drop the write."""
        self.clock = max(self.clock, batch_max_ts)
        return self.clock

    def covis_rows(self, items: set[str]) -> list[str]:
        """The co-visitation rows to read ahead for a batch that may link `items` and merges
        the waiting pairs: those items' and the waiting pairs' rows, less the maps held."""
        if self.pending:  # merged with the batch's own
            waiting = np.unique(np.concatenate([a for p in self.pending for a in p[:2]]))
            items = items | set(self._catalog.ids[waiting].tolist())
        wanted = [item_row(i) for i in items]
        held = self.neighbours.fresh(wanted)
        return [k for k in wanted if k not in held]

    def apply(
        self,
        events: Sequence[Event],
        columns: EventColumns,
        pairs: Pairs,
        reads: CovisReads,
        *,
        merge: bool,
    ) -> list[Mutation]:
        """A batch's item mutations: the accumulators of the items it engaged, the top
        lists, and its co-visitation `pairs` merged into the maps with those waiting
        (`merge`), or waiting in the next slot."""
        s = self._config.stream
        rows, ts = columns.rows, columns.ts
        weights = TYPE_WEIGHT[columns.type]
        self.popularity.add(rows, ts, weights)
        self.trending.add(rows, ts, weights)
        touched = np.unique(rows[(rows >= 0) & (weights > 0)])
        now_ts = self.tick(float(ts.max()))
        pop, trend = self.popularity.log_score, self.trending.log_score
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
            if region not in self.regions and len(self.regions) >= s.max_regions:
                continue
            tracker = self.region(region)
            mask = (regions == region) & (rows >= 0) & (weights > 0)
            tracker.add(rows[mask], ts[mask], weights[mask])
            region_col = self._col("pop_log@" + region)
            for r in np.unique(rows[mask]).tolist():
                cells[r][region_col] = Cell(now_ts, float(tracker.log_score[r]))
            touched_regions.append(region)
        ids = self._catalog.ids[np.fromiter(cells, np.int64, len(cells))].tolist()
        out = [
            Mutation(item_row(str(i)), STATS, c) for i, c in zip(ids, cells.values(), strict=True)
        ]
        if merge:
            out.extend(self.merged(pairs, now_ts, reads))
        if touched.size:
            out.append(self._popular_lists(now_ts, touched, touched_regions))
        if not merge:
            out.extend(self._wait(summed(pairs, len(self._catalog))))
        return out

    def _wait(self, pairs: Pairs) -> list[Mutation]:
        """The co-visitation pairs of a batch that does not merge them into the neighbour
        maps wait in the next slot (`pending_row`), written with the batch's state and
        position, so a restart reads them back (`load`).

        Why: merging every batch rewrote a hot item's map each time, a fifth of an embedded
        drain. Over `stream.covis_fold_batches` batches a map is merged and written once. The
        maps lag by those batches at most; the users' own features do not wait."""
        group = self._config.stream.group
        slot = len(self.pending)
        if not slot:
            self.pending_since = time.monotonic()
        self.pending.append(pairs)
        METRICS.covis_waiting.labels(str(self.partition)).set(slot + 1)
        packed = Cell(self.clock, pack_pairs(pairs, self._catalog.ids))
        count = Cell(self.clock, slot + 1)
        return [
            Mutation(pending_row(group, self.partition, slot), OFFSETS, {_SLOT: packed}),
            Mutation(offsets_row(group), OFFSETS, {self._col(_PENDING): count}),
        ]

    def merged(self, pairs: Pairs, now_ts: float, reads: CovisReads = NO_COVIS) -> list[Mutation]:
        """The waiting co-visitation pairs and `pairs` merged into the neighbour maps: the
        maps' mutations and, if any waited, the one that sets their count to 0."""
        waited = self.pending
        n_items = len(self._catalog)
        pairs = summed(joined([*waited, pairs]), n_items)
        out = self._covisitation(both_ways(pairs, n_items), now_ts, reads) if pairs.src.size else []
        if waited:
            self.pending = []
            METRICS.covis_waiting.labels(str(self.partition)).set(0)
            count = {self._col(_PENDING): Cell(now_ts, 0)}
            out.append(Mutation(offsets_row(self._config.stream.group), OFFSETS, count))
        return out

    def _covisitation(self, pairs: Pairs, now_ts: float, reads: CovisReads) -> list[Mutation]:
        """Co-visitation pairs summed per (item, other) (`summed`) merged into each item's
        stored neighbour map (the strongest `covis_max_neighbours` kept). Weights are small
        integers, so summing before adding gives the same values as adding pair by pair."""
        cat = self._catalog
        items, others, sums = pairs.src, pairs.dst, pairs.weights.tolist()
        starts = np.flatnonzero(np.r_[True, items[1:] != items[:-1]])
        ends = np.r_[starts[1:], items.size].tolist()
        other_ids = cat.ids[others].tolist()
        keys = [item_row(str(i)) for i in cat.ids[items[starts]].tolist()]
        col = self._col("neighbours")
        olds = self.neighbours.fresh(keys)  # the others are read below
        if missing := [k for k in keys if k not in olds]:
            stored = reads.rows
            if unread := [k for k in missing if k not in reads.keys]:
                stored = {**stored, **self._reader.get(unread, [COVIS])}  # not read ahead
            for k in missing:
                olds[k] = stored.get(k, {}).get(COVIS, {}).get(col)
        cells: dict[str, Cell] = {}
        for key, a, b in zip(keys, starts.tolist(), ends, strict=True):
            old = olds[key]
            merged = update_covisitation(
                None if old is None else old.value,
                zip(other_ids[a:b], sums[a:b], strict=True),
                self._config.stream.covis_max_neighbours,
            )
            cells[key] = Cell(now_ts, merged)
        self.neighbours.hold(cells)
        return [Mutation(key, COVIS, {col: cell}) for key, cell in cells.items()]

    def _popular_lists(
        self, ts: float, touched: npt.NDArray[np.int64], regions: Sequence[str] = ()
    ) -> Mutation:
        s = self._config.stream
        cat = self._catalog
        pop = self.popularity
        col = self._col

        def listing(rows: np.ndarray[Any, Any], tracker: Popularity = pop) -> list[Any]:
            return [cat.ids[rows].tolist(), np.round(tracker.log_score[rows], 6).tolist()]

        cells = {
            col("all"): Cell(ts, listing(pop.top(s.top_popular))),
            col("trending"): Cell(ts, listing(self.trending.top(s.top_popular), self.trending)),
        }
        for c in np.unique(cat.category[touched]):
            rows = pop.top(s.top_per_category, among=self._category_rows[int(c)])
            cells[col("c:" + str(cat.category_names[c]))] = Cell(ts, listing(rows))
        for region in regions:
            tracker = self.regions[region]
            cells[col("r:" + region)] = Cell(ts, listing(tracker.top(s.top_popular), tracker))
        return Mutation(GLOBAL_ROW, POPULAR, cells)
