"""Items and their embeddings in a PostgreSQL table, searched through a pgvector HNSW index.

The one module that imports the PostgreSQL client (psycopg 3, the `pgvector` extra). The URL
is libpq's, `postgresql://USER:PASSWORD@HOST:PORT/DATABASE`, plus parameters of ours that are
taken off before connecting: `table` (default `tastemaker_items`, optionally
`schema.table`), `m` and `ef_construction` (the HNSW index's, used when this module creates
it), `ef_search` (candidates the index search keeps; at least the `k` asked for), `sync`
(`false`: the table is kept by something else; the retriever never writes to it) and
`timeout_ms` (default 250: a search's statement timeout, so a hung server costs a request
that long, not a thread for ever; loads and index builds have none).

The table: `item_id text primary key, title text, category text, brand text, price real,
in_stock boolean, embedding vector(DIM)`; an item whose embedding is NULL is not in the
index. The index orders by cosine distance (`vector_cosine_ops`), so vectors need not be
normalized.
"""

from __future__ import annotations

import queue
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt

from tastemaker.extras import missing_extra

try:
    import psycopg
    from psycopg import sql
except ImportError as _exc:
    raise missing_extra("psycopg", "pgvector", "vector search in PostgreSQL") from _exc

__all__ = ["ItemRows", "PgVectorError", "PgVectorTable"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")
_OURS = {
    "table": "tastemaker_items",
    "m": "16",
    "ef_construction": "64",
    "ef_search": "0",
    "sync": "true",
    "timeout_ms": "250",
}
_COLUMNS = ("item_id", "title", "category", "brand", "price", "in_stock", "embedding")
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags 0, no extension


class PgVectorError(ValueError):
    """A bad URL or table; the message names what is wrong."""


@dataclass
class ItemRows:
    """Items as columns, as read from or written to the table (embeddings float32, a row of
    zeros where the table holds NULL, `has_embedding` False there)."""

    ids: Sequence[str]
    titles: Sequence[str]
    categories: Sequence[str]
    brands: Sequence[str]
    prices: npt.NDArray[np.float32]
    in_stock: npt.NDArray[np.bool_]
    embeddings: npt.NDArray[np.float32]
    has_embedding: npt.NDArray[np.bool_]


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise PgVectorError(f"expected a postgresql:// URL, got {parts.scheme or 'none'}://")
    params = dict(parse_qsl(parts.query))
    ours = {k: params.pop(k, v) for k, v in _OURS.items()}
    if not _NAME.match(ours["table"]):
        raise PgVectorError(f"table {ours['table']!r}: expected NAME or SCHEMA.NAME")
    for key in ("m", "ef_construction", "ef_search", "timeout_ms"):
        if not ours[key].isdigit():
            raise PgVectorError(f"{key}={ours[key]!r} in the URL: expected a whole number")
    if ours["sync"] not in ("true", "false"):
        raise PgVectorError(f"sync={ours['sync']!r} in the URL: expected true or false")
    if int(ours["ef_search"]) > 1000:
        raise PgVectorError("ef_search in the URL: pgvector allows at most 1000")
    return urlunsplit(parts._replace(query=urlencode(params))), ours


class PgVectorTable:
    """The items table at `url`; connections are pooled, one per concurrent caller."""

    def __init__(self, url: str) -> None:
        self.conninfo, params = _split_url(url)
        self.table = sql.Identifier(*params["table"].split("."))
        self.table_name = params["table"]
        self.m, self.ef_construction = int(params["m"]), int(params["ef_construction"])
        self.ef_search = int(params["ef_search"])
        self.sync = params["sync"] == "true"
        self.timeout_ms = int(params["timeout_ms"])
        # $1 the query vector (text), $2 again, $3 k. The index holds no NULL embeddings; a
        # sequential scan (the planner's choice for a small table) would return them last.
        self.search_sql = sql.SQL(
            "SELECT item_id, 1 - (embedding <=> %s::vector) AS sim FROM {}"
            " WHERE embedding IS NOT NULL ORDER BY embedding <=> %s::vector LIMIT %s"
        ).format(self.table)
        # Two pools: searches run under the statement timeout, maintenance without.
        self._idle: dict[bool, queue.SimpleQueue[psycopg.Connection[Any]]] = {
            False: queue.SimpleQueue(),
            True: queue.SimpleQueue(),
        }

    @contextmanager
    def connection(self, *, search: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection (with `search`, under the statement timeout); one
        that failed is closed, not returned."""
        idle = self._idle[search]
        try:
            conn = idle.get_nowait()
        except queue.Empty:
            conninfo = self.conninfo
            if search:
                timeout = f"-c statement_timeout={self.timeout_ms}"
                conninfo = psycopg.conninfo.make_conninfo(conninfo, options=timeout)
            conn = psycopg.connect(conninfo, autocommit=True)
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.close()
        else:
            idle.put(conn)

    def close(self) -> None:
        for idle in self._idle.values():
            while True:
                try:
                    idle.get_nowait().close()
                except queue.Empty:
                    break

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the table's advisory lock: processes starting together create and fill it
        once, one after another, instead of racing."""
        with self.connection() as conn:
            conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (self.table_name,))
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (self.table_name,))

    def dim(self) -> int | None:
        """The embedding column's declared dimension, None if the table does not exist (or
        declares none)."""
        with self.connection() as conn:
            row = conn.execute(
                "SELECT a.atttypmod FROM pg_attribute a WHERE a.attrelid = to_regclass(%s)"
                " AND a.attname = 'embedding' AND NOT a.attisdropped",
                (self.table_name,),
            ).fetchone()
        return None if row is None or row[0] < 1 else int(row[0])

    def create(self, dim: int, *, index: bool = True) -> None:
        """The extension, the table and (with `index`) its HNSW index, where missing."""
        with self.connection() as conn, conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (item_id text PRIMARY KEY, title text NOT NULL"
                    " DEFAULT '', category text NOT NULL DEFAULT '', brand text NOT NULL DEFAULT"
                    " '', price real NOT NULL DEFAULT 0, in_stock boolean NOT NULL DEFAULT true,"
                    " embedding vector({}))"
                ).format(self.table, sql.Literal(dim))
            )
        if index:
            self.create_index()

    def create_index(self) -> None:
        """The HNSW index on the embeddings (cosine), where missing; built in memory."""
        index = sql.Identifier(self.table_name.replace(".", "_") + "_hnsw")
        with self.connection() as conn:
            # Built in maintenance_work_mem: a graph larger than it builds many times slower.
            conn.execute("SET maintenance_work_mem = '1GB'")
            conn.execute(
                sql.SQL(
                    "CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding vector_cosine_ops)"
                    " WITH (m = {}, ef_construction = {})"
                ).format(index, self.table, sql.Literal(self.m), sql.Literal(self.ef_construction))
            )
            conn.execute("RESET maintenance_work_mem")

    def count(self) -> int:
        with self.connection() as conn:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self.table)).fetchone()
        return 0 if row is None else int(row[0])

    def upsert(self, items: ItemRows) -> None:
        """Insert the items, replacing those of the same id: one binary COPY into a temporary
        table, then one INSERT ... ON CONFLICT."""
        if not items.ids:
            return
        cols = sql.SQL(", ").join(map(sql.Identifier, _COLUMNS))
        update = sql.SQL(", ").join(
            sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c)) for c in _COLUMNS[1:]
        )
        with self.connection() as conn, conn.transaction():
            conn.execute(
                sql.SQL(
                    "CREATE TEMPORARY TABLE tm_staging (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP"
                ).format(self.table)
            )
            with conn.cursor().copy(
                sql.SQL("COPY tm_staging ({}) FROM STDIN (FORMAT BINARY)").format(cols)
            ) as copy:
                for chunk in _copy_chunks(items):
                    copy.write(chunk)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} ({}) SELECT {} FROM tm_staging"
                    " ON CONFLICT (item_id) DO UPDATE SET {}"
                ).format(self.table, cols, cols, update)
            )

    def delete(self, item_ids: Sequence[str]) -> None:
        if not item_ids:
            return
        with self.connection() as conn:
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE item_id = ANY(%s)").format(self.table),
                (list(item_ids),),
            )

    def read(self) -> ItemRows:
        """Every item, ordered by id (so every process numbers the rows alike)."""
        query = sql.SQL(
            "SELECT item_id, title, category, brand, price, in_stock, vector_send(embedding)"
            " FROM {} ORDER BY item_id"
        ).format(self.table)
        with self.connection() as conn:
            cur = conn.cursor(binary=True)
            rows = cur.execute(query).fetchall()
        columns: list[list[Any]] = [list(c) for c in zip(*rows, strict=True)] or [[]] * 7
        ids, titles, categories, brands, prices, stock, blobs = columns
        return ItemRows(
            [str(x) for x in ids],
            ["" if t is None else str(t) for t in titles],
            ["" if c is None else str(c) for c in categories],
            ["" if b is None else str(b) for b in brands],
            np.asarray([0.0 if p is None else p for p in prices], np.float32),
            np.asarray([True if s is None else s for s in stock], bool),
            *_vectors(blobs, self.table_name),
        )

    def search(self, query: npt.NDArray[np.float32], k: int) -> tuple[list[str], list[float]]:
        """Ids of the `k` items nearest (by cosine) to `query` as the index finds them,
        nearest first, and their cosine similarity."""
        text = "[" + ",".join(map(repr, query.tolist())) + "]"
        with self.connection(search=True) as conn:
            ef = min(1000, max(k, self.ef_search))
            if getattr(conn, "_tm_ef", None) != ef:
                conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef)))
                conn._tm_ef = ef  # type: ignore[attr-defined]
            rows = conn.execute(self.search_sql, (text, text, k)).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]


