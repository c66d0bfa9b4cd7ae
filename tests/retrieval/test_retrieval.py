from __future__ import annotations

import numpy as np
import pytest

from tastemaker.catalog import Catalog, ItemChange
from tastemaker.retrieval import (
    AnnRetriever,
    Candidates,
    CategoryRetriever,
    PopularRetriever,
    RetrievalContext,
    merge,
)
from tastemaker.store import Cell


def test_merge_unions_rows_keeps_a_column_per_retriever_and_sources() -> None:
    a = Candidates(np.array([5, 1, 3]), np.array([0.5, 0.9, 0.1], np.float32))
    b = Candidates(np.array([3, 7]), np.array([2.0, 1.0], np.float32))
    c = merge(["a", "b"], [a, b])
    assert c.rows.tolist() == [1, 3, 5, 7]
    np.testing.assert_allclose(c.scores, [[0.9, 0], [0.1, 2.0], [0.5, 0], [0, 1.0]])
    assert c.sources.tolist() == [1, 3, 1, 2]


def test_merge_matches_a_reference_over_random_candidate_sets() -> None:
    """Repeated rows within and across retrievers, catalogs growing past the scratch array,
    and a stray -1: the best score per (row, retriever) and the source bits of each row."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        size = 10 + 50 * trial  # each catalog larger than the last
        low = -1 if trial % 50 == 0 else 0
        parts = []
        for _ in range(4):
            rows = rng.integers(low, size, rng.integers(0, 40))
            parts.append(Candidates(rows, rng.random(rows.size).astype(np.float32)))
        got = merge(list("abcd"), parts)
        want: dict[int, list[float]] = {}
        for j, p in enumerate(parts):
            for row, score in zip(p.rows.tolist(), p.scores.tolist(), strict=True):
                cells = want.setdefault(row, [0.0] * 4)
                cells[j] = max(cells[j], score)
        assert got.rows.tolist() == sorted(want)
        np.testing.assert_array_equal(
            got.scores, np.array([want[r] for r in sorted(want)]).reshape(-1, 4).astype(np.float32)
        )
        bits = [sum(1 << j for j, p in enumerate(parts) if r in p.rows) for r in sorted(want)]
        assert got.sources.tolist() == bits


def test_merge_of_nothing_is_empty() -> None:
    c = merge(["a"], [Candidates.empty()])
    assert c.rows.size == 0
    assert c.scores.shape == (0, 1)


def lists(catalog: Catalog) -> dict[str, Cell]:
    ids = catalog.ids[:4].tolist()
    cat0 = str(catalog.category_names[catalog.category[0]])
    return {
        "all": Cell(0.0, [[*ids, "deleted-item"], [0.0, -4.0, -8.0, -12.0, -1.0]]),
        "c:" + cat0: Cell(0.0, [[ids[0]], [0.0]]),
    }


def test_popular_scores_are_positive_and_ordered(catalog: Catalog) -> None:
    got = PopularRetriever().retrieve(RetrievalContext({}, lists(catalog), catalog), 10)
    assert got.rows.tolist() == [0, 1, 2, 3]  # the deleted item is skipped
    assert got.scores[0] == 1.0
    assert (np.diff(got.scores) < 0).all()
    assert (got.scores > 0).all()


def test_category_retriever_follows_the_users_affinity(catalog: Catalog) -> None:
    cat0 = str(catalog.category_names[catalog.category[0]])
    user = {"profile": {"category_intensity": Cell(0.0, {"t": 0.0, "v": {cat0: 3.0}})}}
    got = CategoryRetriever().retrieve(RetrievalContext(user, lists(catalog), catalog), 10)
    assert got.rows.tolist() == [0]
    assert (
        CategoryRetriever().retrieve(RetrievalContext({}, lists(catalog), catalog), 10).rows.size
        == 0
    )


def test_ann_exact_ivf_and_hnsw_find_the_nearest_items(catalog: Catalog) -> None:
    target = catalog.embedding[7]
    ctx = RetrievalContext(
        {"profile": {"click_centroid": Cell(0.0, (target * 3).tolist())}}, {}, catalog
    )
    exact = AnnRetriever(catalog, exact_below=10**9).retrieve(ctx, 20)
    ivf_retriever = AnnRetriever(catalog, exact_below=1, k=20, recall=0.95)
    ivf = ivf_retriever.retrieve(ctx, 20)
    hnsw = AnnRetriever(catalog, exact_below=1, index="hnsw").retrieve(ctx, 20)
    assert 7 in exact.rows.tolist()
    assert exact.scores.max() == np.float32(exact.scores[exact.rows.tolist().index(7)])
    truth = np.argsort(-(catalog.embedding @ target))[:20]
    assert set(exact.rows.tolist()) == set(truth.tolist())
    assert ivf_retriever.kind.startswith("ivf")
    assert ivf_retriever.measured_recall >= 0.95  # what the tuning reached on its sample
    assert len(set(ivf.rows.tolist()) & set(truth.tolist())) >= 18
    assert len(set(hnsw.rows.tolist()) & set(truth.tolist())) >= 18
    assert (exact.scores > 0).all()


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_a_new_item_enters_the_ann_index_at_once(catalog: Catalog, index: str) -> None:
    retriever = AnnRetriever(catalog, exact_below=1, index=index)  # type: ignore[arg-type]
    far = (-catalog.embedding.mean(axis=0)).astype(np.float32)
    far /= np.linalg.norm(far)
    new = ItemChange("brand-new", category="c", brand="b", price=1.0, embedding=far.tolist())
    grown = catalog.apply([(1, new, 0.0)])
    retriever.set_catalog(grown)
    ctx = RetrievalContext({"profile": {"click_centroid": Cell(0.0, far.tolist())}}, {}, grown)
    got = retriever.retrieve(ctx, 5)
    assert int(grown.index["brand-new"]) in got.rows.tolist()


def test_ivf_tuning_probes_more_lists_for_a_higher_recall(catalog: Catalog) -> None:
    low = AnnRetriever(catalog, exact_below=1, k=50, recall=0.3)
    high = AnnRetriever(catalog, exact_below=1, k=50, recall=0.999)
    assert 1 <= low.nprobe <= high.nprobe
    assert high.measured_recall >= 0.999
    assert low.measured_recall >= 0.3
    assert AnnRetriever(catalog).retrieve(RetrievalContext({}, {}, catalog), 5).rows.size == 0
