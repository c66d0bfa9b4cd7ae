"""Nearest items to the user's click centroid, found by a pgvector HNSW index in PostgreSQL.

The `ann` retriever when `serving.ann_index = "pgvector"`: the same query and scores as
`retrieval/ann.py`, but the index lives in the table at `serving.ann_vector_url` (layout:
`tastemaker/pgvector.py`), built once and shared by every API process instead of built in
each at start. Found ids are mapped to catalog rows; ids not in the catalog, or deleted from
it, are dropped, so the catalog decides what is served.

With `sync` (the default) the table follows the catalog: filled from it when empty, and
every change the catalog feed applies (upsert, delete) is written to it. With `sync=false`
in the URL the table is the source of truth and never written.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from tastemaker.catalog import Catalog, CatalogError
from tastemaker.catalog.postgres import catalog_rows
from tastemaker.pgvector import PgVectorTable
from tastemaker.retrieval.ann import centroid_query
from tastemaker.retrieval.base import Candidates, RetrievalContext

__all__ = ["PgVectorRetriever", "changed_rows"]

log = logging.getLogger(__name__)


class PgVectorRetriever:
    """Items whose embeddings are closest (cosine) to the user's click centroid."""

    name = "ann"
    kind = "pgvector"

    def __init__(self, catalog: Catalog, url: str) -> None:
        self.table = PgVectorTable(url)
        self.catalog = catalog
        try:
            with self.table.exclusive():
                self._prepare(catalog)
        except BaseException:
            self.table.close()
            raise
        log.info("ann index: pgvector HNSW over table %s", self.table.table_name)

    def _prepare(self, catalog: Catalog) -> None:
        """Check the table against the catalog; with `sync`, create and fill it if needed."""
        dim = self.table.dim()
        if dim is not None and dim != catalog.dim:
            raise CatalogError(
                f"table {self.table.table_name} holds embeddings of dimension {dim}, "
                f"the catalog's have {catalog.dim}"
            )
        if self.table.sync:
            if dim is None:
                self.table.create(catalog.dim)
            if self.table.count() == 0:
                self.table.upsert(catalog_rows(catalog, np.flatnonzero(catalog.active)))
        elif dim is None:
            raise CatalogError(
                f"table {self.table.table_name} has no embedding vector column (sync=false: "
                "tastemaker does not create it)"
            )
        self.table.create_index()

    def set_catalog(self, catalog: Catalog) -> None:
        """Follow the living catalog; with `sync`, write its changes to the table first."""
        if self.table.sync and catalog is not self.catalog:
            upsert, delete = changed_rows(self.catalog, catalog)
            self.table.upsert(catalog_rows(catalog, upsert))
            self.table.delete(catalog.ids[delete].tolist())
        self.catalog = catalog

    def retrieve(self, ctx: RetrievalContext, k: int) -> Candidates:
        query = centroid_query(ctx)
        if query is None:
            return Candidates.empty()
        catalog = ctx.catalog
        ids, sims = self.table.search(query, k)
        rows = catalog.rows(ids)
        keep = rows >= 0
        keep[keep] = catalog.active[rows[keep]]
        scores = np.asarray(sims, np.float32)[keep]
        # cosine similarity in [-1, 1] -> positive scores, as the merge expects
        return Candidates(rows[keep], (scores + 1.0) / 2.0 + np.float32(1e-6))

    def close(self) -> None:
        self.table.close()


def changed_rows(old: Catalog, new: Catalog) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Rows of `new` to upsert (appended, or active with any column changed) and to delete
    (deactivated), compared column by column, vectorized."""
    n = len(old)
    changed = np.ones(len(new), bool)
    if n:
        head = slice(0, n)
        changed[head] = (
            (old.active != new.active[head])
            | (old.price != new.price[head])
            | (old.in_stock != new.in_stock[head])
            | (old.titles != new.titles[head])
            | (old.category_names[old.category] != new.category_names[new.category[head]])
            | (old.brand_names[old.brand] != new.brand_names[new.brand[head]])
            | np.any(old.embedding != new.embedding[head], axis=1)
        )
    upsert = np.flatnonzero(changed & new.active).astype(np.int64)
    delete = np.flatnonzero(changed & ~new.active).astype(np.int64)
    return upsert, delete
