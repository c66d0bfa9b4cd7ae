"""The Parquet lake: every event of the log, partitioned by day, on any fsspec filesystem.

Layout under the lake URL (a local path by default; `s3://`, `gs://`, `memory://` ... work
through fsspec):

    events/day=2026-11-23/part-000000000001-000000050000.parquet

A file's name holds the range of log offsets it was written from, and every row keeps its
`offset`, so the lake itself is the archiver's watermark: re-running the archiver never
writes an event twice. An event the lake already holds within the dedup window (the same
`event_id` of the same user: a client that sent one event twice put it in the log twice) is
not written again; readers also drop such repeats among what they read, keeping the first.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tastemaker.events import Event, idempotency_key
from tastemaker.events.tombstones import has_tombstones, kept_and_erased
from tastemaker.log import EventLog, LogRecord

__all__ = ["EVENT_SCHEMA", "ArchiveResult", "Archiver", "Lake", "LakeError", "events_table"]

log = logging.getLogger(__name__)

EVENT_SCHEMA = pa.schema(
    [
        ("offset", pa.int64()),
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("type", pa.string()),
        ("ts", pa.float64()),
        ("session_id", pa.string()),
        ("value", pa.float64()),
        ("context", pa.string()),  # the event's context as JSON ("" when empty)
    ]
)
_PART = re.compile(r"part-(\d{12})-(\d{12})\.parquet$")
_DAY = re.compile(r"day=(\d{4}-\d{2}-\d{2})$")
_EMPTY_CONTEXT = b"{}"


class LakeError(RuntimeError):
    """The lake could not be read or written; the message names the path."""


def day_of(ts: float) -> str:
    """The UTC day partition of an event time, `YYYY-MM-DD`."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def events_table(records: Sequence[LogRecord]) -> pa.Table:
    """Log records as one Arrow table in `EVENT_SCHEMA`."""
    enc = msgspec.json.Encoder()
    ev = [r.event for r in records]
    contexts = [enc.encode(e.context) for e in ev]
    return pa.table(
        {
            "offset": pa.array([r.offset for r in records], pa.int64()),
            "event_id": [e.event_id for e in ev],
            "user_id": [e.user_id for e in ev],
            "item_id": [e.item_id for e in ev],
            "type": [str(e.type) for e in ev],
            "ts": pa.array([e.ts for e in ev], pa.float64()),
            "session_id": pa.array([e.session_id for e in ev], pa.string()),
            "value": pa.array([e.value for e in ev], pa.float64()),
            "context": ["" if c == _EMPTY_CONTEXT else c.decode() for c in contexts],
        },
        schema=EVENT_SCHEMA,
    )


@dataclass(frozen=True)
class LakeFile:
    path: str
    day: str
    first: int
    last: int


