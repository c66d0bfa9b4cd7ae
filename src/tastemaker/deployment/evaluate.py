"""Offline evaluation: tastemaker against standard baselines on one time-based split.

The protocol (docs/evaluation.md): events sorted by time; the first `train_share` of them
train every system. A test user is anyone with an event after that; each is asked for
recommendations as of their first test event, with everything the user engaged with in
training excluded, and scored against the distinct items of all their later events.

tastemaker runs as it runs in production: the training events go through the event log, the
stream processor and the archiver into the online store and the lake; the batch jobs run
after each of the `stages` (60%, 80% and 100% of the training events: the ranker learns from
each window on point-in-time features, with the artifacts from before the window); then the
live recommend pipeline answers each test user. The baselines are fit on the same training
events as a user-item matrix.
"""

from __future__ import annotations

import itertools
import logging
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from tastemaker.catalog import Catalog
from tastemaker.config import Config, local_config
from tastemaker.events import Event
from tastemaker.extras import missing_extra
from tastemaker.features.aggregations import DEFAULT_WEIGHTS
from tastemaker.offline.metrics import ndcg_at

__all__ = ["EvalError", "Split", "evaluate", "ranking_metrics", "split_by_time"]

log = logging.getLogger(__name__)

K_NDCG = 10
K_RECALL = 20
K_LIST = 20


class EvalError(ValueError):
    """The dataset cannot be evaluated (unknown name, too few events)."""


@dataclass(frozen=True)
class Split:
    train: list[Event]
    # user -> (time of the first test event, distinct items engaged after it)
    test: dict[str, tuple[float, frozenset[str]]]
    train_items: dict[str, frozenset[str]]  # user -> items engaged in training
    cut_ts: float


def _positive(e: Event) -> bool:
    return DEFAULT_WEIGHTS.get(e.type, 0.0) > 0


def split_by_time(events: Sequence[Event], train_share: float = 0.8) -> Split:
    """The first `train_share` of events (by time) train; users with later events test."""
    ordered = sorted(events, key=lambda e: (e.ts, e.user_id, e.item_id))
    if len(ordered) < 10:
        raise EvalError(f"{len(ordered)} events are too few to split")
    cut_ts = ordered[int(len(ordered) * train_share)].ts
    train = [e for e in ordered if e.ts < cut_ts]
    seen: dict[str, set[str]] = defaultdict(set)
    for e in train:
        if _positive(e):
            seen[e.user_id].add(e.item_id)
    first: dict[str, float] = {}
    later: dict[str, set[str]] = defaultdict(set)
    for e in ordered[len(train) :]:
        first.setdefault(e.user_id, e.ts)
        if _positive(e) and e.item_id not in seen.get(e.user_id, ()):
            later[e.user_id].add(e.item_id)
    test = {u: (first[u], frozenset(items)) for u, items in later.items() if items}
    return Split(train, test, {u: frozenset(s) for u, s in seen.items()}, cut_ts)


def ranking_metrics(recs: dict[str, list[str]], split: Split, n_items: int) -> dict[str, float]:
    """NDCG@10, Recall@20, HR@10, MRR (over the 20-item list) and catalog coverage (share
    of items in at least one top-10), averaged over test users."""
    ndcg, recall, hr, mrr = [], [], [], []
    shown: set[str] = set()
    for user, (_, relevant) in split.test.items():
        items = recs.get(user, [])[:K_LIST]
        hits = np.array([i in relevant for i in items], bool)
        shown.update(items[:K_NDCG])
        ndcg.append(ndcg_at(hits, len(relevant), K_NDCG))
        recall.append(float(hits[:K_RECALL].sum()) / len(relevant))
        hr.append(float(hits[:K_NDCG].any()))
        first = np.flatnonzero(hits)
        mrr.append(1.0 / (first[0] + 1) if first.size else 0.0)
    warm = np.array([u in split.train_items for u in split.test], bool)
    nd = np.array(ndcg)
    return {
        "ndcg@10": float(np.mean(ndcg)),
        "ndcg@10_users_with_history": float(nd[warm].mean()) if warm.any() else 0.0,
        "ndcg@10_new_users": float(nd[~warm].mean()) if (~warm).any() else 0.0,
        "recall@20": float(np.mean(recall)),
        "hr@10": float(np.mean(hr)),
        "mrr": float(np.mean(mrr)),
        "coverage": len(shown) / n_items,
    }


# -- baselines ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Matrix:
    """Training interactions as a binary user x item matrix over the catalog's rows."""

    x: sp.csr_matrix
    users: dict[str, int]
    ts_last: npt.NDArray[np.float64]  # per item, time of its latest training event
    train_ts: npt.NDArray[np.float64]
    train_rows: npt.NDArray[np.int64]


