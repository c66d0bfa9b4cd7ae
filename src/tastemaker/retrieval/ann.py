"""Nearest items to the user's short-term taste vector (the click centroid).

Exact inner products with numpy below `exact_below` items; above, a faiss index: `ivf` (the
default; `retrieval/vector_index.py`: about 4 sqrt(n) k-means lists, `nprobe` tuned at build
to reach `recall` of the exact top `k`) or `hnsw` (M=32, efSearch = k). On the serving
benchmark's items IVF answers faster than HNSW at a higher recall and builds faster
(measurements: docs/serving.md).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tastemaker.catalog import Catalog
from tastemaker.features.layout import PROFILE
from tastemaker.retrieval.base import Candidates, RetrievalContext
from tastemaker.retrieval.vector_index import IvfIndex, faiss_installed

__all__ = ["AnnRetriever"]

log = logging.getLogger(__name__)


class AnnRetriever:
    """Items whose embeddings are closest (inner product) to the user's click centroid."""

    name = "ann"

    def __init__(
        self,
        catalog: Catalog,
        *,
        exact_below: int = 20_000,
        index: Literal["ivf", "hnsw"] = "ivf",
        k: int = 200,
        recall: float = 0.95,
        hnsw_m: int = 32,
    ) -> None:
        self.catalog = catalog
        self._index: Any = None
        self._indexed = len(catalog)
        self.kind = "exact"
        self.nprobe = 0
        self.measured_recall = 1.0
        if len(catalog) >= exact_below and not faiss_installed():
            log.warning(
                "faiss is not installed (pip install 'tastemaker[offline]'): exact search "
                "over %d items",
                len(catalog),
            )
        elif len(catalog) >= exact_below:
            vectors = np.ascontiguousarray(catalog.embedding, dtype=np.float32)
            if index == "hnsw":
                import faiss  # imported only where an index is built

                faiss.omp_set_num_threads(1)  # one request, one core: processes scale
                hnsw = faiss.IndexHNSWFlat(catalog.dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
                hnsw.hnsw.efConstruction = 80
                hnsw.add(vectors)
                self._index, self.kind = hnsw, "hnsw"
            else:
                ivf = IvfIndex(vectors, k=k, recall=recall)
                self._index, self.kind = ivf, f"ivf{ivf.nlist}"
                self.nprobe, self.measured_recall = ivf.nprobe, ivf.measured_recall
            log.info(
                "ann index %s over %d items (nprobe %d, recall %.3f on a sample)",
                self.kind,
                len(catalog),
                self.nprobe,
                self.measured_recall,
            )

    def set_catalog(self, catalog: Catalog) -> None:
        """Follow the living catalog: items appended since are added to the index (an
        existing item's new embedding reaches the index at the next start; exact search and
        every other use of the embedding see it at once)."""
        if self._index is not None and len(catalog) > self._indexed:
            self._index.add(np.ascontiguousarray(catalog.embedding[self._indexed :]))
            self._indexed = len(catalog)
        self.catalog = catalog

    def retrieve(self, ctx: RetrievalContext, k: int) -> Candidates:
        query = centroid_query(ctx)
        if query is None:
            return Candidates.empty()
        catalog = ctx.catalog
        if self._index is not None:
            if self.kind == "hnsw":
                self._index.hnsw.efSearch = max(k, 64)
            scores, rows = self._index.search(query[None, :], k)
            keep = rows[0] >= 0
            found, sims = rows[0][keep].astype(np.int64), scores[0][keep]
        else:
            sim = catalog.embedding @ query
            k = min(k, sim.size)
            found = np.argpartition(-sim, k - 1)[:k].astype(np.int64)
            sims = sim[found]
        # cosine similarity in [-1, 1] -> positive scores, as the merge expects
        return Candidates(found, ((sims + 1.0) / 2.0).astype(np.float32) + 1e-6)


def centroid_query(ctx: RetrievalContext) -> npt.NDArray[np.float32] | None:
    """The user's click centroid as a unit query vector, or None when there is none to ask
    with (no clicks yet, a zero vector, or one of another dimension than the catalog's)."""
    cell = ctx.user.get(PROFILE, {}).get("click_centroid")
    if cell is None:
        return None
    query = np.asarray(cell.value, np.float32)
    norm = float(np.linalg.norm(query))
    if norm == 0.0 or query.shape[0] != ctx.catalog.dim:
        return None
    return query / norm