class Lake:
    """Events in Parquet at an fsspec URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        fs, root = fsspec.core.url_to_fs(url)
        self.fs: Any = fs
        self.root = root.rstrip("/")
        self.events_dir = f"{self.root}/events"

    # -- listing --------------------------------------------------------------------------

    def days(self) -> list[str]:
        if not self.fs.exists(self.events_dir):
            return []
        out = []
        for p in self.fs.ls(self.events_dir, detail=False):
            m = _DAY.search(p.rstrip("/"))
            if m:
                out.append(m.group(1))
        return sorted(out)

    def files(self, day: str | None = None) -> list[LakeFile]:
        """Data files, oldest offsets first (temporary files of a writer are not listed)."""
        out = []
        for d in [day] if day is not None else self.days():
            directory = f"{self.events_dir}/day={d}"
            if not self.fs.exists(directory):
                continue
            for p in self.fs.ls(directory, detail=False):
                m = _PART.search(p)
                if m:
                    out.append(LakeFile(p, d, int(m.group(1)), int(m.group(2))))
        return sorted(out, key=lambda f: (f.first, f.last, f.day))

    def watermark(self) -> int:
        """The newest log offset the lake holds (0 when empty)."""
        return max((f.last for f in self.files()), default=0)

    # -- writing --------------------------------------------------------------------------

    def write_file(self, table: pa.Table, directory: str, name: str) -> str:
        """Write one Parquet file atomically: a temporary name, then a rename (a reader never
        sees a half-written file; on object stores the upload itself is atomic)."""
        self.fs.makedirs(directory, exist_ok=True)
        final = f"{directory}/{name}"
        tmp = f"{directory}/.tmp-{uuid.uuid4().hex}.parquet"
        with self.fs.open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
        self.fs.mv(tmp, final)
        return final

    def _write(self, table: pa.Table, day: str, first: int, last: int) -> str:
        return self.write_file(
            table, f"{self.events_dir}/day={day}", f"part-{first:012d}-{last:012d}.parquet"
        )

    def append(
        self, records: Sequence[LogRecord], first: int | None = None, last: int | None = None
    ) -> list[str]:
        """Write one batch of log records, one file per day they span; the files are named
        by the batch's offsets `first..last` (default: the records' own)."""
        if not records:
            return []
        table = events_table(records)
        first = records[0].offset if first is None else first
        last = records[-1].offset if last is None else last
        days = np.array([day_of(r.event.ts) for r in records])
        written = []
        for d in np.unique(days).tolist():
            part = table.filter(pa.array(days == d))
            written.append(self._write(part, str(d), first, last))
        return written

    def event_keys(self, day: str) -> set[str]:
        """The idempotency keys (user and event id) of the events stored under one day (only
        those two columns are read)."""
        out: set[str] = set()
        for f in self.files(day):
            with self.fs.open(f.path, "rb") as fh:
                t = pq.read_table(fh, columns=["user_id", "event_id"])
            users, ids = t["user_id"].to_pylist(), t["event_id"].to_pylist()
            out.update(map(idempotency_key, users, ids))
        return out

    def remove_after(self, offset: int) -> int:
        """Delete files holding offsets after `offset` (left by a writer that died mid-batch);
        returns how many were removed."""
        doomed = [f for f in self.files() if f.last > offset]
        for f in doomed:
            self.fs.rm(f.path)
        return len(doomed)

    def compact(self, min_files: int = 8) -> int:
        """Merge each day with at least `min_files` files into one, sorted by offset. The
        merged file is written before the small ones are removed; files whose offsets another
        file covers (a compaction that died before removing) are removed too. Returns the
        number of files removed."""
        removed = 0
        for day in self.days():
            files = self.files(day)
            covered = [
                f
                for f in files
                if any(g is not f and g.first <= f.first and f.last <= g.last for g in files)
            ]
            for f in covered:
                self.fs.rm(f.path)
                removed += 1
            files = [f for f in files if f not in covered]
            if len(files) < min_files:
                continue
            table = self._read_files([f.path for f in files])
            table = table.sort_by([("offset", "ascending")])
            self._write(table, day, min(f.first for f in files), max(f.last for f in files))
            for f in files:
                self.fs.rm(f.path)
                removed += 1
        return removed

    def expire(self, retention_days: int, now: float) -> list[str]:
        """Remove day partitions older than `retention_days` before `now` (0: none)."""
        if retention_days <= 0:
            return []
        cutoff = day_of(now - retention_days * 86400.0)
        gone = [d for d in self.days() if d < cutoff]
        for d in gone:
            self.fs.rm(f"{self.events_dir}/day={d}", recursive=True)
        return gone

    def delete_users(self, user_ids: Iterable[str]) -> int:
        """Erasure: rewrite every file holding one of the users' events without them.
        Returns the number of events removed."""
        users = pa.array(sorted(set(user_ids)), pa.string())
        removed = 0
        for f in self.files():
            table = self._read_files([f.path])
            keep = pc.invert(pc.is_in(table.column("user_id"), value_set=users))
            # An empty file (all its rows erased before) sums to null.
            n = table.num_rows - (pc.sum(keep.cast(pa.int64())).as_py() or 0)
            if n:
                self._write(table.filter(keep), f.day, f.first, f.last)
                removed += n
        return removed

    # -- reading --------------------------------------------------------------------------

    def _read_files(self, paths: Sequence[str]) -> pa.Table:
        if not paths:
            return EVENT_SCHEMA.empty_table()
        tables = []
        for p in paths:
            try:
                with self.fs.open(p, "rb") as f:
                    tables.append(pq.read_table(f, schema=EVENT_SCHEMA))
            except (OSError, pa.ArrowInvalid) as exc:
                raise LakeError(f"cannot read lake file {p}: {exc}") from exc
        return pa.concat_tables(tables)

    def read(self, after: int = 0, until: int | None = None) -> pa.Table:
        """Events with `after < offset <= until`, each (user, `event_id`) once, sorted by event
        time (then offset). Only files that can hold such offsets are opened: the watermark
        makes batch jobs incremental."""
        files = [f for f in self.files() if f.last > after and (until is None or f.first <= until)]
        table = self._read_files([f.path for f in files])
        mask = pc.greater(table.column("offset"), after)
        if until is not None:
            mask = pc.and_(mask, pc.less_equal(table.column("offset"), until))
        table = table.filter(mask).sort_by([("offset", "ascending")])
        # First occurrence of each (user, event id) wins (the log order).
        keys = np.array(
            list(
                map(
                    idempotency_key,
                    table.column("user_id").to_pylist(),
                    table.column("event_id").to_pylist(),
                )
            ),
            dtype=object,
        )
        _, first = np.unique(keys, return_index=True)
        table = table.take(pa.array(np.sort(first)))
        return table.sort_by([("ts", "ascending"), ("offset", "ascending")])

    def events(self, after: int = 0, until: int | None = None) -> list[Event]:
        """The same rows as `read`, as Events."""
        return table_to_events(self.read(after, until))


def table_to_events(table: pa.Table) -> list[Event]:
    """Rows in `EVENT_SCHEMA` back to Events."""
    dec = msgspec.json.Decoder(dict[str, Any])
    cols = {name: table.column(name).to_pylist() for name in EVENT_SCHEMA.names}
    out = []
    for i in range(table.num_rows):
        fields: dict[str, Any] = {
            "event_id": cols["event_id"][i],
            "user_id": cols["user_id"][i],
            "item_id": cols["item_id"][i],
            "type": cols["type"][i],
            "ts": cols["ts"][i],
        }
        if cols["session_id"][i] is not None:
            fields["session_id"] = cols["session_id"][i]
        if cols["value"][i] is not None:
            fields["value"] = cols["value"][i]
        if cols["context"][i]:
            fields["context"] = dec.decode(cols["context"][i])
        out.append(msgspec.convert(fields, Event))
    return out


@dataclass(frozen=True)
class ArchiveResult:
    events: int
    files: int
    watermark: int
    removed_partial: int
    duplicates: int = 0


class _ArchiveState(msgspec.Struct):
    """Where the archiver is: the newest lake offset it wrote and, for every log partition,
    the log offset that lake offset corresponds to. Written after each batch's files."""

    seq: int
    positions: dict[int, int]


