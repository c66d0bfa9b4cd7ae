"""Load and save catalogs in a PostgreSQL table (`tastemaker/pgvector.py` has its layout).

`catalog.path = "postgresql://HOST/DB?table=items"` loads the catalog from the table at
start; rows are ordered by `item_id`. An item whose embedding is NULL gets a zero vector:
it is served by every retriever but the embedding ones (its cosine similarity is 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from tastemaker.catalog.catalog import Catalog, CatalogError

if TYPE_CHECKING:
    from tastemaker.pgvector import ItemRows

__all__ = ["POSTGRES_SCHEMES", "catalog_rows", "load_postgres_catalog", "save_postgres_catalog"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def load_postgres_catalog(url: str) -> Catalog:
    """Read every item of the table at `url`."""
    from tastemaker.pgvector import PgVectorError, PgVectorTable

    try:
        table = PgVectorTable(url)
        try:
            items = table.read()
            if not items.ids:  # no vectors to take the dimension from: the declared one
                items.embeddings = np.zeros((0, table.dim() or 1), np.float32)
        finally:
            table.close()
    except PgVectorError as exc:
        raise CatalogError(f"catalog {_redact(url)}: {exc}") from exc
    except Exception as exc:  # psycopg's errors: connection refused, no such table, ...
        raise CatalogError(f"catalog {_redact(url)}: {type(exc).__name__}: {exc}") from exc
    return Catalog(
        ids=items.ids,
        titles=[t or i for t, i in zip(items.titles, items.ids, strict=True)],
        categories=items.categories,
        brands=items.brands,
        prices=items.prices,
        embeddings=items.embeddings,
        in_stock=items.in_stock,
    )


def save_postgres_catalog(catalog: Catalog, url: str) -> None:
    """Write the catalog's active items into the table at `url` (created with its HNSW index
    where missing), replacing items of the same id."""
    from tastemaker.pgvector import PgVectorTable

    table = PgVectorTable(url)
    try:
        table.create(catalog.dim)
        table.upsert(catalog_rows(catalog, np.flatnonzero(catalog.active)))
    finally:
        table.close()


def catalog_rows(catalog: Catalog, rows: npt.NDArray[np.int64]) -> ItemRows:
    """The catalog's `rows` as the table's columns."""
    from tastemaker.pgvector import ItemRows

    return ItemRows(
        catalog.ids[rows].tolist(),
        catalog.titles[rows].tolist(),
        catalog.category_names[catalog.category[rows]].tolist(),
        catalog.brand_names[catalog.brand[rows]].tolist(),
        catalog.price[rows],
        catalog.in_stock[rows],
        catalog.embedding[rows],
        np.ones(len(rows), bool),
    )


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, userinfo = head.partition("//")
    return f"{scheme}//{userinfo.split(':', 1)[0]}:***@{tail}"
