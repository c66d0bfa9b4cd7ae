from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from tastemaker.artifacts import ArtifactStore
from tastemaker.artifacts.models import load_models
from tastemaker.catalog import Catalog
from tastemaker.config import Config
from tastemaker.data.synthetic import Shop
from tastemaker.events import Event
from tastemaker.log import open_log
from tastemaker.offline import Archiver, Lake
from tastemaker.offline.jobs import JobContext, JobError, run_jobs
from tastemaker.ranking import FEATURE_NAMES
from tastemaker.ranking.lightgbm import LightGBMScorer


@pytest.fixture(scope="module")
def shop_events(shop: Shop) -> list[Event]:
    events = [e for chunk in shop.events(chunk_users=100) for e in chunk]
    return sorted(events, key=lambda e: (e.ts, e.event_id))


class Env:
    def __init__(self, root: Path, catalog: Catalog | None = None) -> None:
        self.log = open_log(f"embedded://{root}/log?fsync=never")
        self.lake = Lake(str(root / "lake"))
        self.artifacts = ArtifactStore(root / "artifacts")
        self.ctx = JobContext(Config(), self.lake, self.artifacts, catalog)

    def add(self, events: list[Event], names: list[str]) -> dict[str, Any]:
        self.log.append(events)
        Archiver(self.log, self.lake).run_once(batch_size=2000)
        return run_jobs(self.ctx, names)


def covis(env: Env) -> dict[tuple[str, str], float]:
    v = env.artifacts.current("covisitation")
    assert v is not None
    items = pq.read_table(v.path / "items.parquet")["item_id"].to_pylist()
    t = pq.read_table(v.path / "pairs.parquet")
    return {
        (items[a], items[b]): c
        for a, b, c in zip(
            t["a"].to_pylist(), t["b"].to_pylist(), t["count"].to_pylist(), strict=True
        )
    }


def popularity(env: Env) -> dict[str, tuple[float, float]]:
    v = env.artifacts.current("popularity")
    assert v is not None
    t = pq.read_table(v.path / "popularity.parquet")
    return {
        i: (s, f)
        for i, s, f in zip(
            t["item_id"].to_pylist(),
            t["log_score"].to_pylist(),
            t["first_ts"].to_pylist(),
            strict=True,
        )
    }


def test_incremental_runs_equal_one_run_over_everything(
    tmp_path: Path, shop_events: list[Event]
) -> None:
    names = ["popularity", "covisitation"]
    whole = Env(tmp_path / "whole")
    whole.add(shop_events, names)
    steps = Env(tmp_path / "steps")
    cut = len(shop_events) // 3
    first = steps.add(shop_events[:cut], names)
    second = steps.add(shop_events[cut:], names)
    # The second run read only the new events.
    for name in names:
        m1, m2 = first[name].manifest, second[name].manifest
        assert (m2.parent, m2.data_from_offset, m2.events_read) == (
            1,
            m1.watermark,
            len(shop_events) - cut,
        )
    assert covis(steps) == covis(whole)
    a, b = popularity(steps), popularity(whole)
    assert a.keys() == b.keys()
    for item, (score, first_ts) in a.items():
        assert score == pytest.approx(b[item][0], rel=1e-12)
        assert first_ts == b[item][1]


def test_a_job_with_nothing_new_publishes_nothing(tmp_path: Path, shop_events: list[Event]) -> None:
    env = Env(tmp_path)
    env.add(shop_events[:500], ["popularity"])
    assert run_jobs(env.ctx, ["popularity"]) == {"popularity": None}
    assert [v.manifest.version for v in env.artifacts.versions("popularity")] == [1]


def test_rollback_rolls_the_watermark_back_too(tmp_path: Path, shop_events: list[Event]) -> None:
    env = Env(tmp_path)
    cut = len(shop_events) // 2
    env.add(shop_events[:cut], ["covisitation"])
    env.add(shop_events[cut:], ["covisitation"])
    v2 = covis(env)
    env.artifacts.rollback("covisitation", 1)
    v3 = run_jobs(env.ctx, ["covisitation"])["covisitation"]
    assert v3 is not None
    assert (v3.manifest.version, v3.manifest.parent) == (3, 1)
    assert covis(env) == v2  # the same events read again from version 1's watermark


def test_unknown_job_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="unknown job"):
        run_jobs(Env(tmp_path).ctx, ["nope"])


def test_embeddings_and_segments_are_the_same_on_every_run(
    tmp_path: Path, shop_events: list[Event], catalog: Catalog
) -> None:
    outs = []
    for run in ("a", "b"):
        env = Env(tmp_path / run)
        env.add(shop_events, ["embeddings", "segments"])
        emb, seg = env.artifacts.current("embeddings"), env.artifacts.current("segments")
        assert emb is not None
        assert seg is not None
        outs.append(
            (
                np.load(emb.path / "item_factors.npy"),
                pq.read_table(seg.path / "segments.parquet")["segment"].to_pylist(),
            )
        )
        models = load_models(env.artifacts, catalog)
        assert models.item_factors is not None
        assert models.item_factors.shape[0] == len(catalog)
        assert len(models.user_segment) == len({e.user_id for e in shop_events})
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    assert outs[0][1] == outs[1][1]


@pytest.mark.slow
def test_the_ranker_learns_only_with_artifacts_older_than_its_window(
    tmp_path: Path, shop_events: list[Event], catalog: Catalog
) -> None:
    env = Env(tmp_path, catalog)
    a, b = len(shop_events) // 2, 3 * len(shop_events) // 4
    first = env.add(shop_events[:a], [])
    assert first["ranker"] is None  # no batch artifacts yet: nothing to learn with
    assert first["popularity"] is not None
    second = env.add(shop_events[a:b], [])
    ranker = second["ranker"]
    assert ranker is not None
    m = ranker.manifest
    assert m.data_from_offset == first["popularity"].manifest.watermark
    # Every batch feature came from a version built before the ranker's window.
    for name, version in m.params["batch_features"].items():
        built = next(v for v in env.artifacts.versions(name) if v.manifest.version == version)
        assert built.manifest.watermark <= m.data_from_offset
    assert m.metrics["queries"] >= 20
    assert 0 < m.metrics["validation_ndcg@10"] <= 1
    scorer = LightGBMScorer(ranker.path / "model.txt", FEATURE_NAMES, compile_model=False)
    assert scorer.score(np.zeros((3, len(FEATURE_NAMES)), np.float32), FEATURE_NAMES).shape == (3,)
    # The next run continues the kept replay and adds rows.
    third = env.add(shop_events[b:], ["ranker"])
    assert third["ranker"] is not None
    assert third["ranker"].manifest.rows["rows"] > m.rows["rows"]
