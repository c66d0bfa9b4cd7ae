"""Online store on Redis (>= 6.2) or Valkey, standalone or Cluster.

Layout: one key per (row, family), `<prefix>{<row>}<family id>`, holding all the family's
cells, with the family's TTL on the key (refreshed by every write, as on every backend). The
`{row}` hash tag keeps a row's families in one cluster slot, so a user's read is one MGET and
an erasure one DEL even on a cluster.

Compactness: family and column names are replaced by small integer ids kept in one schema
hash (`<prefix>tm:schema`), assigned once per deployment by a Lua script and cached by every
client; a family value is the compact binary encoding of `store/codec.py` (fixed-width
header, ids, sizes, msgpack values with float32 where exact), which the merge script splices
without decoding values.

Newer wins, atomically: writes go through `lua/merge.lua`, which merges the incoming cells
into the stored ones column by column on the server; no read-modify-write race between
writers. Reads decode in Python. Every call has a socket timeout and raises
`StoreTimeoutError` instead of hanging.
"""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from tastemaker.redisio import SentCommands, pack
from tastemaker.store.base import (
    Cell,
    FamilySpec,
    Mutation,
    PreparedWrite,
    RowData,
    StoreError,
    columns_to_mutations,
)
from tastemaker.store.codec import decode_family, encode_columns, encode_families, id_bytes
from tastemaker.store.redis_writes import Deferred, Done, StoreTimeoutError, Transaction, wrap

__all__ = ["RedisStore", "StoreTimeoutError"]

_KEYS_PER_SCRIPT = 256  # bounded script calls keep the server responsive to other clients
_SEEN_PER_SCRIPT = 1000  # idempotency keys: one SET each, cheaper than a merge
# A plain write (no idempotency keys) of at least two chunks is sent chunk by chunk as it is
# encoded, so the server merges one chunk while the client encodes the next. Smaller chunks
# cost more calls, a write sent whole overlaps nothing (measurements: docs/store.md).
_STREAM_CHUNK_KEYS = 512
_STREAM_MIN_KEYS = 2 * _STREAM_CHUNK_KEYS
_T = TypeVar("_T")


def _lua(name: str) -> str:
    return (resources.files("tastemaker.store") / "lua" / name).read_text()


