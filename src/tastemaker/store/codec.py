"""The binary encoding of one family of one row, as the Redis store keeps it.

Version 4 is, big-endian:

    u8 4 | u8 flags | u16 n | f64 base_ts | u16 m | m x (u16 index, f64 ts)
    | n column ids (u8; u16 when flags bit 0) | n value sizes (u8, u16 or u32: flags bits 1-2)
    | one msgpack array of the n values

Most cells of a family are written together, so one timestamp (`base_ts`, the newest) serves
them all; the m pairs give the others theirs. Floats exactly representable in float32 are
stored as msgpack float32 (5 bytes, not 9). The sizes let the server's merge script
(`lua/merge.lua`) splice values as bytes without decoding (or altering) any of them; the
header is fixed-width so the script reads it with one `struct.unpack` instead of a msgpack
decode (version 3, with a msgpack header, cost the server ~30 us a key to merge). Version 3
values are still read, and the next merge rewrites them as 4.

Encoding is the write path's hot spot (a stream batch or a bulk load writes thousands of
families per call), so `encode_families` encodes the families that share one column layout
together, column by column with numpy, into one byte matrix; msgpack's framing of numbers is
simple enough to write vectorized (msgspec encodes one object per call). Families of layouts
seen only a few times in a call, families with maps or lists, and families whose cells keep
times of their own take the per-value path, which gives the same bytes: msgspec encodes each
value, and the families' headers, own timestamps and sizes are framed together with numpy
(`_frame_many`).
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Collection, Sequence
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from tastemaker.store.base import Cell, StoreError

__all__ = ["MAX_CELLS", "decode_family", "encode_columns", "encode_families", "id_bytes"]

MAX_CELLS = 65535
_HEAD = struct.Struct(">BBHdH")  # version, flags, cells, base ts, cells with their own ts
_OWN_TS = struct.Struct(">Hd")  # cell index, ts
_HEAD_DTYPE = np.dtype([("v", "u1"), ("f", "u1"), ("n", ">u2"), ("ts", ">f8"), ("m", ">u2")])
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_VECTOR_MIN_ROWS = 16  # fewer families of one layout: the per-value path is as fast
_VECTOR_MAX_VALUE = 64  # bytes; a column with a longer value takes the per-value path

_encode = msgspec.msgpack.Encoder().encode
_cell_ts = operator.attrgetter("ts")
_cell_value = operator.attrgetter("value")
_decode_values = msgspec.msgpack.Decoder(list[Any]).decode


class _Header3(msgspec.Struct, array_like=True):
    """Version 3's header: `own_ts` lists `id, ts` pairs of the cells whose timestamp is not
    `base_ts`; `lengths` are the encoded sizes of the values."""

    base_ts: float
    ids: list[int]
    own_ts: list[float]
    lengths: list[int]


class _Family3(msgspec.Struct, array_like=True):
    header: _Header3
    values: list[Any]


_decode_family3 = msgspec.msgpack.Decoder(_Family3).decode


def _uints(values: Sequence[int]) -> tuple[int, bytes]:
    """(width code, big-endian bytes): u8 when every value fits, else u16, else u32."""
    top = max(values, default=0)
    if top < 256:
        return 0, bytes(values)
    if top < 65536:
        return 1, struct.pack(f">{len(values)}H", *values)
    return 2, struct.pack(f">{len(values)}I", *values)


def id_bytes(ids: Sequence[int]) -> tuple[int, bytes]:
    """(flags bit 0, the ids as bytes) of a family's column ids."""
    flag, packed = _uints(ids)
    if flag > 1:
        raise StoreError(f"column ids above 65535 ({max(ids)}): too many columns")
    return flag, packed


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 + n,))
    return b"\xdc" + _U16.pack(n) if n < 65536 else b"\xdd" + _U32.pack(n)


def _encode_values(values: list[Any]) -> list[bytes]:
    """msgpack of each value: msgspec encodes (it always writes float64), then the floats are
    encoded again, all at once, by `_floats` (float32 where it holds them exactly)."""
    encoded = list(map(_encode, values))
    where = [i for i, v in enumerate(values) if type(v) is float]
    if where:
        matrix, sizes = _floats([values[i] for i in where])
        flat, width = matrix.tobytes(), matrix.shape[1]
        for j, (i, size) in enumerate(zip(where, sizes.tolist(), strict=True)):
            encoded[i] = flat[width * j : width * j + size]
    return encoded


