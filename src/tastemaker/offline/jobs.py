"""Batch jobs: lake -> versioned artifacts, each incremental from its own watermark.

Every job reads only the lake's events after the watermark of its current artifact version
(the newest log offset that version includes), folds them into the state that version kept,
and publishes a new version. Rolling an artifact back rolls its watermark back too: the next
run re-reads from there. A job with no new events publishes nothing.

| job          | state kept in the version                  | what serving uses            |
|--------------|--------------------------------------------|------------------------------|
| ranker       | training rows (point-in-time replay)       | the LambdaMART model         |
| popularity   | decayed log-scores per item                | fallback top list            |
| covisitation | pair counts, item counts, each user's tail | item-kNN neighbours          |
| embeddings   | (user, item, weight) interactions          | ALS item vectors             |
| segments     | (derived from embeddings)                  | user cohort and its top list |
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from tastemaker.arrays import rank_within
from tastemaker.artifacts.store import Version
from tastemaker.extras import missing_extra
from tastemaker.features.aggregations import DEFAULT_WEIGHTS
from tastemaker.features.items import Popularity
from tastemaker.offline.job import JobContext, JobError, new_events, publish
from tastemaker.offline.ranker import train_ranker_version

# faiss's k-means warns (from C++, on stderr) below 39 points a centroid; cohorts of a small
# user base are expected to be sparse.
_QUIET_KMEANS = {"min_points_per_centroid": 1}

__all__ = ["JOBS", "JobContext", "JobError", "run_jobs"]

log = logging.getLogger(__name__)


def _weights(table: pa.Table) -> npt.NDArray[np.float64]:
    types = table["type"].to_numpy(zero_copy_only=False)
    lut = {t: DEFAULT_WEIGHTS.get(t, 0.0) for t in np.unique(types).tolist()}
    return np.fromiter((lut[t] for t in types), np.float64, len(types))


def engaged(table: pa.Table) -> pa.Table:
    """Events that say the user liked the item (positive weight), with a `weight` column."""
    w = _weights(table)
    table = table.append_column("weight", pa.array(w))
    return table.filter(pa.array(w > 0))


# -- popularity ---------------------------------------------------------------------------


def popularity_job(ctx: JobContext) -> Version | None:
    new = new_events(ctx, "popularity")
    if new is None:
        return None
    half_life = ctx.config.offline.popularity_half_life_s
    old_ids: list[str] = []
    old_scores = old_first = np.zeros(0)
    if new.parent is not None:
        t = pq.read_table(new.parent.path / "popularity.parquet")
        old_ids = t["item_id"].to_pylist()
        old_scores = t["log_score"].to_numpy()
        old_first = t["first_ts"].to_numpy()
    e = engaged(new.table)
    ids = sorted(set(old_ids) | set(e["item_id"].to_pylist()))
    index = {i: r for r, i in enumerate(ids)}
    pop = Popularity(len(ids), half_life)
    first = np.full(len(ids), np.inf)
    if old_ids:
        old_rows = [index[i] for i in old_ids]
        pop.log_score[old_rows] = old_scores
        first[old_rows] = old_first
    rows = np.fromiter((index[i] for i in e["item_id"].to_pylist()), np.int64, e.num_rows)
    pop.add(rows, e["ts"].to_numpy(), e["weight"].to_numpy())
    np.minimum.at(first, rows, e["ts"].to_numpy())
    order = pop.top(len(ids))

    def write(d: Path) -> dict[str, Any]:
        table = pa.table(
            {
                "item_id": [ids[r] for r in order],
                "log_score": pop.log_score[order],
                "first_ts": first[order],  # the item's first engagement: its age
            }
        )
        pq.write_table(table, d / "popularity.parquet")
        return {"rows": {"items": len(order)}}

    return publish(ctx, "popularity", new, write, {"half_life_s": half_life})


# -- co-visitation (item-kNN) -------------------------------------------------------------


def _codes(values: Sequence[str], vocab: dict[str, int]) -> npt.NDArray[np.int64]:
    out = np.empty(len(values), np.int64)
    for i, v in enumerate(values):
        code = vocab.get(v)
        if code is None:
            code = vocab[v] = len(vocab)
        out[i] = code
    return out


@dataclass
class _CovisState:
    """What a covisitation version keeps: item vocabulary and counts, pair counts, and each
    user's last items (to link with the next run's first ones)."""

    vocab: dict[str, int]
    users: dict[str, int]
    item_counts: npt.NDArray[np.float64]
    pair_a: npt.NDArray[np.int64]
    pair_b: npt.NDArray[np.int64]
    pair_counts: npt.NDArray[np.float64]
    tail_user: npt.NDArray[np.int64]
    tail_item: npt.NDArray[np.int64]


def _covis_state(parent: Version | None) -> _CovisState:
    empty = np.zeros(0, np.int64)
    state = _CovisState({}, {}, np.zeros(0, np.float64), empty, empty, np.zeros(0), empty, empty)
    if parent is None:
        return state
    d = parent.path
    items = pq.read_table(d / "items.parquet")
    _codes(items["item_id"].to_pylist(), state.vocab)
    state.item_counts = items["count"].to_numpy().astype(np.float64)
    pairs = pq.read_table(d / "pairs.parquet")
    state.pair_a, state.pair_b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    state.pair_counts = pairs["count"].to_numpy().astype(np.float64)
    tail = pq.read_table(d / "tail.parquet")
    state.tail_user = _codes(tail["user_id"].to_pylist(), state.users)
    state.tail_item = tail["item"].to_numpy().astype(np.int64)
    return state


def _pairs(
    state: _CovisState,
    u: npt.NDArray[np.int64],
    it: npt.NDArray[np.int64],
    is_new: npt.NDArray[np.bool_],
    window: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Pair keys (a * n_items + b) and their summed counts: the kept ones plus each new item
    linked both ways to the previous `window` items of its user."""
    n_items = len(state.vocab)
    a_parts, b_parts = [state.pair_a], [state.pair_b]
    for lag in range(1, window + 1):
        if lag >= u.size:
            break
        ok = (u[lag:] == u[:-lag]) & is_new[lag:] & (it[lag:] != it[:-lag])
        a, b = it[lag:][ok], it[:-lag][ok]
        a_parts += [a, b]
        b_parts += [b, a]
    a_all = np.concatenate(a_parts).astype(np.int64)
    b_all = np.concatenate(b_parts).astype(np.int64)
    counts = np.concatenate([state.pair_counts, np.ones(a_all.size - state.pair_counts.size)])
    keys, inverse = np.unique(a_all * n_items + b_all, return_inverse=True)
    summed = np.bincount(inverse, weights=counts, minlength=keys.size)
    return keys, np.asarray(summed, dtype=np.float64)


