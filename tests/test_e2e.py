"""End to end over real HTTP: `tastemaker serve` in its own process, events in, features and
recommendations change."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import msgspec
import pytest

from tastemaker.catalog import Catalog
from tastemaker.config import dump_config
from tastemaker.data.synthetic import Shop
from tastemaker.testing.servers import free_port, wait_for_http
from tests.conftest import make_config, wait_until


@pytest.fixture
def server(tmp_path: Path, catalog: Catalog) -> Iterator[httpx.Client]:
    port = free_port()
    config = make_config(tmp_path, catalog)
    path = dump_config(
        msgspec.structs.replace(
            config,
            stream=msgspec.structs.replace(config.stream, poll_interval_s=0.05),
            serving=msgspec.structs.replace(
                config.serving, global_cache_s=0.05, neighbour_cache_s=0.05
            ),
        ),
        tmp_path / "config.toml",
    )
    stderr = tmp_path / "server.log"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tastemaker",
                "serve",
                "--config",
                str(path),
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=30, log=stderr)
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=15)


@pytest.mark.slow
def test_events_over_http_change_features_and_recommendations(
    server: httpx.Client, shop: Shop, catalog: Catalog
) -> None:
    # Background traffic so popularity and co-visitation exist.
    events = next(iter(shop.events(chunk_users=150)))
    for i in range(0, len(events), 1000):
        chunk = [
            {
                "event_id": e.event_id,
                "user_id": e.user_id,
                "item_id": e.item_id,
                "type": e.type,
                "ts": e.ts,
            }
            for e in events[i : i + 1000]
        ]
        assert server.post("/v1/events", json={"events": chunk}).status_code == 202
    wait_until(lambda: server.get("/healthz").json()["stream_lag"] == 0, timeout=30)

    before = server.post("/v1/recommend", json={"user_id": "carol", "n": 10}).json()["items"]
    assert all(set(i["sources"]) <= {"popular", "trending"} for i in before)  # cold start

    # carol looks at items of one category, then buys one of them.
    category = int(catalog.category[0])
    picks = [str(i) for i in catalog.ids[catalog.category == category][:4]]
    ts = max(e.ts for e in events) + 60
    mine = [
        {
            "event_id": f"carol-{k}",
            "user_id": "carol",
            "item_id": item,
            "type": "click",
            "ts": ts + k,
        }
        for k, item in enumerate(picks)
    ]
    mine.append(
        {
            "event_id": "carol-buy",
            "user_id": "carol",
            "item_id": picks[0],
            "type": "purchase",
            "ts": ts + 10,
            "value": 19.9,
        }
    )
    assert server.post("/v1/events", json={"events": mine}).json() == {"accepted": 5}

    def features_arrived() -> bool:
        f = server.get("/v1/users/carol/features").json()["features"]
        return bool(
            f.get("profile", {}).get("counts", {}).get("value") == {"click": 4, "purchase": 1}
        )

    wait_until(features_arrived, timeout=10)
    profile = server.get("/v1/users/carol/features").json()["features"]["profile"]
    assert profile["purchased"]["value"] == [picks[0]]
    assert profile["last_items"]["value"][:4] == [picks[0], picks[3], picks[2], picks[1]]

    after = server.post("/v1/recommend", json={"user_id": "carol", "n": 10}).json()["items"]
    assert after != before
    assert picks[0] not in {i["item_id"] for i in after}  # bought: filtered
    in_category = [catalog.category[catalog.index[i["item_id"]]] == category for i in after]
    assert sum(in_category) >= 5
    assert any("category" in i["sources"] or "covisitation" in i["sources"] for i in after)
