from __future__ import annotations

import numpy as np

from tastemaker.catalog import Catalog
from tastemaker.ranking import FEATURE_NAMES, LinearScorer, assemble
from tastemaker.retrieval import Candidates, merge
from tastemaker.store import Cell


def test_emb_click_sim_is_the_dot_with_the_users_centroid(catalog: Catalog) -> None:
    rows = np.arange(20)
    cands = merge(["popular"], [Candidates(rows, np.ones(20, np.float32))])
    centroid = catalog.embedding[3] * 2.0  # any length: the feature normalizes it
    user = {"profile": {"click_centroid": Cell(0.0, centroid.tolist())}}
    x = assemble(cands, user, catalog, [10.0, 100.0])
    col = FEATURE_NAMES.index("emb_click_sim")
    np.testing.assert_allclose(x[:, col], catalog.embedding[rows] @ catalog.embedding[3], rtol=1e-5)
    assert x[3, col] == np.float32(x[:, col].max())


def test_affinity_and_price_fit_columns(catalog: Catalog) -> None:
    rows = np.arange(30)
    cands = merge(["popular"], [Candidates(rows, np.ones(30, np.float32))])
    cat0 = str(catalog.category_names[catalog.category[0]])
    user = {
        "profile": {
            "category_intensity": Cell(0.0, {"t": 0.0, "v": {cat0: 3.0, "other": 1.0}}),
            "price_hist": Cell(0.0, [0, 4, 0]),
        }
    }
    x = assemble(cands, user, catalog, [10.0, 1e9])
    in_cat = catalog.category[rows] == catalog.category[0]
    np.testing.assert_allclose(x[in_cat, FEATURE_NAMES.index("category_affinity")], 0.75)
    assert (x[~in_cat, FEATURE_NAMES.index("category_affinity")] == 0).all()
    fit = x[:, FEATURE_NAMES.index("price_fit")]
    np.testing.assert_allclose(fit, np.where(catalog.price[rows] >= 10.0, 1.0, 0.0))


def test_unknown_user_gets_only_retriever_features(catalog: Catalog) -> None:
    cands = merge(["popular"], [Candidates(np.arange(5), np.full(5, 0.5, np.float32))])
    x = assemble(cands, {}, catalog, [10.0])
    assert (x[:, 0] == 1.0).all()
    age = FEATURE_NAMES.index("item_age_days")
    assert (x[:, age] == -1.0).all()  # no batch popularity: the age is unknown
    hour = [FEATURE_NAMES.index("hour_sin"), FEATURE_NAMES.index("hour_cos")]
    assert (x[:, hour[1]] == 1.0).all()  # now=0: midnight
    assert (np.delete(x, [0, age, *hour], axis=1) == 0).all()


def test_item_age_is_days_since_first_engagement(catalog: Catalog) -> None:
    cands = merge(["popular"], [Candidates(np.arange(3), np.ones(3, np.float32))])
    first = np.full(len(catalog), np.inf)
    first[0], first[1] = 1_000_000.0, 1_000_000.0 + 86400.0
    x = assemble(cands, {}, catalog, [10.0], item_first_ts=first, now=1_000_000.0 + 3 * 86400)
    assert x[:, FEATURE_NAMES.index("item_age_days")].tolist() == [3.0, 2.0, -1.0]


def test_linear_scorer_is_a_weighted_sum() -> None:
    s = LinearScorer({"a": 2.0, "c": -1.0})
    x = np.array([[1, 5, 1], [0, 0, 3]], np.float32)
    assert s.score(x, ["a", "b", "c"]).tolist() == [1.0, -3.0]