class _Schema:
    """Name <-> id of families and columns, shared by all clients through one hash."""

    def __init__(self, client: Any, writer: Any, key: str) -> None:
        self._client = client
        self._key = key
        self._assign = writer.register_script(_lua("assign_id.lua"))  # a write: the write pool
        self._ids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._packed: dict[tuple[str, ...], tuple[int, bytes]] = {}
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

    def column_bytes(self, names: tuple[str, ...]) -> tuple[int, bytes]:
        """(id width flag, the ids as bytes) of a family's columns; cached per name tuple, as
        rows of one feature set repeat the same columns."""
        packed = self._packed.get(names)
        if packed is None:
            packed = self._packed[names] = id_bytes([self.id("c", n) for n in names])
        return packed

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
        seen_ttl_s: float = 7 * 86400.0,
        writer: redis.Redis | RedisCluster | None = None,
    ) -> None:
        """`client` serves reads; `writer` (default: the same) the stream's batch writes, which
        may need a longer timeout than a request's read."""
        self._client: Any = client
        self._writer: Any = writer if writer is not None else client
        self._cluster = isinstance(client, RedisCluster)
        self._families = {f.name: f for f in families}
        self._prefix = prefix
        self._local = threading.local()  # each thread's read connection (`_read`)
        self._own: weakref.WeakSet[Any] = weakref.WeakSet()  # all of them, for `close`
        self._seen_ttl_ms = max(1, int(seen_ttl_s * 1000))
        try:
            self._schema = _Schema(client, self._writer, f"{prefix}tm:schema")
            self._merge = self._writer.register_script(_lua("merge.lua"))
            self._mark_seen = self._writer.register_script(_lua("mark_seen.lua"))
            self._set_whole = self._writer.register_script(_lua("set_whole.lua"))
            self._family_tag = {name: str(self._schema.id("f", name)) for name in self._families}
            self._ttl_ms = {
                f.name: 0 if f.ttl_s is None else max(1, int(f.ttl_s * 1000)) for f in families
            }
        except redis.RedisError as exc:
            raise wrap(exc) from exc

    @classmethod
    def from_url(
        cls,
        url: str,
        families: Sequence[FamilySpec],
        *,
        timeout_s: float = 0.25,
        write_timeout_s: float = 10.0,
        max_connections: int = 64,
        prefix: str = "",
        seen_ttl_s: float = 7 * 86400.0,
    ) -> RedisStore:
        """`redis://host:port/db` or `redis+cluster://host:port` (any node of the cluster).

        Reads time out after `timeout_s` (a request's budget); writes, which carry a whole
        microbatch, after `write_timeout_s`. Each has its own connection pool."""

        def connect(timeout: float) -> Any:
            opts: dict[str, Any] = {
                "socket_timeout": timeout,
                "socket_connect_timeout": min(timeout, 1.0),
                "max_connections": max_connections,
            }
            if url.startswith("redis+cluster://"):
                return RedisCluster.from_url("redis://" + url[len("redis+cluster://") :], **opts)
            return redis.Redis.from_url(url, **opts)

        try:
            client, writer = connect(timeout_s), connect(write_timeout_s)
        except redis.RedisError as exc:
            raise wrap(exc) from exc
        return cls(client, families, prefix=prefix, seen_ttl_s=seen_ttl_s, writer=writer)

    @property
    def is_cluster(self) -> bool:
        """A cluster's batch writes are one pipeline per node, not atomic together."""
        return self._cluster

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
            raise wrap(exc) from exc
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
                    column(cid): Cell(ts, value) for cid, ts, value in decode_family(blob)
                }
        return out

    def write(self, mutations: Sequence[Mutation], *, seen: Sequence[str] = ()) -> None:
        if not seen and not self._cluster and len(mutations) >= _STREAM_MIN_KEYS:
            keys, ttls, cells_of, _ = self._unique(mutations)
            if len(keys) >= _STREAM_MIN_KEYS:
                self._write_streamed(keys, ttls, cells_of)
                return
        self.prepare_write(mutations, seen=seen).finish()

    def prepare_write(
        self, mutations: Sequence[Mutation], *, seen: Sequence[str] = ()
    ) -> PreparedWrite:
        """`write` in steps (`PreparedWrites`): the families are encoded now; on a
        standalone server `start` sends the whole MULTI/EXEC on a connection of its own and
        returns, and `finish` reads the server's replies, so the caller works while the
        server applies it. On a cluster `finish` does all of it."""
        if not mutations and not seen:
            return Done()
        keys, ttls, cells_of, whole = self._unique(mutations)
        blobs = dict(zip(keys, zip(ttls, self._encode(cells_of), strict=True), strict=True))
        seen_keys = [self._seen_key(k) for k in seen]
        if self._cluster:
            return Deferred(lambda: self._submit(blobs, seen_keys, whole))
        return Transaction(self, blobs, seen_keys, whole)

    def _transaction(
        self, blobs: Mapping[str, tuple[int, bytes]], seen_keys: list[str], whole: frozenset[str]
    ) -> list[tuple[Any, ...]]:
        """MULTI, the script calls that mark `seen_keys` and merge `blobs` (set those in
        `whole`) as EVALSHA, EXEC."""
        calls = self._script_calls(list(blobs), seen_keys, blobs, whole)
        evalsha = [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls]
        return [("MULTI",), *evalsha, ("EXEC",)]

    def _script_calls(
        self,
        cell_keys: list[str],
        seen_keys: list[str],
        blobs: Mapping[str, tuple[int, bytes]],
        whole: frozenset[str] = frozenset(),
    ) -> list[tuple[Any, list[str], list[Any]]]:
        """(script, keys, args) of the calls that mark `seen_keys`, merge `cell_keys`' blobs
        and set those of them in `whole` (`Mutation.whole`) without a merge, in bounded
        chunks."""
        calls: list[tuple[Any, list[str], list[Any]]] = []
        for i in range(0, len(seen_keys), _SEEN_PER_SCRIPT):
            calls.append(
                (self._mark_seen, seen_keys[i : i + _SEEN_PER_SCRIPT], [self._seen_ttl_ms])
            )
        merged = [k for k in cell_keys if k not in whole] if whole else cell_keys
        as_sent = [k for k in cell_keys if k in whole] if whole else []
        for script, keys in ((self._merge, merged), (self._set_whole, as_sent)):
            for i in range(0, len(keys), _KEYS_PER_SCRIPT):
                chunk = keys[i : i + _KEYS_PER_SCRIPT]
                calls.append((script, chunk, [part for key in chunk for part in blobs[key]]))
        return calls

    def _unique(
        self, mutations: Sequence[Mutation]
    ) -> tuple[list[str], list[int], list[Mapping[str, Cell]], frozenset[str]]:
        """Keys, TTLs and cells of the mutations, one entry per (row, family), and the keys
        to set as sent (`Mutation.whole`, the only mutation of its key in the write: a key
        several mutations share is merged as always)."""
        key_of, ttl_ms = self._key, self._ttl_ms
        keys = [key_of(m.row, m.family) for m in mutations]
        if len(set(keys)) == len(keys):  # the usual batch: each (row, family) once
            whole = frozenset(k for k, m in zip(keys, mutations, strict=True) if m.whole)
            return keys, [ttl_ms[m.family] for m in mutations], [m.cells for m in mutations], whole
        return self._merged(keys, mutations)

    def _encode(self, cells_of: Sequence[Mapping[str, Cell]]) -> list[bytes]:
        column_bytes = self._schema.column_bytes
        return encode_families(
            [(*column_bytes(tuple(cells)), cells.values()) for cells in cells_of]
        )

    def _write_streamed(
        self, keys: list[str], ttls: list[int], cells_of: list[Mapping[str, Cell]]
    ) -> None:
        """A plain batched write (no idempotency keys: a bulk load, a batch job's output) on
        a standalone server: the merge script's calls are sent one chunk of keys at a time as
        they are encoded, and the replies read at the end, so the server merges a chunk while
        the next is encoded (in one MULTI/EXEC it starts only once it has the whole batch).
        Each key's merge is atomic as always; the batch as a whole is not: a write that fails
        may have applied some keys, and running it again is harmless (newer wins, equal
        timestamps rewrite the same cells). Writes with idempotency keys (the stream's) stay
        one MULTI/EXEC with them."""
        for attempt in (0, 1):
            try:
                sent = SentCommands(self._writer.connection_pool)
                sha = self._merge.sha
                for start in range(0, len(keys), _STREAM_CHUNK_KEYS):
                    end = start + _STREAM_CHUNK_KEYS
                    chunk = keys[start:end]
                    encoded = self._encode(cells_of[start:end])
                    args = [x for pair in zip(ttls[start:end], encoded, strict=True) for x in pair]
                    sent.send(("EVALSHA", sha, len(chunk), *chunk, *args))
                errors = [r for r in sent.replies() if isinstance(r, redis.ResponseError)]
            except redis.RedisError as exc:
                if (
                    attempt == 0
                    and isinstance(exc, redis.ConnectionError)
                    and not isinstance(exc, redis.TimeoutError)
                ):
                    continue  # a connection the server closed while idle: once more, anew
                raise wrap(exc) from exc
            if not errors:
                return
            if attempt == 0 and all(isinstance(e, NoScriptError) for e in errors):
                try:  # the server lost its scripts (a restart, SCRIPT FLUSH): load, run again
                    self._writer.script_load(self._merge.script)
                except redis.RedisError as exc:
                    raise wrap(exc) from exc
                continue
            raise wrap(errors[0])

    def _merged(
        self, keys: list[str], mutations: Sequence[Mutation]
    ) -> tuple[list[str], list[int], list[Mapping[str, Cell]], frozenset[str]]:
        """Mutations of one (row, family) merged (the newer cell of a column kept): one key,
        one blob, one script argument. A key left whole had one mutation, marked whole."""
        merged: dict[str, tuple[int, dict[str, Cell]]] = {}
        copied: set[str] = set()  # keys whose cells are our copy, not a caller's dict
        whole: set[str] = set()
        for key, m in zip(keys, mutations, strict=True):
            entry = merged.get(key)
            if entry is None:
                merged[key] = (self._ttl_ms[m.family], m.cells)
                if m.whole:
                    whole.add(key)
                continue
            cells = entry[1]
            if key not in copied:
                cells = dict(cells)
                merged[key] = (entry[0], cells)
                copied.add(key)
            for col, cell in m.cells.items():
                old = cells.get(col)
                if old is None or cell.ts >= old.ts:
                    cells[col] = cell
        return (
            list(merged),
            [t for t, _ in merged.values()],
            [c for _, c in merged.values()],
            frozenset(whole - copied),
        )

    def write_columns(
        self, family: str, rows: Sequence[str], columns: Mapping[str, Any], ts: float
    ) -> None:
        """Encoded column by column with numpy (`codec.encode_columns`), merged on the server
        like any write; rows named twice, or values the columnar encoder does not take, go
        through `write`."""
        if not rows:
            return
        keys = [self._key(row, family) for row in rows]
        names = tuple(columns)
        flag, ids = self._schema.column_bytes(names)
        blobs = None
        if len(set(keys)) == len(keys):
            blobs = encode_columns(flag, ids, [columns[c] for c in names], ts, len(rows))
        if blobs is None:
            self.write(columns_to_mutations(family, rows, columns, ts))
            return
        ttl_ms = self._ttl_ms[family]
        self._submit({key: (ttl_ms, blob) for key, blob in zip(keys, blobs, strict=True)}, [])

    def seen(self, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        wanted = {self._seen_key(k): k for k in keys}
        try:
            if not self._cluster:
                found = self._read("MGET", *wanted)
                return {k for k, v in zip(wanted.values(), found, strict=True) if v is not None}
            present: set[str] = set()
            for client, slots in self._by_node(wanted).values():
                pipe = client.pipeline(transaction=False)
                flat = [k for ks in slots.values() for k in ks]
                for k in flat:
                    pipe.exists(k)
                present.update(wanted[k] for k, n in zip(flat, pipe.execute(), strict=True) if n)
            return present
        except redis.RedisError as exc:
            raise wrap(exc) from exc

    def forget(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        wanted = [self._seen_key(k) for k in keys]

        def delete() -> None:
            for client, slots in self._by_node(wanted, write=True).values():
                pipe = client.pipeline(transaction=False)
                for slot_keys in slots.values():
                    pipe.delete(*slot_keys)  # one slot's keys: one DEL even on a cluster
                pipe.execute()

        try:
            self._retry_moved(delete)
        except redis.RedisError as exc:
            raise wrap(exc) from exc

    def _seen_key(self, key: str) -> str:
        return f"{self._prefix}{{s:{key}}}"

    # -- routing ---------------------------------------------------------------------------
    # redis-py's cluster pipeline refuses scripts, so on a cluster we route ourselves: keys
    # grouped by the node that owns their slot, one plain pipeline per node. A slot that
    # moved (MOVED/ASK during resharding) refreshes the slot map and the call runs again;
    # the merge is idempotent, so running it twice is harmless.

    def _by_node(
        self, keys: Iterable[str], *, write: bool = False
    ) -> dict[int, tuple[Any, dict[int, list[str]]]]:
        """{id(node client): (client, {slot: keys})}; one group for a standalone server.
        Clients come from the write pool when `write`."""
        base = self._writer if write else self._client
        out: dict[int, tuple[Any, dict[int, list[str]]]] = {}
        for key in keys:
            if self._cluster:
                node = base.get_node_from_key(key)
                client = base.get_redis_connection(node)
                slot = key_slot(key.encode())
            else:
                client, slot = base, 0
            out.setdefault(id(client), (client, defaultdict(list)))[1][slot].append(key)
        return out

    def _mget(self, keys: list[str], per_row: int) -> list[bytes | None]:
        if not self._cluster:
            values: list[bytes | None] = self._read("MGET", *keys)
            return values
        found: dict[str, bytes | None] = {}
        rows = {keys[i]: keys[i : i + per_row] for i in range(0, len(keys), per_row)}
        for client, slots in self._by_node(rows).values():
            pipe = client.pipeline(transaction=False)
            wanted = [rows[first] for firsts in slots.values() for first in firsts]
            for row_keys in wanted:  # a row's keys share its slot: one MGET each
                pipe.mget(row_keys)
            for row_keys, values in zip(wanted, pipe.execute(), strict=True):
                found.update(zip(row_keys, values, strict=True))
        return [found[k] for k in keys]

    def _read(self, *command: str) -> Any:
        """One read command on this thread's own connection. A request's reads skip
        redis-py's per-call pool checkout, connection health check and retry wrapper, a
        large share of the CPU an MGET costs through `Redis.mget`.
        The connection is the thread's for its life, outside the pool (closed with it); one
        the server dropped while idle is replaced once, a timeout raises at once."""
        conn = getattr(self._local, "conn", None)
        for attempt in (0, 1):
            if conn is None:
                pool = self._client.connection_pool
                conn = self._local.conn = pool.connection_class(**pool.connection_kwargs)
                self._own.add(conn)
            try:
                conn.send_packed_command([pack([command])])
                return conn.read_response()
            except redis.TimeoutError:
                conn.disconnect()
                raise
            except redis.ConnectionError:
                conn.disconnect()
                conn = self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _submit(
        self,
        blobs: Mapping[str, tuple[int, bytes]],
        seen_keys: list[str],
        whole: frozenset[str] = frozenset(),
    ) -> None:
        """Merge encoded families (key -> (TTL ms, value); set those in `whole`) and record
        idempotency keys."""
        try:
            self._retry_moved(lambda: self._run_merge(blobs, seen_keys, whole))
        except redis.RedisError as exc:
            raise wrap(exc) from exc

    def _run_merge(
        self, blobs: Mapping[str, tuple[int, bytes]], seen_keys: list[str], whole: frozenset[str]
    ) -> None:
        # Standalone: cells and idempotency keys in one MULTI/EXEC, all or nothing. A cluster
        # cannot make keys of several nodes atomic; there each node's share is one pipeline.
        if not self._cluster:
            pipe = self._writer.pipeline(transaction=True)
            self._queue_merge(pipe, list(blobs), seen_keys, blobs, whole)
            pipe.execute()
            return
        targets = self._by_node([*blobs, *seen_keys], write=True)
        seen_set = set(seen_keys)
        for client, slots in targets.values():
            pipe = client.pipeline(transaction=False)
            for keys in slots.values():
                seen_here = [k for k in keys if k in seen_set]
                cell_keys = [k for k in keys if k not in seen_set]
                self._queue_merge(pipe, cell_keys, seen_here, blobs, whole)
            pipe.execute()

    def _queue_merge(
        self,
        pipe: Any,
        cell_keys: list[str],
        seen_keys: list[str],
        blobs: Mapping[str, tuple[int, bytes]],
        whole: frozenset[str],
    ) -> None:
        """Queue on `pipe` the scripts that mark `seen_keys` and merge (or set, those in
        `whole`) `cell_keys`' blobs."""
        for script, keys, args in self._script_calls(cell_keys, seen_keys, blobs, whole):
            script(keys=keys, args=args, client=pipe)

    def _retry_moved(self, call: Callable[[], _T]) -> _T:
        try:
            return call()
        except (redis.exceptions.MovedError, redis.exceptions.AskError):
            if not self._cluster:
                raise
            self._client.nodes_manager.initialize()
            self._writer.nodes_manager.initialize()
            return call()

    def delete_rows(self, rows: Sequence[str]) -> None:
        keys = {self._key(row, next(iter(self._families))): row for row in rows}

        def delete() -> None:
            for client, slots in self._by_node(keys, write=True).values():
                pipe = client.pipeline(transaction=False)
                for first_keys in slots.values():
                    for k in first_keys:  # all families of a row share its slot: one DEL
                        pipe.delete(*(self._key(keys[k], fam) for fam in self._families))
                pipe.execute()

        try:
            self._retry_moved(delete)
        except redis.RedisError as exc:
            raise wrap(exc) from exc

    def close(self) -> None:
        for conn in list(self._own):
            conn.disconnect()
        _close(self._client)
        if self._writer is not self._client:
            _close(self._writer)


def _close(client: Any) -> None:
    """Close a client and its connections. A cluster client's `close` leaves each node's
    connection pool open (redis-py hands the nodes pools it does not auto-close), so their
    sockets would be closed by the garbage collector, with a ResourceWarning."""
    if isinstance(client, RedisCluster):
        nodes: Any = client.get_nodes  # untyped in redis-py
        for node in nodes():
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()
    client.close()
