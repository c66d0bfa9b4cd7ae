"""What an aggregation sees and the protocol it implements.

An aggregation is a pure function `(state, facts) -> state`: the stream processor and the
offline replay call the same code, so training never sees features computed differently from
serving. It runs over a whole microbatch at once (`apply_batch` on a `FactBatch`, the facts of
many users as numpy columns); `apply` for one user's facts is the same code on a batch of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, Self

import msgspec
import numpy as np
import numpy.typing as npt

from tastemaker.events import EventType

__all__ = ["KEY_FIELDS", "TYPES", "Aggregation", "Fact", "FactBatch", "factorize", "type_table"]

TYPES: list[EventType] = list(EventType)
"""Event types in code order: `FactBatch.type` holds indexes into this list."""
_TYPE_CODE = {t: i for i, t in enumerate(TYPES)}
KEY_FIELDS = ("category", "brand", "item_id")


def type_table(types: Sequence[EventType]) -> npt.NDArray[np.bool_]:
    """A lookup table by type code: `type_table(types)[batch.type]` marks facts of `types`."""
    table = np.zeros(len(TYPES), dtype=np.bool_)
    table[[_TYPE_CODE[t] for t in types]] = True
    return table


class Fact(msgspec.Struct, frozen=True):
    """An event joined with the catalog attributes of its item (None for unknown items)."""

    ts: float
    type: EventType
    item_id: str
    session_id: str
    value: float | None = None
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    embedding: npt.NDArray[np.float32] | None = None


class FactBatch:
    """The facts of several users as columns: each user's facts contiguous (user `u` owns
    rows `starts[u]:starts[u + 1]`), in time order within a user for the stream.

    - `ts`, `type` (codes into `TYPES`), `price` (NaN where the item is unknown);
    - `keys[field]` for "category", "brand", "item_id": `(codes, vocabulary)`, code -1 where
      the fact has no such value;
    - `embedding_rows` into `embeddings` (-1 where the item has none).

    Why plain parallel numpy arrays rather than a DataFrame: the aggregations need integer
    codes per categorical field and each user's segment, which numpy gives directly
    (`np.bincount`, `np.unique`, `np.add.reduceat` over codes); a DataFrame would add a
    conversion per batch for no operation the aggregations use."""

    __slots__ = ("embedding_rows", "embeddings", "keys", "price", "starts", "ts", "type", "user")

    def __init__(
        self,
        starts: npt.NDArray[np.int64],
        *,
        ts: npt.NDArray[np.float64],
        type_: npt.NDArray[np.int64],
        keys: dict[str, tuple[npt.NDArray[np.int64], list[str]]],
        price: npt.NDArray[np.float64],
        embedding_rows: tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]],
    ) -> None:
        self.starts = starts
        self.ts = ts
        self.type = type_
        self.keys = keys
        self.price = price
        self.embedding_rows, self.embeddings = embedding_rows
        n_users = starts.size - 1
        self.user = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(starts))

    @property
    def n_users(self) -> int:
        return int(self.starts.size - 1)

    def __len__(self) -> int:
        return int(self.ts.size)

    @classmethod
    def from_users(cls, users: Sequence[Sequence[Fact]]) -> Self:
        """Each user's facts, user after user, as one batch (vocabularies and an embedding
        matrix shared by all)."""
        facts = [f for user in users for f in user]
        n = len(facts)
        keys = {field: factorize([getattr(f, field) for f in facts]) for field in KEY_FIELDS}
        embedded = [f.embedding for f in facts if f.embedding is not None]
        rows = np.full(n, -1, dtype=np.int64)
        rows[[i for i, f in enumerate(facts) if f.embedding is not None]] = np.arange(len(embedded))
        matrix = np.stack(embedded) if embedded else np.zeros((0, 0), dtype=np.float32)
        return cls(
            np.cumsum([0, *(len(user) for user in users)], dtype=np.int64),
            ts=np.array([f.ts for f in facts], dtype=np.float64),
            type_=np.array([_TYPE_CODE[f.type] for f in facts], dtype=np.int64),
            keys=keys,
            price=np.array([np.nan if f.price is None else f.price for f in facts]),
            embedding_rows=(rows, matrix.astype(np.float32, copy=False)),
        )

    def take(self, mask: npt.NDArray[np.bool_]) -> FactBatch:
        """The facts where `mask` holds, for the same users (some may have none left)."""
        counts = np.bincount(self.user[mask], minlength=self.n_users)
        starts = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        keys = {f: (codes[mask], vocab) for f, (codes, vocab) in self.keys.items()}
        return FactBatch(
            starts,
            ts=self.ts[mask],
            type_=self.type[mask],
            keys=keys,
            price=self.price[mask],
            embedding_rows=(self.embedding_rows[mask], self.embeddings),
        )


def factorize(values: Sequence[str | None]) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Codes of `values` (-1 for None) and the vocabulary they index, in first-seen order."""
    index: dict[str, int] = {}
    codes = np.fromiter(
        (-1 if v is None else index.setdefault(v, len(index)) for v in values),
        dtype=np.int64,
        count=len(values),
    )
    return codes, list(index)


class Aggregation(Protocol):
    """One declared feature: its column `name` in `family`, and how facts update it."""

    @property
    def name(self) -> str: ...

    @property
    def family(self) -> str: ...

    def apply(self, state: Any, facts: Sequence[Fact]) -> Any:
        """New state from the previous one (None at first) and the user's new facts in
        time order. Must not mutate `state`."""
        ...

    def apply_batch(self, states: Sequence[Any], batch: FactBatch) -> list[Any]:
        """`apply` for every user of `batch` at once: user `u`'s new state from `states[u]`
        and its facts. A user whose state does not change gets the very object back."""
        ...
