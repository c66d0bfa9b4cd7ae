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

Consumer groups: the stream processes of one machine share the partitions through file locks
beside the database (`<directory>/groups/<group>/`, see `_GroupLocks`). A process owns a
partition while it holds the partition's lock; the kernel releases a dead process's locks,
so the others take its partitions over within `_REBALANCE_S`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Literal

import msgspec

from tastemaker.events import Event
from tastemaker.log import embedded_erase
from tastemaker.log.base import LogError, LogRecord, partition_of
from tastemaker.sqlite import connect_wal

__all__ = ["EmbeddedConsumer", "EmbeddedEventLog", "FsyncPolicy"]

FsyncPolicy = Literal["always", "never"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    last INTEGER PRIMARY KEY,
    first INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_partition ON chunks(partition, last);
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (grp, partition)
);
"""

# The most records an append puts in one chunk (a row: ~150 KB of the demo shop's events).
# A read decodes whole chunks, so it decodes at most one chunk's records it does not return.
_CHUNK = 1_000

# Chunks holding records after an offset, in offset order: on a one-partition log a range of
# the table's row ids (every record is in the partition), else through the partition index.
_READ_ALL = "SELECT first, last, payload FROM chunks WHERE last > ? ORDER BY last"
_READ_PARTITION = (
    "SELECT first, last, payload FROM chunks WHERE partition = ? AND last > ? ORDER BY last"
)
# Chunks fetched from the cursor at a time, until a read has its records.
_FETCH = 16


def _create_schema(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'events'").fetchone():
        _migrate_rows(db)


def _migrate_rows(db: sqlite3.Connection) -> None:
    """A log in the row-per-record layout of development builds (`events`): each becomes a
    chunk of one, at its own offset, in one transaction (a process opening the file
    meanwhile waits for it, and finds the table gone)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'events'").fetchone():
            columns = {r[1] for r in db.execute("PRAGMA table_info(events)")}
            partition = "partition" if "partition" in columns else "0"  # before partitions
            db.execute(
                "INSERT INTO chunks(last, first, partition, payload) "
                f"SELECT offset, offset, {partition}, payload FROM events"
            )
            db.execute("DROP TABLE events")
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back the connection's open transaction, if any. SQLite rolls a transaction back
    by itself after some errors (a full disk, an I/O error), and a ROLLBACK then raises "no
    transaction is active": that must not replace the error that caused it. A rollback that
    fails leaves the transaction to the next call's `_rollback`."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


# After a failed COMMIT whose transaction SQLite has closed, these errors mean that the
# transaction's commit frame never reached the WAL whole (the disk is full, a write was
# refused, the lock was not had): nothing was written. After any other (an fsync that
# failed, say) the frames may be in the WAL, and a later recovery may find them.
_NOTHING_WRITTEN = frozenset(
    {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY}
)


