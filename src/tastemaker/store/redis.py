"""Online store on Redis (>= 6.2) or Valkey, standalone or Cluster.

Layout: one key per (row, family), `<prefix>{<row>}<family id>`, holding all the family's
cells, with the family's TTL on the key (refreshed by every write, as on every backend). The
`{row}` hash tag keeps a row's families in one cluster slot, so a user's read is one MGET and
an erasure one DEL even on a cluster.

Compactness: family and column names are replaced by small integer ids kept in one schema
hash (`<prefix>tm:schema`), assigned once per deployment by a Lua script and cached by every
client. A family value is a byte string:

    version (1) | base ts (float64) | per cell: id (1 or 3 bytes) | ts flag (1, or 9 bytes when
    the cell's ts differs from the base) | length (1 or 5 bytes) | msgpack value

Floats exactly representable in float32 are stored as msgpack float32 (5 bytes, not 9).

Newer wins, atomically: writes go through `lua/merge.lua`, which merges the incoming cells
into the stored ones column by column on the server; no read-modify-write race between
writers. Reads decode in Python. Every call has a socket timeout and raises
`StoreTimeoutError` instead of hanging.
"""

from __future__ import annotations

import math
import struct
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar

import msgspec
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from tastemaker.store.base import Cell, FamilySpec, Mutation, RowData, StoreError

__all__ = ["RedisStore", "StoreTimeoutError"]

_VERSION = 1
_HEADER = struct.Struct(">Bd")
_F64 = struct.Struct(">d")
_F32 = struct.Struct(">f")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_T = TypeVar("_T")
_KEYS_PER_SCRIPT = 256  # bounded script calls keep the server responsive to other clients


class StoreTimeoutError(StoreError):
    """A Redis call did not answer within the configured timeout."""


def _lua(name: str) -> str:
    return (resources.files("tastemaker.store") / "lua" / name).read_text()


_encode_msgpack = msgspec.msgpack.Encoder().encode
_decode_msgpack = msgspec.msgpack.Decoder().decode


def _encode_value(value: Any) -> bytes:
    if type(value) is float and math.isfinite(value):
        try:
            packed = _F32.pack(value)
        except OverflowError:
            packed = b""
        if packed and _F32.unpack(packed)[0] == value:
            return b"\xca" + packed  # msgpack float32
    return _encode_msgpack(value)


def _encode_family(cells: Mapping[int, Cell]) -> bytes:
    base = max(c.ts for c in cells.values())
    out = [_HEADER.pack(_VERSION, base)]
    for cid in sorted(cells):
        cell = cells[cid]
        value = _encode_value(cell.value)
        out.append(bytes((cid,)) if cid < 255 else b"\xff" + _U16.pack(cid))
        out.append(b"\x00" if cell.ts == base else b"\x01" + _F64.pack(cell.ts))
        out.append(bytes((len(value),)) if len(value) < 255 else b"\xff" + _U32.pack(len(value)))
        out.append(value)
    return b"".join(out)


def _decode_family(blob: bytes) -> list[tuple[int, float, Any]]:
    """(column id, ts, value) of each cell."""
    version, base = _HEADER.unpack_from(blob)
    if version != _VERSION:
        raise StoreError(f"unknown family encoding version {version}")
    out = []
    pos, end = 9, len(blob)
    while pos < end:
        cid = blob[pos]
        pos += 1
        if cid == 255:
            (cid,) = _U16.unpack_from(blob, pos)
            pos += 2
        ts = base
        if blob[pos] == 1:
            (ts,) = _F64.unpack_from(blob, pos + 1)
            pos += 8
        pos += 1
        size = blob[pos]
        pos += 1
        if size == 255:
            (size,) = _U32.unpack_from(blob, pos)
            pos += 4
        out.append((cid, ts, _decode_msgpack(blob[pos : pos + size])))
        pos += size
    return out


