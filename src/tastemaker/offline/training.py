"""Point-in-time training sets, by replaying the log through the stream's own code.

A feature row for a label at time `t` must be what serving would have computed at `t`:
nothing the user did at or after `t` may show in it. The replay guarantees this by
construction: events go through the same microbatch fold as the live stream
(`stream/microbatch.py`: the user features of `features/fold.py`, the item statistics), into
a store of its own, in event-time order, and the features of a label are assembled by
the same `RecommendPipeline` code as a live request, after every event before `t` and before
any event at or after it. Batch artifacts used as features must be as old as the labels: the
ranker job passes only versions whose watermark precedes its window.
"""

from __future__ import annotations

import bisect
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from tastemaker.catalog import Catalog
from tastemaker.config import Config
from tastemaker.events import Event
from tastemaker.features.layout import OFFSETS, default_families, offsets_row
from tastemaker.ranking import FEATURE_NAMES
from tastemaker.recommend.pipeline import RecommendPipeline
from tastemaker.retrieval import ModelHolder, RetrievalContext, with_rows
from tastemaker.store import Cell, Mutation, open_store
from tastemaker.stream.collector import collector_paused
from tastemaker.stream.item_stats import ItemStats
from tastemaker.stream.microbatch import MicrobatchFold

T = TypeVar("T")

__all__ = ["Label", "Replay", "TrainingSet", "point_in_time_features"]

_REPLAY_GROUP = "replay"


@dataclass(frozen=True)
class Label:
    """A (user, item, time, label) row: what happened to `item` for `user` after `ts`."""

    user_id: str
    item_id: str
    ts: float
    label: float


