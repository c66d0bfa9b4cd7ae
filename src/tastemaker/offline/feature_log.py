"""Feature logging: the feature rows serving scored, for the items it showed, into the lake.

`RecommendPipeline` hands each sampled request's shown items (its impressions) to a
`FeatureLogger`; they are buffered in memory and written as Parquet under
`<lake>/features/day=YYYY-MM-DD/` every `flush_interval_s` or `max_rows` rows, and on close.
Sampling is by a hash of the request id, so every worker keeps the same requests.
`logged_training_set` joins them (DuckDB) with the events that followed: training on exactly
what serving saw, with no replay. Rows still in the buffer when a process is killed are lost:
the log is a sample, not a ledger.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from tastemaker.extras import missing_extra
from tastemaker.features.aggregations import DEFAULT_WEIGHTS
from tastemaker.offline.lake import Lake, day_of
from tastemaker.offline.training import TrainingSet
from tastemaker.ranking import FEATURE_NAMES

__all__ = ["FeatureLogger", "logged_training_set", "sampled"]

_META = ("request_id", "user_id", "ts", "item_id", "position", "score")


def sampled(request_id: str, rate: float) -> bool:
    """Whether a request falls in the sample; the same answer in every process."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    h = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")
    return h / 2**64 < rate


@dataclass
class _Batch:
    request_id: str
    user_id: str
    ts: float
    item_ids: list[str]
    scores: npt.NDArray[np.float32]
    x: npt.NDArray[np.float32]


class FeatureLogger:
    def __init__(
        self, lake: Lake, rate: float, *, flush_interval_s: float = 5.0, max_rows: int = 50_000
    ) -> None:
        self.lake = lake
        self.rate = rate
        self.max_rows = max_rows
        self._buffer: list[_Batch] = []
        self._rows = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, args=(flush_interval_s,), name="tastemaker-feature-log", daemon=True
        )
        self._thread.start()

    def wants(self, request_id: str) -> bool:
        return sampled(request_id, self.rate)

    def log(
        self,
        request_id: str,
        user_id: str,
        ts: float,
        *,
        item_ids: list[str],
        scores: npt.NDArray[np.float32],
        x: npt.NDArray[np.float32],
    ) -> None:
        """Record the shown items of one request, best first, with their feature rows."""
        with self._lock:
            self._buffer.append(_Batch(request_id, user_id, ts, item_ids, scores, x))
            self._rows += len(item_ids)
            full = self._rows >= self.max_rows
        if full:
            self.flush()

    def flush(self) -> int:
        """Write what is buffered; returns the number of rows written."""
        with self._lock:
            batches, self._buffer, self._rows = self._buffer, [], 0
        if not batches:
            return 0
        sizes = [len(b.item_ids) for b in batches]
        x = np.concatenate([b.x for b in batches]).astype(np.float32)
        columns: dict[str, pa.Array] = {
            "request_id": pa.array(np.repeat([b.request_id for b in batches], sizes), pa.string()),
            "user_id": pa.array(np.repeat([b.user_id for b in batches], sizes), pa.string()),
            "ts": pa.array(np.repeat([b.ts for b in batches], sizes), pa.float64()),
            "item_id": pa.array(item_ids_of(batches), pa.string()),
            "position": pa.array(np.concatenate([np.arange(s) for s in sizes]), pa.int32()),
            "score": pa.array(np.concatenate([b.scores for b in batches]), pa.float32()),
        }
        for j, name in enumerate(FEATURE_NAMES):
            columns[name] = pa.array(x[:, j], pa.float32())
        table = pa.table(columns)
        self.lake.write_file(
            table,
            f"{self.lake.root}/features/day={day_of(batches[0].ts)}",
            f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet",
        )
        return int(table.num_rows)

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()


def item_ids_of(batches: list[_Batch]) -> list[str]:
    return [i for b in batches for i in b.item_ids]


def _logged(lake: Lake) -> pa.Table | None:
    base = f"{lake.root}/features"
    if not lake.fs.exists(base):
        return None
    paths = sorted(p for p in lake.fs.glob(f"{base}/day=*/part-*.parquet") if "/.tmp-" not in p)
    if not paths:
        return None
    tables = []
    for p in paths:
        with lake.fs.open(p, "rb") as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables)


def logged_training_set(lake: Lake, horizon_s: float) -> TrainingSet:
    """Logged feature rows labelled by the lake's events: 1 where the user engaged with the
    shown item within `horizon_s` after the request, else 0. One query per request."""
    try:
        import duckdb
    except ImportError as exc:
        raise missing_extra("duckdb", "offline", "training on logged features") from exc

    logged = _logged(lake)
    if logged is None:
        return TrainingSet.empty()
    events = lake.read()
    engaged_types = [t for t, w in DEFAULT_WEIGHTS.items() if w > 0]
    con = duckdb.connect()
    con.register("logged", logged)
    con.register("events", events)
    feature_cols = ", ".join(f'l."{n}"' for n in FEATURE_NAMES)
    rows = con.sql(
        f"""
        SELECT l.request_id, l.ts, {feature_cols},
               EXISTS (
                   SELECT 1 FROM events e
                   WHERE e.user_id = l.user_id AND e.item_id = l.item_id
                     AND e.ts > l.ts AND e.ts <= l.ts + ?
                     AND e.type IN (SELECT unnest(?::VARCHAR[]))
               ) AS label
        FROM logged l
        ORDER BY l.ts, l.request_id, l.position
        """,
        params=[horizon_s, engaged_types],
    ).to_arrow_table()
    con.close()
    if rows.num_rows == 0:
        return TrainingSet.empty()
    x = np.column_stack([rows[n].to_numpy() for n in FEATURE_NAMES]).astype(np.float32)
    y = rows["label"].to_numpy(zero_copy_only=False).astype(np.float32)
    req = rows["request_id"].to_numpy(zero_copy_only=False)
    starts = np.r_[0, np.flatnonzero(req[1:] != req[:-1]) + 1]
    group = np.diff(np.r_[starts, req.size]).astype(np.int64)
    return TrainingSet(x, y, group, rows["ts"].to_numpy()[starts])
