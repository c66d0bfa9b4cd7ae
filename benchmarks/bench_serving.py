"""Serving benchmark: ranking, retrieval and the whole /v1/recommend over HTTP.

A synthetic shop with 100K items (1M users in the full run, 100K with --quick), its events
run through the stream into a Redis online store (a Valkey server started here). Prints
progress, then one JSON object as the last line:

    rank_1000_p50_ms, rank_1000_p99_ms   feature assembly + model for 1,000 candidates, one
                                         thread: the linear scorer, a LightGBM LambdaMART
                                         model (100 trees of 31 leaves) compiled with tl2cgen
                                         (`*_lgbm_*`) and the same uncompiled
                                         (`*_lgbm_uncompiled_*`)
    retrieve_p99_ms                      all retrievers for one user (~1,000 candidates)
    http_recommend_p50_ms, http_recommend_p99_ms, http_rps, http_errors
                                         `tastemaker serve --workers 2` on loopback, a load
                                         generator holding a steady rate (--rate, default
                                         1,000/s) for 60 s (30 s with --quick), with the
                                         answer cache off: every request runs the pipeline
    http_recommend_p99_scheduled_ms      the p99 counted from when each request was due,
                                         not sent (includes waits a slow answer causes
                                         the connection's next requests)
    http_server_cpu_ms_per_request       CPU (user + system) a request cost the server (the
                                         supervisor and its workers), the load generator and
                                         Valkey, over the timed run: the three share the
    http_loadgen_cpu_ms_per_request      machine's cores, so their sum times the rate is how
    http_valkey_cpu_ms_per_request       busy the machine was
    http_cached_*                        the same with the cache on, for half as long

The batch artifacts (popularity, co-visitation, ALS embeddings, segments) are built first,
so every retriever has data.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_serving [--quick]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import lightgbm
import msgspec
import numpy as np
import redis

from benchmarks.common import free_port, server, tree_cpu_seconds
from benchmarks.loadgen import run_load
from tastemaker.catalog import save_catalog
from tastemaker.config import Config, StoreConfig, dump_config, local_config
from tastemaker.data.synthetic import ShopSpec, generate_shop
from tastemaker.deployment.runtime import Runtime, freeze_loaded_heap
from tastemaker.deployment.scheduler import run_offline
from tastemaker.ranking import FEATURE_NAMES, LightGBMScorer, LinearScorer, assemble
from tastemaker.recommend.pipeline import RecommendPipeline
from tastemaker.retrieval import Candidates, merge
from tastemaker.testing.servers import redis_server


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000, q)), 3)


def prepare(root: Path, users: int, redis_url: str) -> tuple[Config, Path, list[str]]:
    # Fewer events per user than the demo shop: loading 1M users must stay within minutes.
    spec = ShopSpec(
        n_users=users,
        n_items=100_000,
        n_categories=40,
        n_brands=400,
        sessions_per_user=1.5,
        views_per_session=3.0,
    )
    shop = generate_shop(spec)
    save_catalog(shop.catalog(), root / "catalog.parquet")
    config = local_config(root, fsync="never", store=StoreConfig(url=redis_url))
    rt = Runtime.from_config(config)
    started = time.perf_counter()
    n = 0
    for chunk in shop.events(chunk_users=20_000):
        rt.log.append(chunk)
        n += len(chunk)
        rt.processor.drain()
    print(
        f"loaded {users} users, {n} events through the stream in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    # The batch artifacts, so that every retriever has something to retrieve from.
    started = time.perf_counter()
    run = run_offline(
        config, rt.log, rt.catalog, ["popularity", "covisitation", "embeddings", "segments"]
    )
    print(
        f"batch jobs {sorted(k for k, v in run.versions.items() if v)} in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    rt.close()
    stream = msgspec.structs.replace(config.stream, run_in_server=False)
    toml = dump_config(msgspec.structs.replace(config, stream=stream), root / "config.toml")
    return config, toml, [str(u) for u in shop.user_ids]


def ranking(pipe: RecommendPipeline, users: list[str], root: Path) -> dict[str, float]:
    """Assembly + model over exactly 1,000 candidates per user."""
    rng = np.random.default_rng(0)
    cat = pipe.catalog
    sets = []
    for user in users[:300]:
        ctx = pipe.context(user)
        got = [r.retrieve(ctx, k) for r, k in pipe.retrievers]
        rows = np.unique(np.concatenate([g.rows for g in got]))
        extra = rng.choice(len(cat), 1000, replace=False)
        rows = np.unique(np.concatenate([rows, extra]))[:1000]
        filler = Candidates(rows, np.ones(rows.size, np.float32))
        sets.append(
            (
                ctx.user,
                # the first retriever's share replaced by 1,000 rows: exactly 1,000 candidates
                merge([r.name for r, _ in pipe.retrievers], [filler, *got[1:]]),
            )
        )
    x_all = np.vstack([assemble(c, u, cat, pipe.price_edges) for u, c in sets])
    labels = rng.integers(0, 2, x_all.shape[0])
    data = lightgbm.Dataset(
        x_all, labels, group=[c.rows.size for _, c in sets], feature_name=FEATURE_NAMES
    )
    booster = lightgbm.train(
        {
            "objective": "lambdarank",
            "num_leaves": 31,
            "verbose": -1,
            "num_threads": 1,
            "min_data_in_leaf": 20,
        },
        data,
        num_boost_round=100,
    )
    booster.save_model(str(root / "ranker.txt"))
    out: dict[str, float] = {}
    scorers: list[tuple[str, Any]] = [
        ("", LinearScorer(pipe.config.ranking.weights)),
        ("_lgbm", LightGBMScorer(root / "ranker.txt", FEATURE_NAMES)),
        (
            "_lgbm_uncompiled",
            LightGBMScorer(root / "ranker.txt", FEATURE_NAMES, compile_model=False),
        ),
    ]
    for label, scorer in scorers:
        times = []
        for _ in range(5):
            for features, cands in sets:
                started = time.perf_counter()
                scorer.score(assemble(cands, features, cat, pipe.price_edges), FEATURE_NAMES)
                times.append(time.perf_counter() - started)
        out[f"rank_1000{label}_p50_ms"] = pct(times, 50)
        out[f"rank_1000{label}_p99_ms"] = pct(times, 99)
    print(f"rank 1000: {out}", flush=True)
    return out


def retrieval(pipe: RecommendPipeline, users: list[str]) -> dict[str, float]:
    times, sizes = [], []
    for user in users[1000:3000]:
        started = time.perf_counter()
        cands = pipe.candidates(pipe.context(user))
        times.append(time.perf_counter() - started)
        sizes.append(cands.rows.size)
    out = {
        "retrieve_p50_ms": pct(times, 50),
        "retrieve_p99_ms": pct(times, 99),
        "retrieve_candidates_mean": round(float(np.mean(sizes))),
    }
    print(f"retrieve: {out}", flush=True)
    return out


def _cpu_seconds(server_pid: int, redis_url: str) -> tuple[float, float, float]:
    """CPU (user + system) seconds so far of the server's processes, this process (the load
    generator) and the Valkey server."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    with redis.Redis.from_url(redis_url) as client:
        valkey = client.info("cpu")
    return (
        tree_cpu_seconds(server_pid),
        own.ru_utime + own.ru_stime,
        float(valkey["used_cpu_user"]) + float(valkey["used_cpu_sys"]),
    )