def _matrix(split: Split, catalog: Catalog) -> Matrix:
    pos = [e for e in split.train if _positive(e)]
    users: dict[str, int] = {}
    for e in pos:
        users.setdefault(e.user_id, len(users))
    rows = catalog.rows([e.item_id for e in pos])
    u = np.fromiter((users[e.user_id] for e in pos), np.int64, len(pos))
    ok = rows >= 0
    x = sp.csr_matrix(
        (np.ones(int(ok.sum()), np.float32), (u[ok], rows[ok])),
        shape=(len(users), len(catalog)),
    )
    x.sum_duplicates()
    x.data[:] = 1.0  # a user's repeated engagements with an item count once
    ts = np.fromiter((e.ts for e in pos), np.float64, len(pos))
    last = np.full(len(catalog), -np.inf)
    np.maximum.at(last, rows[ok], ts[ok])
    return Matrix(x, users, last, ts[ok], rows[ok])


Scorer = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]]


def _recommend_all(
    split: Split, catalog: Catalog, m: Matrix, score_users: Scorer, fallback: npt.NDArray[Any]
) -> dict[str, list[str]]:
    """Top-20 per test user from a batch scorer over user rows; users unknown to the
    training matrix get the `fallback` scores (popularity)."""
    out: dict[str, list[str]] = {}
    test_users = list(split.test)
    known = [u for u in test_users if u in m.users]
    scores = (
        score_users(np.array([m.users[u] for u in known], np.int64))
        if known
        else np.zeros((0, len(catalog)), np.float32)
    )
    by_user = dict(zip(known, scores, strict=True))
    for user in test_users:
        s = np.array(by_user.get(user, fallback), np.float64, copy=True)
        seen = catalog.rows(sorted(split.train_items.get(user, ())))
        s[seen[seen >= 0]] = -np.inf
        top = np.argsort(-s, kind="stable")[:K_LIST]
        out[user] = [str(catalog.ids[r]) for r in top]
    return out


def _popularity_scores(m: Matrix, n_items: int, window_days: float | None) -> npt.NDArray[Any]:
    keep = (
        np.ones(m.train_ts.size, bool)
        if window_days is None
        else m.train_ts >= m.train_ts.max() - window_days * 86400.0
    )
    return np.bincount(m.train_rows[keep], minlength=n_items).astype(np.float64)


def _item_knn(m: Matrix, k: int) -> Scorer:
    x = m.x
    counts = np.asarray(x.sum(axis=0)).reshape(-1)
    co = (x.T @ x).toarray()
    np.fill_diagonal(co, 0.0)
    norm = np.sqrt(np.maximum(counts, 1.0))
    sim = co / norm[:, None] / norm[None, :]
    if k < sim.shape[0]:
        cut = np.partition(sim, -k, axis=1)[:, -k][:, None]
        sim = np.where(sim >= cut, sim, 0.0)
    sim32 = sim.astype(np.float32)
    return lambda users: np.asarray(x[users] @ sim32, np.float32)


def _ease(m: Matrix, lam: float) -> Scorer:
    """EASE^R (Steck 2019): B = I - P diagMat(1/diag(P)), P = (X'X + lam I)^-1, diag(B)=0."""
    g = (m.x.T @ m.x).toarray().astype(np.float64)
    g[np.diag_indices_from(g)] += lam
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    b32 = b.astype(np.float32)
    return lambda users: np.asarray(m.x[users] @ b32, np.float32)


def _als(m: Matrix, factors: int, reg: float, seed: int) -> Scorer:
    from tastemaker.offline.jobs import fit_als

    coo = m.x.tocoo()
    uf, itf = fit_als(
        coo.row.astype(np.int64),
        coo.col.astype(np.int64),
        np.full(coo.nnz, 3.0),
        m.x.shape[0],
        m.x.shape[1],
        factors=factors,
        iterations=15,
        regularization=reg,
        alpha=2.0,
        seed=seed,
    )
    return lambda users: uf[users] @ itf.T


def _best(
    name: str,
    grid: Sequence[tuple[dict[str, Any], Callable[[], dict[str, list[str]]]]],
    split: Split,
    n_items: int,
) -> tuple[dict[str, float], dict[str, Any], list[dict[str, Any]]]:
    tried: list[tuple[dict[str, Any], dict[str, float]]] = []
    for params, run in grid:
        metrics = ranking_metrics(run(), split, n_items)
        tried.append((params, metrics))
        log.info("%s %s: ndcg@10 %.4f", name, params, metrics["ndcg@10"])
    params, metrics = max(tried, key=lambda t: t[1]["ndcg@10"])
    return metrics, params, [{"params": p, **m} for p, m in tried]


