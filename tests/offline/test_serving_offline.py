"""The offline half as serving sees it: feature logging, hot reload, the scheduler."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from tastemaker.catalog import Catalog
from tastemaker.config import Config
from tastemaker.data.synthetic import Shop
from tastemaker.deployment.runtime import Runtime
from tastemaker.deployment.scheduler import run_offline
from tastemaker.events import EventType
from tastemaker.offline import Lake
from tastemaker.offline.feature_log import logged_training_set, sampled
from tastemaker.offline.lake import Archiver
from tastemaker.ranking import FEATURE_NAMES
from tastemaker.ranking.linear import LinearScorer
from tastemaker.retrieval import BatchModels
from tests.conftest import event, make_config, wait_until


def offline(config: Config, **kw: object) -> Config:
    return msgspec.structs.replace(config, offline=msgspec.structs.replace(config.offline, **kw))


def test_sampling_is_by_request_id_and_stable() -> None:
    ids = [f"r{i}" for i in range(4000)]
    kept = [i for i in ids if sampled(i, 0.25)]
    assert 800 < len(kept) < 1200
    assert kept == [i for i in ids if sampled(i, 0.25)]
    assert all(sampled(i, 1.0) for i in ids[:10])
    assert not any(sampled(i, 0.0) for i in ids[:10])


def test_logged_features_are_what_serving_scored_and_join_with_later_clicks(
    tmp_path: Path, catalog: Catalog, shop: Shop
) -> None:
    config = offline(make_config(tmp_path, catalog), feature_log_sample=1.0)
    rt = Runtime.from_config(config)
    try:
        warmup = next(iter(shop.events(chunk_users=50)))[:400]
        rt.ingestor.ingest(warmup)
        rt.processor.drain()
        user = warmup[0].user_id
        now = warmup[-1].ts + 60
        rec = rt.pipeline.recommend(user, 5, now=now)
        assert rec.request_id is not None
        assert len(rec.items) == 5
        clicked = rec.items[2].item_id
        rt.ingestor.ingest(
            [
                event(
                    "click-1",
                    user,
                    clicked,
                    EventType.CLICK,
                    now + 30,
                    context={"extra": {"request_id": rec.request_id}},
                )
            ]
        )
        assert rt.feature_logger is not None
        assert rt.feature_logger.flush() == 5
        lake = Lake(config.offline.lake_url)
        Archiver(rt.log, lake).run_once()
    finally:
        rt.close()
    data = logged_training_set(lake, horizon_s=3600)
    assert data.group.tolist() == [5]
    assert data.y.tolist() == [0, 0, 1, 0, 0]
    # The rows are the ones the scorer saw: scoring them again gives the served order.
    scores = LinearScorer(config.ranking.weights).score(data.x, FEATURE_NAMES)
    assert np.all(np.diff(scores) <= 1e-6)
    assert [round(float(s), 5) for s in scores] == [round(i.score, 5) for i in rec.items]


@pytest.mark.slow
def test_a_running_server_picks_up_new_versions_and_rollbacks(
    tmp_path: Path, catalog: Catalog, shop: Shop
) -> None:
    config = offline(make_config(tmp_path, catalog), reload_interval_s=0.1)
    rt = Runtime.from_config(config)
    try:
        rt.watch_artifacts()
        assert isinstance(rt.pipeline.scorer, LinearScorer)

        def models() -> BatchModels:  # read afresh: the watcher replaces it
            return rt.pipeline.models.models

        assert models().neighbours is None
        events = sorted(
            (e for chunk in shop.events(chunk_users=100) for e in chunk), key=lambda e: e.ts
        )
        half = len(events) // 2
        for part in (events[:half], events[half:]):
            rt.ingestor.ingest(part)
            rt.processor.drain()
            run_offline(config, rt.log, catalog)
        # Batch models and the ranker arrive without a restart.
        wait_until(lambda: type(rt.pipeline.scorer).__name__ == "LightGBMScorer", timeout=15)
        wait_until(lambda: rt.artifact_versions().get("covisitation") == 2, timeout=15)
        assert models().neighbours is not None
        assert models().versions["covisitation"] == 2
        rec = rt.pipeline.recommend(events[-1].user_id, 10)
        assert len(rec.items) == 10
        # A rollback reaches the server the same way.
        from tastemaker.artifacts import ArtifactStore

        ArtifactStore(config.offline.artifacts_path).rollback("covisitation", 1)
        wait_until(lambda: rt.pipeline.models.models.versions.get("covisitation") == 1, timeout=15)
    finally:
        rt.close()


@pytest.mark.slow
def test_archive_jobs_and_artifacts_commands(
    tmp_path: Path, catalog: Catalog, shop: Shop, capsys: pytest.CaptureFixture[str]
) -> None:
    from tastemaker.cli import main
    from tastemaker.config import dump_config

    config = offline(make_config(tmp_path, catalog))
    path = tmp_path / "config.toml"
    dump_config(config, path)
    rt = Runtime.from_config(config)
    try:
        events = sorted(
            (e for chunk in shop.events(chunk_users=100) for e in chunk), key=lambda e: e.ts
        )
        rt.ingestor.ingest(events[: len(events) // 2])
    finally:
        rt.close()
    assert main(["archive", "--config", str(path)]) == 0
    assert "archived" in capsys.readouterr().out
    assert main(["jobs", "run", "popularity", "covisitation", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "popularity: version 1" in out
    assert "covisitation: version 1" in out
    rt = Runtime.from_config(config)
    try:
        rt.ingestor.ingest(events[len(events) // 2 :])
    finally:
        rt.close()
    assert main(["jobs", "run", "popularity", "--config", str(path)]) == 0
    assert "popularity: version 2" in capsys.readouterr().out
    assert main(["artifacts", "list", "--config", str(path)]) == 0
    listing = capsys.readouterr().out
    assert "* popularity    v2" in listing
    assert "  popularity    v1" in listing
    assert main(["artifacts", "rollback", "popularity", "1", "--config", str(path)]) == 0
    assert main(["artifacts", "list", "popularity", "--config", str(path)]) == 0
    assert "* popularity    v1" in capsys.readouterr().out
    assert main(["artifacts", "rollback", "popularity", "9", "--config", str(path)]) == 2
    assert "no version 9" in capsys.readouterr().err
    assert main(["jobs", "run", "nope", "--config", str(path)]) == 2


@pytest.mark.slow
def test_the_in_process_scheduler_archives_and_runs_the_jobs(
    tmp_path: Path, catalog: Catalog, shop: Shop
) -> None:
    config = offline(
        make_config(tmp_path, catalog),
        schedule_interval_s=0.2,
        reload_interval_s=0.1,
    )
    rt = Runtime.from_config(config)
    try:
        rt.watch_artifacts()
        rt.start_scheduler()
        rt.ingestor.ingest(next(iter(shop.events(chunk_users=100))))
        scheduler = rt.scheduler
        assert scheduler is not None
        wait_until(lambda: scheduler.last is not None, timeout=60)
        assert Lake(config.offline.lake_url).watermark() == rt.log.end_offsets()[0]
        wait_until(lambda: rt.artifact_versions().get("covisitation") is not None, timeout=10)
    finally:
        rt.close()


def test_only_one_offline_run_at_a_time(tmp_path: Path, catalog: Catalog) -> None:
    from tastemaker.deployment.scheduler import OfflineBusyError, _exclusive

    config = make_config(tmp_path, catalog)
    root = Path(config.offline.artifacts_path)
    with _exclusive(root), pytest.raises(OfflineBusyError, match=r"offline\.lock"):
        run_offline(config, None, catalog)
    run_offline(config, None, catalog)  # free again