def http(
    toml: Path,
    users: list[str],
    seconds: float,
    rate: float,
    *,
    redis_url: str,
    prefix: str = "http",
) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    bodies = [msgspec.json.encode({"user_id": u, "n": 10}) for u in users[:20_000:7]]
    with server(
        ["tastemaker", "serve", "--config", str(toml), "--port", str(port), "--workers", "2"],
        port,
        env,
    ) as proc:
        run_load("127.0.0.1", port, "/v1/recommend", bodies, seconds=3, connections=16)
        before = _cpu_seconds(proc.pid, redis_url)
        got = run_load(
            "127.0.0.1", port, "/v1/recommend", bodies, seconds=seconds, connections=16, rate=rate
        )
        after = _cpu_seconds(proc.pid, redis_url)
    used = [1000 * (b - a) / max(1, got.requests) for a, b in zip(before, after, strict=True)]
    print(
        f"{prefix}: {got}; CPU a request: server {used[0]:.3f} ms, load generator "
        f"{used[1]:.3f} ms, Valkey {used[2]:.3f} ms",
        flush=True,
    )
    return {
        f"{prefix}_recommend_p50_ms": got.p50_ms,
        f"{prefix}_recommend_p99_ms": got.p99_ms,
        f"{prefix}_recommend_p99_scheduled_ms": got.p99_scheduled_ms,
        f"{prefix}_rps": got.rps,
        f"{prefix}_errors": got.errors,
        f"{prefix}_target_rps": rate,
        f"{prefix}_server_cpu_ms_per_request": round(used[0], 3),
        f"{prefix}_loadgen_cpu_ms_per_request": round(used[1], 3),
        f"{prefix}_valkey_cpu_ms_per_request": round(used[2], 3),
    }


def with_cache(config: Config, toml: Path, ttl_s: float) -> Path:
    serving = msgspec.structs.replace(config.serving, cache_ttl_s=ttl_s)
    stream = msgspec.structs.replace(config.stream, run_in_server=False)
    return dump_config(
        msgspec.structs.replace(config, serving=serving, stream=stream),
        toml.with_name(f"config-cache-{ttl_s:g}.toml"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rate", type=float, default=1000.0)
    args = parser.parse_args()
    users = 100_000 if args.quick else 1_000_000
    result: dict[str, Any] = {"users": users, "items": 100_000}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with redis_server(root / "redis") as url:
            config, toml, user_ids = prepare(root, users, url)
            rt = Runtime.from_config(config)
            rt.watch_artifacts()  # the batch retrievers' artifacts, as a server loads them
            freeze_loaded_heap()  # as every server process does once loaded
            result.update(ranking(rt.pipeline, user_ids, root))
            result.update(retrieval(rt.pipeline, user_ids))
            rt.close()
            seconds = 30.0 if args.quick else 60.0
            # The answer cache off: every request runs the whole pipeline (the target).
            result.update(
                http(with_cache(config, toml, 0), user_ids, seconds, args.rate, redis_url=url)
            )
            # The cache on (each user is asked for about 10 times in the run).
            cached = with_cache(config, toml, 300)
            result.update(
                http(cached, user_ids, seconds / 2, args.rate, redis_url=url, prefix="http_cached")
            )
    print(msgspec.json.encode(result).decode())


if __name__ == "__main__":
    main()
