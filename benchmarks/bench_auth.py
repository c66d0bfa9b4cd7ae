"""What the API-key check costs a request: the ASGI middleware of `serving/auth.py` in front
of an app that answers at once, against that app alone, called directly (no HTTP), with
`--keys` configured keys. Every configured digest is compared on every request, so the cost
grows with the number of keys, not with which one matches. Prints one JSON object last.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_auth [--keys N] [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tastemaker.config import ApiKey
from tastemaker.serving.auth import AuthMiddleware, KeyStore, hash_key


async def _answer(_scope: Scope, _receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(_message: Message) -> None:
    return None


async def _per_call_us(app: ASGIApp, headers: list[tuple[bytes, bytes]], calls: int) -> float:
    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/v1/recommend"}
    started = time.perf_counter()
    for _ in range(calls):
        await app({**scope, "headers": headers}, _receive, _send)
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--keys", type=int, default=10)
    p.add_argument("--calls", type=int, default=50_000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    keys = [
        ApiKey(name=f"k{i}", sha256=hash_key(f"key-{i}"), scopes=["read"]) for i in range(args.keys)
    ]
    guarded = AuthMiddleware(_answer, keys=KeyStore(keys))
    headers = [(b"authorization", f"Bearer key-{args.keys - 1}".encode())]
    bare, checked = [], []
    for _ in range(args.repeats):
        bare.append(asyncio.run(_per_call_us(_answer, headers, args.calls)))
        checked.append(asyncio.run(_per_call_us(guarded, headers, args.calls)))
    result = {
        "keys": args.keys,
        "calls": args.calls,
        "bare_us": round(statistics.median(bare), 3),
        "with_auth_us": round(statistics.median(checked), 3),
        "auth_overhead_us": round(statistics.median(checked) - statistics.median(bare), 3),
    }
    print(msgspec.json.encode(result).decode())


if __name__ == "__main__":
    main()
