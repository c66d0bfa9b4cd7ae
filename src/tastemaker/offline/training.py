"""Point-in-time training sets, by replaying the log through the stream's own code.

A feature row for a label at time `t` must be what serving would have computed at `t`:
nothing the user did at or after `t` may show in it. The replay guarantees this by
construction: events go through the same `StreamProcessor.apply_events` as the live stream,
into a store of its own, in event-time order, and the features of a label are assembled by
the same `RecommendPipeline` code as a live request, after every event before `t` and before
any event at or after it. Batch artifacts used as features must be as old as the labels: the
ranker job passes only versions whose watermark precedes its window.
"""

from __future__ import annotations

import bisect
import shutil
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
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
from tastemaker.log import LogConsumer, LogRecord
from tastemaker.ranking import FEATURE_NAMES
from tastemaker.recommend.pipeline import RecommendPipeline
from tastemaker.retrieval import ModelHolder, RetrievalContext, with_rows
from tastemaker.store import Cell, Mutation, open_store
from tastemaker.stream.processor import StreamProcessor

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
    """A stream processor and a recommend pipeline over a store of their own, advanced
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
        self.processor = StreamProcessor(config, _NoLog(), self.store, catalog)
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
        for start in range(0, len(events), self.batch_size):
            self.processor.apply_events(events[start : start + self.batch_size])

    def mark(self, position: int) -> None:
        """Record that everything up to log offset `position` has been replayed."""
        row = offsets_row(_REPLAY_GROUP)
        self.store.write([Mutation(row, OFFSETS, {"log": Cell(float(position), position)})])

    def close(self) -> None:
        self.store.close()


class _NoLog:
    """The replay feeds events itself; its processor never reads a log."""

    partitions = 1

    def append(self, events: Sequence[Event]) -> None:
        del events
        raise NotImplementedError("a replay has no log to append to")

    def read(self, partition: int, after: int, limit: int) -> list[LogRecord]:
        del partition, after, limit
        return []

    def commit(self, group: str, positions: Mapping[int, int]) -> None:
        del group, positions

    def committed(self, group: str) -> dict[int, int]:
        del group
        return {0: 0}

    def end_offsets(self) -> dict[int, int]:
        return {0: 0}

    def lag(self, group: str) -> dict[int, int]:
        del group
        return {0: 0}

    def consumer(self, group: str, member: str) -> LogConsumer:
        raise NotImplementedError("a replay has no log to consume")

    def erase_users(self, user_ids: Collection[str]) -> list[str]:
        del user_ids
        return []

    def close(self) -> None:
        pass


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
