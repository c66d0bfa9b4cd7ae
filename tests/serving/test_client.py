"""tastemaker.client against a real uvicorn server on a free loopback port."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import uvicorn

from tastemaker.catalog import Catalog
from tastemaker.client import ApiError, AsyncClient, Call, Client, Filters
from tastemaker.data.synthetic import Shop
from tastemaker.deployment.runtime import Runtime
from tastemaker.events import EventType
from tastemaker.serving.api import build_app
from tastemaker.serving.schemas import Accepted
from tastemaker.testing.servers import free_port, wait_for_http
from tests.conftest import event, make_config


@pytest.fixture
def server(runtime: Runtime, shop: Shop) -> Iterator[str]:
    runtime.ingestor.ingest(next(iter(shop.events(chunk_users=100))))
    runtime.processor.drain()
    port = free_port()
    config = uvicorn.Config(
        build_app(runtime), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for_http(url + "/healthz")
    yield url
    srv.should_exit = True
    thread.join(timeout=10)


def test_sync_client_covers_every_endpoint(server: str, shop: Shop, runtime: Runtime) -> None:
    user = str(shop.user_ids[0])
    item = str(runtime.catalog.ids[3])
    with Client(server) as tm:
        assert tm.health().status == "ok"
        assert tm.send_events([event("c-1", user, item, EventType.CLICK, 1.7605e9)]).accepted == 1
        rec = tm.recommend(user, 5, explain=True, filters=Filters(in_stock=True))
        assert len(rec.items) == 5
        assert rec.request_id
        assert all(i.because for i in rec.items)
        ranked = tm.rank(user, [str(i) for i in runtime.catalog.ids[:8]], n=3)
        assert len(ranked.items) == 3
        assert len(tm.similar(item, 4).items) == 4
        runtime.processor.drain()
        assert "profile" in tm.features(user).features
        with pytest.raises(ApiError) as err:
            tm.rank(user, ["no-such-item"])
        assert (err.value.status, err.value.error) == (400, "unknown_items")
        bad = {
            "events": [{"event_id": "c-2", "user_id": user, "item_id": item, "type": "x", "ts": 1}]
        }
        with pytest.raises(ApiError) as err:
            tm.call(Call("POST", "/v1/events", Accepted, bad))
        assert err.value.status == 400
        assert [p.field for p in err.value.problems] == ["type", "ts"]


def test_async_client_is_the_same_calls_awaited(server: str, shop: Shop) -> None:
    user = str(shop.user_ids[1])

    async def main() -> tuple[int, int]:
        async with AsyncClient(server) as tm:
            recs = await asyncio.gather(*(tm.recommend(user, 3) for _ in range(5)))
            health = await tm.health()
            return len({r.request_id for r in recs}), health.items

    distinct, items = asyncio.run(main())
    assert distinct == 5
    assert items > 0


def test_the_client_waits_out_a_429_and_retries(tmp_path: Path, catalog: Catalog) -> None:
    config = make_config(tmp_path, catalog)
    config = msgspec.structs.replace(
        config,
        serving=msgspec.structs.replace(config.serving, rate_limit_rps=2.0, rate_limit_burst=1),
    )
    rt = Runtime.from_config(config)
    port = free_port()
    srv = uvicorn.Server(
        uvicorn.Config(
            build_app(rt), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + "/healthz")
        with Client(url, api_key="k") as tm:
            started = time.monotonic()
            assert len(tm.recommend("u", 2).items) == 2
            assert len(tm.recommend("u", 2).items) == 2  # a 429 first, then the retry
            assert time.monotonic() - started >= 0.9
        with Client(url, api_key="k2", retries=0) as tm:
            tm.recommend("u", 1)  # the one token of the burst
            with pytest.raises(ApiError) as err:
                tm.recommend("u", 1)
        assert err.value.status == 429
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        rt.close()
