"""The family encoding: the column-wise (vectorized) path writes exactly the bytes of the
value-by-value path, and both decode back to what was written."""

from __future__ import annotations

import math
import random
from typing import Any

import msgspec
import numpy as np
import pytest

from tastemaker.store import codec
from tastemaker.store.base import Cell, StoreError
from tastemaker.store.codec import (
    _encode_one,
    _encode_values,
    decode_family,
    encode_columns,
    encode_families,
    id_bytes,
)

INT_EDGES = [
    0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1,
    -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63),
]  # fmt: skip


def _column_of(kind: str, rnd: random.Random) -> Any:
    if kind == "int":
        return rnd.choice(INT_EDGES) if rnd.random() < 0.5 else rnd.randint(-(2**40), 2**40)
    if kind == "float":
        if rnd.random() < 0.3:
            return rnd.random()
        return rnd.choice(
            [0.5, -0.0, 0.1, 1e300, -1e-300, math.inf, -math.inf, 3.4e38, 1.7e9 + 0.25, 0.0]
        )
    # Columns of one kind throughout, which take the uniform-width fast paths.
    if kind == "f32":
        return float(np.float32(rnd.uniform(-10, 10)))
    if kind == "f64":
        return 1.7e9 + rnd.random()
    if kind == "fixint":
        return rnd.randint(0, 127)
    if kind == "u16":
        return rnd.randint(256, 65535)
    if kind == "negfix":
        return rnd.randint(-32, -1)
    if kind == "str":
        return rnd.choice(["", "brand042", "grüße ✓", "x" * rnd.randint(0, 40)])
    if kind == "mixed":
        return rnd.choice([None, True, False, 7, 2.5, "s", [1, "a"], {"k": 0.25}])
    if kind == "long":
        return "y" * rnd.randint(0, 100)  # some values beyond the vectorized width
    if kind == "bigint":
        return rnd.choice([2**64 - 1, 5])  # beyond int64: the value-by-value path
    raise AssertionError(kind)


def _families(rows: int, kinds: list[str], seed: int) -> list[tuple[int, bytes, list[Cell]]]:
    rnd = random.Random(seed)
    flag, ids = id_bytes(list(range(3, 3 + len(kinds))))
    out = []
    for r in range(rows):
        ts = 1.7e9 + r
        cells = [Cell(ts, _column_of(k, rnd)) for k in kinds]
        if r % 7 == 3:  # a cell with its own timestamp
            cells[0] = Cell(ts - 0.5, cells[0].value)
        out.append((flag, ids, cells))
    return out


