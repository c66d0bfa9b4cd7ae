"""The IVF index: tuned nprobe reaches the asked recall; MIPS finds the largest inner
products of vectors whose norms differ, and reports them; the ALS retriever over it agrees
with exact search."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from tastemaker.catalog import Catalog
from tastemaker.features.layout import PROFILE
from tastemaker.retrieval.base import RetrievalContext
from tastemaker.retrieval.batch import BatchModels, EmbeddingRetriever, ModelHolder
from tastemaker.retrieval.vector_index import IvfIndex
from tastemaker.store import Cell

Floats = npt.NDArray[np.float32]


def _clustered(n: int, dim: int, seed: int) -> Floats:
    """Vectors in 40 clusters with norms spread over two orders of magnitude, some zero (as
    ALS gives items nobody engaged with)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    x = centres[rng.integers(0, 40, n)] + 0.3 * rng.normal(size=(n, dim))
    x *= rng.lognormal(0.0, 1.0, n)[:, None]
    x[rng.random(n) < 0.1] = 0.0
    return x.astype(np.float32)


def _recall(found: npt.NDArray[Any], exact: npt.NDArray[Any]) -> float:
    return float(
        np.mean([np.intersect1d(f, e).size / e.size for f, e in zip(found, exact, strict=True)])
    )


def test_mips_finds_the_largest_inner_products_at_the_tuned_recall() -> None:
    x = _clustered(20_000, 16, seed=1)
    index = IvfIndex(x, k=50, recall=0.9, mips=True)
    assert 1 <= index.nprobe <= index.nlist
    assert index.measured_recall >= 0.9
    rng = np.random.default_rng(2)
    queries = (x[rng.integers(0, len(x), 100)] + rng.normal(size=(100, 16))).astype(np.float32)
    sims, rows = index.search(queries, 50)
    exact = np.argsort(-(queries @ x.T), axis=1)[:, :50]
    assert _recall(rows, exact) >= 0.8  # queries unlike the tuning sample: a little lower
    # The scores are the true inner products, best first.
    valid = rows >= 0
    true = np.einsum("qkd,qd->qk", x[np.where(valid, rows, 0)], queries)
    np.testing.assert_allclose(sims[valid], true[valid], rtol=1e-4, atol=1e-4)
    assert all((np.diff(s[v]) <= 1e-5).all() for s, v in zip(sims, valid, strict=True))
    # Slots the probed lists could not fill (rows -1, at the end) score -inf.
    assert np.isneginf(sims[~valid]).all()
    assert all((~v[np.argmin(v) :]).all() for v in valid if not v.all())


def test_the_transform_finds_more_while_probing_fewer_lists() -> None:
    """Lists built on the raw vectors group them by direction and length at once; with the
    MIPS transform the same recall takes far fewer lists (seeded data: 16 against 128)."""
    x = _clustered(20_000, 16, seed=3)
    q = (x[:50] + 1.0).astype(np.float32)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :50]
    mips = IvfIndex(x, k=50, recall=0.95, mips=True)
    raw = IvfIndex(x, k=50, recall=0.95, mips=False)
    assert mips.nprobe < raw.nprobe
    assert _recall(mips.search(q, 50)[1], exact) > _recall(raw.search(q, 50)[1], exact)
    assert _recall(mips.search(q, 50)[1], exact) >= 0.9


def test_a_higher_recall_probes_more_lists_and_added_rows_are_found() -> None:
    x = _clustered(10_000, 8, seed=4)
    low = IvfIndex(x, k=20, recall=0.3)
    high = IvfIndex(x, k=20, recall=0.99)
    assert low.nprobe <= high.nprobe
    assert high.measured_recall >= 0.99
    new = (x[:1] * 100).astype(np.float32)
    high.add(new)
    _, rows = high.search(new, 1)
    assert rows[0, 0] == len(x)


def test_the_als_retriever_over_the_index_agrees_with_exact_search(catalog: Catalog) -> None:
    factors = _clustered(len(catalog), 16, seed=5)
    engaged = [str(i) for i in catalog.ids[np.flatnonzero(factors.any(axis=1))[:8]]]
    user = {PROFILE: {"last_items": Cell(0.0, engaged)}}
    ctx = RetrievalContext(user, {}, catalog)
    exact = EmbeddingRetriever(ModelHolder(BatchModels(item_factors=factors))).retrieve(ctx, 30)
    index = IvfIndex(factors, k=40, recall=0.99, mips=True)
    models = BatchModels(item_factors=factors, factor_index=index)
    fast = EmbeddingRetriever(ModelHolder(models)).retrieve(ctx, 30)
    assert np.intersect1d(fast.rows, exact.rows).size >= 27
    assert (fast.scores > 0).all()
