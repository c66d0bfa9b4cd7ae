"""The ranker job: LambdaMART (LightGBM) on point-in-time training rows.

It runs first among the jobs: it learns from the events since its last run, with the batch
artifacts as the previous run left them (built from no event of its window), so its rows are
what serving computed during that window. Each run reads the lake's events after its
watermark. For every user active in them, one
query at the time of the user's first new event: the candidates the live pipeline would have
retrieved then, with the features it would have assembled then (a replay of the stream, see
`training.py`, and the batch artifacts as they were before the window), labelled 1 if the
user engaged with the candidate within `label_horizon_s` after. Rows accumulate across runs
(the newest `ranker_max_rows`); a new model is published when there are enough queries.
The replay store is kept between runs, so a run replays only the new events.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from tastemaker.artifacts.models import MODEL_ARTIFACTS, load_models
from tastemaker.artifacts.store import Version
from tastemaker.catalog import Catalog
from tastemaker.config import Config
from tastemaker.events import Event
from tastemaker.extras import missing_extra
from tastemaker.features.aggregations import DEFAULT_WEIGHTS
from tastemaker.features.layout import PROFILE
from tastemaker.offline.job import JobContext, JobError, NewEvents, publish
from tastemaker.offline.lake import table_to_events
from tastemaker.offline.metrics import ndcg_at
from tastemaker.offline.training import Replay, TrainingSet, replay_queries
from tastemaker.ranking import FEATURE_NAMES
from tastemaker.retrieval import ModelHolder, RetrievalContext

__all__ = ["Query", "label_queries", "train_lambdamart", "train_ranker_version"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Query:
    user_id: str
    ts: float
    positives: frozenset[str]
    seen: frozenset[str]  # engaged before `ts` in the same window
    region: str | None = None  # the context of the event that starts the session
    device: str | None = None


def label_queries(
    events: Sequence[Event], horizon_s: float, session_gap_s: float, max_per_user: int = 5
) -> list[Query]:
    """A query at the start of each session of each user (up to `max_per_user`, the first
    ones): positives = the distinct items the user engaged with from then until
    `horizon_s` later, minus items engaged before it in the window."""
    by_user: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_user[e.user_id].append(e)
    out = []
    for user, evs in by_user.items():
        engaged = [(e.ts, e.item_id) for e in evs if DEFAULT_WEIGHTS.get(e.type, 0.0) > 0]
        starts = [evs[0]] + [b for a, b in itertools.pairwise(evs) if b.ts - a.ts > session_gap_s]
        for first in starts[:max_per_user]:
            t0 = first.ts
            before = frozenset(i for t, i in engaged if t < t0)
            pos = {i for t, i in engaged if t0 <= t <= t0 + horizon_s} - before
            if pos:
                c = first.context
                out.append(Query(user, t0, frozenset(pos), before, c.region, c.device))
    return out


def query_rows(
    replay: Replay,
    events: Sequence[Event],
    queries: Sequence[Query],
    negatives: int,
    seed: int,
) -> TrainingSet:
    """Replay `events`, stopping at each query to assemble its candidates' features."""
    rng = np.random.default_rng(seed)
    by_key = {(q.user_id, q.ts): q for q in queries}
    pipeline = replay.pipeline
    catalog = replay.catalog

    def featurize(
        ctx: RetrievalContext, t: float
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None:
        q = by_key[(ctx.user_id, t)]
        ctx = msgspec.structs.replace(ctx, region=q.region, device=q.device)
        cands = pipeline.candidates(ctx)
        if cands.rows.size == 0:
            return None
        # What serving would never recommend is no negative either.
        seen = set(q.seen)
        for column in pipeline.excluded_columns:
            cell = ctx.user.get(PROFILE, {}).get(column)
            seen.update(cell.value if cell is not None else ())
        x = pipeline.features(ctx, cands, t)
        y = np.isin(cands.rows, catalog.rows(sorted(q.positives))).astype(np.float32)
        keep = ~np.isin(cands.rows, catalog.rows(sorted(seen)))
        x, y = x[keep], y[keep]
        if y.sum() == 0:
            return None
        neg = np.flatnonzero(y == 0)
        if neg.size > negatives:
            neg = np.sort(rng.choice(neg, negatives, replace=False))
        take = np.sort(np.concatenate([np.flatnonzero(y > 0), neg]))
        return x[take], y[take]

    results = replay_queries(replay, events, [(q.user_id, q.ts) for q in queries], featurize)
    kept = [(r, t) for r, t in zip(results, sorted(q.ts for q in queries), strict=True) if r]
    if not kept:
        return TrainingSet.empty()
    return TrainingSet(
        np.concatenate([r[0] for r, _ in kept]),
        np.concatenate([r[1] for r, _ in kept]),
        np.array([r[1].size for r, _ in kept], np.int64),
        np.array([t for _, t in kept], np.float64),
    )


def _lgb_params(config: Config) -> dict[str, Any]:
    o = config.offline
    return {
        "objective": "lambdarank",
        "num_leaves": o.ranker_leaves,
        "learning_rate": o.ranker_learning_rate,
        "min_data_in_leaf": o.ranker_min_leaf,
        "lambdarank_truncation_level": 20,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,
        "seed": o.seed,
        "verbose": -1,
    }


def _ndcg10(scores: npt.NDArray[np.float32], data: TrainingSet) -> float:
    out, start = [], 0
    for g in data.group.tolist():
        y, s = data.y[start : start + g], scores[start : start + g]
        start += g
        order = np.argsort(-s, kind="stable")
        out.append(ndcg_at(y[order] > 0, int((y > 0).sum())))
    return float(np.mean(out)) if out else 0.0


def train_lambdamart(data: TrainingSet, config: Config, path: Path) -> dict[str, float]:
    """Fit on the older 80% of queries to measure NDCG@10 on the newest 20%, then fit on
    everything and save the model to `path`. Returns the metrics."""
    try:
        import lightgbm as lgb
    except ImportError as exc:
        raise missing_extra("lightgbm", "offline", "the ranker job") from exc

    params = _lgb_params(config)
    trees = config.offline.ranker_trees
    metrics: dict[str, float] = {"queries": float(data.queries), "rows": float(data.y.size)}
    n_fit = int(data.queries * 0.8)
    if 0 < n_fit < data.queries:
        cut = int(data.group[:n_fit].sum())
        fit = lgb.Dataset(
            data.x[:cut],
            data.y[:cut],
            group=data.group[:n_fit],
            feature_name=FEATURE_NAMES,
            free_raw_data=False,
        )
        booster = lgb.train(params, fit, num_boost_round=trees)
        held = TrainingSet(data.x[cut:], data.y[cut:], data.group[n_fit:], data.query_ts[n_fit:])
        metrics["validation_ndcg@10"] = _ndcg10(
            np.asarray(booster.predict(held.x, num_threads=1), np.float32), held
        )
        # The same rows in the order the retrievers' popularity gives: what the model adds.
        pop = held.x[:, FEATURE_NAMES.index("popularity")]
        metrics["validation_ndcg@10_popularity"] = _ndcg10(pop, held)
    full = lgb.Dataset(data.x, data.y, group=data.group, feature_name=FEATURE_NAMES)
    booster = lgb.train(params, full, num_boost_round=trees)
    booster.save_model(str(path))
    return metrics


def train_ranker_version(ctx: JobContext) -> Version | None:
    if ctx.catalog is None:
        raise JobError("the ranker job needs the catalog: set catalog.path in the config")
    new = _ranker_window(ctx)
    if new is None:
        return None
    config, catalog, o = ctx.config, ctx.catalog, ctx.config.offline
    # Batch features as they were before this window: no version that saw its events.
    holder = ModelHolder(load_models(ctx.artifacts, catalog, max_watermark=new.from_offset))
    replay = _open_replay(ctx, catalog, holder, new.from_offset)
    try:
        events = table_to_events(new.table)
        queries = label_queries(events, o.label_horizon_s, config.stream.session_gap_s)
        data = query_rows(replay, events, queries, o.ranker_negatives, o.seed + new.watermark)
        replay.mark(new.watermark)
    finally:
        replay.close()
    if new.parent is not None:
        old = np.load(new.parent.path / "training.npz")
        data = TrainingSet(old["x"], old["y"], old["group"], old["query_ts"]).concat(data)
    data = data.newest(o.ranker_max_rows)
    if data.queries < o.ranker_min_queries:
        log.warning(
            "ranker: %d labelled queries, fewer than ranker_min_queries=%d; no new version",
            data.queries,
            o.ranker_min_queries,
        )
        return None

    def write(d: Path) -> dict[str, Any]:
        metrics = train_lambdamart(data, config, d / "model.txt")
        np.savez_compressed(
            d / "training.npz", x=data.x, y=data.y, group=data.group, query_ts=data.query_ts
        )
        return {"rows": {"rows": int(data.y.size), "queries": data.queries}, "metrics": metrics}

    params = {
        "trees": o.ranker_trees,
        "leaves": o.ranker_leaves,
        "learning_rate": o.ranker_learning_rate,
        "label_horizon_s": o.label_horizon_s,
        "features": list(FEATURE_NAMES),
        "batch_features": holder.models.versions,
    }
    return publish(ctx, "ranker", new, write, params)


def _ranker_window(ctx: JobContext) -> NewEvents | None:
    """The events to learn from: after the previous ranker version's watermark; for the
    first version, after the batch artifacts' (the ranker learns only from rows whose batch
    features existed, as they will at serving). None when there is nothing to learn from."""
    parent = ctx.artifacts.current("ranker")
    if parent is not None:
        start = parent.manifest.watermark
    else:
        marks = [
            v.manifest.watermark
            for name in MODEL_ARTIFACTS
            if (v := ctx.artifacts.current(name)) is not None
        ]
        if not marks:
            log.info("ranker: no batch artifacts yet; it learns once they exist")
            return None
        start = min(marks)
    watermark = ctx.lake.watermark()
    if watermark <= start:
        return None
    return NewEvents(parent, ctx.lake.read(start, watermark), start, watermark)


def _open_replay(ctx: JobContext, catalog: Catalog, holder: ModelHolder, position: int) -> Replay:
    """The kept replay store if it stopped exactly where this run starts; otherwise (first
    run, rollback, lost state) a fresh one, replayed from the lake up to `position`."""
    directory = ctx.state_dir / "ranker-replay"
    replay = Replay(ctx.config, catalog, directory, holder)
    if replay.position == position and (position == 0 or directory.exists()):
        return replay
    replay.close()
    log.info("ranker: rebuilding the replay store up to offset %d", position)
    replay = Replay(ctx.config, catalog, directory, holder, fresh=True)
    if position > 0:
        replay.apply(ctx.lake.events(0, position))
    replay.mark(position)
    return replay