def _encode_one(id_flag: int, ids: bytes, cells: Collection[Cell], values: list[bytes]) -> bytes:
    n = len(cells)
    ts = list(map(_cell_ts, cells))
    base = max(ts, default=0.0)  # no cells: a write that only restarts the family's TTL
    own = b""
    m = 0
    if min(ts, default=base) != base:
        pairs = [(i, t) for i, t in enumerate(ts) if t != base]
        m = len(pairs)
        own = b"".join(_OWN_TS.pack(i, t) for i, t in pairs)
    size_flag, sizes = _uints(list(map(len, values)))
    head = _HEAD.pack(4, id_flag | (size_flag << 1), n, base, m)
    return b"".join((head, own, ids, sizes, _array_header(n), *values))


# -- the vectorized path -------------------------------------------------------------------
# Each column becomes a (rows, width) uint8 matrix of its values' msgpack bytes, left-aligned,
# and a vector of their sizes. Laying the header, ids, sizes and every column side by side and
# keeping the bytes under each size gives every family's value, in order, in one buffer.


_Column = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]  # (bytes matrix, sizes)


def _floats(col: Any) -> _Column:
    return _float_block([col])[0]


_FLOAT = {float}
_INT = {int}
_NESTED = frozenset((dict, list))

# msgpack's smallest framing of an int, as msgspec writes it: (low, high, tag, payload bytes).
_INT_CLASSES = (
    (-(2**63), -(2**31) - 1, 0xD3, 8),
    (-(2**31), -32769, 0xD2, 4),
    (-32768, -129, 0xD1, 2),
    (-128, -33, 0xD0, 1),
    (-32, -1, None, 0),  # negative fixint
    (0, 127, None, 0),  # positive fixint
    (128, 255, 0xCC, 1),
    (256, 65535, 0xCD, 2),
    (65536, 2**32 - 1, 0xCE, 4),
    (2**32, 2**63 - 1, 0xCF, 8),
)


_INT_LOWS = np.array([c[0] for c in _INT_CLASSES], np.int64)
_INT_PAYLOAD = np.array([c[3] for c in _INT_CLASSES], np.int64)
_INT_TAG = np.array([c[2] or 0 for c in _INT_CLASSES], np.uint8)
_INT_FIXINT = np.array([c[2] is None for c in _INT_CLASSES])


def _ints(col: Any) -> _Column | None:
    got = _int_block([col])
    return None if got is None else got[0]


