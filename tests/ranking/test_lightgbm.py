"""The LightGBM LambdaMART scorer, with a small model trained here on real pipeline features
(labels: the items each user engaged with after the training period)."""

from __future__ import annotations

from pathlib import Path

import lightgbm
import msgspec
import numpy as np
import pytest

from tastemaker.catalog import Catalog
from tastemaker.data.synthetic import Shop
from tastemaker.deployment.runtime import Runtime
from tastemaker.ranking import FEATURE_NAMES, LightGBMScorer, ModelError, assemble
from tests.conftest import make_config


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory, shop: Shop, catalog: Catalog) -> Path:
    root = tmp_path_factory.mktemp("ranker")
    events = sorted((e for chunk in shop.events() for e in chunk), key=lambda e: e.ts)
    cut = int(len(events) * 0.8)
    later: dict[str, set[str]] = {}
    for e in events[cut:]:
        later.setdefault(e.user_id, set()).add(e.item_id)
    rt = Runtime(make_config(root, catalog), catalog)
    rt.ingestor.ingest(events[:cut])
    rt.processor.drain()
    pipe = rt.pipeline
    xs, ys, groups = [], [], []
    for user, items in sorted(later.items()):
        ctx = pipe.context(user)
        cands = pipe.candidates(ctx)
        if cands.rows.size == 0:
            continue
        xs.append(assemble(cands, ctx.user, catalog, pipe.price_edges))
        ys.append(np.isin(catalog.ids[cands.rows], list(items)).astype(int))
        groups.append(cands.rows.size)
    rt.close()
    data = lightgbm.Dataset(
        np.vstack(xs), np.concatenate(ys), group=groups, feature_name=FEATURE_NAMES
    )
    params = {
        "objective": "lambdarank",
        "num_threads": 1,
        "verbose": -1,
        "min_data_in_leaf": 5,
        "num_leaves": 15,
        "learning_rate": 0.1,
    }
    booster = lightgbm.train(params, data, num_boost_round=30)
    path = root / "ranker.txt"
    booster.save_model(str(path))
    return path


@pytest.mark.parametrize("compiled", [True, False])
def test_scores_are_the_boosters_predictions(
    model_path: Path, compiled: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASTEMAKER_CACHE_DIR", str(tmp_path))
    scorer = LightGBMScorer(model_path, FEATURE_NAMES, compile_model=compiled)
    assert scorer.compiled is compiled
    x = np.random.default_rng(0).random((1000, len(FEATURE_NAMES))).astype(np.float32)
    got = scorer.score(x, FEATURE_NAMES)
    assert got.shape == (1000,)
    want = lightgbm.Booster(model_file=str(model_path)).predict(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # `assemble` builds its matrix column by column (Fortran order): the same scores.
    np.testing.assert_allclose(scorer.score(np.asfortranarray(x), FEATURE_NAMES), got)
    if compiled:  # built once per model content, then reused by every process
        assert len(list((tmp_path / "models").glob("*.so"))) == 1
        again = LightGBMScorer(model_path, FEATURE_NAMES)
        np.testing.assert_allclose(again.score(x, FEATURE_NAMES), got)
        assert len(list((tmp_path / "models").glob("*.so"))) == 1


def test_a_model_of_other_features_or_no_model_is_refused(model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="trained on features"):
        LightGBMScorer(model_path, [*FEATURE_NAMES, "extra"])
    with pytest.raises(ModelError, match="does not exist"):
        LightGBMScorer(tmp_path / "none.txt", FEATURE_NAMES)
    (tmp_path / "junk.txt").write_text("not a model")
    with pytest.raises(ModelError, match="cannot be read"):
        LightGBMScorer(tmp_path / "junk.txt", FEATURE_NAMES)


def test_the_pipeline_ranks_with_the_configured_model(
    model_path: Path, tmp_path: Path, shop: Shop, catalog: Catalog
) -> None:
    config = make_config(tmp_path, catalog)
    config = msgspec.structs.replace(
        config, ranking=msgspec.structs.replace(config.ranking, model_path=str(model_path))
    )
    rt = Runtime(config, catalog)
    assert isinstance(rt.pipeline.scorer, LightGBMScorer)
    for chunk in shop.events():
        rt.ingestor.ingest(chunk)
    rt.processor.drain()
    rec = rt.pipeline.recommend(str(shop.user_ids[0]), 10)
    scores = [i.score for i in rec.items]
    assert len(scores) == 10
    assert scores == sorted(scores, reverse=True)
    rt.close()
