"""The item catalog, held in RAM as columnar numpy arrays (row index = position)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from typing import Annotated

import msgspec
import numpy as np
import numpy.typing as npt

__all__ = ["Catalog", "CatalogError", "ItemChange"]


def _unit_rows(embeddings: npt.ArrayLike, n: int) -> npt.NDArray[np.float32]:
    """`n` embeddings scaled to unit length, or the CatalogError naming the bad row."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise CatalogError(
            f"column 'embedding' must be {n} vectors of one length, got shape {emb.shape}"
        )
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)):
        bad = int(np.flatnonzero(~np.isfinite(norms[:, 0]))[0])
        raise CatalogError(f"column 'embedding' row {bad}: not finite")
    # Rows already of unit length are kept bit for bit, so saving and loading a catalog
    # never changes it (dividing by a norm of 0.99999994 would move the last bits).
    scale = np.where(np.abs(norms - 1.0) > 1e-6, np.maximum(norms, 1e-12), 1.0)
    return (emb / scale).astype(np.float32)


class CatalogError(ValueError):
    """The catalog data is malformed; the message names the column and row."""


class ItemChange(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One entry of `POST /v1/items` and of the catalog change feed: an upsert (every field
    but `title` and `in_stock` required) or, with `deleted`, a removal."""

    # In characters; `events.max_id_bytes` bounds its UTF-8 bytes (`check_items`).
    item_id: Annotated[str, msgspec.Meta(min_length=1, max_length=400)]
    deleted: bool = False
    title: Annotated[str, msgspec.Meta(max_length=1000)] = ""
    category: Annotated[str, msgspec.Meta(max_length=256)] = ""
    brand: Annotated[str, msgspec.Meta(max_length=256)] = ""
    price: Annotated[float, msgspec.Meta(ge=0, le=1e12)] = 0.0
    embedding: list[float] = []
    in_stock: bool = True


class Catalog:
    """Items as columns: `ids[i]`, `category[i]`, ... describe the item in row `i`.

    Categorical columns are stored as int32 codes into `categories` / `brands`, so a
    per-category lookup over all candidates is one fancy index. Embeddings are float32 and
    L2-normalized, so a dot product is a cosine similarity.
    """

    def __init__(
        self,
        *,
        ids: Sequence[str],
        titles: Sequence[str],
        categories: Sequence[str],
        brands: Sequence[str],
        prices: npt.ArrayLike,
        embeddings: npt.ArrayLike,
        in_stock: npt.ArrayLike | None = None,
        active: npt.ArrayLike | None = None,
        added_ts: npt.ArrayLike | None = None,
        version: int = 0,
    ) -> None:
        n = len(ids)
        for name, col in (("title", titles), ("category", categories), ("brand", brands)):
            if len(col) != n:
                raise CatalogError(f"column {name!r} has {len(col)} rows, item_id has {n}")
        self.ids: npt.NDArray[np.object_] = np.asarray(ids, dtype=object)
        self.index: dict[str, int] = {item_id: row for row, item_id in enumerate(ids)}
        if len(self.index) != n:
            dup = next(i for i, count in Counter(ids).items() if count > 1)
            raise CatalogError(f"duplicate item_id {dup!r}")
        self.titles: npt.NDArray[np.object_] = np.asarray(titles, dtype=object)
        self.category_names, category_codes = np.unique(
            np.asarray(categories, dtype=str), return_inverse=True
        )
        self.brand_names, brand_codes = np.unique(
            np.asarray(brands, dtype=str), return_inverse=True
        )
        self.category: npt.NDArray[np.int32] = category_codes.astype(np.int32).reshape(-1)
        self.brand: npt.NDArray[np.int32] = brand_codes.astype(np.int32).reshape(-1)
        self.category_index = {str(c): i for i, c in enumerate(self.category_names)}
        self.brand_index = {str(b): i for i, b in enumerate(self.brand_names)}
        self.price: npt.NDArray[np.float32] = np.asarray(prices, dtype=np.float32).reshape(-1)
        if self.price.shape != (n,):
            raise CatalogError(f"column 'price' has {self.price.shape[0]} rows, item_id has {n}")
        if not np.all(np.isfinite(self.price)):
            bad = int(np.flatnonzero(~np.isfinite(self.price))[0])
            raise CatalogError(f"column 'price' row {bad}: not a finite number")
        self.embedding: npt.NDArray[np.float32] = _unit_rows(embeddings, n)
        stock = np.ones(n, bool) if in_stock is None else np.asarray(in_stock, dtype=bool)
        if stock.shape != (n,):
            raise CatalogError(f"column 'in_stock' has {stock.shape[0]} rows, item_id has {n}")
        self.in_stock: npt.NDArray[np.bool_] = stock
        # Deleted items keep their row (row numbers never change under a running process)
        # but are inactive: never recommended.
        self.active: npt.NDArray[np.bool_] = (
            np.ones(n, bool) if active is None else np.asarray(active, dtype=bool)
        )
        # When an item arrived through the change feed (-inf: it was in the base catalog).
        self.added_ts: npt.NDArray[np.float64] = (
            np.full(n, -np.inf) if added_ts is None else np.asarray(added_ts, np.float64)
        )
        self.added_rows = np.flatnonzero(np.isfinite(self.added_ts)).astype(np.int64)
        self.version = version  # the last change-feed position applied

    def apply(self, changes: Sequence[tuple[int, ItemChange, float]]) -> Catalog:
        """A new catalog with the feed's `(position, change, ts)` applied, in order: an upsert
        of a known id replaces its row, of a new id appends one; a delete deactivates the
        row. Row numbers of existing items never change."""
        if not changes:
            return self
        ids = list(self.ids.tolist())
        titles = list(self.titles.tolist())
        cats = list(self.category_names[self.category].tolist())
        brands = list(self.brand_names[self.brand].tolist())
        price = self.price.tolist()
        emb = list(self.embedding)
        stock = self.in_stock.tolist()
        active = self.active.tolist()
        added = self.added_ts.tolist()
        index = dict(self.index)
        for _, change, ts in changes:
            row = index.get(change.item_id)
            if change.deleted:
                if row is not None:
                    active[row] = False
                continue
            values = (
                change.title or change.item_id,
                change.category,
                change.brand,
                change.price,
                np.asarray(change.embedding, np.float32),
                change.in_stock,
            )
            if row is None:
                index[change.item_id] = len(ids)
                ids.append(change.item_id)
                for col, v in zip((titles, cats, brands, price, emb, stock), values, strict=True):
                    col.append(v)
                active.append(True)
                added.append(ts)
            else:
                for col, v in zip((titles, cats, brands, price, emb, stock), values, strict=True):
                    col[row] = v
                active[row] = True
        return Catalog(
            ids=ids,
            titles=titles,
            categories=cats,
            brands=brands,
            prices=np.asarray(price, np.float32),
            embeddings=np.stack(emb) if emb else np.zeros((0, self.dim), np.float32),
            in_stock=stock,
            active=active,
            added_ts=added,
            version=changes[-1][0],
        )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.embedding.shape[1])

    def rows(self, item_ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Row index of each id, -1 for ids not in the catalog."""
        # map() with a repeated default calls dict.get(id, -1) without a Python-level loop.
        found = map(self.index.get, item_ids, itertools.repeat(-1, len(item_ids)))
        return np.fromiter(found, dtype=np.int64, count=len(item_ids))
