"""Embedded online store on LMDB.

Why LMDB: a memory-mapped B+tree that many processes can read at once without locks while
one writes, with atomic transactions and no server. Reads are a page-cache lookup, which is
what keeps a 50-feature fetch far under 0.1 ms.

Layout: sub-database `cells` has one key per (row, family), `row \\x1f family`, so a row's
families are contiguous (erasure is one range delete). The value is msgpack `[expire_at,
{column: [ts, value]}]`; `expire_at` is 0 for families without a TTL. Sub-database `seen`
maps idempotency keys (event ids) to their expiry, written in the same transaction as the
cells. Expired entries are filtered on read and removed by `sweep()`.

Durability (`fsync`):
- "always" (default): every write transaction is fsynced before `write` returns.
- "never": commits are left to the OS to write back (and to `close`, which syncs). A process
  crash loses nothing (the pages are in the kernel's cache); a power loss or kernel crash may
  undo the last commits, whole: each transaction stays atomic, so the state and the log
  position the stream processor writes with it roll back together, and the processor reads
  those events again from its log (which must then keep them: `fsync=always` on the log).
  The per-commit fsync is a large share of a stream drain's store writes (docs/store.md).
"""

from __future__ import annotations

import itertools
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import lmdb
import msgspec

from tastemaker.store.base import (
    Cell,
    FamilySpec,
    Mutation,
    RowData,
    StoreError,
    columns_to_mutations,
)

__all__ = ["EmbeddedStore", "FsyncPolicy"]

_SEP = b"\x1f"
_F64 = struct.Struct("<d")


class _Record(msgspec.Struct, array_like=True):
    expire_at: float
    cells: dict[str, Cell]


class _RawCell(msgspec.Struct, array_like=True, frozen=True):
    """A stored cell as the write's merge sees it: the value left as its msgpack bytes, which
    the merge never looks at and the encoder copies back as they are."""

    ts: float
    value: msgspec.Raw


class _RawRecord(msgspec.Struct, array_like=True):
    expire_at: float
    cells: dict[str, _RawCell]


FsyncPolicy = Literal["always", "never"]

# One LMDB environment per file per process: LMDB forbids opening the same file twice in a
# process, so stores on the same path share it (and must agree on its fsync policy).
_ENVS: dict[Path, tuple[lmdb.Environment, int, FsyncPolicy]] = {}
_ENVS_LOCK = threading.Lock()


def _key(row: str, family: str) -> bytes:
    return row.encode() + _SEP + family.encode()


