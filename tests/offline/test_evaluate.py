from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tastemaker.cli import main
from tastemaker.deployment.evaluate import Split, evaluate, ranking_metrics, split_by_time
from tastemaker.events import EventType
from tests.conftest import T0, event

SYSTEMS = {"tastemaker", "popularity", "item_knn", "als", "ease"}
METRICS = {"ndcg@10", "recall@20", "hr@10", "mrr", "coverage"}


def test_the_split_is_by_time_and_test_items_exclude_training_ones() -> None:
    events = [event(f"e{i}", f"u{i % 3}", f"i{i}", EventType.CLICK, T0 + i) for i in range(20)]
    events.append(event("again", "u0", "i0", EventType.CLICK, T0 + 25))  # seen in training
    events.append(event("late", "u9", "i1", EventType.IMPRESSION, T0 + 30))  # no engagement
    split = split_by_time(events, 0.8)
    assert split.cut_ts == T0 + 17
    assert all(e.ts < split.cut_ts for e in split.train)
    assert split.test
    assert set(split.test) <= {"u0", "u1", "u2"}
    for user, (first, items) in split.test.items():
        assert first >= split.cut_ts
        assert not items & split.train_items.get(user, frozenset())
    assert "u9" not in split.test


def test_metrics_by_hand() -> None:
    split = Split(
        train=[],
        test={"a": (0.0, frozenset({"x", "y"})), "b": (0.0, frozenset({"z"}))},
        train_items={"a": frozenset({"w"})},
        cut_ts=0.0,
    )
    recs = {"a": ["x", "q", "y"], "b": ["q", "r"]}
    m = ranking_metrics(recs, split, n_items=10)
    ndcg_a = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx(ndcg_a / 2)
    assert m["ndcg@10_users_with_history"] == pytest.approx(ndcg_a)
    assert m["ndcg@10_new_users"] == 0.0
    assert m["recall@20"] == pytest.approx(0.5)
    assert m["hr@10"] == 0.5
    assert m["mrr"] == 0.5
    assert m["coverage"] == pytest.approx(4 / 10)


@pytest.mark.slow
def test_evaluate_command_writes_json_and_chart_and_repeats_exactly(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    args = ["evaluate", "--dataset", "synthetic", "--users", "500", "--json", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_bytes())
    assert set(result["systems"]) == SYSTEMS
    for metrics in result["systems"].values():
        assert set(metrics) >= METRICS
        assert 0 <= metrics["ndcg@10"] <= 1
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = evaluate("synthetic", seed=0, users=500)
    assert again["systems"] == result["systems"]


@pytest.mark.slow
@pytest.mark.network
def test_tastemaker_beats_every_baseline_on_movielens_100k() -> None:
    result = evaluate("movielens-100k", seed=0)
    systems = result["systems"]
    assert set(systems) == SYSTEMS
    best = max(v["ndcg@10"] for k, v in systems.items() if k != "tastemaker")
    assert systems["tastemaker"]["ndcg@10"] > best
    assert result["ndcg@10_margin"] == pytest.approx(systems["tastemaker"]["ndcg@10"] - best)