@dataclass
class TrainingSet:
    """Rows of `FEATURE_NAMES` features, one query group after another."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.float32]
    group: npt.NDArray[np.int64]  # rows per query, in order
    query_ts: npt.NDArray[np.float64]  # per query

    @staticmethod
    def empty() -> TrainingSet:
        return TrainingSet(
            np.zeros((0, len(FEATURE_NAMES)), np.float32),
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
            np.zeros(0, np.float64),
        )

    @property
    def queries(self) -> int:
        return int(self.group.size)

    def concat(self, other: TrainingSet) -> TrainingSet:
        return TrainingSet(
            np.concatenate([self.x, other.x]),
            np.concatenate([self.y, other.y]),
            np.concatenate([self.group, other.group]),
            np.concatenate([self.query_ts, other.query_ts]),
        )

    def newest(self, max_rows: int) -> TrainingSet:
        """The newest whole queries holding at most `max_rows` rows."""
        if self.y.size <= max_rows:
            return self
        ends = np.cumsum(self.group)
        first_query = int(np.searchsorted(ends, self.y.size - max_rows, side="left")) + 1
        start = int(ends[first_query - 1])
        return TrainingSet(
            self.x[start:], self.y[start:], self.group[first_query:], self.query_ts[first_query:]
        )


class Replay:
    """The stream's microbatch fold and a recommend pipeline over a store of their own, advanced
    through events in time order. The store lives in `directory` and remembers the log
    offset it has replayed up to (`position`), so a job can continue it next run."""

    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        directory: Path,
        models: ModelHolder | None = None,
        *,
        fresh: bool = False,
    ) -> None:
        if fresh and directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.store = open_store(
            f"embedded://{directory.resolve()}",
            default_families(
                profile_ttl_s=config.store.profile_ttl_s,
                session_ttl_s=config.store.session_ttl_s,
                covis_ttl_s=config.store.covis_ttl_s,
            ),
            seen_ttl_s=config.stream.dedup_window_s,
        )
        self.catalog = catalog
        self._fold = MicrobatchFold(config, catalog)
        # The item statistics as one partition's (of a one-partition log), as the stream's.
        self._items = ItemStats.load(config, catalog, self.store, 0, 1)
        # No caching of the global top lists across queries: each query must see them as
        # of its own time (and the same on every run), whatever the wall clock does.
        uncached = msgspec.structs.replace(
            config,
            serving=msgspec.structs.replace(
                config.serving, global_cache_s=1e-9, neighbour_cache_s=1e-9
            ),
        )
        self.pipeline = RecommendPipeline(uncached, self.store, catalog, models=models)
        self.batch_size = config.stream.batch_size

    @property
    def position(self) -> int:
        row = offsets_row(_REPLAY_GROUP)
        cell = self.store.get([row], [OFFSETS]).get(row, {}).get(OFFSETS, {}).get("log")
        return 0 if cell is None else int(cell.value)

    def apply(self, events: Sequence[Event]) -> None:
        """Apply `events` in batches of `stream.batch_size` (duplicates by id dropped), each
        batch's state in one store write, with the garbage collector paused as the stream's
        microbatches are."""
        for start in range(0, len(events), self.batch_size):
            with collector_paused():
                batch = list(events[start : start + self.batch_size])
                reads = self._fold.read(self.store, batch, self._items, covis=False)
                computed = self._fold.compute(batch, (), reads, self._items, merge=True)
                if computed.mutations:
                    self.store.write(computed.mutations, seen=computed.seen)

    def mark(self, position: int) -> None:
        """Record that everything up to log offset `position` has been replayed."""
        row = offsets_row(_REPLAY_GROUP)
        self.store.write([Mutation(row, OFFSETS, {"log": Cell(float(position), position)})])

    def close(self) -> None:
        self.store.close()


def advance_to(
    replay: Replay,
    events: Sequence[Event],
    ts: Sequence[float],
    done: int,
    until: float,
) -> int:
    """Apply `events[done:j]` where `j` is the first event at or after `until`; returns j."""
    j = bisect.bisect_left(ts, until, lo=done)
    if j > done:
        replay.apply(events[done:j])
    return j


def replay_queries(
    replay: Replay,
    events: Sequence[Event],
    queries: Iterable[tuple[str, float]],
    featurize: Callable[[RetrievalContext, float], T],
) -> list[T]:
    """For each `(user_id, t)`, in time order, apply every event before `t` (and none at
    or after it), then call `featurize(context of user at t, t)`. Events must be sorted by
    time. The remaining events are applied at the end."""
    ts = [e.ts for e in events]
    done = 0
    out = []
    for user_id, t in sorted(queries, key=lambda q: q[1]):
        done = advance_to(replay, events, ts, done, t)
        out.append(featurize(replay.pipeline.context(user_id), t))
    if done < len(events):
        replay.apply(events[done:])
    return out


def point_in_time_features(
    replay: Replay, events: Sequence[Event], labels: Sequence[Label]
) -> npt.NDArray[np.float32]:
    """The `FEATURE_NAMES` row of each label, as of the label's time: retriever scores for
    the items the retrievers proposed at that time (0 otherwise), user and cross features
    from the state built by the events before it. Rows come back in the order of `labels`."""
    groups: dict[tuple[str, float], list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault((lab.user_id, lab.ts), []).append(i)
    out = np.zeros((len(labels), len(FEATURE_NAMES)), np.float32)
    pipeline = replay.pipeline
    catalog = replay.catalog

    def featurize(ctx: RetrievalContext, t: float) -> npt.NDArray[np.float32]:
        idx = groups[(ctx.user_id, t)]
        rows = catalog.rows([labels[i].item_id for i in idx])
        cands = with_rows(pipeline.candidates(ctx), rows[rows >= 0])
        x = pipeline.features(ctx, cands, t)
        feats = np.zeros((len(idx), len(FEATURE_NAMES)), np.float32)
        known = rows >= 0
        feats[known] = x[np.searchsorted(cands.rows, rows[known])]
        return feats

    results = replay_queries(replay, events, list(groups), featurize)
    for key, feats in zip(sorted(groups, key=lambda q: q[1]), results, strict=True):
        out[groups[key]] = feats
    return out
