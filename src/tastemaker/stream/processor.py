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

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tastemaker.catalog import Catalog
from tastemaker.config import Config
from tastemaker.events import Event
from tastemaker.features import Fact, Popularity, update_covisitation
from tastemaker.features.aggregations import DEFAULT_WEIGHTS
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
    user_row,
)
from tastemaker.log import EventLog
from tastemaker.metrics import METRICS
from tastemaker.store import Cell, Mutation, OnlineStore, RowData
from tastemaker.stream.sessions import assign_sessions

__all__ = ["BatchResult", "StreamProcessor"]

log = logging.getLogger(__name__)

# Session bookkeeping columns live beside the declared session features.
_SESSION_STATE = "_session"


class BatchResult:
    """What one microbatch did."""

    __slots__ = ("duplicates", "events", "last_offset", "users")

    def __init__(self, events: int, duplicates: int, users: set[str], last_offset: int) -> None:
        self.events = events
        self.duplicates = duplicates
        self.users = users
        self.last_offset = last_offset


class StreamProcessor:
    """Consumes the event log as consumer group `config.stream.group`."""

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
        s = config.stream
        self.popularity = Popularity(len(catalog), s.popularity_half_life_s)
        self.trending = Popularity(len(catalog), s.trending_half_life_s)
        # Popularity per region (events' context.region), for `stream.max_regions` regions.
        self.regions: dict[str, Popularity] = {}
        self._clock = 0.0
        self._category_rows = [
            np.flatnonzero(catalog.category == c).astype(np.int64)
            for c in range(len(catalog.category_names))
        ]
        self._load_popularity()
        self.position = self._stored_position()
        self._stop = threading.Event()
        self._newest_ts: dict[str, float] = {}
        self._next_catalog: Catalog | None = None

    def follow_catalog(self, catalog: Catalog) -> None:
        """Switch to `catalog` before the next microbatch (safe from another thread)."""
        self._next_catalog = catalog

    def set_catalog(self, catalog: Catalog) -> None:
        """Follow the living catalog: rows never move, new items get empty popularity."""
        grow = len(catalog) - self.popularity.log_score.size
        if grow > 0:
            for tracker in (self.popularity, self.trending, *self.regions.values()):
                tracker.log_score = np.concatenate([tracker.log_score, np.full(grow, -np.inf)])
        self._category_rows = [
            np.flatnonzero(catalog.category == c).astype(np.int64)
            for c in range(len(catalog.category_names))
        ]
        self.catalog = catalog

    def _stored_position(self) -> int:
        """Where this group's stored state ends in the log. The log's committed offset can only
        lag behind it (it is written after the store), so the store's position wins."""
        group = self.config.stream.group
        row = offsets_row(group)
        cell = self.store.get([row], [OFFSETS]).get(row, {}).get(OFFSETS, {}).get("log")
        stored = 0 if cell is None else int(cell.value)
        return max(stored, self.log.committed(group))

    def _load_popularity(self) -> None:
        rows = [item_row(i) for i in self.catalog.ids]
        stored = self.store.get(rows, [STATS])
        for r, data in stored.items():
            row = self.catalog.index[r[2:]]
            for column, cell in data[STATS].items():
                if column == "pop_log":
                    tracker = self.popularity
                elif column == "trend_log":
                    tracker = self.trending
                elif column.startswith("pop_log@"):  # one region's popularity
                    tracker = self._region(column.removeprefix("pop_log@"))
                else:
                    continue
                tracker.log_score[row] = float(cell.value)
                self._clock = max(self._clock, cell.ts)
        lists = self.store.get([GLOBAL_ROW], [POPULAR]).get(GLOBAL_ROW, {}).get(POPULAR, {})
        self._clock = max([self._clock, *(c.ts for c in lists.values())])

    def _region(self, region: str) -> Popularity:
        tracker = self.regions.get(region)
        if tracker is None:
            s = self.config.stream
            tracker = self.regions[region] = Popularity(len(self.catalog), s.popularity_half_life_s)
        return tracker

    def _tick(self, batch_max_ts: float) -> float:
        """The timestamp of item-level cells: the newest event time seen so far. Events of
        different users interleave in the log, so a batch's own newest event can be older
        than an earlier batch's; stamping shared rows with it would make the store's
        newer-wins rule drop the write."""
        self._clock = max(self._clock, batch_max_ts)
        return self._clock

    # -- one microbatch -------------------------------------------------------------------

    def process_once(self) -> BatchResult | None:
        """Read and apply one microbatch; None when the log has nothing new."""
        s = self.config.stream
        started = time.perf_counter()
        if (pending := self._next_catalog) is not None:
            self._next_catalog = None
            self.set_catalog(pending)
        records = self.log.read(self.position, s.batch_size)
        if not records:
            return None
        last_offset = records[-1].offset
        # The position travels in the same store write as the state it produced: after a
        # crash the state and the position agree, whatever the log's own commit says.
        position = Mutation(
            offsets_row(s.group), OFFSETS, {"log": Cell(float(last_offset), last_offset)}
        )
        n_events, users = self.apply_events([r.event for r in records], [position])
        n_dup = len(records) - n_events
        self.log.commit(s.group, last_offset)  # for lag monitoring and other readers
        self.position = last_offset
        METRICS.events_processed.inc(n_events)
        METRICS.duplicates_dropped.inc(n_dup)
        METRICS.batch_seconds.observe(time.perf_counter() - started)
        METRICS.batch_events.observe(len(records))
        now = time.time()
        for ts in self._newest_ts.values():  # one observation per user row written
            METRICS.freshness_seconds.observe(max(0.0, now - ts))
        METRICS.lag_events.set(max(0, self.log.end_offset() - last_offset))
        if users and self.on_users_changed is not None:
            self.on_users_changed(users)
        return BatchResult(n_events, n_dup, users, last_offset)

    def apply_events(
        self, events: Sequence[Event], extra: Sequence[Mutation] = ()
    ) -> tuple[int, set[str]]:
        """Apply events (duplicates by id dropped) and write the state they produce, with
        `extra` mutations, in one store write. Returns the number applied and their users.
        The log-driven loop and the offline replay (point-in-time training sets) both come
        through here, so both compute features with the same code."""
        fresh = self._drop_duplicates(list(events))
        self._newest_ts = {}
        mutations: list[Mutation] = self._apply(fresh) if fresh else []
        mutations.extend(extra)
        if mutations:
            self.store.write(mutations, seen=[e.event_id for e in fresh])
        return len(fresh), {e.user_id for e in fresh}

    def _drop_duplicates(self, events: list[Event]) -> list[Event]:
        seen = self.store.seen([e.event_id for e in events])
        fresh: list[Event] = []
        for e in events:
            if e.event_id not in seen:
                seen.add(e.event_id)  # a repeat inside the batch is a duplicate too
                fresh.append(e)
        return fresh

    def _apply(self, events: list[Event]) -> list[Mutation]:
        by_user: dict[str, list[Event]] = defaultdict(list)
        for e in events:
            by_user[e.user_id].append(e)
        self._newest_ts = {u: max(e.ts for e in evs) for u, evs in by_user.items()}
        states = self.store.get([user_row(u) for u in by_user], [PROFILE, SESSION])
        mutations: list[Mutation] = []
        covis_pairs: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for user_id, user_events in by_user.items():
            user_events.sort(key=lambda e: e.ts)
            state = states.get(user_row(user_id), {})
            mutations.extend(self._apply_user(user_id, user_events, state, covis_pairs))
        mutations.extend(self._apply_items(events, covis_pairs))
        return mutations

    def _facts(self, events: Sequence[Event], session_ids: Sequence[str]) -> list[Fact]:
        cat = self.catalog
        facts = []
        for e, sid in zip(events, session_ids, strict=True):
            row = cat.index.get(e.item_id)
            if row is None:
                facts.append(Fact(e.ts, e.type, e.item_id, sid, e.value))
            else:
                facts.append(
                    Fact(
                        e.ts,
                        e.type,
                        e.item_id,
                        sid,
                        e.value,
                        category=str(cat.category_names[cat.category[row]]),
                        brand=str(cat.brand_names[cat.brand[row]]),
                        price=float(cat.price[row]),
                        embedding=cat.embedding[row],
                    )
                )
        return facts

    def _apply_user(
        self,
        user_id: str,
        events: list[Event],
        state: RowData,
        covis_pairs: dict[str, list[tuple[str, float]]],
    ) -> list[Mutation]:
        s = self.config.stream
        session_cells = state.get(SESSION, {})
        old_session = session_cells.get(_SESSION_STATE)
        session_ids, new_session = assign_sessions(
            user_id, events, None if old_session is None else old_session.value, s.session_gap_s
        )
        facts = self._facts(events, session_ids)
        ts = events[-1].ts
        profile_cells = state.get(PROFILE, {})
        out: dict[str, dict[str, Cell]] = {PROFILE: {}, SESSION: {}}
        current_id = new_session["id"] if new_session else None
        same_session = old_session is not None and current_id == old_session.value["id"]
        # Session features only see the facts of the session the user is in now; a new
        # session starts them from nothing.
        session_facts = [f for f in facts if f.session_id == current_id]
        for agg in self.config.features:
            if agg.family == PROFILE:
                old = profile_cells.get(agg.name)
                new = agg.apply(None if old is None else old.value, facts)
            else:
                old = session_cells.get(agg.name) if same_session else None
                new = agg.apply(None if old is None else old.value, session_facts)
            if new is not None and (old is None or new != old.value):
                prev_ts = 0.0 if old is None else old.ts
                out[agg.family][agg.name] = Cell(max(ts, prev_ts), new)
        if new_session is not None:
            out[SESSION][_SESSION_STATE] = Cell(ts, new_session)
        self._collect_covisits(
            events, session_ids, session_cells if same_session else {}, current_id, covis_pairs
        )
        row = user_row(user_id)
        return [Mutation(row, fam, cells) for fam, cells in out.items() if cells]

    def _collect_covisits(
        self,
        events: list[Event],
        session_ids: list[str],
        session_cells: dict[str, Cell],
        current_id: str | None,
        covis_pairs: dict[str, list[tuple[str, float]]],
    ) -> None:
        """Each engaged item is linked both ways to the previous `covis_window` items of its
        session."""
        window = self.config.stream.covis_window
        prior = session_cells.get("session_items")
        recent: dict[str, list[str]] = defaultdict(list)
        if prior is not None and current_id is not None:
            recent[current_id] = list(reversed(prior.value))[-window:]
        for e, sid in zip(events, session_ids, strict=True):
            w = DEFAULT_WEIGHTS.get(e.type, 0.0)
            if w <= 0 or e.item_id not in self.catalog.index:
                continue
            items = recent[sid]
            for other in items[-window:]:
                if other != e.item_id:
                    covis_pairs[e.item_id].append((other, w))
                    covis_pairs[other].append((e.item_id, w))
            if e.item_id in items:
                items.remove(e.item_id)
            items.append(e.item_id)

    def _apply_items(
        self, events: list[Event], covis_pairs: dict[str, list[tuple[str, float]]]
    ) -> list[Mutation]:
        s = self.config.stream
        cat = self.catalog
        rows = cat.rows([e.item_id for e in events])
        ts = np.fromiter((e.ts for e in events), np.float64, len(events))
        weights = np.fromiter(
            (DEFAULT_WEIGHTS.get(e.type, 0.0) for e in events), np.float64, len(events)
        )
        self.popularity.add(rows, ts, weights)
        self.trending.add(rows, ts, weights)
        touched = np.unique(rows[(rows >= 0) & (weights > 0)])
        now_ts = self._tick(float(ts.max()))
        pop, trend = self.popularity.log_score, self.trending.log_score
        cells: dict[int, dict[str, Cell]] = {
            int(r): {
                "pop_log": Cell(now_ts, float(pop[r])),
                "trend_log": Cell(now_ts, float(trend[r])),
            }
            for r in touched
        }
        # Per region (events' context.region, the first `max_regions` seen): its own
        # popularity, kept per item beside the global one so a restart restores it exactly.
        regions = np.array([e.context.region or "" for e in events], dtype=object)
        touched_regions = []
        for region in sorted(set(regions.tolist()) - {""}):
            if region not in self.regions and len(self.regions) >= s.max_regions:
                continue
            tracker = self._region(region)
            mask = (regions == region) & (rows >= 0) & (weights > 0)
            tracker.add(rows[mask], ts[mask], weights[mask])
            for r in np.unique(rows[mask]).tolist():
                cells[r]["pop_log@" + region] = Cell(now_ts, float(tracker.log_score[r]))
            touched_regions.append(region)
        out = [Mutation(item_row(str(cat.ids[r])), STATS, c) for r, c in cells.items()]
        if covis_pairs:
            keys = [item_row(i) for i in covis_pairs]
            stored = self.store.get(keys, [COVIS])
            for item_id, key in zip(covis_pairs, keys, strict=True):
                old = stored.get(key, {}).get(COVIS, {}).get("neighbours")
                merged = update_covisitation(
                    None if old is None else old.value, covis_pairs[item_id], s.covis_max_neighbours
                )
                out.append(Mutation(key, COVIS, {"neighbours": Cell(now_ts, merged)}))
        if touched.size:
            out.append(self._popular_lists(now_ts, touched, touched_regions))
        return out

    def _popular_lists(
        self, ts: float, touched: np.ndarray[Any, Any], regions: Sequence[str] = ()
    ) -> Mutation:
        s = self.config.stream
        cat = self.catalog
        pop = self.popularity

        def listing(rows: np.ndarray[Any, Any], tracker: Popularity = pop) -> list[Any]:
            return [cat.ids[rows].tolist(), np.round(tracker.log_score[rows], 6).tolist()]

        cells = {
            "all": Cell(ts, listing(pop.top(s.top_popular))),
            "trending": Cell(ts, listing(self.trending.top(s.top_popular), self.trending)),
        }
        for c in np.unique(cat.category[touched]):
            rows = pop.top(s.top_per_category, among=self._category_rows[int(c)])
            cells["c:" + str(cat.category_names[c])] = Cell(ts, listing(rows))
        for region in regions:
            tracker = self.regions[region]
            cells["r:" + region] = Cell(ts, listing(tracker.top(s.top_popular), tracker))
        return Mutation(GLOBAL_ROW, POPULAR, cells)

    # -- running --------------------------------------------------------------------------

    def drain(self) -> int:
        """Process until the log has nothing new; returns the number of events applied."""
        total = 0
        while (result := self.process_once()) is not None:
            total += result.events
        return total

    def run(self) -> None:
        """Process until `stop()`; sleeps `poll_interval_s` when idle. Errors are logged and
        retried after a pause, never allowed to kill the worker silently."""
        while not self._stop.is_set():
            try:
                result = self.process_once()
            except Exception:
                log.exception("stream batch failed; retrying from offset %d", self.position)
                METRICS.stream_errors.inc()
                self._stop.wait(1.0)
                continue
            if result is None:
                self._stop.wait(self.config.stream.poll_interval_s)

    def stop(self) -> None:
        self._stop.set()
