"""POST /v1/items: upserts and deletes reach every process, new items are recommended at
once, deleted ones never again."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import msgspec
import numpy as np
import pytest
from starlette.testclient import TestClient

from tastemaker.catalog import Catalog, ItemChange
from tastemaker.config import Config, dump_config
from tastemaker.data.synthetic import Shop
from tastemaker.deployment.runtime import Runtime
from tastemaker.events import EventType
from tastemaker.features.layout import PROFILE
from tastemaker.serving.api import build_app
from tastemaker.testing.servers import free_port, wait_for_http
from tests.conftest import event, make_config, wait_until


def item_json(
    item_id: str, category: str, embedding: list[float], **kw: object
) -> dict[str, object]:
    return {
        "item_id": item_id,
        "title": "new",
        "category": category,
        "brand": "brand-new",
        "price": 19.5,
        "embedding": embedding,
        **kw,
    }


def warm(rt: Runtime, shop: Shop) -> str:
    rt.ingestor.ingest(next(iter(shop.events(chunk_users=100))))
    rt.processor.drain()
    return str(shop.user_ids[0])


def test_a_new_item_is_recommended_at_once_and_reaches_other_workers(
    config: Config, shop: Shop
) -> None:
    api = Runtime.from_config(config)
    other = Runtime.from_config(config)  # a second worker process, on the same feed
    try:
        other.watch_catalog()
        user = warm(api, shop)
        profile = api.pipeline.user_features(user)[PROFILE]
        top_category = max(profile["category_intensity"].value["v"].items(), key=lambda kv: kv[1])[
            0
        ]
        centroid = np.asarray(profile["click_centroid"].value, np.float32)
        with TestClient(build_app(api)) as c:
            r = c.post(
                "/v1/items",
                json={"items": [item_json("brand-new-1", top_category, centroid.tolist())]},
            )
            assert r.status_code == 202, r.text
            assert r.json()["accepted"] == 1
            rec = c.post("/v1/recommend", json={"user_id": user, "n": 10}).json()
        got = {it["item_id"]: it["sources"] for it in rec["items"]}
        assert "brand-new-1" in got
        assert {"new_items", "ann"} <= set(got["brand-new-1"])
        # Another process serves it within seconds (it polls every second).
        wait_until(lambda: "brand-new-1" in other.catalog.index, timeout=5)
        assert "brand-new-1" in {i.item_id for i in other.pipeline.recommend(user, 10).items}
        # Events about the new item flow through the stream like any other.
        api.ingestor.ingest([event("n-1", user, "brand-new-1", EventType.CLICK, 1.7612e9)])
        api.processor.drain()
        assert api.pipeline.user_features(user)[PROFILE]["last_items"].value[0] == "brand-new-1"
    finally:
        other.close()
        api.close()


def test_a_deleted_item_is_never_recommended_again(
    config: Config, shop: Shop, catalog: Catalog
) -> None:
    api = Runtime.from_config(config)
    try:
        user = warm(api, shop)
        before = [i.item_id for i in api.pipeline.recommend(user, 10).items]
        gone = before[:3]
        api.upsert_items([ItemChange(item_id=i, deleted=True) for i in gone])
        after = {i.item_id for i in api.pipeline.recommend(user, 50).items}
        assert not after & set(gone)
        assert not {i.item_id for i in api.pipeline.recommend("nobody", 50).items} & set(gone)
        similar = api.pipeline.similar(before[5], 50)
        assert not {i.item_id for i in similar} & set(gone)
    finally:
        api.close()
    # A restart applies the feed on top of the base catalog file.
    again = Runtime.from_config(config)
    try:
        assert not again.catalog.active[again.catalog.rows(gone)].any()
        assert len(again.catalog) == len(catalog)
    finally:
        again.close()


def test_a_bad_item_is_refused_whole_with_the_field_named(config: Config, catalog: Catalog) -> None:
    api = Runtime.from_config(config)
    try:
        with TestClient(build_app(api)) as c:
            good = item_json("ok-1", "cat00", [0.1] * catalog.dim)
            bad = item_json("bad-1", "", [0.1] * (catalog.dim - 1))
            r = c.post("/v1/items", json={"items": [good, bad]})
            assert r.status_code == 400
            body = r.json()
            assert [(p["index"], p["field"]) for p in body["problems"]] == [
                (1, "category"),
                (1, "embedding"),
            ]
            r = c.post("/v1/items", json={"items": [{**good, "price": -3}]})
            assert r.status_code == 400
            assert "price" in r.json()["detail"]
            r = c.post("/v1/items", json={"items": [{**good, "colour": "red"}]})
            assert r.status_code == 400
            assert "colour" in r.json()["detail"]
        assert api.feed.read(0) == []  # nothing was written
        assert "ok-1" not in api.catalog.index
    finally:
        api.close()


def test_an_upsert_of_a_known_item_changes_it_in_place(config: Config, catalog: Catalog) -> None:
    api = Runtime.from_config(config)
    try:
        first = str(catalog.ids[0])
        row = api.catalog.index[first]
        api.upsert_items(
            [
                ItemChange(
                    item_id=first,
                    category="cat-x",
                    brand="b",
                    price=1.0,
                    embedding=[1.0] + [0.0] * (catalog.dim - 1),
                    in_stock=False,
                )
            ]
        )
        cat = api.catalog
        assert cat.index[first] == row
        assert len(cat) == len(catalog)
        assert cat.category_names[cat.category[row]] == "cat-x"
        assert not cat.in_stock[row]
    finally:
        api.close()


@pytest.mark.slow
def test_every_worker_of_serve_sees_a_new_item_within_seconds(
    tmp_path: Path, catalog: Catalog
) -> None:
    """`tastemaker serve --workers 2`: the item is accepted by one worker; asking for its
    similar items, answered by either worker, works for all within 5 s."""
    port = free_port()
    config = make_config(tmp_path, catalog)
    serving = msgspec.structs.replace(config.serving, port=port)
    stream = msgspec.structs.replace(config.stream, run_in_server=False)
    path = dump_config(
        msgspec.structs.replace(config, serving=serving, stream=stream), tmp_path / "c.toml"
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "tastemaker", "serve", "--config", str(path), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + "/healthz", timeout=60)
        with httpx2.Client(base_url=url, timeout=10) as c:
            body = {"items": [item_json("fresh-1", "cat00", [0.5] * catalog.dim)]}
            assert c.post("/v1/items", json=body).status_code == 202
            started = time.monotonic()

            def everywhere() -> bool:
                # New connections spread over both workers.
                codes = set()
                for _ in range(12):
                    with httpx2.Client(base_url=url, timeout=10) as one:
                        codes.add(one.get("/v1/items/fresh-1/similar").status_code)
                return codes == {200}

            wait_until(everywhere, timeout=10, interval=0.2)
            assert time.monotonic() - started < 5.0
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