def baselines(split: Split, catalog: Catalog, seed: int) -> dict[str, Any]:
    """Each baseline with a small grid; the best point of each (by test NDCG@10, which
    favours the baselines) is reported, with every point tried."""
    m = _matrix(split, catalog)
    n = len(catalog)
    pop_all = _popularity_scores(m, n, None)

    def run(scorer: Scorer) -> Callable[[], dict[str, list[str]]]:
        return lambda: _recommend_all(split, catalog, m, scorer, pop_all)

    def pop_run(days: float | None) -> Callable[[], dict[str, list[str]]]:
        scores = _popularity_scores(m, n, days)
        return lambda: _recommend_all(
            split, catalog, m, lambda u: np.tile(scores, (u.size, 1)), scores
        )

    grids: dict[str, list[tuple[dict[str, Any], Callable[[], dict[str, list[str]]]]]] = {
        "popularity": [({"window_days": d}, pop_run(d)) for d in (None, 90.0, 30.0, 7.0)],
        "item_knn": [({"k": k}, run(_item_knn(m, k))) for k in (20, 50, 100, 200)],
        "als": [
            ({"factors": f, "regularization": r}, run(_als(m, f, r, seed)))
            for f in (32, 64, 128)
            for r in (0.01, 0.1)
        ],
        "ease": [
            ({"lambda": lam}, run(_ease(m, lam))) for lam in (50.0, 100.0, 250.0, 500.0, 1000.0)
        ],
    }
    out: dict[str, Any] = {}
    for name, grid in grids.items():
        metrics, params, tried = _best(name, grid, split, n)
        out[name] = {"metrics": metrics, "params": params, "grid": tried}
    return out


# -- tastemaker ---------------------------------------------------------------------------


def _eval_config(workdir: Path, seed: int, offline: dict[str, Any] | None) -> Config:
    """The local config the evaluation runs, with the protocol's rules applied."""
    base = local_config(workdir, fsync="never")
    # The protocol never recommends an item the user engaged with in training, so neither
    # does the served pipeline (and the ranker learns without those items as negatives);
    # labels reach to the end of the training window, as test labels reach to the end.
    features = [
        msgspec.structs.replace(f, n=1000) if f.name == "engaged_items" else f
        for f in base.features
    ]
    return msgspec.structs.replace(
        base,
        serving=msgspec.structs.replace(base.serving, exclude_seen=True),
        features=features,
        offline=msgspec.structs.replace(
            base.offline, seed=seed, **{"label_horizon_s": 3650 * 86400.0, **(offline or {})}
        ),
    )


