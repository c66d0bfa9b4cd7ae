"""The console's pages, files and JSON over the real app (the browser drives them in
test_console_browser.py), its `admin` guard, and the per-stage latency it charts."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tastemaker.catalog import Catalog
from tastemaker.deployment.runtime import Runtime
from tastemaker.metrics import METRICS
from tastemaker.serving.api import build_app
from tests.conftest import event, make_config
from tests.serving.test_auth import KEYS, keyed

PAGES = ["/console", "/console/users", "/console/items", "/console/experiments"]


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(build_app(runtime)) as c:
        yield c


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"admin:{key}".encode()).decode()}


@pytest.mark.parametrize("path", PAGES)
def test_each_page_is_html_with_the_navigation_and_the_vendored_chart_library(
    client: TestClient, path: str
) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    for other in PAGES:
        assert f'href="{other}"' in r.text
    assert '<script src="/console/static/uplot.iife.min.js">' in r.text
    assert "http://" not in r.text  # nothing from elsewhere
    assert "https://" not in r.text


def test_query_values_are_escaped_into_the_forms(client: TestClient) -> None:
    r = client.get("/console/users", params={"user_id": '"><script>alert(1)</script>'})
    assert "<script>alert" not in r.text
    assert 'value="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in r.text


def test_static_files_are_served_with_the_chart_library_license(client: TestClient) -> None:
    assert (
        client.get("/console/static/console.js")
        .headers["content-type"]
        .startswith("text/javascript")
    )
    assert "MIT License" in client.get("/console/static/uplot.LICENSE").text
    r = client.get("/console/static/nope.js")
    assert r.status_code == 404
    assert "nope.js" in r.json()["detail"]


def retrieved(stage: str) -> float:
    """Observations of `stage` in the recommend stage histogram so far."""
    name = "tastemaker_recommend_stage_seconds_count"
    return METRICS.registry.get_sample_value(name, {"stage": stage}) or 0.0


def test_the_summary_holds_every_metric_and_the_per_stage_latency(
    client: TestClient, runtime: Runtime, catalog: Catalog
) -> None:
    item = str(catalog.ids[0])
    runtime.ingestor.ingest([event("s1", "u1", item)])
    runtime.processor.drain()
    stages = ("features", "retrieve", "rank")
    before = [retrieved(stage) for stage in stages]
    assert client.post("/v1/recommend", json={"user_id": "u1", "n": 3}).status_code == 200
    assert [retrieved(stage) for stage in stages] == [b + 1 for b in before]
    summary = client.get("/console/api/summary").json()
    names = {name for name, _, _ in summary["samples"]}
    assert "tastemaker_recommend_stage_seconds_bucket" in names
    assert "tastemaker_stream_lag_events" in names
    assert summary["artifacts"] == {"current": {}, "served": {}}
    assert summary["items"] == len(catalog)


def test_the_user_view_has_features_and_explained_recommendations(
    client: TestClient, runtime: Runtime, catalog: Catalog
) -> None:
    items = [str(i) for i in catalog.ids[:10]]
    views = [
        event(f"v{i}", "u2" if i < 2 else "u3", it, ts=1.76e9 + i) for i, it in enumerate(items)
    ]
    runtime.ingestor.ingest(views)
    runtime.processor.drain()
    data = client.get("/console/api/users/u2", params={"n": 4, "explain": "true"}).json()
    assert set(data["features"]) == {"profile", "session"}
    assert data["session"] == data["features"]["session"]
    assert all({"value", "ts"} == set(c) for c in data["features"]["profile"].values())
    recs = data["recommendations"]["items"]
    assert len(recs) == 4
    assert all(r["sources"] and r["because"] for r in recs)


@pytest.mark.parametrize(
    ("query", "named"),
    [({"n": "0"}, "n must be an integer"), ({"filters": '{"colour": 1}'}, "colour")],
)
def test_bad_user_options_are_named(client: TestClient, query: dict[str, str], named: str) -> None:
    r = client.get("/console/api/users/u", params=query)
    assert r.status_code == 400
    assert named in r.json()["detail"]


def test_the_item_view_has_attributes_and_similar_items_by_source(
    client: TestClient, catalog: Catalog
) -> None:
    item = str(catalog.ids[5])
    data = client.get(f"/console/api/items/{item}").json()
    assert data["attributes"]["category"] == str(catalog.category_names[catalog.category[5]])
    assert data["similar"]
    assert "embedding" in data["similar"][0]["sources"]
    r = client.get("/console/api/items/no-such-item")
    assert r.status_code == 404
    assert "no-such-item" in r.json()["detail"]


@pytest.fixture
def keyed_client(tmp_path: Path, catalog: Catalog) -> Iterator[TestClient]:
    rt = Runtime.from_config(keyed(make_config(tmp_path, catalog)))
    with TestClient(build_app(rt)) as c:
        yield c
    rt.close()


@pytest.mark.parametrize("path", [*PAGES, "/console/static/console.js", "/console/api/summary"])
def test_the_console_needs_an_admin_key_which_a_browser_is_asked_for(
    keyed_client: TestClient, path: str
) -> None:
    r = keyed_client.get(path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith('Basic realm="tastemaker console"')
    assert keyed_client.get(path, headers=basic(KEYS["reader"])).status_code == 403
    assert keyed_client.get(path, headers=basic("wrong")).status_code == 401
    assert keyed_client.get(path, headers=basic(KEYS["boss"])).status_code == 200
    bearer = {"Authorization": f"Bearer {KEYS['boss']}"}
    assert keyed_client.get(path, headers=bearer).status_code == 200


def test_a_basic_header_that_is_not_base64_is_no_key(keyed_client: TestClient) -> None:
    r = keyed_client.get("/console", headers={"Authorization": "Basic %%%"})
    assert r.status_code == 401
    assert "no API key" in r.json()["detail"]
