"""Recommend cache benchmark: what an event POST pays to invalidate its user's answers.

Every accepted batch calls `RecommendCache.invalidate` with its users. With the cache full
(`--answers`, default 100,000, the default `serving.cache_size`), this times one call for a
batch of one user (a client's batch of that user's events), as median and p99 over `--calls`
calls, the user's answers put back (untimed) before each. For comparison, in the same run:
a full scan of a dict of as many keys, which is what an invalidation cost before the cache was
indexed by user, and a `get` hit. Prints progress, then as its last line one JSON object:

    answers                        cached answers during the measurement
    invalidate_p50_ms, _p99_ms     one invalidation, indexed by user
    full_scan_p50_ms, _p99_ms      the same through a scan of every key (the baseline)
    get_hit_p50_ms, _p99_ms        one cache hit

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_cache [--answers N]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np

from tastemaker.data.synthetic import ShopSpec, generate_shop
from tastemaker.recommend.cache import CacheKey, RecommendCache
from tastemaker.recommend.pipeline import Recommendation, RecommendedItem, Request


def percentiles_ms(
    fn: Callable[[int], object], calls: int, setup: Callable[[int], None]
) -> list[float]:
    """p50 and p99 of `fn(i)` in milliseconds; `setup(i)` runs untimed before each call."""
    times = np.empty(calls, np.float64)
    for i in range(calls):
        setup(i)
        started = time.perf_counter_ns()
        fn(i)
        times[i] = time.perf_counter_ns() - started
    return [round(float(v) / 1e6, 5) for v in np.percentile(times, [50, 99])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--answers", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--scan-calls", type=int, default=300)
    args = parser.parse_args()
    catalog = generate_shop(ShopSpec(n_users=10, n_items=1_000, seed=1)).catalog()
    rec = Recommendation([RecommendedItem(str(i), 1.0, ["popular"]) for i in catalog.ids[:10]])
    # Each user holds two answers (two page sizes), as a shop's clients ask.
    users = [f"user-{i}" for i in range(args.answers // 2)]
    cache = RecommendCache(ttl_s=3600.0, size=args.answers + 10)
    requests = [Request(n=10), Request(n=20)]
    keys: dict[str, list[CacheKey]] = {}
    for u in users:
        keys[u] = [k for r in requests if (k := cache.key(u, r)) is not None]
        for k in keys[u]:
            cache.put(k, (1.0, 1), rec, catalog)
    print(f"{len(cache)} answers cached", flush=True)
    rng = np.random.default_rng(0)
    picks = [users[i] for i in rng.integers(0, len(users), args.calls)]

    def refill(user: str) -> None:
        for k in keys[user]:
            cache.put(k, (1.0, 1), rec, catalog)

    def restore_last(i: int) -> None:
        if i > 0:
            refill(picks[i - 1])  # the cache stays full

    invalidate = percentiles_ms(lambda i: cache.invalidate({picks[i]}), args.calls, restore_last)
    assert len(cache) == args.answers - 2  # only the last call's answers are gone
    hit = percentiles_ms(
        lambda i: cache.get(keys[picks[i]][0], (1.0, 1), catalog, None),
        args.calls,
        lambda i: refill(picks[i]),
    )
    # The baseline: the scan every invalidation did when the cache was one flat dict.
    flat: dict[CacheKey, object] = {k: rec for ks in keys.values() for k in ks}

    def scan(i: int) -> None:
        wanted = {picks[i]}
        for k in [k for k in flat if k[0] in wanted]:
            flat.pop(k, None)

    def refill_flat(i: int) -> None:
        if i > 0:
            for k in keys[picks[i - 1]]:
                flat[k] = rec

    full_scan = percentiles_ms(scan, args.scan_calls, refill_flat)
    print(
        json.dumps(
            {
                "answers": args.answers,
                "invalidate_p50_ms": invalidate[0],
                "invalidate_p99_ms": invalidate[1],
                "full_scan_p50_ms": full_scan[0],
                "full_scan_p99_ms": full_scan[1],
                "get_hit_p50_ms": hit[0],
                "get_hit_p99_ms": hit[1],
            }
        )
    )


if __name__ == "__main__":
    main()