@pytest.mark.parametrize(
    "kinds",
    [
        ["int", "float", "str"],
        ["float"] * 5 + ["int"] * 5,
        ["mixed", "int", "str"],
        ["long", "float"],
        ["bigint", "int"],
        ["int"] * 300,  # 300 columns: two-byte array header
        ["f32", "f64", "fixint", "u16", "negfix"],
        ["f32", "fixint"],  # every column fills its width: nothing to drop
    ],
)
def test_the_vectorized_path_writes_the_same_bytes(
    kinds: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    families = _families(40, kinds, seed=len(kinds))
    groups: list[int] = []
    real = codec._encode_group
    monkeypatch.setattr(
        codec,
        "_encode_group",
        lambda *a: groups.append(len(a[2])) or real(*a),  # type: ignore[func-returns-value]
    )
    got = encode_families(families)
    assert groups == [40]  # one layout, encoded column by column
    for (flag, ids, cells), blob in zip(families, got, strict=True):
        expected = _encode_one(flag, ids, cells, _encode_values([c.value for c in cells]))
        assert blob == expected
        decoded = decode_family(blob)
        assert [(ts, v) for _, ts, v in decoded] == [(c.ts, c.value) for c in cells]
        assert all(type(v) is type(c.value) for (_, _, v), c in zip(decoded, cells, strict=True))


def test_layouts_seen_a_few_times_and_many_times_in_one_call() -> None:
    many = _families(30, ["int", "float"], seed=1)
    few = _families(3, ["str", "int", "float"], seed=2)
    mixed = [f for pair in zip(many, few + many[3:], strict=False) for f in pair]
    got = encode_families(mixed)
    assert len(got) == len(mixed)
    for (_, _, cells), blob in zip(mixed, got, strict=True):
        assert [v for _, _, v in decode_family(blob)] == [c.value for c in cells]


def test_columns_encode_to_the_bytes_of_the_same_cells() -> None:
    n = 30
    columns: list[Any] = [
        np.linspace(-1, 1, n, dtype=np.float32),
        np.linspace(0, 1, n) / 3,
        np.array(INT_EDGES[:n] + [0] * (n - len(INT_EDGES[:n])), dtype=np.int64),
        np.arange(n, dtype=np.uint16) * 300,
        [f"s{i}" for i in range(n)],
        [None, True, 2.5, "x", [1]] * (n // 5),
    ]
    flag, ids = id_bytes(list(range(len(columns))))
    got = encode_columns(flag, ids, columns, 7.0, n)
    assert got is not None
    cells = [
        [Cell(7.0, c[i].item() if isinstance(c, np.ndarray) else c[i]) for c in columns]
        for i in range(n)
    ]
    assert got == [
        _encode_one(flag, ids, row, _encode_values([c.value for c in row])) for row in cells
    ]
    assert encode_columns(flag, ids, [["z" * 100] * n], 7.0, n) is None  # too wide: per value
    with pytest.raises(StoreError, match="2 values for 30 rows"):
        encode_columns(flag, ids, [[1, 2]], 7.0, n)


def test_families_without_columns_encode_as_on_the_per_value_path() -> None:
    empty: list[tuple[int, bytes, list[Cell]]] = [(0, b"", [])] * 20
    assert encode_families(empty) == [_encode_one(0, b"", [], [])] * 20
    assert decode_family(encode_families(empty)[0]) == []


def test_nan_is_stored_as_float64() -> None:
    families = _families(20, ["float"], seed=3)
    families[5] = (families[5][0], families[5][1], [Cell(1.0, math.nan)])
    blob = encode_families(families)[5]
    assert blob[-9] == 0xCB
    assert math.isnan(msgspec.msgpack.decode(blob[-9:]))


def test_a_family_too_wide_is_a_typed_error() -> None:
    with pytest.raises(StoreError, match="at most 65535 columns"):
        encode_families([(0, b"", [Cell(1.0, 0)] * 65536)])
    with pytest.raises(StoreError, match="column ids above 65535"):
        id_bytes([1, 70000])


def test_families_framed_together_get_the_bytes_of_one_at_a_time() -> None:
    """The per-value path frames many families at once with numpy (`_frame_many`): each gets
    the bytes `_encode_one` gives it, whatever its timestamps, value sizes and column ids."""
    rnd = random.Random(7)
    families: list[tuple[int, bytes, list[Cell]]] = []
    for k in range(60):
        n = rnd.choice([1, 2, 13, 16, 40])
        flag, ids = id_bytes(sorted(rnd.sample(range(1, 400 if k % 3 else 200), n)))
        base = 1.7e9 + k
        cells = []
        for j in range(n):
            size = 70_000 if (k, j) == (5, 0) else rnd.choice([0, 3, 200, 300, 10])
            ts = base if rnd.random() < 0.6 else base - rnd.choice([0.5, 86400.0, 1e9])
            cells.append(Cell(ts, {"k": "v" * size} if rnd.random() < 0.5 else ["x"] * size))
        families.append((flag, ids, cells))
    values = _encode_values([c.value for _, _, cells in families for c in cells])
    framed = codec._frame_many(families, values)
    assert framed is not None
    start = 0
    for (flag, ids, cells), blob in zip(families, framed, strict=True):
        expected = _encode_one(flag, ids, cells, values[start : start + len(cells)])
        start += len(cells)
        assert blob == expected
        assert [(ts, v) for _, ts, v in decode_family(blob)] == [(c.ts, c.value) for c in cells]
    assert encode_families(families) == framed  # the path encode_families takes for them
    nan = [(flag, ids, [Cell(math.nan, 1)]) for flag, ids, _ in families]
    assert codec._frame_many(nan, [b"\x01"] * len(nan)) is None
