"""Opening a SQLite file in WAL mode that several processes may open at the same moment.

The embedded event log and the embedded catalog feed are SQLite files shared by every process
of one machine (the API workers of one `serve`, the stream process). Processes that open a
new file at once race to switch it to WAL and create its tables, and SQLite answers the loser
"database is locked" at once rather than through the busy timeout (the journal-mode switch
needs an exclusive lock and does not wait for it). `connect_wal` retries such a set-up until
the busy timeout has passed.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

__all__ = ["connect_wal", "immediate"]


def connect_wal(
    path: Path,
    *,
    synchronous: Literal["FULL", "NORMAL"],
    setup: Callable[[sqlite3.Connection], None],
    timeout_s: float = 30.0,
) -> sqlite3.Connection:
    """A connection to `path` in WAL mode with `synchronous` set and `setup` (creating the
    schema; it must be idempotent) applied, shareable between threads, with transactions left
    to the caller (`isolation_level=None`). A set-up that finds the file locked is retried
    every 50 ms for up to `timeout_s`; any other error is raised at once."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            setup(db)
            return db
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                db.close()
                raise
            time.sleep(0.05)


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction (`BEGIN IMMEDIATE`), committed when the block ends. If anything
    fails, it is rolled back only while still open: a failed COMMIT (a full disk) may have
    ended it already, and a ROLLBACK then would raise and hide the real error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
