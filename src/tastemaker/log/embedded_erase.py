"""Deleting records from the embedded log: a user's (erasure) and old ones (retention).

The log stores chunks: a row of up to 1,000 consecutive records of one partition, their
encodings end to end (`tastemaker.log.embedded`). A chunk's offsets are `first..last` with
no gap, which reads rely on, so erasing some records of a chunk replaces the row by one row
per run of the records kept (each run still gapless; offsets keep their values, so consumer
positions stay valid). The scan reads a snapshot on its own connection and takes the write
lock only to rewrite the chunks it found, so appends wait for the rewrite, not the scan.

Retention deletes whole chunks, oldest first, and only chunks every consumer group (the
archiver is one: it commits its position) has committed past.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import closing
from pathlib import Path

import msgspec

from tastemaker.events import Event, EventType
from tastemaker.log.base import LogError, partition_of
from tastemaker.sqlite import immediate

__all__ = ["erase_users", "trim"]

_decoder = msgspec.msgpack.Decoder(list[Event])
_encode = msgspec.msgpack.Encoder().encode
_Chunk = tuple[int, int, int, list[Event]]  # first, last, partition, records


def _connect(path: Path, timeout_s: float) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, timeout=timeout_s)


def _decode(first: int, last: int, payload: bytes) -> list[Event]:
    count = last - first + 1
    return _decoder.decode(b"\xdd" + count.to_bytes(4, "big") + payload)


def _chunks(db: sqlite3.Connection, partition: int) -> Iterator[_Chunk]:
    cursor = db.execute(
        "SELECT first, last, payload FROM chunks WHERE partition = ? ORDER BY last", (partition,)
    )
    while block := cursor.fetchmany(64):
        for first, last, payload in block:
            yield int(first), int(last), partition, _decode(first, last, payload)


def _runs(
    first: int, events: Sequence[Event], keep: Sequence[bool]
) -> list[tuple[int, int, bytes]]:
    """Rows (last, first, payload) of the runs of kept records."""
    rows: list[tuple[int, int, bytes]] = []
    start: int | None = None
    for i in range(len(events) + 1):
        if i < len(events) and keep[i]:
            if start is None:
                start = i
            continue
        if start is not None:
            payload = b"".join(_encode(e) for e in events[start:i])
            rows.append((first + i - 1, first + start, payload))
            start = None
    return rows


def _keep(events: Sequence[Event], users: set[str]) -> list[bool]:
    return [e.user_id not in users or e.type is EventType.ERASE for e in events]


def erase_users(
    path: Path, partitions: int, user_ids: Collection[str], *, timeout_s: float = 30.0
) -> list[str]:
    """Delete every record of `user_ids` but tombstones; returns the event ids deleted."""
    users = set(user_ids)
    if not users:
        return []
    found: list[tuple[int, int, int]] = []  # partition, first, last of chunks to rewrite
    try:
        with closing(_connect(path, timeout_s)) as db:
            for p in sorted({partition_of(u, partitions) for u in users}):
                found += [
                    (p, first, last)
                    for first, last, _, events in _chunks(db, p)
                    if not all(_keep(events, users))
                ]
            if not found:
                return []
            with immediate(db):
                erased = _rewrite(db, found, users)
    except sqlite3.Error as exc:
        raise LogError(f"event log {path}: cannot erase users: {exc}") from exc
    return erased


def _rewrite(
    db: sqlite3.Connection, found: list[tuple[int, int, int]], users: set[str]
) -> list[str]:
    """Rewrite the chunks found by the scan, as they are now: read again under the write
    lock, so a chunk trimmed or split (by another erasure) since the scan is handled too."""
    erased: list[str] = []
    for partition, lo, hi in found:
        rows = db.execute(
            "SELECT first, last, payload FROM chunks WHERE partition = ? AND last BETWEEN ? AND ?",
            (partition, lo, hi),
        ).fetchall()
        for first, last, payload in rows:
            events = _decode(first, last, payload)
            keep = _keep(events, users)
            if all(keep):
                continue
            db.execute("DELETE FROM chunks WHERE last = ?", (last,))
            db.executemany(
                "INSERT INTO chunks(last, first, partition, payload) VALUES (?, ?, ?, ?)",
                [(lst, fst, partition, data) for lst, fst, data in _runs(first, events, keep)],
            )
            erased.extend(e.event_id for e, k in zip(events, keep, strict=True) if not k)
    return erased


def trim(
    path: Path,
    partitions: int,
    *,
    max_age_s: float | None,
    max_records: int | None,
    groups: Sequence[str] = (),
    now: float | None = None,
    timeout_s: float = 30.0,
) -> int:
    """Delete whole chunks that are past retention: their newest event older than
    `max_age_s`, or beyond the newest `max_records` records of their partition. Only chunks
    at or before the smallest committed offset of every consumer group the log knows and of
    each of `groups` (a group that never committed holds everything) go. Returns how many
    records were deleted."""
    if max_age_s is None and max_records is None:
        return 0
    cutoff = (time.time() if now is None else now) - (max_age_s or 0.0)
    deleted = 0
    try:
        with closing(_connect(path, timeout_s)) as db, immediate(db):
            for p in range(partitions):
                deleted += _trim_partition(
                    db, p, _floor(db, p, groups), cutoff if max_age_s else None, max_records
                )
    except sqlite3.Error as exc:
        raise LogError(f"event log {path}: cannot trim: {exc}") from exc
    return deleted


def _floor(db: sqlite3.Connection, partition: int, groups: Sequence[str]) -> int:
    """The smallest committed offset of every group in the partition (0: keep all)."""
    rows = dict(
        db.execute(
            "SELECT grp, offset FROM group_offsets WHERE partition = ?", (partition,)
        ).fetchall()
    )
    if any(g not in rows for g in groups) or not rows:
        return 0
    return int(min(rows.values()))


def _trim_partition(
    db: sqlite3.Connection,
    partition: int,
    floor: int,
    cutoff: float | None,
    max_records: int | None,
) -> int:
    total = int(
        db.execute(
            "SELECT coalesce(sum(last - first + 1), 0) FROM chunks WHERE partition = ?",
            (partition,),
        ).fetchone()[0]
    )
    rows = db.execute(
        "SELECT first, last, payload FROM chunks WHERE partition = ? AND last <= ? ORDER BY last",
        (partition, floor),
    ).fetchall()
    doomed: list[int] = []
    left = total
    for first, last, payload in rows:
        size = last - first + 1
        over = max_records is not None and left > max_records
        if not over and (
            cutoff is None or max(e.ts for e in _decode(first, last, payload)) >= cutoff
        ):
            break
        doomed.append(int(last))
        left -= size
    db.executemany("DELETE FROM chunks WHERE last = ?", [(x,) for x in doomed])
    return total - left