def _vectors(
    blobs: Sequence[bytes | None], table: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """pgvector's binary form (int16 dim, int16 unused, dim big-endian float32), NULLs as
    zero rows, decoded in one numpy pass."""
    present = np.asarray([b is not None for b in blobs], bool)
    sizes = {len(b) for b in blobs if b is not None}
    if len(sizes) > 1:
        raise PgVectorError(f"table {table}: embeddings of several lengths")
    if not sizes:
        return np.zeros((len(blobs), 1), np.float32), present
    width = sizes.pop()
    data = np.frombuffer(b"".join(b for b in blobs if b is not None), np.uint8)
    found = data.reshape(-1, width)[:, 4:].copy().view(">f4").astype(np.float32)
    out = np.zeros((len(blobs), found.shape[1]), np.float32)
    out[present] = found
    return out, present


def _copy_chunks(items: ItemRows, rows_per_chunk: int = 10_000) -> Iterator[bytes]:
    """COPY's binary format: per row a field count, then each field's length and bytes."""
    emb = np.ascontiguousarray(items.embeddings, dtype=">f4")
    dim = emb.shape[1]
    vec_head = dim.to_bytes(2, "big") + bytes(2)
    vec_len = (4 + 4 * dim).to_bytes(4, "big")
    prices = items.prices.astype(">f4").tobytes()  # numpy scalars would be native-endian
    n = len(items.ids)
    nfields = len(_COLUMNS).to_bytes(2, "big")
    null = (-1).to_bytes(4, "big", signed=True)
    yield _COPY_HEADER
    for start in range(0, n, rows_per_chunk):
        parts: list[bytes] = []
        for i in range(start, min(n, start + rows_per_chunk)):
            parts.append(nfields)
            for text in (items.ids[i], items.titles[i], items.categories[i], items.brands[i]):
                raw = text.encode()
                parts += (len(raw).to_bytes(4, "big"), raw)
            parts += (b"\x00\x00\x00\x04", prices[4 * i : 4 * i + 4])
            parts += (b"\x00\x00\x00\x01", b"\x01" if items.in_stock[i] else b"\x00")
            if items.has_embedding[i]:
                parts += (vec_len, vec_head, emb[i].tobytes())
            else:
                parts.append(null)
        yield b"".join(parts)
    yield b"\xff\xff"
