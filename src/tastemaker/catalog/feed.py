"""The catalog change feed: item upserts and deletes, in order, shared by every process.

`POST /v1/items` appends validated changes; each API worker and the stream process poll the
feed (`catalog.poll_interval_s`) and apply what is new to their catalog in RAM, so a change is
everywhere within a few seconds. On start a process loads the base catalog file and applies
the whole feed. Backends, by `catalog.feed_url`:
- `embedded://PATH`: one SQLite file in WAL mode (many processes of one machine, readers never
  blocked), durable before `append` returns, like the event log;
- `redis://HOST:PORT/DB` or `redis+cluster://HOST:PORT`: one Redis stream, for processes on
  many machines (`feed_redis.py`).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import msgspec
import numpy as np

from tastemaker.catalog.catalog import Catalog, CatalogError, ItemChange
from tastemaker.events import EventProblem, id_problem
from tastemaker.sqlite import connect_wal
from tastemaker.urls import parse_url

__all__ = [
    "EMBEDDING_MAX",
    "EMBEDDING_MIN",
    "CatalogFeed",
    "ItemProblem",
    "SqliteCatalogFeed",
    "check_items",
    "open_feed",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS changes (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    payload BLOB NOT NULL
);
"""


# Embedding components past this would overflow float32 once squared for the norm (and
# anything past 3.4e38 is infinite as float32); a vector with none at least EMBEDDING_MIN
# from zero is all zeros as float32 (1e-300 is) or has no usable direction.
EMBEDDING_MAX = 1e9
EMBEDDING_MIN = 1e-9

# The same shape as a refused event's problem: {index, field, error}.
ItemProblem = EventProblem


def check_items(
    changes: Sequence[ItemChange], catalog: Catalog, max_id_bytes: int = 128
) -> list[ItemProblem]:
    """What is wrong with each change, by index and field (nothing: an empty list). A change
    that passes is one `Catalog.apply` takes: ids within `max_id_bytes` of UTF-8 (they are
    store keys), every embedding component within +-EMBEDDING_MAX and one at least
    EMBEDDING_MIN from zero, so the float32 vector and its norm are finite and not zero."""
    problems = []
    for i, c in enumerate(changes):
        if (why := id_problem(c.item_id, max_id_bytes)) is not None:
            problems.append(ItemProblem(i, "item_id", why))
        if c.deleted:
            continue
        for name in ("category", "brand"):
            if not getattr(c, name):
                problems.append(ItemProblem(i, name, "required for an upsert"))
        if len(c.embedding) != catalog.dim:
            problems.append(
                ItemProblem(
                    i,
                    "embedding",
                    f"expected {catalog.dim} numbers, got {len(c.embedding)}",
                )
            )
            continue
        emb = np.abs(np.asarray(c.embedding, np.float64))
        if not np.all(emb <= EMBEDDING_MAX):  # NaN fails too
            problems.append(
                ItemProblem(i, "embedding", f"every number must be within +-{EMBEDDING_MAX:g}")
            )
        elif not np.any(emb >= EMBEDDING_MIN):
            problems.append(
                ItemProblem(
                    i,
                    "embedding",
                    f"all zero: at least one number must be {EMBEDDING_MIN:g} or more from 0",
                )
            )
    return problems


class CatalogFeed(Protocol):
    """An append-only, ordered log of item changes; positions start at 1 and only grow."""

    def append(self, changes: Sequence[ItemChange]) -> int:
        """Append all changes at once (all or none); returns the position of the last."""
        ...

    def read(self, after: int) -> list[tuple[int, ItemChange, float]]:
        """(position, change, time appended) of every change after `after`, in order."""
        ...

    def close(self) -> None: ...


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


def open_feed(url: str) -> CatalogFeed:
    """`embedded://PATH`, `redis://HOST:PORT/DB` or `redis+cluster://HOST:PORT`."""
    if url.startswith(("redis://", "redis+cluster://")):
        from tastemaker.catalog.feed_redis import RedisCatalogFeed

        return RedisCatalogFeed.from_url(url)
    try:
        parsed = parse_url(url)
    except ValueError as exc:
        raise CatalogError(f"catalog.feed_url: {exc}") from exc
    if parsed.scheme != "embedded":
        raise CatalogError(
            f"catalog.feed_url {url!r}: expected embedded://PATH, redis://HOST:PORT/DB or "
            "redis+cluster://HOST:PORT"
        )
    return SqliteCatalogFeed(parsed.path)
