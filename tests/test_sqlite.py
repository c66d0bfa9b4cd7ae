"""The SQLite files many processes share (the embedded event log, the embedded catalog feed)
open when several processes open a new one at the same moment."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from tastemaker.catalog.feed.sqlite import SqliteCatalogFeed
from tastemaker.log.embedded import EmbeddedEventLog
from tastemaker.sqlite import connect_wal


def _open(kind: str, directory: str) -> str:
    try:
        if kind == "log":
            EmbeddedEventLog(directory).close()
        else:
            SqliteCatalogFeed(directory).close()
    except Exception as exc:  # reported to the test, which names it
        return repr(exc)
    return "ok"


@pytest.mark.parametrize("kind", ["log", "feed"])
def test_processes_opening_a_new_file_at_once_all_succeed(tmp_path: Path, kind: str) -> None:
    """The API workers of one `serve` open the same new log and feed together; SQLite refuses
    the losers of the switch to WAL at once. Before the retry, 31 of 400 log opens (4
    processes, 100 rounds) failed with "database is locked", and a CI run failed on it."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        for round_ in range(15):
            directory = str(tmp_path / f"r{round_}")
            assert pool.starmap(_open, [(kind, directory)] * 4) == ["ok"] * 4


def test_errors_other_than_a_lock_are_raised_at_once(tmp_path: Path) -> None:
    def broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE t (a)")
        db.execute("CREATE TABLE t (a)")

    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        connect_wal(tmp_path / "x.sqlite3", synchronous="FULL", setup=broken)
