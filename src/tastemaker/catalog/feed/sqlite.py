"""The catalog change feed on one SQLite file in WAL mode: many processes of one machine,
readers never blocked, durable before `append` returns, like the event log."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from tastemaker.catalog.catalog import ItemChange
from tastemaker.sqlite import connect_wal

__all__ = ["SqliteCatalogFeed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS changes (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    payload BLOB NOT NULL
);
"""


def _create_schema(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)


class SqliteCatalogFeed:
    """The feed on one SQLite file (`<directory>/catalog-changes.sqlite3`)."""

    def __init__(self, directory: str | Path) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "catalog-changes.sqlite3"
        self._lock = threading.Lock()
        self._db = connect_wal(self.path, synchronous="FULL", setup=_create_schema)
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(ItemChange)

    def append(self, changes: Sequence[ItemChange]) -> int:
        """Append all changes in one transaction; returns the position of the last."""
        now = time.time()
        rows = [(now, self._enc.encode(c)) for c in changes]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO changes (ts, payload) VALUES (?, ?)", rows)
                (last,) = self._db.execute("SELECT max(position) FROM changes").fetchone()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(last)

    def read(self, after: int) -> list[tuple[int, ItemChange, float]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT position, payload, ts FROM changes WHERE position > ? ORDER BY position",
                (after,),
            ).fetchall()
        return [(int(p), self._dec.decode(b), float(ts)) for p, b, ts in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