def _others(col: list[Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None:
    encoded = _encode_values(col)
    sizes = np.fromiter(map(len, encoded), np.int64, len(encoded))
    width = int(sizes.max())
    if width > _VECTOR_MAX_VALUE:
        return None
    out = np.zeros((len(col), width), np.uint8)
    out[np.arange(width) < sizes[:, None]] = np.frombuffer(b"".join(encoded), np.uint8)
    return out, sizes


def _column(col: list[Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None:
    kinds = set(map(type, col))
    if kinds == {float}:
        return _floats(col)
    if kinds == {int}:
        got = _ints(col)
        if got is not None:
            return got
    return _others(col)


def _heads(flags: Any, n: Any, base_ts: np.ndarray[Any, Any], m: Any = 0) -> np.ndarray[Any, Any]:
    """Version 4 headers, one per entry of `base_ts` (the other fields scalars or arrays)."""
    head = np.zeros(base_ts.shape[0], _HEAD_DTYPE)
    head["v"] = 4
    head["f"] = flags
    head["n"] = n
    head["ts"] = base_ts
    head["m"] = m
    return head


def _assemble(
    id_flag: int,
    ids: bytes,
    columns: Sequence[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]],
    base_ts: np.ndarray[Any, Any],
) -> list[bytes]:
    """Version 4 values of r families with no cell of its own ts, from each column's byte
    matrix and sizes: header, ids, sizes and values side by side, the bytes under each size
    kept, one slice per family."""
    r, n = base_ts.shape[0], len(columns)
    sizes = np.stack([s for _, s in columns], axis=1)
    head = _heads(id_flag, n, base_ts)  # sizes are at most _VECTOR_MAX_VALUE: one byte each
    array_header = np.frombuffer(_array_header(n), np.uint8)
    fixed = [
        head.view(np.uint8).reshape(r, _HEAD.size),
        np.broadcast_to(np.frombuffer(ids, np.uint8), (r, len(ids))),
        sizes.astype(np.uint8),
        np.broadcast_to(array_header, (r, array_header.size)),
    ]
    fixed_width = sum(a.shape[1] for a in fixed)
    matrix = np.concatenate(fixed + [m for m, _ in columns], axis=1)
    # Bytes past a value's size are dropped; a column whose values all fill its width (a
    # float32 column, a one-class int column) keeps all of them.
    keep = np.ones(matrix.shape, bool)
    masked = False
    at = fixed_width
    for m, s in columns:
        width = m.shape[1]
        if int(s.min()) < width:
            keep[:, at : at + width] = np.arange(width) < s[:, None]
            masked = True
        at += width
    blob = matrix[keep].tobytes() if masked else matrix.tobytes()
    ends = np.cumsum(fixed_width + sizes.sum(axis=1)).tolist()
    return [blob[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def _float_block(cols: Sequence[Any]) -> list[_Column]:
    """Float columns (sequences of one length) as msgpack frames their values: float32 where
    it holds a value exactly, else float64. The columns whose every value is float32
    (rates, intensities) become one 5-byte matrix, those with none (timestamps) one 9-byte
    matrix, each in one numpy pass over all such columns; the rest are masked column by
    column."""
    f64 = np.asarray(cols, dtype=np.float64)  # (columns, rows)
    with np.errstate(over="ignore"):
        f32 = f64.astype(np.float32)
    exact = f32.astype(np.float64) == f64
    k, r = f64.shape
    every, some = exact.all(axis=1), exact.any(axis=1)
    out: list[_Column | None] = [None] * k
    for which, tag, width, source, dtype in (
        (every, 0xCA, 5, f32, ">f4"),
        (~some, 0xCB, 9, f64, ">f8"),
    ):
        picked = np.flatnonzero(which)
        if picked.size == 0:
            continue
        block = np.empty((picked.size, r, width), np.uint8)
        block[..., 0] = tag
        block[..., 1:] = source[picked].astype(dtype).view(np.uint8).reshape(-1, r, width - 1)
        sizes = np.full(r, width)
        for i, c in enumerate(picked.tolist()):
            out[c] = (block[i], sizes)
    for c in np.flatnonzero(some & ~every).tolist():
        e = exact[c]
        mixed = np.zeros((r, 9), np.uint8)
        mixed[:, 0] = np.where(e, 0xCA, 0xCB)
        mixed[e, 1:5] = f32[c, e].astype(">f4").view(np.uint8).reshape(-1, 4)
        mixed[~e, 1:9] = f64[c, ~e].astype(">f8").view(np.uint8).reshape(-1, 8)
        out[c] = (mixed, np.where(e, 5, 9))
    return [got for got in out if got is not None]


def _int_block(cols: Sequence[Any]) -> list[_Column] | None:
    """Int columns (sequences of one length) in msgpack's smallest framing of each value, as
    msgspec writes it, each column a matrix as wide as its widest value; None when one holds
    a value beyond int64 (the per-value path takes those)."""
    try:
        v = np.asarray(cols, dtype=np.int64)  # (columns, rows)
    except OverflowError:
        return None
    k, r = v.shape
    if v.size == 0 or (v.min() >= 0 and v.max() <= 127):  # counts: positive fixints, a byte
        return [(col.astype(np.uint8)[:, None], np.ones(r, np.int64)) for col in v]
    # Each value's class gives its tag and payload size; the payload is the last bytes of
    # its 8 big-endian ones, gathered into a matrix as wide as the widest (bytes past a
    # value's own size are dropped by `_assemble`).
    be = v.astype(">i8").view(np.uint8).reshape(k, r, 8)
    classes = np.searchsorted(_INT_LOWS, v, side="right") - 1
    payload = _INT_PAYLOAD[classes]
    widths = (1 + payload.max(axis=1)).tolist()
    out = np.empty((k, r, max(widths)), np.uint8)
    out[..., 0] = np.where(_INT_FIXINT[classes], be[..., 7], _INT_TAG[classes])
    if max(widths) > 1:
        at = np.minimum(8 - payload[..., None] + np.arange(max(widths) - 1), 7)
        out[..., 1:] = np.take_along_axis(be, at, axis=2)
    sizes = 1 + payload
    return [(out[c, :, : widths[c]], sizes[c]) for c in range(k)]


def _encode_group(id_flag: int, ids: bytes, rows: Sequence[Collection[Cell]]) -> list[bytes | None]:
    """The values of families that share one column layout; None for a family this path
    leaves to the per-value one (cells with their own timestamps)."""
    first = next(iter(rows))
    r, n = len(rows), len(first)
    # Cheap checks first, as the per-value path takes these groups whole (and gives the
    # same bytes): maps and lists (mostly past _VECTOR_MAX_VALUE bytes; judged on the first
    # family, which shares the group's columns), and families whose cells keep times of
    # their own (the stream's user families, written whole with their stored cells), so
    # that no work is spent on them before finding out.
    if any(type(cell.value) in _NESTED for cell in first):
        return [None] * r
    flat = [cell for row in rows for cell in row]
    ts = np.fromiter(map(_cell_ts, flat), np.float64, r * n).reshape(r, n)
    base = ts.max(axis=1)
    own = (ts != base[:, None]).any(axis=1)
    if own.all():
        return [None] * r
    values = list(map(_cell_value, flat))
    cols = [values[j::n] for j in range(n)]
    kinds = [set(map(type, col)) for col in cols]
    columns: list[_Column | None] = [None] * n
    floats = [j for j, kind in enumerate(kinds) if kind == _FLOAT]
    if floats:
        for j, got in zip(floats, _float_block([cols[j] for j in floats]), strict=True):
            columns[j] = got
    ints = [j for j, kind in enumerate(kinds) if kind == _INT]
    if ints and (block := _int_block([cols[j] for j in ints])) is not None:
        for j, got in zip(ints, block, strict=True):
            columns[j] = got
    for j in range(n):
        if columns[j] is None:  # strings, mixed, beyond int64: msgspec value by value
            columns[j] = _others(cols[j])
            if columns[j] is None:
                return [None] * r
    blobs = _assemble(id_flag, ids, [c for c in columns if c is not None], base)
    return [None if has_own else blob for blob, has_own in zip(blobs, own.tolist(), strict=True)]


def _array_column(col: Any, r: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None:
    """A bulk write's column: numpy numbers without a per-value type check, else as a list."""
    if isinstance(col, np.ndarray) and col.ndim == 1 and col.shape[0] == r:
        kind = col.dtype.kind
        if kind == "f":
            return _floats(col)
        if kind == "i" or (kind == "u" and (col.size == 0 or int(col.max()) < 2**63)):
            return _ints(col)
        col = col.tolist()
    values = list(col)
    if len(values) != r:
        raise StoreError(f"a column has {len(values)} values for {r} rows")
    return _column(values)


def encode_columns(
    id_flag: int, ids: bytes, columns: Sequence[Any], ts: float, rows: int
) -> list[bytes] | None:
    """Version 4 values of `rows` families whose cells are given column by column (numpy
    arrays or sequences, one value per row), all at `ts`; None when a column holds values
    this path does not take (longer than _VECTOR_MAX_VALUE bytes encoded)."""
    if len(columns) > MAX_CELLS:
        raise StoreError(f"a family holds at most {MAX_CELLS} columns, got {len(columns)}")
    if rows == 0 or not columns:
        return None
    encoded = []
    for col in columns:
        got = _array_column(col, rows)
        if got is None:
            return None
        encoded.append(got)
    return _assemble(id_flag, ids, encoded, np.full(rows, float(ts)))


def encode_families(families: Sequence[tuple[int, bytes, Collection[Cell]]]) -> list[bytes]:
    """Encode each (id flag, id bytes, cells) family: families sharing a layout together,
    column by column; the rest value by value. Both give the same bytes."""
    out: list[bytes | None] = [None] * len(families)
    groups: dict[bytes, list[int]] = {}
    for i, (_, ids, cells) in enumerate(families):
        if len(cells) > MAX_CELLS:
            raise StoreError(f"a family holds at most {MAX_CELLS} columns, got {len(cells)}")
        groups.setdefault(ids, []).append(i)
    for members in groups.values():
        if len(members) < _VECTOR_MIN_ROWS or not families[members[0]][2]:
            continue  # few of this layout, or no columns at all: value by value
        flag, ids = families[members[0]][0], families[members[0]][1]
        encoded = _encode_group(flag, ids, [families[i][2] for i in members])
        for i, blob in zip(members, encoded, strict=True):
            out[i] = blob
    rest = [i for i, blob in enumerate(out) if blob is None]
    values = _encode_values([c.value for i in rest for c in families[i][2]])
    if len(rest) >= _VECTOR_MIN_ROWS and all(families[i][2] for i in rest):
        framed = _frame_many([families[i] for i in rest], values)
        if framed is not None:
            for i, blob in zip(rest, framed, strict=True):
                out[i] = blob
            return [blob for blob in out if blob is not None]
    start = 0
    for i in rest:
        flag, ids, cells = families[i]
        end = start + len(cells)
        out[i] = _encode_one(flag, ids, cells, values[start:end])
        start = end
    return [blob for blob in out if blob is not None]


_OWN_DTYPE = np.dtype([("i", ">u2"), ("t", ">f8")])


def _size_tables(sizes: npt.NDArray[np.int64], code: npt.NDArray[np.int64]) -> list[bytes]:
    """Every value size as 1-, 2- and 4-byte big-endian integers, each table only where some
    family uses that width (`code` 0, 1, 2)."""
    return [
        sizes.astype(np.uint8).tobytes() if (code == 0).any() else b"",
        sizes.astype(">u2").tobytes() if (code == 1).any() else b"",
        sizes.astype(">u4").tobytes() if (code == 2).any() else b"",
    ]


def _frame_many(
    families: Sequence[tuple[int, bytes, Collection[Cell]]], values: list[bytes]
) -> list[bytes] | None:
    """`_encode_one` of each family (each with at least one cell; `values` their cells'
    encoded values, in order), its header, own timestamps and sizes computed for all of them
    at once with numpy (the stream writes its user families whole, their cells at their own
    times, many families a batch: framing them together costs less than one at a time).
    None when a timestamp is NaN."""
    counts = np.fromiter((len(cells) for _, _, cells in families), np.int64, len(families))
    starts = np.zeros(len(families), np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    ts = np.fromiter(
        (c.ts for _, _, cells in families for c in cells), np.float64, int(counts.sum())
    )
    if np.isnan(ts).any():
        return None  # max() and numpy disagree about NaN: the per-family path decides
    family_of = np.repeat(np.arange(len(families)), counts)
    base = np.maximum.reduceat(ts, starts)
    own = ts != base[family_of]
    m = np.add.reduceat(own, starts)
    picked = np.flatnonzero(own)
    pairs = np.empty(picked.size, _OWN_DTYPE)
    pairs["i"] = picked - starts[family_of[picked]]
    pairs["t"] = ts[picked]
    own_bytes = pairs.tobytes()
    own_ends = np.cumsum(m) * _OWN_DTYPE.itemsize
    own_from = (own_ends - m * _OWN_DTYPE.itemsize).tolist()
    sizes = np.fromiter(map(len, values), np.int64, len(values))
    widest = np.maximum.reduceat(sizes, starts)
    code = np.where(widest < 256, 0, np.where(widest < 65536, 1, 2))
    size_bytes = _size_tables(sizes, code)
    flags = np.fromiter((f for f, _, _ in families), np.uint8, len(families)) | (code << 1)
    heads = _heads(flags, counts, base, m).tobytes()
    out = []
    hs = _HEAD.size
    for k, (start, n, c, own_at, own_end, (_, ids, _)) in enumerate(
        zip(
            starts.tolist(),
            counts.tolist(),
            code.tolist(),
            own_from,
            own_ends.tolist(),
            families,
            strict=True,
        )
    ):
        w = 1 << c
        out.append(
            b"".join(
                (
                    heads[k * hs : (k + 1) * hs],
                    own_bytes[own_at:own_end],
                    ids,
                    size_bytes[c][start * w : (start + n) * w],
                    _array_header(n),
                    *values[start : start + n],
                )
            )
        )
    return out


def decode_family(blob: bytes) -> list[tuple[int, float, Any]]:
    """(column id, ts, value) of each cell."""
    version = blob[:1]
    if version == b"\x04":
        _, flags, n, base, m = _HEAD.unpack_from(blob)
        pos = _HEAD.size
        own: dict[int, float] = {}
        for _ in range(m):
            i, t = _OWN_TS.unpack_from(blob, pos)
            own[i] = t
            pos += _OWN_TS.size
        if flags & 1:
            ids = list(struct.unpack_from(f">{n}H", blob, pos))
            pos += 2 * n
        else:
            ids = list(blob[pos : pos + n])
            pos += n
        pos += n * (1, 2, 4)[(flags >> 1) & 3]  # the sizes: only the server needs them
        values = _decode_values(memoryview(blob)[pos:])
        if not own:
            return [(cid, base, v) for cid, v in zip(ids, values, strict=True)]
        return [
            (cid, own.get(i, base), v) for i, (cid, v) in enumerate(zip(ids, values, strict=True))
        ]
    if version == b"\x03":
        fam = _decode_family3(memoryview(blob)[1:])
        h = fam.header
        own3 = {int(h.own_ts[i]): h.own_ts[i + 1] for i in range(0, len(h.own_ts), 2)}
        return [
            (cid, own3.get(cid, h.base_ts), v) for cid, v in zip(h.ids, fam.values, strict=True)
        ]
    raise StoreError(f"unknown family encoding version {version!r}")
