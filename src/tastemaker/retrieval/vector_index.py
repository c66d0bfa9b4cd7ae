"""An inverted-file (faiss IVF) index for inner-product search, tuned for recall at build.

Item vectors cluster (by category, brand, price; by who engages with them), which is what an
inverted file needs: about 4 sqrt(n) k-means lists, and a query scans the `nprobe` lists
nearest to it. `nprobe` is chosen when the index is built, as about the smallest number of
lists (powers of two, then two halvings of the last gap) that finds `recall` of the exact top
`k` for 256 seeded queries shaped like the retrievers' (sums of 4 of the index's own vectors,
drawn in proportion to their norm). Vectors that do not cluster make it probe more lists, up
to all of them (exact search).

`mips=True` is for vectors whose norms differ and matter (ALS item factors): each vector x
gets one more coordinate sqrt(M^2 - |x|^2), M the largest norm, so all have norm M and the
largest inner product with (q, 0) is the nearest by angle, which the lists are built for
(Bachrach et al., "Speeding up the Xbox recommender system using a euclidean transformation
for inner-product spaces", RecSys 2014). Scores returned are the true inner products.

On the serving benchmark's items and queries it is faster than HNSW at a higher recall, for
the click-centroid ANN and the ALS factors alike (measurements: docs/serving.md).
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from tastemaker.extras import missing_extra

__all__ = ["IvfIndex"]

FloatArray = npt.NDArray[np.float32]
_TUNING_QUERIES = 256
_ITEMS_PER_QUERY = 4


def faiss_installed() -> bool:
    """Whether faiss (the `offline` extra) can be imported; without it the retrievers search
    exactly with numpy, which stays correct and costs more on large catalogs."""
    return importlib.util.find_spec("faiss") is not None


class IvfIndex:
    """Inner-product search over `vectors` (rows in order) with a tuned `nprobe`."""

    def __init__(
        self, vectors: FloatArray, *, k: int, recall: float, mips: bool = False, seed: int = 0
    ) -> None:
        try:
            import faiss  # imported only where an index is built
        except ImportError as exc:
            raise missing_extra("faiss-cpu", "offline", "an approximate vector index") from exc

        faiss.omp_set_num_threads(1)  # one request, one core: processes scale, not threads
        base = np.ascontiguousarray(vectors, dtype=np.float32)
        n = base.shape[0]
        self.mips = mips
        self._swig_ptr = faiss.swig_ptr
        self._max_norm = float(np.linalg.norm(base, axis=1).max()) if mips and n else 0.0
        data = self._augment(base)
        dim = data.shape[1]
        nlist = int(2 ** round(math.log2(max(16.0, 4 * math.sqrt(max(n, 1))))))
        self.nlist = max(1, min(nlist, 2 ** int(math.log2(max(1, n // 39)))))  # k-means: 39 a list
        self._index: Any = faiss.IndexIVFFlat(
            faiss.IndexFlatIP(dim), dim, self.nlist, faiss.METRIC_INNER_PRODUCT
        )
        rng = np.random.default_rng(seed)
        self._index.train(data[rng.choice(n, min(n, 64 * self.nlist), replace=False)])
        self._index.add(data)
        # Tuning queries like the retrievers' (a click centroid, a user's recent items summed):
        # sums of a few of the index's own vectors, drawn in proportion to their norm (people
        # engage with the items ALS gives long vectors; a near-zero vector's direction is
        # noise), normalized.
        norms = np.linalg.norm(base, axis=1).astype(np.float64)
        pool = np.flatnonzero(norms > 0)
        if pool.size:
            picks = rng.choice(
                pool, (_TUNING_QUERIES, _ITEMS_PER_QUERY), p=norms[pool] / norms[pool].sum()
            )
            queries = base[picks].sum(axis=1)
            queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-30)
        else:
            queries = np.empty((0, base.shape[1]), np.float32)
        self.nprobe, self.measured_recall = self._tune(base, queries, min(k, n), recall)

    def _augment(self, x: FloatArray) -> FloatArray:
        if not self.mips:
            return np.ascontiguousarray(x, dtype=np.float32)
        extra = np.sqrt(np.maximum(self._max_norm**2 - np.einsum("ij,ij->i", x, x), 0.0))
        return np.ascontiguousarray(np.hstack([x, extra[:, None]]), dtype=np.float32)

    def _query(self, q: FloatArray) -> tuple[FloatArray, FloatArray]:
        """The queries as the index takes them, and their norms: for MIPS each (q, 0) / |q|
        (<(x, e), (q, 0) / |q|> = <x, q> / |q|), built in place."""
        n, dim = q.shape
        if not self.mips:
            return np.ascontiguousarray(q, dtype=np.float32), np.ones(n, np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", q, q)).astype(np.float32)
        x = np.zeros((n, dim + 1), np.float32)
        x[:, :dim] = q / np.where(norms > 0, norms, 1.0)[:, None]
        return x, norms

    def _tune(
        self, base: FloatArray, queries: FloatArray, k: int, recall: float
    ) -> tuple[int, float]:
        if queries.shape[0] == 0 or k == 0:
            self._index.nprobe = self.nlist
            return self.nlist, 1.0
        exact = np.concatenate(
            [
                np.argpartition(-(chunk @ base.T), k - 1, axis=1)[:, :k]
                for chunk in np.array_split(queries, max(1, queries.shape[0] // 32))
            ]
        )

        def recall_at(probe: int) -> float:
            self._index.nprobe = probe
            _, found = self._index.search(self._query(queries)[0], k)
            return float(
                np.mean([np.intersect1d(f, e).size / k for f, e in zip(found, exact, strict=True)])
            )

        # Powers of two up to the first that reaches `recall`, then two halvings of the gap
        # below it: the search costs about nprobe, so 80 instead of 128 is 37% off.
        probes = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if p < self.nlist]
        failed, reached = 0, 0.0
        for probe in [*probes, self.nlist]:
            reached = recall_at(probe)
            if reached >= recall:
                break
            failed = probe
        else:
            return self.nlist, reached
        for _ in range(2):
            mid = (failed + probe) // 2
            if mid <= failed:
                break
            got = recall_at(mid)
            if got >= recall:
                probe, reached = mid, got
            else:
                failed = mid
        self._index.nprobe = probe
        return probe, reached

    def add(self, vectors: FloatArray) -> None:
        """Append rows (the living catalog's new items) to the lists they are nearest to."""
        self._index.add(self._augment(np.asarray(vectors, dtype=np.float32)))

    def search(self, queries: FloatArray, k: int) -> tuple[FloatArray, npt.NDArray[np.int64]]:
        """(inner products, rows) of the `k` best rows for each query, best first; rows are
        -1 where fewer were found."""
        # One request asks for one query: faiss's C++ search is called on our own output
        # arrays, without its Python wrapper's checks and copies (a sizeable share of a
        # one-query search).
        x, norms = self._query(np.asarray(queries, dtype=np.float32))
        n = x.shape[0]
        sims = np.empty((n, k), np.float32)
        rows = np.empty((n, k), np.int64)
        ptr = self._swig_ptr
        self._index.search_c(n, ptr(x), k, ptr(sims), ptr(rows))
        if self.mips:
            # Slots with no row (fewer than k in the probed lists) hold faiss's -FLT_MAX,
            # which scaling would overflow: they are -inf.
            missing = rows < 0
            sims[missing] = 0.0
            sims *= norms[:, None]
            sims[missing] = -np.inf
        return sims, rows
