"""deploy/: the Grafana dashboard and the Prometheus alert rules name only metrics that
`/metrics` exports, and the rules load (with promtool where it is installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from tastemaker.deployment.runtime import Runtime
from tastemaker.metrics import METRICS
from tastemaker.serving.api import build_app

DEPLOY = Path(__file__).parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "tastemaker.json"
RULES = DEPLOY / "prometheus" / "alerts.yml"
_METRIC = re.compile(r"\btastemaker_[a-z0-9_]+")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported(runtime: Runtime) -> set[str]:
    """Every series name `/metrics` of a running app can show, read from its TYPE lines (a
    labelled metric has no sample until first observed)."""
    with TestClient(build_app(runtime)) as client:
        text = client.get("/metrics").text
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE tastemaker_"):
            _, _, name, kind = line.split()
            base = name.removesuffix("_total") if kind == "counter" else name
            names.update(base + suffix for suffix in _SUFFIXES.get(kind, ("",)))
    return names


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in doc["panels"] for t in panel["targets"]]


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_the_dashboard_names_only_exported_metrics(runtime: Runtime) -> None:
    have = exported(runtime)
    used = {m for expr in dashboard_exprs() for m in _METRIC.findall(expr)}
    assert used - have == set()
    assert len(used) >= 15


def test_the_alert_rules_name_only_exported_metrics_and_cover_the_operations(
    runtime: Runtime,
) -> None:
    have = exported(runtime)
    found = rules()
    assert all({"alert", "expr", "annotations"} <= set(rule) for rule in found)
    used = {m for rule in found for m in _METRIC.findall(rule["expr"])}
    assert used - have == set()
    for needed in (
        "tastemaker_feature_freshness_seconds_bucket",  # freshness
        "tastemaker_stream_lag_events",  # lag
        "tastemaker_responses_total",  # error rate
        "tastemaker_recommendations_total",  # degraded share
        "tastemaker_job_runs_total",  # job failures
    ):
        assert needed in used


def test_promtool_loads_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus); rules parsed above")
    done = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_the_error_rate_counter_counts_responses_by_status_class(runtime: Runtime) -> None:
    def count(code: str) -> float:
        labels = {"endpoint": "recommend", "code": code}
        return METRICS.registry.get_sample_value("tastemaker_responses_total", labels) or 0.0

    before = count("2xx"), count("4xx")
    with TestClient(build_app(runtime)) as client:
        assert client.post("/v1/recommend", json={"user_id": "u"}).status_code == 200
        assert client.post("/v1/recommend", json={"user": "u"}).status_code == 400
        bad = client.post(
            "/v1/recommend", content=b"{", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400
    assert (count("2xx"), count("4xx")) == (before[0] + 1, before[1] + 2)
