"""The OnlineStore protocol, in Bigtable's model.

A row (an entity: a user, a session, an item) holds families; a family (one data type, with
its own TTL) holds columns; each column holds one cell: a value and the timestamp it is
valid at. Two rules hold on every backend:

- Newer wins: a cell written with an older timestamp than the stored one is ignored, so
  replayed and out-of-order writes never roll a feature back. Equal timestamps overwrite.
- TTL: a family of a row expires `ttl_s` seconds after its last write (the same as a Redis
  key's EXPIRE refreshed on every write). An expired family is never returned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

__all__ = [
    "Cell",
    "FamilySpec",
    "Mutation",
    "OnlineStore",
    "PreparedWrite",
    "PreparedWrites",
    "RowData",
    "StoreError",
    "columns_to_mutations",
]


class StoreError(RuntimeError):
    """A store backend failed or timed out; callers may fall back."""


class Cell(msgspec.Struct, array_like=True, frozen=True):
    """One column's value and the (event) time it is valid at, in seconds since the epoch.

    `value` is any msgpack/JSON-able value: numbers, strings, lists, string-keyed maps."""

    ts: float
    value: Any


class FamilySpec(msgspec.Struct, frozen=True):
    """A family and its time to live (None: never expires)."""

    name: str
    ttl_s: float | None = None


class Mutation(msgspec.Struct, frozen=True):
    """Cells to write into one family of one row.

    `whole`: the cells are the family's every live cell as their only writer read them,
    with its changes over them (the stream processor's user rows). Merging them cell by cell
    then gives exactly these cells, so a backend may write them as they are without reading
    the stored family first (the embedded store puts them; Redis sets them with
    `lua/set_whole.lua` instead of its merge script)."""

    row: str
    family: str
    cells: dict[str, Cell]
    whole: bool = False


# family -> column -> cell
RowData = dict[str, dict[str, Cell]]


def columns_to_mutations(
    family: str, rows: Sequence[str], columns: Mapping[str, Any], ts: float
) -> list[Mutation]:
    """A columnar bulk write as one mutation per row (numpy values as Python ones)."""
    values: dict[str, list[Any]] = {}
    for name, col in columns.items():
        listed = col.tolist() if hasattr(col, "tolist") else list(col)
        if len(listed) != len(rows):
            raise StoreError(f"column {name!r} has {len(listed)} values for {len(rows)} rows")
        values[name] = listed
    return [
        Mutation(row, family, {name: Cell(ts, vals[i]) for name, vals in values.items()})
        for i, row in enumerate(rows)
    ]


class OnlineStore(Protocol):
    """Rows of families of timestamped cells, read many at a time."""

    @property
    def families(self) -> Mapping[str, FamilySpec]:
        """The declared families; writing to any other is an error."""
        ...

    def get(self, rows: Sequence[str], families: Iterable[str]) -> dict[str, RowData]:
        """Read the given families of many rows in one call. Rows (and families) with nothing
        live are absent from the result, never an error."""
        ...

    def write(self, mutations: Sequence[Mutation], *, seen: Sequence[str] = ()) -> None:
        """Apply all mutations in one batch, newer timestamp winning per column, and record
        the idempotency keys `seen` (event ids) with them, in the same atomic step where the
        backend has one. A key is remembered for the store's `seen_ttl_s`."""
        ...

    def write_columns(
        self, family: str, rows: Sequence[str], columns: Mapping[str, Any], ts: float
    ) -> None:
        """Bulk write (a backfill, a batch job's output): `columns[name][i]` is row i's value
        of column `name` (numpy arrays or sequences), every cell at `ts`, newer winning per
        cell as in `write`. The fast path for many rows of one family."""
        ...

    def seen(self, keys: Sequence[str]) -> set[str]:
        """Which of `keys` were recorded by `write(..., seen=...)` and have not expired."""
        ...

    def delete_rows(self, rows: Sequence[str]) -> None:
        """Delete every family of each row (erasure)."""
        ...

    def forget(self, keys: Sequence[str]) -> None:
        """Delete idempotency keys recorded by `write(..., seen=...)` (erasure of a user's
        event ids); keys never recorded are ignored. An event whose id is forgotten and
        that is delivered again is applied again: forget only the ids of erased events."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...


class PreparedWrite(Protocol):
    """One write, encoded, to be sent (`start`) and waited for (`finish`) later."""

    def start(self) -> None:
        """Send it without waiting for the server's answer. Never raises: a failure to send
        is raised by `finish`."""
        ...

    def finish(self) -> None:
        """Wait until the server applied it (sending it first if `start` was not called);
        raises what `write` raises."""
        ...


@runtime_checkable
class PreparedWrites(Protocol):
    """A backend whose write is mostly waiting for a server (Redis) splits it, so a caller
    can do its own work meanwhile (the stream processor computes the next microbatch). The
    embedded store does not: its write is Python work under the GIL, and running it on
    another thread slowed a stream drain down (the two threads contend for the GIL)."""

    def prepare_write(
        self, mutations: Sequence[Mutation], *, seen: Sequence[str] = ()
    ) -> PreparedWrite:
        """Do the CPU work of `write(mutations, seen=seen)` now (encoding, packing the
        commands) and return the write, to be started and finished later in this thread.
        Writes finish in the order they were started; a prepared write may be dropped
        unsent."""
        ...
