"""The Retriever protocol and the candidate set the retrievers fill together."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from tastemaker.arrays import unique_rows
from tastemaker.catalog import Catalog
from tastemaker.store import Cell, RowData

__all__ = ["CandidateSet", "Candidates", "RetrievalContext", "Retriever", "merge", "with_rows"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


class RetrievalContext(msgspec.Struct, frozen=True):
    """What one request knows when retrieving: the user's rows and the global top lists,
    fetched once for all retrievers."""

    user: RowData
    popular: dict[str, Cell]
    catalog: Catalog
    user_id: str = ""
    region: str | None = None  # the request's context
    device: str | None = None
    # What one retriever read from the store for others of the same request (one round
    # trip instead of several).
    shared: dict[str, Any] = msgspec.field(default_factory=dict)


class Candidates(msgspec.Struct, frozen=True):
    """Catalog rows and one retriever's score for each: positive, higher is better (0 means
    "not proposed" once candidates are merged)."""

    rows: IntArray
    scores: FloatArray

    @staticmethod
    def empty() -> Candidates:
        return Candidates(np.empty(0, np.int64), np.empty(0, np.float32))


class Retriever(Protocol):
    """Proposes up to `k` candidate items for a request."""

    @property
    def name(self) -> str: ...

    def retrieve(self, ctx: RetrievalContext, k: int) -> Candidates: ...


class CandidateSet(msgspec.Struct, frozen=True):
    """The union of all retrievers' candidates: unique `rows`, a score column per retriever
    (0 where it did not propose the row) and a bitmask of which retrievers did."""

    rows: IntArray
    scores: FloatArray  # shape (len(rows), len(names))
    sources: npt.NDArray[np.uint32]
    names: list[str]


def merge(names: Sequence[str], results: Sequence[Candidates]) -> CandidateSet:
    """Union the retrievers' candidates, vectorized: one `np.unique` over all rows."""
    if not results or all(r.rows.size == 0 for r in results):
        return CandidateSet(
            np.empty(0, np.int64),
            np.zeros((0, len(names)), np.float32),
            np.empty(0, np.uint32),
            list(names),
        )
    n = len(names)
    all_rows = np.concatenate([r.rows for r in results])
    which = np.repeat(np.arange(len(results), dtype=np.int64), [r.rows.size for r in results])
    all_scores = np.concatenate([r.scores for r in results]).astype(np.float32, copy=False)
    rows, inverse = unique_rows(all_rows)
    # Cells of the flat (retriever, row) matrix: the best score where a retriever proposed a
    # row more than once, and a bit per retriever that proposed it, packed into `sources`
    # with one product (the bits are distinct, so their sum is their OR). Retriever-major,
    # so each retriever's column of `scores` (a column-major view) is contiguous for the
    # per-column work of `assemble`.
    cell = which * rows.size + inverse
    flat = np.zeros(n * rows.size, np.float32)
    np.maximum.at(flat, cell, all_scores)
    proposed = np.zeros(n * rows.size, bool)
    proposed[cell] = True
    bit = np.uint32(1) << np.arange(n, dtype=np.uint32)
    sources = (proposed.reshape(n, rows.size).T @ bit).astype(np.uint32, copy=False)
    return CandidateSet(rows, flat.reshape(n, rows.size).T, sources, list(names))


def with_rows(cands: CandidateSet, rows: npt.NDArray[np.int64]) -> CandidateSet:
    """The candidate set plus `rows` no retriever proposed (all their scores 0)."""
    extra = np.setdiff1d(rows, cands.rows)
    if extra.size == 0:
        return cands
    all_rows = np.concatenate([cands.rows, extra])
    order = np.argsort(all_rows, kind="stable")
    scores = np.concatenate([cands.scores, np.zeros((extra.size, len(cands.names)), np.float32)])
    sources = np.concatenate([cands.sources, np.zeros(extra.size, np.uint32)])
    return CandidateSet(all_rows[order], scores[order], sources[order], cands.names)