def run_tastemaker(
    split: Split,
    catalog: Catalog,
    workdir: Path,
    *,
    seed: int,
    stages: Sequence[float] = (0.6, 0.8),
    offline: dict[str, Any] | None = None,
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """The whole engine on the training events; returns each test user's top 20."""
    from tastemaker.artifacts.models import load_models
    from tastemaker.artifacts.store import ArtifactStore
    from tastemaker.deployment.runtime import Runtime
    from tastemaker.offline.jobs import JobContext, run_jobs
    from tastemaker.offline.lake import Archiver, Lake
    from tastemaker.ranking.features import FEATURE_NAMES
    from tastemaker.ranking.lightgbm import LightGBMScorer
    from tastemaker.recommend.pipeline import RecommendPipeline
    from tastemaker.retrieval import ModelHolder

    config = _eval_config(workdir, seed, offline)
    runtime = Runtime(config, catalog)
    lake = Lake(config.offline.lake_url)
    artifacts = ArtifactStore(config.offline.artifacts_path)
    ctx = JobContext(config, lake, artifacts, catalog)
    archiver = Archiver(runtime.log, lake)
    cuts = [0, *(int(len(split.train) * share) for share in stages), len(split.train)]
    info: dict[str, Any] = {}
    try:
        chunks = [split.train[a:b] for a, b in itertools.pairwise(cuts)]
        for stage, chunk in enumerate(chunks, 1):
            started = time.perf_counter()
            runtime.log.append(chunk)
            runtime.processor.drain()
            archiver.run_once(config.offline.archive_batch_size)
            versions = run_jobs(ctx)
            info[f"stage{stage}"] = {
                "events": len(chunk),
                "seconds": round(time.perf_counter() - started, 1),
                "published": {k: v.manifest.version for k, v in versions.items() if v},
            }
        ranker = artifacts.current("ranker")
        scorer = None
        if ranker is not None:
            scorer = LightGBMScorer(ranker.path / "model.txt", FEATURE_NAMES)
            info["ranker_metrics"] = ranker.manifest.metrics
        holder = ModelHolder(load_models(artifacts, catalog))
        pipeline = RecommendPipeline(config, runtime.store, catalog, scorer, holder)
        recs = {
            user: [i.item_id for i in pipeline.recommend(user, K_LIST, exclude=seen, now=t).items]
            for user, (t, _) in split.test.items()
            for seen in [split.train_items.get(user, frozenset())]
        }
    finally:
        runtime.close()
    return recs, info


# -- the whole evaluation -----------------------------------------------------------------


def load_dataset(name: str, seed: int, users: int = 3000) -> tuple[list[Event], Catalog]:
    if name == "movielens-100k":
        from tastemaker.data.movielens import load_movielens_100k

        ml = load_movielens_100k()
        return ml.events(), ml.catalog()
    if name == "synthetic":
        from tastemaker.data.synthetic import ShopSpec, generate_shop

        shop = generate_shop(ShopSpec(n_users=users, n_items=max(500, users // 2), seed=seed))
        return [e for chunk in shop.events() for e in chunk], shop.catalog()
    raise EvalError(f"unknown dataset {name!r}; use movielens-100k or synthetic")


def evaluate(
    dataset: str,
    *,
    seed: int = 0,
    train_share: float = 0.8,
    users: int = 3000,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Everything the `evaluate` command reports, as one JSON-able dict."""
    events, catalog = load_dataset(dataset, seed, users)
    split = split_by_time(events, train_share)
    started = time.perf_counter()
    base = baselines(split, catalog, seed)
    base_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        started = time.perf_counter()
        recs, info = run_tastemaker(split, catalog, Path(tmp), seed=seed)
        tm_s = time.perf_counter() - started
    systems: dict[str, dict[str, float]] = {
        "tastemaker": ranking_metrics(recs, split, len(catalog))
    }
    for name, b in base.items():
        systems[name] = b["metrics"]
    best_name = max(base, key=lambda n: base[n]["metrics"]["ndcg@10"])
    best = base[best_name]["metrics"]["ndcg@10"]
    ours = systems["tastemaker"]["ndcg@10"]
    warm = sum(1 for u in split.test if u in split.train_items)
    return {
        "dataset": dataset,
        "seed": seed,
        "protocol": {
            "train_share": train_share,
            "cut_ts": split.cut_ts,
            "train_events": len(split.train),
            "test_users": len(split.test),
            "test_users_with_history": warm,
            "items": len(catalog),
            "list_length": K_LIST,
        },
        "systems": systems,
        "best_baseline": best_name,
        "ndcg@10_margin": ours - best,
        "ndcg@10_margin_relative": (ours - best) / best if best > 0 else math.inf,
        "baseline_params": {n: b["params"] for n, b in base.items()},
        "baseline_grids": {n: b["grid"] for n, b in base.items()},
        "tastemaker": info,
        "seconds": {"baselines": round(base_s, 1), "tastemaker": round(tm_s, 1)},
    }


_SHORT = {
    "ndcg@10_users_with_history": "ndcg@10\nusers with history",
    "ndcg@10_new_users": "ndcg@10\nnew users",
}


def print_table(result: dict[str, Any]) -> None:
    """The systems side by side, best of each metric in bold."""
    from rich.console import Console
    from rich.table import Table

    systems = result["systems"]
    metrics = list(next(iter(systems.values())))
    p = result["protocol"]
    table = Table(
        title=f"{result['dataset']}, seed {result['seed']}: {p['test_users']} test users "
        f"({p['test_users_with_history']} with training history), {p['items']} items"
    )
    table.add_column("system")
    for m in metrics:
        table.add_column(_SHORT.get(m, m).replace("\n", " "), justify="right")
    table.add_column("best of grid")
    best = {m: max(s[m] for s in systems.values()) for m in metrics}
    for name, vals in systems.items():
        cells = [
            f"[bold]{vals[m]:.4f}[/bold]" if vals[m] == best[m] else f"{vals[m]:.4f}"
            for m in metrics
        ]
        params = result["baseline_params"].get(name) or {}
        table.add_row(name, *cells, ", ".join(f"{k}={v}" for k, v in params.items()))
    console = Console(width=max(Console().width, 140))
    console.print(table)
    console.print(
        f"NDCG@10: tastemaker {systems['tastemaker']['ndcg@10']:.4f}, best baseline "
        f"{result['best_baseline']} {systems[result['best_baseline']]['ndcg@10']:.4f}, margin "
        f"{result['ndcg@10_margin']:+.4f} ({result['ndcg@10_margin_relative']:+.1%})"
    )


def chart(result: dict[str, Any], path: Path) -> None:
    """Grouped bars: one group per metric, one bar per system."""
    try:
        import matplotlib
    except ImportError as exc:
        raise missing_extra("matplotlib", "offline", "the evaluation chart") from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(result["systems"])
    metrics = list(result["systems"][systems[0]])
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    width = 0.8 / len(systems)
    for i, s in enumerate(systems):
        vals = [result["systems"][s][m] for m in metrics]
        ax.bar(np.arange(len(metrics)) + i * width, vals, width, label=s)
    ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2, [_SHORT.get(m, m) for m in metrics])
    ax.set_title(f"{result['dataset']}: time split, {result['protocol']['test_users']} test users")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
