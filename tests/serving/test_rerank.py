from __future__ import annotations

import numpy as np

from tastemaker.catalog import Catalog
from tastemaker.ranking.rerank import Filters, diversify, filter_mask, top_contributions


def small_catalog() -> Catalog:
    emb = np.eye(6, 4, dtype=np.float32) + 0.01
    emb[1] = emb[0]  # items 0 and 1 are the same direction
    return Catalog(
        ids=[f"i{k}" for k in range(6)],
        titles=[""] * 6,
        categories=["a", "a", "a", "b", "b", "c"],
        brands=["x", "y", "x", "y", "x", "y"],
        prices=[5.0, 15.0, 25.0, 35.0, 45.0, 55.0],
        embeddings=emb,
        in_stock=[True, True, False, True, True, False],
    )


def test_filters_combine_every_rule() -> None:
    cat = small_catalog()
    rows = np.arange(6)
    assert filter_mask(cat, rows, None).all()
    f = Filters(categories=["a", "b"], price_min=10, price_max=40, in_stock=True)
    assert filter_mask(cat, rows, f).tolist() == [False, True, False, True, False, False]
    assert filter_mask(cat, rows, Filters(brands=["y"])).tolist() == [0, 1, 0, 1, 0, 1]
    assert not filter_mask(cat, rows, Filters(categories=["nope"])).any()


def test_plain_top_n_skips_excluded_items() -> None:
    cat = small_catalog()
    scores = np.array([0.9, 0.8, -np.inf, 0.7, 0.6, 0.5], np.float32)
    assert diversify(np.arange(6), scores, cat, 3).tolist() == [0, 1, 3]


def test_category_cap() -> None:
    cat = small_catalog()
    scores = np.array([0.9, 0.8, 0.75, 0.7, 0.6, 0.5], np.float32)
    got = diversify(np.arange(6), scores, cat, 4, max_per_category=1)
    assert got.tolist() == [0, 3, 5]  # one of each category, best first
    got = diversify(np.arange(6), scores, cat, 4, max_per_category=2)
    assert got.tolist() == [0, 1, 3, 4]


def test_mmr_passes_over_a_near_duplicate() -> None:
    cat = small_catalog()
    scores = np.array([0.9, 0.89, 0.1, 0.8, 0.1, 0.1], np.float32)
    assert diversify(np.arange(6), scores, cat, 2).tolist() == [0, 1]
    assert diversify(np.arange(6), scores, cat, 2, mmr_lambda=0.5).tolist() == [0, 3]


def test_top_contributions() -> None:
    c = np.array([[0.1, 0.5, -0.2, 0.3], [0.0, -1.0, 0.0, 0.0]], np.float32)
    got = top_contributions(c, ["a", "b", "c", "d"], k=2)
    assert [[x.feature for x in row] for row in got] == [["b", "d"], []]
