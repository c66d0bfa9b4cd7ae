"""Artifacts -> `BatchModels`: the current versions, mapped onto the catalog's rows."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
import scipy.sparse as sp

from tastemaker.artifacts.store import ArtifactStore, Version
from tastemaker.catalog import Catalog
from tastemaker.retrieval import BatchModels
from tastemaker.retrieval.vector_index import IvfIndex, faiss_installed

__all__ = ["MODEL_ARTIFACTS", "load_models", "pick_version"]

MODEL_ARTIFACTS = ("covisitation", "embeddings", "segments", "popularity")
_POPULAR_KEPT = 1000


def pick_version(
    artifacts: ArtifactStore, name: str, max_watermark: int | None = None
) -> Version | None:
    """The current version, or with `max_watermark` the newest kept version built from no
    log offset beyond it (a point-in-time view for training)."""
    if max_watermark is None:
        return artifacts.current(name)
    fitting = [v for v in artifacts.versions(name) if v.manifest.watermark <= max_watermark]
    return fitting[-1] if fitting else None


def _neighbours(v: Version, catalog: Catalog) -> sp.csr_matrix:
    t = pq.read_table(v.path / "neighbours.parquet")
    a = catalog.rows(t["item_id"].to_pylist())
    b = catalog.rows(t["neighbour_id"].to_pylist())
    w = t["score"].to_numpy().astype(np.float32)
    ok = (a >= 0) & (b >= 0)
    n = len(catalog)
    return sp.csr_matrix((w[ok], (a[ok], b[ok])), shape=(n, n))


def _factors(v: Version, catalog: Catalog) -> npt.NDArray[np.float32]:
    ids = pq.read_table(v.path / "items.parquet")["item_id"].to_pylist()
    f = np.load(v.path / "item_factors.npy")
    rows = catalog.rows(ids)
    out = np.zeros((len(catalog), f.shape[1]), np.float32)
    out[rows[rows >= 0]] = f[rows >= 0]
    return out


def _segments(
    v: Version, catalog: Catalog
) -> tuple[dict[str, int], list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]]:
    seg = pq.read_table(v.path / "segments.parquet")
    users = dict(zip(seg["user_id"].to_pylist(), seg["segment"].to_pylist(), strict=True))
    top = pq.read_table(v.path / "segment_top.parquet")
    segs = top["segment"].to_numpy()
    rows = catalog.rows(top["item_id"].to_pylist())
    scores = top["score"].to_numpy().astype(np.float32)
    k = int(v.manifest.rows.get("segments", 0))
    lists = []
    for s in range(k):
        m = (segs == s) & (rows >= 0)
        lists.append((rows[m], scores[m]))
    return users, lists


def _first_ts(v: Version, catalog: Catalog) -> npt.NDArray[np.float64]:
    t = pq.read_table(v.path / "popularity.parquet", columns=["item_id", "first_ts"])
    rows = catalog.rows(t["item_id"].to_pylist())
    out = np.full(len(catalog), np.inf)
    out[rows[rows >= 0]] = t["first_ts"].to_numpy()[rows >= 0]
    return out


def _popular(v: Version, catalog: Catalog) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    t = pq.read_table(v.path / "popularity.parquet").slice(0, _POPULAR_KEPT)
    rows = catalog.rows(t["item_id"].to_pylist())
    log_score = t["log_score"].to_numpy()
    keep = rows >= 0
    top = log_score[keep].max() if keep.any() else 0.0
    return rows[keep], np.exp((log_score[keep] - top) / 4.0).astype(np.float32)


def _factor_index(
    factors: npt.NDArray[np.float32], exact_below: int, k: int, recall: float
) -> IvfIndex | None:
    """An inner-product IVF index over the item factors (their norms matter: the MIPS
    transform) when the catalog is large enough for exact search to cost more (the same
    threshold as the ANN retriever; docs/serving.md)."""
    if factors.shape[0] < exact_below or not faiss_installed():
        return None  # exact search (without faiss, `AnnRetriever` logs that once)
    return IvfIndex(factors, k=k, recall=recall, mips=True)


def load_models(
    artifacts: ArtifactStore,
    catalog: Catalog,
    *,
    max_watermark: int | None = None,
    exact_below: int = 20_000,
    index_k: int = 200,
    index_recall: float = 0.95,
) -> BatchModels:
    """Whatever model artifacts exist, loaded for `catalog`; missing ones stay None."""
    versions = {n: pick_version(artifacts, n, max_watermark) for n in MODEL_ARTIFACTS}
    users: dict[str, int] = {}
    lists: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]] = []
    if (seg := versions["segments"]) is not None:
        users, lists = _segments(seg, catalog)
    cov, emb, pop = versions["covisitation"], versions["embeddings"], versions["popularity"]
    factors = None if emb is None else _factors(emb, catalog)
    return BatchModels(
        neighbours=None if cov is None else _neighbours(cov, catalog),
        item_factors=factors,
        factor_index=None
        if factors is None
        else _factor_index(factors, exact_below, index_k, index_recall),
        user_segment=users,
        segment_top=lists,
        popular=None if pop is None else _popular(pop, catalog),
        item_first_ts=None if pop is None else _first_ts(pop, catalog),
        versions={n: v.manifest.version for n, v in versions.items() if v is not None},
    )