class _Schema:
    """Name <-> id of families and columns, shared by all clients through one hash."""

    def __init__(self, client: Any, key: str) -> None:
        self._client = client
        self._key = key
        self._assign = client.register_script(_lua("assign_id.lua"))
        self._ids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._lock = threading.Lock()
        self.reload()

    def reload(self) -> None:
        raw = self._client.hgetall(self._key)
        with self._lock:
            for raw_name, cid in raw.items():
                name = raw_name.decode()
                if name.startswith("c:"):
                    self._ids[name] = int(cid)
                    self._names[int(cid)] = name[2:]
                elif name.startswith("f:"):
                    self._ids[name] = int(cid)

    def id(self, kind: str, name: str) -> int:
        key = f"{kind}:{name}"
        cid = self._ids.get(key)
        if cid is None:
            cid = int(self._assign(keys=[self._key], args=[key]))
            with self._lock:
                self._ids[key] = cid
                if kind == "c":
                    self._names[cid] = name
        return cid

    def column(self, cid: int) -> str:
        name = self._names.get(cid)
        if name is None:
            self.reload()  # a column another process added since we loaded the schema
            name = self._names.get(cid)
            if name is None:
                raise StoreError(f"column id {cid} is not in the schema hash {self._key}")
        return name


class RedisStore:
    """OnlineStore on a Redis/Valkey server or cluster. Thread-safe (a connection pool)."""

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        families: Sequence[FamilySpec],
        *,
        prefix: str = "",
    ) -> None:
        self._client: Any = client
        self._cluster = isinstance(client, RedisCluster)
        self._families = {f.name: f for f in families}
        self._prefix = prefix
        try:
            self._schema = _Schema(client, f"{prefix}tm:schema")
            self._merge = client.register_script(_lua("merge.lua"))
            self._family_tag = {name: str(self._schema.id("f", name)) for name in self._families}
        except redis.RedisError as exc:
            raise _wrap(exc) from exc

    @classmethod
    def from_url(
        cls,
        url: str,
        families: Sequence[FamilySpec],
        *,
        timeout_s: float = 0.25,
        max_connections: int = 64,
        prefix: str = "",
    ) -> RedisStore:
        """`redis://host:port/db` or `redis+cluster://host:port` (any node of the cluster)."""
        opts: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "max_connections": max_connections,
        }
        try:
            if url.startswith("redis+cluster://"):
                client: Any = RedisCluster.from_url(
                    "redis://" + url[len("redis+cluster://") :], **opts
                )
            else:
                client = redis.Redis.from_url(url, **opts)
        except redis.RedisError as exc:
            raise _wrap(exc) from exc
        return cls(client, families, prefix=prefix)

    @property
    def families(self) -> Mapping[str, FamilySpec]:
        return self._families

    def _key(self, row: str, family: str) -> str:
        tag = self._family_tag.get(family)
        if tag is None:
            raise StoreError(f"unknown family {family!r}; declared: {sorted(self._families)}")
        return f"{self._prefix}{{{row}}}{tag}"

    def get(self, rows: Sequence[str], families: Iterable[str]) -> dict[str, RowData]:
        fams = list(families)
        keys = [self._key(row, fam) for row in rows for fam in fams]
        if not keys:
            return {}
        try:
            values = self._retry_moved(lambda: self._mget(keys, len(fams)))
        except redis.RedisError as exc:
            raise _wrap(exc) from exc
        out: dict[str, RowData] = {}
        column = self._schema.column
        i = 0
        for row in rows:
            for fam in fams:
                blob = values[i]
                i += 1
                if blob is None:
                    continue
                out.setdefault(row, {})[fam] = {
                    column(cid): Cell(ts, value) for cid, ts, value in _decode_family(blob)
                }
        return out

    def write(self, mutations: Sequence[Mutation]) -> None:
        if not mutations:
            return
        # Merge mutations of one (row, family) first: one key, one blob, one script argument.
        merged: dict[str, tuple[int, dict[int, Cell]]] = {}
        for m in mutations:
            key = self._key(m.row, m.family)
            ttl = self._families[m.family].ttl_s
            ttl_ms = 0 if ttl is None else max(1, int(ttl * 1000))
            cells = merged.setdefault(key, (ttl_ms, {}))[1]
            for col, cell in m.cells.items():
                cid = self._schema.id("c", col)
                old = cells.get(cid)
                if old is None or cell.ts >= old.ts:
                    cells[cid] = cell
        blobs = {key: (ttl_ms, _encode_family(cells)) for key, (ttl_ms, cells) in merged.items()}
        try:
            self._retry_moved(lambda: self._run_merge(blobs))
        except redis.RedisError as exc:
            raise _wrap(exc) from exc

    # -- routing ---------------------------------------------------------------------------
    # redis-py's cluster pipeline refuses scripts, so on a cluster we route ourselves: keys
    # grouped by the node that owns their slot, one plain pipeline per node. A slot that
    # moved (MOVED/ASK during resharding) refreshes the slot map and the call runs again;
    # the merge is idempotent, so running it twice is harmless.

    def _by_node(self, keys: Iterable[str]) -> dict[int, tuple[Any, dict[int, list[str]]]]:
        """{id(node client): (client, {slot: keys})}; one group for a standalone server."""
        out: dict[int, tuple[Any, dict[int, list[str]]]] = {}
        for key in keys:
            if self._cluster:
                node = self._client.get_node_from_key(key)
                client = self._client.get_redis_connection(node)
                slot = key_slot(key.encode())
            else:
                client, slot = self._client, 0
            out.setdefault(id(client), (client, defaultdict(list)))[1][slot].append(key)
        return out

    def _mget(self, keys: list[str], per_row: int) -> list[bytes | None]:
        if not self._cluster:
            return list(self._client.mget(keys))
        found: dict[str, bytes | None] = {}
        rows = [keys[i : i + per_row] for i in range(0, len(keys), per_row)]
        for client, slots in self._by_node(r[0] for r in rows).values():
            pipe = client.pipeline(transaction=False)
            wanted = [r for r in rows if r[0] in {k for ks in slots.values() for k in ks}]
            for row_keys in wanted:  # a row's keys share its slot: one MGET each
                pipe.mget(row_keys)
            for row_keys, values in zip(wanted, pipe.execute(), strict=True):
                found.update(zip(row_keys, values, strict=True))
        return [found[k] for k in keys]

    def _run_merge(self, blobs: Mapping[str, tuple[int, bytes]]) -> None:
        for client, slots in self._by_node(blobs).values():
            pipe = client.pipeline(transaction=False)
            for keys in slots.values():
                for i in range(0, len(keys), _KEYS_PER_SCRIPT):
                    chunk = keys[i : i + _KEYS_PER_SCRIPT]
                    args: list[Any] = []
                    for key in chunk:
                        args.extend(blobs[key])
                    self._merge(keys=chunk, args=args, client=pipe)
            pipe.execute()

    def _retry_moved(self, call: Callable[[], _T]) -> _T:
        try:
            return call()
        except (redis.exceptions.MovedError, redis.exceptions.AskError):
            if not self._cluster:
                raise
            self._client.nodes_manager.initialize()
            return call()

    def delete_rows(self, rows: Sequence[str]) -> None:
        keys = {self._key(row, next(iter(self._families))): row for row in rows}

        def delete() -> None:
            for client, slots in self._by_node(keys).values():
                pipe = client.pipeline(transaction=False)
                for first_keys in slots.values():
                    for k in first_keys:  # all families of a row share its slot: one DEL
                        pipe.delete(*(self._key(keys[k], fam) for fam in self._families))
                pipe.execute()

        try:
            self._retry_moved(delete)
        except redis.RedisError as exc:
            raise _wrap(exc) from exc

    def close(self) -> None:
        self._client.close()


def _wrap(exc: redis.RedisError) -> StoreError:
    if isinstance(exc, redis.TimeoutError):
        return StoreTimeoutError(f"redis call timed out: {exc}")
    return StoreError(f"redis call failed: {exc}")