class EmbeddedStore:
    """OnlineStore in `<directory>/store.lmdb`, shared safely by threads and processes."""

    def __init__(
        self,
        directory: str | Path,
        families: Sequence[FamilySpec],
        *,
        map_size: int = 8 << 30,
        seen_ttl_s: float = 7 * 86400.0,
        clock: Callable[[], float] = time.time,
        readahead: bool = True,
        fsync: FsyncPolicy = "always",
    ) -> None:
        if fsync not in ("always", "never"):
            raise ValueError(f"fsync must be 'always' or 'never', not {fsync!r}")
        path = Path(directory).resolve()
        path.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._families = {f.name: f for f in families}
        self._clock = clock
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(_Record).decode
        # The write's merge and the sweep only compare times: the stored values stay raw
        # msgpack, which decodes in about half the time of whole Python objects.
        self._decode_raw = msgspec.msgpack.Decoder(_RawRecord).decode
        with _ENVS_LOCK:
            env, refs, policy = _ENVS.get(path, (None, 0, fsync))
            if policy != fsync:
                raise ValueError(
                    f"the embedded store at {path} is already open in this process with "
                    f"fsync={policy!r}; it cannot also be opened with fsync={fsync!r}"
                )
            if env is None:
                # writemap=False keeps a stray pointer from corrupting the file, and with
                # `sync=False` keeps each commit atomic (LMDB's ACI without the D). The
                # kernel's readahead stays on unless the file is larger than the RAM it may
                # use (then it evicts pages other reads need): with it off, the first random
                # reads of a store just loaded take many more major page faults.
                env = lmdb.open(
                    str(path / "store.lmdb"),
                    map_size=map_size,
                    subdir=False,
                    max_dbs=2,
                    lock=True,
                    readahead=readahead,
                    sync=fsync == "always",
                    meminit=False,
                    max_readers=512,
                )
            _ENVS[path] = (env, refs + 1, fsync)
        self._env = env
        self._cells = env.open_db(b"cells")
        self._seen = env.open_db(b"seen")
        self._seen_ttl_s = seen_ttl_s
        self._closed = False

    @property
    def families(self) -> Mapping[str, FamilySpec]:
        return self._families

    def get(self, rows: Sequence[str], families: Iterable[str]) -> dict[str, RowData]:
        fams = list(families)
        for f in fams:
            self._check_family(f)
        now = self._clock()
        decode = self._decode
        out: dict[str, RowData] = {}
        with self._env.begin(db=self._cells, buffers=True) as txn:
            get = txn.get
            for row in rows:
                prefix = row.encode() + _SEP
                data: RowData | None = None
                for fam in fams:
                    raw = get(prefix + fam.encode())
                    if raw is None:
                        continue
                    rec = decode(raw)
                    if rec.expire_at and rec.expire_at <= now:
                        continue
                    if data is None:
                        data = out[row] = {}
                    data[fam] = rec.cells
        return out

    def _plan(
        self, mutations: Sequence[Mutation], plans: dict[str, tuple[bytes, float]]
    ) -> tuple[list[tuple[bytes, float]], dict[int, bytes]]:
        """Each mutation's (key, expiry), and the encoded records of the whole families
        (by index) that need no merge."""
        encode = self._encode
        keys: list[tuple[bytes, float]] = []
        ready: dict[int, bytes] = {}
        met: set[bytes] = set()  # a key met twice in one write is merged
        for i, m in enumerate(mutations):
            plan = plans.get(m.family)
            if plan is None:  # raised before the transaction: nothing is written
                self._check_family(m.family)
            suffix, expire_at = cast("tuple[bytes, float]", plan)
            key = m.row.encode() + suffix
            keys.append((key, expire_at))
            if m.whole and key not in met:
                # A `_Record`'s bytes: msgpack `[expire_at, {column: [ts, value]}]`.
                ready[i] = encode((expire_at, m.cells))
            met.add(key)
        return keys, ready

    def write(self, mutations: Sequence[Mutation], *, seen: Sequence[str] = ()) -> None:
        if not mutations and not seen:
            return
        now = self._clock()
        # Per family, once a write: its key suffix and the expiry its records get.
        plans = {
            name: (_SEP + name.encode(), now + spec.ttl_s if spec.ttl_s is not None else 0.0)
            for name, spec in self._families.items()
        }
        decode, encode = self._decode_raw, self._encode
        # Each mutation's key and expiry; a whole family is encoded here, before the write
        # lock is taken: merging it would give the same cells (reading and merging a drain's
        # profile and session rows is a large share of its cell writes), unless an earlier mutation
        # of this write has its key. LMDB has one writer at a time across processes, so
        # encoding under the lock made stream processes sharing the store wait for each other.
        keys, ready = self._plan(mutations, plans)
        try:
            with self._env.begin(db=self._cells, write=True) as txn:
                # `putmulti`: one call for all the keys, its loop in C (about half the time
                # of a cursor's `put` per key).
                if seen:
                    expiry = _F64.pack(now + self._seen_ttl_s)
                    txn.cursor(db=self._seen).putmulti(
                        zip(map(str.encode, seen), itertools.repeat(expiry))
                    )
                # The whole families first: any other mutation of one of their keys comes
                # after it in `mutations`, and is merged over it below.
                if ready:
                    txn.cursor().putmulti([(keys[i][0], blob) for i, blob in ready.items()])
                get, put = txn.get, txn.put
                for i, (m, (key, expire_at)) in enumerate(zip(mutations, keys, strict=True)):
                    if i in ready:
                        continue
                    raw = get(key)
                    cells: Mapping[str, _RawCell | Cell]
                    if raw is None:
                        cells = m.cells
                    else:
                        rec = decode(raw)
                        expired = rec.expire_at and rec.expire_at <= now
                        merged = {} if expired else cast("dict[str, _RawCell | Cell]", rec.cells)
                        for col, cell in m.cells.items():
                            old = merged.get(col)
                            if old is None or cell.ts >= old.ts:
                                merged[col] = cell
                        cells = merged
                    put(key, encode((expire_at, cells)))
        except lmdb.Error as exc:
            raise StoreError(f"embedded store write failed: {exc}") from exc

    def write_columns(
        self, family: str, rows: Sequence[str], columns: Mapping[str, Any], ts: float
    ) -> None:
        self.write(columns_to_mutations(family, rows, columns, ts))

    def seen(self, keys: Sequence[str]) -> set[str]:
        now = self._clock()
        found: set[str] = set()
        with self._env.begin(db=self._seen, buffers=True) as txn:
            for key in keys:
                raw = txn.get(key.encode())
                if raw is not None and _F64.unpack(raw)[0] > now:
                    found.add(key)
        return found

    def delete_rows(self, rows: Sequence[str]) -> None:
        with self._env.begin(db=self._cells, write=True) as txn:
            cursor = txn.cursor()
            for row in rows:
                prefix = row.encode() + _SEP
                if not cursor.set_range(prefix):
                    continue
                while cursor.key().startswith(prefix):
                    if not cursor.delete():
                        break

    def forget(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        try:
            with self._env.begin(db=self._seen, write=True) as txn:
                for key in keys:
                    txn.delete(key.encode())
        except lmdb.Error as exc:
            raise StoreError(f"embedded store forget failed: {exc}") from exc

    def sweep(self) -> int:
        """Delete expired families and idempotency keys; returns how many families. Reads never
        need it, it frees space."""
        now = self._clock()
        with self._env.begin(db=self._cells, write=True) as txn:
            expired = [
                bytes(key)
                for key, raw in txn.cursor()
                if (rec := self._decode_raw(raw)).expire_at and rec.expire_at <= now
            ]
            for key in expired:
                txn.delete(key)
            old_seen = [bytes(k) for k, v in txn.cursor(db=self._seen) if _F64.unpack(v)[0] <= now]
            for key in old_seen:
                txn.delete(key, db=self._seen)
        return len(expired)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with _ENVS_LOCK:
            env, refs, policy = _ENVS[self._path]
            if refs <= 1:
                del _ENVS[self._path]
                if policy == "never":
                    env.sync(True)  # a clean shutdown leaves nothing to the OS
                env.close()
            else:
                _ENVS[self._path] = (env, refs - 1, policy)

    def _check_family(self, family: str) -> None:
        if family not in self._families:
            raise StoreError(f"unknown family {family!r}; declared: {sorted(self._families)}")