def _names(codes: dict[str, int]) -> list[str]:
    out = [""] * len(codes)
    for k, v in codes.items():
        out[v] = k
    return out


def covisitation_job(ctx: JobContext) -> Version | None:
    """Each engaged item is linked to the previous `covis_window` items of the same user;
    similarity is cosine over those co-occurrence counts: c(a,b) / sqrt(n(a) n(b))."""
    new = new_events(ctx, "covisitation")
    if new is None:
        return None
    o = ctx.config.offline
    window, keep = o.covis_window, o.covis_neighbours
    state = _covis_state(new.parent)
    e = engaged(new.table)
    ev_user = _codes(e["user_id"].to_pylist(), state.users)
    ev_item = _codes(e["item_id"].to_pylist(), state.vocab)
    n_items = len(state.vocab)
    item_counts = np.concatenate([state.item_counts, np.zeros(n_items - state.item_counts.size)])
    np.add.at(item_counts, ev_item, 1.0)
    # Each user's sequence: the tail kept from the last run, then the new events in time
    # order (the lake returns them sorted by time; a stable sort by user keeps that order).
    u = np.concatenate([state.tail_user, ev_user])
    it = np.concatenate([state.tail_item, ev_item])
    is_new = np.concatenate([np.zeros(state.tail_user.size, bool), np.ones(ev_user.size, bool)])
    order = np.argsort(u, kind="stable")
    u, it, is_new = u[order], it[order], is_new[order]
    keys, summed = _pairs(state, u, it, is_new, window)
    pair_a, pair_b = keys // n_items, keys % n_items
    in_tail = rank_within(u[::-1])[::-1] < window  # each user's last `window` items
    ids, user_ids = _names(state.vocab), _names(state.users)
    sim = summed / np.sqrt(item_counts[pair_a] * item_counts[pair_b])
    # Top `keep` neighbours per item: sort by (item, -similarity), cut each run.
    order = np.lexsort((-sim, pair_a))
    pa_s, pb_s, sim_s = pair_a[order], pair_b[order], sim[order]
    best = rank_within(pa_s) < keep

    def write(d: Path) -> dict[str, Any]:
        pq.write_table(pa.table({"item_id": ids, "count": item_counts}), d / "items.parquet")
        pq.write_table(pa.table({"a": pair_a, "b": pair_b, "count": summed}), d / "pairs.parquet")
        tail_ids = [user_ids[x] for x in u[in_tail].tolist()]
        pq.write_table(pa.table({"user_id": tail_ids, "item": it[in_tail]}), d / "tail.parquet")
        neighbours = {
            "item_id": [ids[x] for x in pa_s[best].tolist()],
            "neighbour_id": [ids[x] for x in pb_s[best].tolist()],
            "score": sim_s[best].astype(np.float32),
        }
        pq.write_table(pa.table(neighbours), d / "neighbours.parquet")
        return {"rows": {"items": n_items, "pairs": int(keys.size), "links": int(best.sum())}}

    return publish(ctx, "covisitation", new, write, {"window": window, "neighbours": keep})


