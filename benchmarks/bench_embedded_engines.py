"""LMDB or RocksDB for the embedded online store: the same records, the same reads.

Writes `--users` user rows (50 features in 2 families, encoded exactly as the embedded store
encodes them) in batches of 1,000 rows, then times random single-user reads of both families
(one LMDB read transaction with 2 gets; one RocksDB multi-get). Prints one JSON object last.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_embedded_engines [--users N]

Needs the `bench` extra (rocksdict).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import numpy as np
from rocksdict import Options, Rdict, WriteBatch

from benchmarks.bench_store import user_row
from tastemaker.store.embedded import _key, _Record

encode = msgspec.msgpack.Encoder().encode


def records(users: int) -> list[list[tuple[bytes, bytes]]]:
    """Batches of (key, value) exactly as EmbeddedStore writes them."""
    rng = np.random.default_rng(0)
    out = []
    for start in range(0, users, 1000):
        batch = []
        for i in range(start, min(start + 1000, users)):
            for m in user_row(i, rng):
                batch.append((_key(m.row, m.family), encode(_Record(0.0, m.cells))))
        out.append(batch)
    return out


def timed_reads(get: Any, users: int, n: int) -> np.ndarray[Any, Any]:
    rnd = random.Random(1)
    ids = [rnd.randrange(users) for _ in range(n)]
    keys = [(_key(f"u:{i}", "profile"), _key(f"u:{i}", "session")) for i in ids]
    for k in keys[:500]:
        get(k)
    out = np.empty(n)
    clock = time.perf_counter_ns
    for j, k in enumerate(keys):
        t = clock()
        got = get(k)
        out[j] = clock() - t
        assert got[0] is not None
    return out / 1e6


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--reads", type=int, default=50_000)
    args = parser.parse_args()
    batches = records(args.users)
    result: dict[str, Any] = {"users": args.users, "reads": args.reads}
    with tempfile.TemporaryDirectory() as tmp:
        env = lmdb.open(str(Path(tmp) / "lmdb"), map_size=16 << 30, readahead=False, meminit=False)
        t = time.perf_counter()
        for batch in batches:
            with env.begin(write=True) as txn:
                for k, v in batch:
                    txn.put(k, v)
        result["lmdb_write_rows_per_s"] = round(args.users / (time.perf_counter() - t))

        def lmdb_get(keys: tuple[bytes, bytes]) -> list[Any]:
            with env.begin(buffers=True) as txn:
                return [txn.get(keys[0]), txn.get(keys[1])]

        ms = timed_reads(lmdb_get, args.users, args.reads)
        result.update(
            lmdb_get_p50_ms=round(float(np.percentile(ms, 50)), 4),
            lmdb_get_p99_ms=round(float(np.percentile(ms, 99)), 4),
            lmdb_bytes=size_of(Path(tmp) / "lmdb"),
        )
        env.close()
        opts = Options(raw_mode=True)
        db = Rdict(str(Path(tmp) / "rocks"), opts)
        t = time.perf_counter()
        for batch in batches:
            wb = WriteBatch(raw_mode=True)
            for k, v in batch:
                wb.put(k, v)
            db.write(wb)
        db.flush()
        result["rocksdb_write_rows_per_s"] = round(args.users / (time.perf_counter() - t))
        ms = timed_reads(lambda keys: db.get(list(keys)), args.users, args.reads)
        result.update(
            rocksdb_get_p50_ms=round(float(np.percentile(ms, 50)), 4),
            rocksdb_get_p99_ms=round(float(np.percentile(ms, 99)), 4),
            rocksdb_bytes=size_of(Path(tmp) / "rocks"),
        )
        db.close()
    print(msgspec.json.encode(result).decode())


if __name__ == "__main__":
    main()