class Archiver:
    """Copies the event log into the lake as reader `group` of the log.

    Lake offsets (the `offset` column, the file names, the batch jobs' watermarks) are one
    sequence over the whole log: a one-partition log's own offsets, otherwise numbers the
    archiver assigns as it reads the partitions. After each batch's files it writes its state
    (`<lake>/_archiver/<group>.json`: the lake offset and every partition's log position)
    atomically, then commits the positions to the log (for lag). A run resumes from that
    state; files past its lake offset (a run that died mid-batch) are removed and rewritten."""

    def __init__(
        self,
        log_: EventLog,
        lake: Lake,
        group: str = "archiver",
        dedup_window_s: float = 7 * 86400.0,
    ) -> None:
        self.log = log_
        self.lake = lake
        self.group = group
        self.dedup_window_s = dedup_window_s

    def _fresh(self, records: list[LogRecord], known: dict[str, set[str]]) -> list[LogRecord]:
        """Records whose event id the lake does not hold yet within the dedup window (a
        client that sent an event twice put it in the log twice), nor earlier in the batch."""
        lo = min(r.event.ts for r in records) - self.dedup_window_s
        hi = max(r.event.ts for r in records)
        day = dt.datetime.fromtimestamp(lo, dt.UTC).date()
        last = dt.datetime.fromtimestamp(hi, dt.UTC).date()
        while day <= last:
            key = day.isoformat()
            if key not in known:
                known[key] = self.lake.event_keys(key)
            day += dt.timedelta(days=1)
        seen = set().union(*known.values())
        out = []
        for r in records:
            ikey = idempotency_key(r.event.user_id, r.event.event_id)
            if ikey not in seen:
                seen.add(ikey)
                out.append(r)
                known.setdefault(day_of(r.event.ts), set()).add(ikey)
        return out

    def _erase(self, records: list[LogRecord]) -> list[LogRecord]:
        """Erasure tombstones: the users' rows are deleted from the lake, and their records
        before the tombstone (in flight when they were erased) are not written."""
        keep, users = kept_and_erased([r.event for r in records])
        self.lake.delete_users(users)
        return [r for r, k in zip(records, keep, strict=True) if k]

    def _state_path(self) -> str:
        return f"{self.lake.root}/_archiver/{self.group}.json"

    def _load_state(self) -> _ArchiveState:
        path = self._state_path()
        if self.lake.fs.exists(path):
            with self.lake.fs.open(path, "rb") as f:
                return msgspec.json.decode(f.read(), type=_ArchiveState)
        # No state yet: a new lake, or one written before the state existed (a one-partition
        # log, lake offsets = log offsets, the position in the log's committed offsets).
        positions = self.log.committed(self.group)
        return _ArchiveState(positions[0] if self.log.partitions == 1 else 0, positions)

    def _save_state(self, state: _ArchiveState) -> None:
        fs, path = self.lake.fs, self._state_path()
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open(tmp, "wb") as f:
            f.write(msgspec.json.encode(state))
        fs.mv(tmp, path)

    def run_once(self, batch_size: int = 50_000) -> ArchiveResult:
        """Archive everything the log holds now, in batches of `batch_size`."""
        # A file past the saved lake offset means a previous run died between the files of
        # one batch: drop them and write the batch again. Otherwise resume after the saved
        # positions (to rebuild a lake from the log, start with a new `group`).
        state = self._load_state()
        removed = self.lake.remove_after(state.seq)
        events = files = duplicates = 0
        known: dict[str, set[str]] = {}
        one = self.log.partitions == 1
        busy = list(range(self.log.partitions))
        while busy:
            for p in list(busy):
                records = self.log.read(p, state.positions.get(p, 0), batch_size)
                if not records:
                    busy.remove(p)
                    continue
                end = records[-1].offset
                if not one:  # number the records in the lake's own sequence
                    records = [
                        LogRecord(state.seq + i + 1, r.event, p) for i, r in enumerate(records)
                    ]
                fresh = self._fresh(records, known)
                if has_tombstones([r.event for r in fresh]):
                    fresh = self._erase(fresh)
                # The file names keep the batch's whole offset range, dropped duplicates or not.
                files += len(self.lake.append(fresh, records[0].offset, records[-1].offset))
                events += len(fresh)
                duplicates += len(records) - len(fresh)
                state.seq = records[-1].offset
                state.positions[p] = end
                self._save_state(state)
                self.log.commit(self.group, {p: end})
        return ArchiveResult(events, files, state.seq, removed, duplicates)
