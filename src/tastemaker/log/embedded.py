"""Embedded event log on SQLite in WAL mode.

Why SQLite: it is a real embedded database that many processes can share through one file,
with readers never blocked by the writer (WAL), atomic multi-row appends, and crash safety
we do not have to write ourselves.

Durability (`fsync`):
- "always" (default): `PRAGMA synchronous=FULL`; a batch is fsynced before `append` returns.
  An acknowledged event survives a process crash *and* a power loss or kernel crash.
- "never": `PRAGMA synchronous=NORMAL`; the WAL is fsynced only at checkpoints. An
  acknowledged event survives a crash of the process (the data is in the OS page cache), but
  the last moments before a power loss may be lost. Several times faster on slow disks.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import msgspec

from tastemaker.events import Event
from tastemaker.log.base import LogError, LogRecord

__all__ = ["EmbeddedEventLog", "FsyncPolicy"]

FsyncPolicy = Literal["always", "never"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    offset INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS consumer_offsets (
    grp TEXT PRIMARY KEY,
    offset INTEGER NOT NULL
);
"""


class EmbeddedEventLog:
    """EventLog on one SQLite file (`<directory>/events.sqlite3`). Safe to share between
    threads of a process and between processes."""

    def __init__(
        self, directory: str | Path, *, fsync: FsyncPolicy = "always", busy_timeout_s: float = 30.0
    ) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "events.sqlite3"
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so an append is one transaction.
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync == 'always' else 'NORMAL'}")
        self._db.executescript(_SCHEMA)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(Event)

    def append(self, events: Sequence[Event]) -> int:
        if not events:
            return self.end_offset()
        payloads = [(self._encoder.encode(e),) for e in events]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise LogError(f"event log {self.path}: cannot append: {exc}") from exc
            try:
                self._db.executemany("INSERT INTO events(payload) VALUES (?)", payloads)
                row = self._db.execute("SELECT max(offset) FROM events").fetchone()
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise LogError(f"event log {self.path}: cannot append: {exc}") from exc
                raise
        return int(row[0])

    def read(self, after: int, limit: int) -> list[LogRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT offset, payload FROM events WHERE offset > ? ORDER BY offset LIMIT ?",
                (after, limit),
            ).fetchall()
        decode = self._decoder.decode
        return [LogRecord(offset=o, event=decode(p)) for o, p in rows]

    def commit(self, group: str, offset: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO consumer_offsets(grp, offset) VALUES (?, ?) "
                "ON CONFLICT(grp) DO UPDATE SET offset = max(offset, excluded.offset)",
                (group, offset),
            )

    def committed(self, group: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT offset FROM consumer_offsets WHERE grp = ?", (group,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def end_offset(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT max(offset) FROM events").fetchone()
        return 0 if row[0] is None else int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
