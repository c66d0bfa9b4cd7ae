"""`BatchHistogram` against prometheus-client's own `Histogram`, and the metrics of several
processes (prometheus-client's multiprocess mode) summed in one scrape."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tastemaker.metrics import METRICS, BatchHistogram, Metrics
from tastemaker.metrics_files import DeploymentCollector, fold_dead_process

_BOUNDS = (0.05, 0.1, 0.25, 1, 5, 86400)


def _exposed(registry: CollectorRegistry) -> list[str]:
    """The exposition's sample lines, without `_created` (a time, which differs)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def test_a_batch_is_exposed_as_the_same_values_one_at_a_time_give() -> None:
    rng = np.random.default_rng(3)
    # Values on the bounds too: a value equal to a bound belongs to that bound's bucket.
    # Multiples of 1/64, so that every order of summing gives the same `_sum`.
    spread = np.round(rng.exponential(2.0, 500) * 64) / 64
    values = np.concatenate([spread, np.asarray(_BOUNDS, np.float64), [1e6]])
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("fresh_seconds", "Freshness.", _BOUNDS, registry=ours)
    single = Histogram("fresh_seconds", "Freshness.", registry=theirs, buckets=_BOUNDS)
    batch.observe_many(values[:200])
    batch.observe_many(values[200:])
    batch.observe(0.0625)
    for v in [*values.tolist(), 0.0625]:
        single.observe(v)
    assert _exposed(ours) == _exposed(theirs)
    assert 'fresh_seconds_bucket{le="0.05"}' in "\n".join(_exposed(ours))


def test_an_empty_batch_changes_nothing() -> None:
    registry = CollectorRegistry()
    batch = BatchHistogram("h_seconds", "H.", _BOUNDS, registry=registry)
    before = _exposed(registry)
    batch.observe_many(np.empty(0, np.float64))
    assert _exposed(registry) == before
    assert "h_seconds_count 0.0" in before


# -- multiprocess mode: every process's values in one scrape ---------------------------------

_CHILD = """
import sys
import numpy as np
from prometheus_client import CollectorRegistry, Histogram
from tastemaker.metrics import METRICS, BatchHistogram, multiprocess

assert multiprocess()
n = int(sys.argv[1])
METRICS.events_processed.inc(n)
METRICS.lag_events.labels("0").set(n)
METRICS.catalog_items.set(n)
values = np.arange(n, dtype=np.float64) / 4
METRICS.freshness_seconds.observe_many(values)
theirs = Histogram("theirs_seconds", "H.", registry=CollectorRegistry(), buckets={bounds})
ours = BatchHistogram("ours_seconds", "H.", {bounds}, registry=CollectorRegistry())
ours.observe_many(values)
for v in values.tolist():
    theirs.observe(v)
if len(sys.argv) > 2:
    sys.stdout.write(generate_latest(METRICS.registry).decode())
""".replace("{bounds}", repr(_BOUNDS))


def _child(directory: Path, n: int, scrape: bool = False) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    code = "from prometheus_client import generate_latest\n" + _CHILD
    argv = [sys.executable, "-c", code, str(n), *(["scrape"] if scrape else [])]
    done = subprocess.run(argv, env=env, capture_output=True, check=True)
    return done.stdout.decode()


def _samples(text: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "pid")
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def test_a_scrape_in_multiprocess_mode_sums_every_process(tmp_path: Path) -> None:
    _child(tmp_path, 8)
    _child(tmp_path, 12)
    scraped = _samples(_child(tmp_path, 4, scrape=True))  # a third process's /metrics
    assert scraped["tastemaker_events_processed_total{}"] == 24
    assert scraped["tastemaker_feature_freshness_seconds_count{}"] == 24
    assert scraped["tastemaker_feature_freshness_seconds_sum{}"] == (28 + 66 + 6) / 4
    assert scraped["tastemaker_feature_freshness_seconds_bucket{le=0.25}"] == 6  # 0 and 0.25
    # The lag: the newest measurement (the third process's), not a sum or a stale max.
    assert scraped["tastemaker_stream_lag_events{partition=0}"] == 4
    # The batch histogram's files merge as prometheus-client's own histogram's do.
    ours = {k.replace("ours", ""): v for k, v in scraped.items() if k.startswith("ours")}
    theirs = {k.replace("theirs", ""): v for k, v in scraped.items() if k.startswith("theirs")}
    assert ours == theirs
    assert ours["_seconds_count{}"] == 24


def test_a_dead_process_leaves_its_counters_and_not_its_gauges(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    DeploymentCollector(registry, path=str(tmp_path))
    _child(tmp_path, 5)
    _child(tmp_path, 7)
    pids = sorted({int(f.stem.rsplit("_", 1)[1]) for f in tmp_path.glob("gauge_live*.db")})
    assert len(pids) == 2
    before = _samples(generate_latest(registry).decode())
    assert before["tastemaker_events_processed_total{}"] == 12
    assert before["tastemaker_stream_lag_events{partition=0}"] == 7
    fold_dead_process(pids[1], str(tmp_path))
    after = _samples(generate_latest(registry).decode())
    assert after["tastemaker_stream_lag_events{partition=0}"] == 5  # the live one's
    fold_dead_process(pids[0], str(tmp_path))
    fold_dead_process(pids[0], str(tmp_path))  # again: nothing
    after = _samples(generate_latest(registry).decode())
    assert "tastemaker_catalog_items{}" not in after
    assert "tastemaker_stream_lag_events{partition=0}" not in after
    # Counters and histograms: the same sums, from one file of the dead per type.
    summed = {
        k: v
        for k, v in before.items()
        if not k.startswith(
            (
                "tastemaker_catalog",
                "tastemaker_stream_lag",
                "tastemaker_stream_batch_limit",
                "tastemaker_artifact_v",
                "tastemaker_stream_covis",
            )
        )
    }
    assert {k: after[k] for k in summed} == summed
    assert summed["tastemaker_feature_freshness_seconds_count{}"] == 12
    assert sorted(f.name for f in tmp_path.glob("*.db")) == ["counter_dead.db", "histogram_dead.db"]


def test_a_fold_does_not_wait_for_a_scrape(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    DeploymentCollector(registry, path=str(tmp_path))
    _child(tmp_path, 5)
    (pid,) = {int(f.stem.rsplit("_", 1)[1]) for f in tmp_path.glob("counter_*.db")}
    with (tmp_path / "scrape.lock").open("ab") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_SH)  # a scrape reading the files
        assert not fold_dead_process(pid, str(tmp_path))
        assert (tmp_path / f"counter_{pid}.db").exists()
        assert not (tmp_path / "counter_dead.db").exists()
    assert fold_dead_process(pid, str(tmp_path))
    assert not (tmp_path / f"counter_{pid}.db").exists()
    text = generate_latest(registry).decode()
    assert _samples(text)["tastemaker_events_processed_total{}"] == 5


def test_every_declared_metric_is_made() -> None:
    kinds = Metrics.__annotations__
    assert kinds, "Metrics declares its metrics as class annotations"
    for attr in kinds:
        assert hasattr(METRICS, attr), f"Metrics.{attr} is annotated but not in _DECLARED"
