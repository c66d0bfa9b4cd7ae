"""Which web framework and server to serve `POST /v1/recommend` with.

Starts each (framework, server) pair in its own process on the same prepared shop and drives
it with the same closed-loop load; prints one JSON object as the last line. Run:

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_http_frameworks [--seconds 20]

Needs the `bench` extra (granian, litestar): `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import msgspec

from benchmarks.common import free_port, prepare_shop, server
from benchmarks.loadgen import LoadResult, run_load
from tastemaker.data.synthetic import ShopSpec


def uvicorn_argv(target: str, port: int) -> list[str]:
    return [
        "uvicorn",
        "--factory",
        target,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
    ]


def granian_argv(target: str, port: int) -> list[str]:
    return [
        "granian",
        "--interface",
        "asgi",
        "--factory",
        target,
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
        "--no-ws",
    ]


SERVERS = {"uvicorn": uvicorn_argv, "granian": granian_argv}
APPS = {
    "starlette": "benchmarks.http_apps:starlette_app",
    "litestar": "benchmarks.http_apps:litestar_app",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per pair")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config, users = prepare_shop(Path(tmp), ShopSpec(n_users=5000, n_items=5000))
        bodies = [msgspec.json.encode({"user_id": u, "n": 10}) for u in users[:1000]]
        env = {**os.environ, "TASTEMAKER_CONFIG": str(config), "OPENBLAS_NUM_THREADS": "1"}
        results: dict[str, list[LoadResult]] = {}
        for _ in range(args.rounds):  # alternate so drift on a shared machine hits all pairs
            for app, target in APPS.items():
                for name, argv in SERVERS.items():
                    port = free_port()
                    with server(argv(target, port), port, env):
                        run_load(
                            "127.0.0.1",
                            port,
                            "/v1/recommend",
                            bodies,
                            seconds=2,
                            connections=args.connections,
                        )  # warm-up
                        got = run_load(
                            "127.0.0.1",
                            port,
                            "/v1/recommend",
                            bodies,
                            seconds=args.seconds,
                            connections=args.connections,
                        )
                    results.setdefault(f"{app}+{name}", []).append(got)
                    print(f"{app}+{name}: {got}", flush=True)
    summary = {
        pair: {
            "rps": max(r.rps for r in runs),
            "p50_ms": min(r.p50_ms for r in runs),
            "p99_ms": min(r.p99_ms for r in runs),
            "errors": sum(r.errors for r in runs),
        }
        for pair, runs in results.items()
    }
    base = summary["starlette+uvicorn"]["rps"]
    for s in summary.values():
        s["rps_vs_starlette_uvicorn"] = round(s["rps"] / base, 3)
    print(
        msgspec.json.encode(
            {"connections": args.connections, "seconds": args.seconds, "pairs": summary}
        ).decode()
    )


if __name__ == "__main__":
    main()