# -- embeddings (implicit ALS) ------------------------------------------------------------


def fit_als(
    user_codes: npt.NDArray[np.int64],
    item_codes: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    n_users: int,
    n_items: int,
    *,
    factors: int,
    iterations: int,
    regularization: float,
    alpha: float,
    seed: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Implicit-feedback ALS (Hu, Koren, Volinsky 2008) with the `implicit` library:
    confidence 1 + alpha * log1p(weight). Returns (user factors, item factors)."""
    import scipy.sparse as sp

    try:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits
    except ImportError as exc:
        raise missing_extra("implicit", "offline", "the embeddings (ALS) job") from exc

    matrix = sp.csr_matrix(
        (np.log1p(weights).astype(np.float32), (user_codes, item_codes)),
        shape=(n_users, n_items),
    )
    matrix.sum_duplicates()
    # implicit warns unless BLAS runs single-threaded; its own loop is what parallelizes.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=factors,
            iterations=iterations,
            regularization=regularization,
            alpha=alpha,
            random_state=seed,
            num_threads=1,  # one thread: identical factors on every run
            calculate_training_loss=False,
        )
        model.fit(matrix, show_progress=False)
    return (
        np.asarray(model.user_factors, np.float32),
        np.asarray(model.item_factors, np.float32),
    )


def _aggregate(
    user_ids: Sequence[str], item_ids: Sequence[str], weights: npt.NDArray[np.float64]
) -> tuple[
    list[str], list[str], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]
]:
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    u = _codes(user_ids, users)
    i = _codes(item_ids, items)
    keys, inverse = np.unique(u * max(len(items), 1) + i, return_inverse=True)
    w = np.bincount(inverse, weights=weights, minlength=keys.size)
    user_list = sorted(users, key=users.__getitem__)
    item_list = sorted(items, key=items.__getitem__)
    width = max(len(items), 1)
    user_codes = (keys // width).astype(np.int64)
    item_codes = (keys % width).astype(np.int64)
    return user_list, item_list, user_codes, item_codes, w.astype(np.float64)


def embeddings_job(ctx: JobContext) -> Version | None:
    new = new_events(ctx, "embeddings")
    if new is None:
        return None
    o = ctx.config.offline
    e = engaged(new.table)
    users = e["user_id"].to_pylist()
    items = e["item_id"].to_pylist()
    weights = e["weight"].to_numpy()
    if new.parent is not None:
        old = pq.read_table(new.parent.path / "interactions.parquet")
        users = old["user_id"].to_pylist() + users
        items = old["item_id"].to_pylist() + items
        weights = np.concatenate([old["weight"].to_numpy(), weights])
    user_list, item_list, uc, ic, w = _aggregate(users, items, weights)
    user_f, item_f = fit_als(
        uc,
        ic,
        w,
        len(user_list),
        len(item_list),
        factors=o.als_factors,
        iterations=o.als_iterations,
        regularization=o.als_regularization,
        alpha=o.als_alpha,
        seed=o.seed,
    )

    def write(d: Path) -> dict[str, Any]:
        pq.write_table(
            pa.table(
                {
                    "user_id": [user_list[x] for x in uc.tolist()],
                    "item_id": [item_list[x] for x in ic.tolist()],
                    "weight": w,
                }
            ),
            d / "interactions.parquet",
        )
        pq.write_table(pa.table({"item_id": item_list}), d / "items.parquet")
        pq.write_table(pa.table({"user_id": user_list}), d / "users.parquet")
        np.save(d / "item_factors.npy", item_f)
        np.save(d / "user_factors.npy", user_f)
        return {"rows": {"users": len(user_list), "items": len(item_list), "nnz": int(w.size)}}

    params = {
        "factors": o.als_factors,
        "iterations": o.als_iterations,
        "regularization": o.als_regularization,
        "alpha": o.als_alpha,
        "seed": o.seed,
    }
    return publish(ctx, "embeddings", new, write, params)


# -- segments (k-means cohorts) -----------------------------------------------------------


def _kmeans(vectors: npt.NDArray[np.float32], k: int, seed: int) -> npt.NDArray[np.int64]:
    """Each vector's cluster among `k`, the same on every run (one thread, a fixed seed)."""
    try:
        import faiss
    except ImportError as exc:
        raise missing_extra("faiss-cpu", "offline", "the segments (k-means) job") from exc

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one thread: the same cohorts on every run
    try:
        km = faiss.Kmeans(vectors.shape[1], k, niter=25, seed=seed, verbose=False, **_QUIET_KMEANS)
        km.train(vectors)
        _, assign = km.index.search(vectors, 1)
    finally:
        faiss.omp_set_num_threads(threads)
    return np.asarray(assign[:, 0], dtype=np.int64)


def _segment_top(
    inter: pa.Table, user_ids: list[str], segment: npt.NDArray[np.int64], k: int, top: int
) -> tuple[list[int], list[str], list[float]]:
    """(segment, item, score) of each segment's `top` most engaged items, scores relative
    to the segment's best."""
    seg_of = dict(zip(user_ids, segment.tolist(), strict=True))
    seg_col = np.fromiter(
        (seg_of[u] for u in inter["user_id"].to_pylist()), np.int64, inter.num_rows
    )
    items: dict[str, int] = {}
    item_codes = _codes(inter["item_id"].to_pylist(), items)
    item_list = sorted(items, key=items.__getitem__)
    totals = np.zeros((k, len(items)))
    np.add.at(totals, (seg_col, item_codes), inter["weight"].to_numpy())
    top_seg: list[int] = []
    top_item: list[str] = []
    top_score: list[float] = []
    for s in range(k):
        best = np.argsort(-totals[s], kind="stable")[:top]
        best = best[totals[s, best] > 0]
        top_seg += [s] * best.size
        top_item += [item_list[x] for x in best.tolist()]
        top_score += (
            (totals[s, best] / max(totals[s, best[0]], 1e-12)).tolist() if best.size else []
        )
    return top_seg, top_item, top_score


def segments_job(ctx: JobContext) -> Version | None:
    """k-means over the ALS user vectors of the current embeddings version; each cohort's
    most engaged items. Derived from embeddings: it runs when embeddings moved on."""
    source = ctx.artifacts.current("embeddings")
    if source is None:
        return None
    parent = ctx.artifacts.current("segments")
    if parent is not None and parent.manifest.watermark >= source.manifest.watermark:
        return None
    o = ctx.config.offline
    d = source.path
    user_ids = pq.read_table(d / "users.parquet")["user_id"].to_pylist()
    vectors = np.load(d / "user_factors.npy").astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.ascontiguousarray(vectors / np.maximum(norms, 1e-12))
    k = max(1, min(o.segments, len(user_ids) // 2 or 1))
    segment = _kmeans(vectors, k, o.seed + 1)
    top_seg, top_item, top_score = _segment_top(
        pq.read_table(d / "interactions.parquet"), user_ids, segment, k, o.segment_top
    )

    def write(out: Path) -> dict[str, Any]:
        pq.write_table(
            pa.table({"user_id": user_ids, "segment": segment}), out / "segments.parquet"
        )
        pq.write_table(
            pa.table({"segment": top_seg, "item_id": top_item, "score": top_score}),
            out / "segment_top.parquet",
        )
        sizes = np.bincount(segment, minlength=k)
        return {
            "rows": {"users": len(user_ids), "segments": k},
            "metrics": {"largest_segment_share": float(sizes.max() / max(1, sizes.sum()))},
        }

    params = {"k": k, "embeddings_version": source.manifest.version, "seed": o.seed}
    return ctx.artifacts.publish(
        "segments",
        write,
        parent=None if parent is None else parent.manifest.version,
        watermark=source.manifest.watermark,  # it is as new as the embeddings it read
        data_from_offset=parent.manifest.watermark if parent else 0,
        events_read=0,
        min_ts=None,
        max_ts=None,
        params=params,
    )


# -- ranker (LambdaMART) ------------------------------------------------------------------


def ranker_job(ctx: JobContext) -> Version | None:
    return train_ranker_version(ctx)


# In this order: the ranker first, so it learns with the artifacts of the previous run.
JOBS: dict[str, Callable[[JobContext], Version | None]] = {
    "ranker": ranker_job,
    "popularity": popularity_job,
    "covisitation": covisitation_job,
    "embeddings": embeddings_job,
    "segments": segments_job,
}


def run_jobs(ctx: JobContext, names: Sequence[str] = ()) -> dict[str, Version | None]:
    """Run the named jobs (all by default), in the order of `JOBS`."""
    unknown = sorted(set(names) - set(JOBS))
    if unknown:
        raise JobError(f"unknown job(s) {unknown}; jobs are {list(JOBS)}")
    chosen = [n for n in JOBS if not names or n in names]
    out: dict[str, Version | None] = {}
    for name in chosen:
        version = JOBS[name](ctx)
        out[name] = version
        if version is None:
            log.info("job %s: nothing new", name)
        else:
            m = version.manifest
            log.info(
                "job %s: version %d, %d events read, watermark %d",
                name,
                m.version,
                m.events_read,
                m.watermark,
            )
    return out