def _may_have_committed(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return True
    return code & 0xFF not in _NOTHING_WRITTEN and code != sqlite3.SQLITE_IOERR_WRITE


class EmbeddedEventLog:
    """EventLog on one SQLite file (`<directory>/events.sqlite3`). Safe to share between
    threads of a process and between processes.

    Records are stored in chunks (a row of up to `_CHUNK` records of one partition, the
    encodings end to end, written by one append). Offsets are unique in the log: an append's
    chunks take the next ones in turn, so they are dense when there is one partition (the
    default) and increasing within each partition when there are several. The
    members of a consumer group (processes of this machine, or consumers of one process)
    share the partitions, each partition read by one member at a time (`_GroupLocks`): with
    `partitions=N`, up to N stream processes apply the log on N cores."""

    def __init__(
        self,
        directory: str | Path,
        *,
        fsync: FsyncPolicy = "always",
        busy_timeout_s: float = 30.0,
        partitions: int = 1,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        self.partitions = partitions
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "events.sqlite3"
        self._lock = threading.Lock()
        # Transactions are ours (BEGIN/COMMIT) so an append is one transaction.
        self._db = connect_wal(
            self.path,
            synchronous="FULL" if fsync == "always" else "NORMAL",
            setup=_create_schema,
            timeout_s=busy_timeout_s,
        )
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(list[Event])

    def append(self, events: Sequence[Event]) -> None:
        """All of `events` in one transaction: each partition's, in their order, as chunks of
        up to `_CHUNK` records, each chunk at the next offsets (so offsets are unique in the
        log, increasing in a partition, and dense when there is one partition)."""
        if not events:
            return
        n = self.partitions
        encode = self._encoder.encode
        by_partition: dict[int, list[bytes]] = {}
        for e in events:
            by_partition.setdefault(partition_of(e.user_id, n), []).append(encode(e))
        with self._lock:
            db = self._db
            committing = False
            try:
                _rollback(db)  # a transaction a failed cleanup left open
                db.execute("BEGIN IMMEDIATE")
                end = db.execute("SELECT coalesce(max(last), 0) FROM chunks").fetchone()[0]
                rows = []
                for p, payloads in sorted(by_partition.items()):
                    for i in range(0, len(payloads), _CHUNK):
                        part = payloads[i : i + _CHUNK]
                        rows.append((end + len(part), end + 1, p, b"".join(part)))
                        end += len(part)
                db.executemany(
                    "INSERT INTO chunks(last, first, partition, payload) VALUES (?, ?, ?, ?)", rows
                )
                committing = True
                db.execute("COMMIT")
            except BaseException as exc:
                # Read before the rollback: a COMMIT that failed with its transaction still
                # open wrote nothing.
                maybe = committing and not db.in_transaction and _may_have_committed(exc)
                _rollback(db)  # never raises: the error raised is the cause, not the cleanup
                if isinstance(exc, sqlite3.Error):
                    note = "; the events may have been written" if maybe else ""
                    raise LogError(
                        f"event log {self.path}: cannot append: {exc}{note}", maybe_written=maybe
                    ) from exc
                raise

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """SQLite's errors (I/O, a locked or corrupt file) as `LogError`."""
        try:
            yield
        except sqlite3.Error as exc:
            raise LogError(f"event log {self.path}: cannot {doing}: {exc}") from exc

    def read(self, partition: int, after: int, limit: int) -> list[LogRecord]:
        """Up to `limit` records of `partition` after offset `after`, whole chunks fetched
        until they hold that many. Why chunks and not a row per record: reading a row per
        record was a fifth of a stream drain (SQLite's row steps and Python's row tuples,
        0.45 s of 4.9 s for 531,943 records, profiled); a chunk's records are decoded with the
        rest of the read's in one call."""
        if limit <= 0:
            return []
        one = self.partitions == 1
        chunks: list[tuple[int, int, bytes]] = []
        held = 0
        with self._lock, self._errors("read"):
            cursor = self._db.execute(
                _READ_ALL if one else _READ_PARTITION, (after,) if one else (partition, after)
            )
            while held < limit and (block := cursor.fetchmany(_FETCH)):
                for first, last, payload in block:
                    chunks.append((first, last, payload))
                    held += last - max(first, after + 1) + 1
                    if held >= limit:
                        break
            cursor.close()
        if not chunks:
            return []
        total = sum(last - first + 1 for first, last, _ in chunks)
        # The chunks framed as one msgpack array: one decode call for the whole read.
        events = self._decoder.decode(
            b"\xdd" + total.to_bytes(4, "big") + b"".join(p for _, _, p in chunks)
        )
        skip = max(0, after + 1 - chunks[0][0])  # records of the first chunk read before
        offsets = itertools.chain.from_iterable(range(f, last + 1) for f, last, _ in chunks)
        return [
            LogRecord(o, e, partition)
            for o, e in zip(
                itertools.islice(offsets, skip, skip + limit),
                events[skip : skip + limit],
                strict=True,
            )
        ]

    def commit(self, group: str, positions: Mapping[int, int]) -> None:
        with self._lock, self._errors("commit"):
            self._db.executemany(
                "INSERT INTO group_offsets(grp, partition, offset) VALUES (?, ?, ?) "
                "ON CONFLICT(grp, partition) DO UPDATE SET offset = max(offset, excluded.offset)",
                [(group, p, o) for p, o in positions.items()],
            )

    def committed(self, group: str) -> dict[int, int]:
        out = dict.fromkeys(range(self.partitions), 0)
        with self._lock, self._errors("read offsets"):
            rows = self._db.execute(
                "SELECT partition, offset FROM group_offsets WHERE grp = ?", (group,)
            ).fetchall()
        out.update({int(p): int(o) for p, o in rows if int(p) < self.partitions})
        return out

    def end_offsets(self) -> dict[int, int]:
        with self._lock, self._errors("read offsets"):
            if self.partitions == 1:
                row = self._db.execute("SELECT max(last) FROM chunks").fetchone()
                return {0: 0 if row[0] is None else int(row[0])}
            rows = self._db.execute(
                "SELECT partition, max(last) FROM chunks GROUP BY partition"
            ).fetchall()
        out = dict.fromkeys(range(self.partitions), 0)
        out.update({int(p): int(o) for p, o in rows if int(p) < self.partitions})
        return out

    def lag(self, group: str) -> dict[int, int]:
        committed = self.committed(group)
        if self.partitions == 1:  # offsets are dense: a subtraction
            return {0: max(0, self.end_offsets()[0] - committed[0])}
        # A chunk's records have consecutive offsets: those after the committed offset are
        # counted from its bounds.
        with self._lock, self._errors("read lag"):
            return {
                p: int(
                    self._db.execute(
                        "SELECT coalesce(sum(last - max(first, ? + 1) + 1), 0) FROM chunks "
                        "WHERE partition = ? AND last > ?",
                        (committed[p], p, committed[p]),
                    ).fetchone()[0]
                )
                for p in range(self.partitions)
            }

    def consumer(self, group: str, member: str) -> EmbeddedConsumer:
        return EmbeddedConsumer(self, group, member)

    def group_members(self, group: str) -> tuple[int, int]:
        """(live members, partitions owned) of `group`, as its lock files show them."""
        root = _group_dir(self.path.parent, group)
        members = sum(map(_locked, (root / "members").glob("*.lock")))
        return members, sum(_locked(_partition_lock(root, p)) for p in range(self.partitions))

    def group_owners(self, group: str) -> dict[int, str]:
        """The owned partitions of `group` and the names of their owners (`stream.member`),
        as the partitions' lock files show them. A member takes a partition's lock, then
        writes its name in the file: a partition just taken may show "" for a moment."""
        root = _group_dir(self.path.parent, group)
        out: dict[int, str] = {}
        for p in range(self.partitions):
            path = _partition_lock(root, p)
            if _locked(path):
                with contextlib.suppress(FileNotFoundError):
                    out[p] = path.read_bytes().decode(errors="replace")
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def erase_users(self, user_ids: Collection[str]) -> list[str]:
        """Rewrites the chunks holding the users' records without them
        (`tastemaker.log.embedded_erase`)."""
        return embedded_erase.erase_users(self.path, self.partitions, user_ids)

    def trim(
        self,
        *,
        max_age_s: float | None,
        max_records: int | None,
        groups: Sequence[str] = (),
        now: float | None = None,
    ) -> int:
        """Retention: deletes chunks past `max_age_s` or beyond `max_records` per partition
        that every consumer group (and each of `groups`) has committed past; returns how
        many records (`tastemaker.log.embedded_erase.trim`)."""
        return embedded_erase.trim(
            self.path,
            self.partitions,
            max_age_s=max_age_s,
            max_records=max_records,
            groups=groups,
            now=now,
        )


_REBALANCE_S = 0.5  # how often a member counts the live members and takes or gives partitions


def _group_dir(log_dir: Path, group: str) -> Path:
    """A group's directory: named as the group when the name is plain, by a hash otherwise."""
    name = group
    if not group.replace("-", "").replace("_", "").replace(".", "").isalnum() or len(group) > 64:
        name = "h" + hashlib.sha256(group.encode()).hexdigest()[:32]
    return log_dir / "groups" / name


def _partition_lock(group_dir: Path, partition: int) -> Path:
    return group_dir / f"p{partition}.lock"


def _locked(path: Path) -> bool:
    """Whether a process holds the lock of `path` (False where there is no such file)."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


class _GroupLocks:
    """Which partitions one member of a consumer group owns, decided with `flock` on files in
    `<log directory>/groups/<group>/`:

    - `members/<random>.lock`, one a member, held exclusively while the member lives (its
      name is written inside for people reading the directory);
    - `p<N>.lock`, one a partition, held exclusively by the member that owns the partition.

    A member counts the live members (the member files whose lock it cannot take), gives up
    its partitions beyond `ceil(partitions / live)`, highest first, and takes free ones up to
    that share, as the Redis Streams log's leases do. The kernel releases the locks of a
    process that dies, SIGKILL included, so no clock or lease is involved: a partition has
    one owner at a time for as long as that owner lives, and another member takes it at its
    next rebalance. A paused process keeps its partitions (no lease lapses under it).

    Why file locks, by hand: the members are processes of one machine (the log is a local
    SQLite file; SQLite does not support network file systems), and `flock` is the one
    primitive there that is released whatever way its holder dies. SQLite's own locks are
    held only for a transaction. Locks belong to an open file, so two consumers of one
    process are two members too, and a consumer dropped without `close` gives its locks back
    when its files are collected."""

    def __init__(self, log_dir: Path, group: str, member: str, partitions: int) -> None:
        self._dir = _group_dir(log_dir, group)
        self._members = self._dir / "members"
        self._members.mkdir(parents=True, exist_ok=True)
        self._partitions = partitions
        self._name = member.encode()
        self.owned: dict[int, IO[bytes]] = {}
        with self._directory_locked():
            self._me = self._members / f"{uuid.uuid4().hex}.lock"
            handle = self._me.open("wb")
            fcntl.flock(handle, fcntl.LOCK_EX)  # before anyone can count it dead
            handle.write(self._name)
            handle.flush()
            self._handle: IO[bytes] | None = handle

    @contextlib.contextmanager
    def _directory_locked(self) -> Iterator[None]:
        """Joining and removing dead members' files, one process at a time: a file is
        locked by its member before anyone may remove it as dead."""
        with (self._dir / "members.lock").open("ab") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _live(self) -> tuple[int, list[Path]]:
        """The number of live members (this one included) and the files of dead ones."""
        live, dead = 0, []
        for path in self._members.glob("*.lock"):
            if path == self._me or _locked(path):
                live += 1
            elif path.exists():  # not a member that left meanwhile
                dead.append(path)
        return max(live, 1), dead

    def rebalance(self) -> frozenset[int]:
        """Renew this member's share: give up partitions beyond it, take free ones up to it."""
        if self._handle is None:
            return frozenset()
        live, dead = self._live()
        if dead:
            with self._directory_locked():
                for path in dead:
                    self._remove_if_dead(path)
        fair = math.ceil(self._partitions / live)
        for p in sorted(self.owned, reverse=True)[: max(0, len(self.owned) - fair)]:
            self._give_up(p)
        for p in range(self._partitions):
            if len(self.owned) >= fair:
                break
            if p in self.owned:
                continue
            fh = _partition_lock(self._dir, p).open("ab")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()  # another member owns it
                continue
            fh.truncate(0)  # its owner's name, for `group_owners`
            fh.write(self._name)
            fh.flush()
            self.owned[p] = fh
        return frozenset(self.owned)

    @staticmethod
    def _remove_if_dead(path: Path) -> None:
        """Remove a member's file if it is still unlocked (under the directory lock, which
        a joining member holds until it has locked its file)."""
        if not _locked(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _give_up(self, partition: int) -> None:
        fh = self.owned.pop(partition)
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()

    def leave(self) -> None:
        """Give up every partition and leave the group."""
        for p in list(self.owned):
            self._give_up(p)
        handle, self._handle = self._handle, None
        if handle is None:
            return
        with self._directory_locked():
            with contextlib.suppress(FileNotFoundError):
                self._me.unlink()
            handle.close()


class EmbeddedConsumer:
    """One member of a consumer group: reads the partitions it owns (`_GroupLocks`) from the
    group's committed offsets, round-robin."""

    def __init__(self, log: EmbeddedEventLog, group: str, member: str) -> None:
        self.log = log
        self.group = group
        self.member = member
        self._positions: dict[int, int] = {}
        self._next = 0
        self._locks = _GroupLocks(log.path.parent, group, member, log.partitions)
        self._owned: frozenset[int] = frozenset()
        self._rebalance_at = 0.0

    def assignment(self) -> frozenset[int]:
        now = time.monotonic()
        if now < self._rebalance_at:
            return self._owned
        try:
            owned = self._locks.rebalance()
        except OSError as exc:
            raise LogError(f"event log {self.log.path}: cannot share partitions: {exc}") from exc
        self._rebalance_at = now + _REBALANCE_S
        gained = owned - self._owned
        if gained:
            # Taken over (or first owned): read from the group's committed offsets; records
            # its previous owner read and did not commit come again.
            committed = self.log.committed(self.group)
            for p in gained:
                self._positions[p] = committed[p]
        for p in self._owned - owned:
            self._positions.pop(p, None)
        self._owned = owned
        return owned

    def poll(self, limit: int) -> list[LogRecord]:
        owned = sorted(self._owned) if limit > 0 else []  # as of the last `assignment()`
        n = len(owned)
        for i in range(n):
            p = owned[(self._next + i) % n]
            records = self.log.read(p, self._positions[p], limit)
            if records:
                self._next = (owned.index(p) + 1) % n
                self._positions[p] = records[-1].offset
                return records
        return []

    def commit(self, partition: int, offset: int) -> None:
        self.log.commit(self.group, {partition: offset})

    def seek(self, partition: int, offset: int) -> None:
        if partition in self._owned:
            self._positions[partition] = offset

    def close(self) -> None:
        self._locks.leave()
        self._owned = frozenset()
        self._positions.clear()
