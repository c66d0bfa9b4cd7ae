"""Shared fixtures: a small synthetic shop, configs on temporary directories, a runtime."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tastemaker.catalog import Catalog, save_catalog
from tastemaker.config import CatalogConfig, Config, ServingConfig, local_config
from tastemaker.data.synthetic import Shop, ShopSpec, generate_shop
from tastemaker.deployment.runtime import Runtime
from tastemaker.events import Event, EventType
from tastemaker.testing.servers import kafka_broker, redis_cluster, redis_server

T0 = 1_760_000_000.0

# Tests never write into the user's home: HOME is a temporary directory for the session.
# Downloads (MovieLens) and compiled models are cached on purpose, under the repository's
# .cache/ (git-ignored; CI keeps it between runs) unless TASTEMAKER_CACHE_DIR names another.
os.environ.setdefault(
    "TASTEMAKER_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "tastemaker")
)
_HOME = tempfile.mkdtemp(prefix="tastemaker-test-home-")
os.environ["HOME"] = _HOME
os.environ.pop("XDG_CACHE_HOME", None)
atexit.register(shutil.rmtree, _HOME, True)


def wait_until(predicate: object, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Poll `predicate()` until true; fail the test after `timeout` seconds."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def event(
    event_id: str,
    user: str,
    item: str,
    etype: EventType = EventType.VIEW,
    ts: float = T0,
    **kw: object,
) -> Event:
    return msgspec.convert(
        {"event_id": event_id, "user_id": user, "item_id": item, "type": etype, "ts": ts, **kw},
        Event,
    )


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Redis-protocol server for the whole test session (see tests/servers.py)."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def kafka_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Kafka-protocol broker (Tansu, memory storage) for the whole test session;
    `TASTEMAKER_TEST_KAFKA=HOST:PORT` points the tests at an existing one."""
    with kafka_broker(tmp_path_factory.mktemp("kafka")) as servers:
        yield servers


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real 3-node cluster for the whole test session."""
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as url:
        yield url


@pytest.fixture(scope="session")
def shop() -> Shop:
    return generate_shop(ShopSpec(n_users=300, n_items=400, n_categories=8, n_brands=20, seed=3))


@pytest.fixture(scope="session")
def catalog(shop: Shop) -> Catalog:
    return shop.catalog()


def make_config(root: Path, catalog: Catalog | None = None, **sections: Any) -> Config:
    """A config whose log, store and catalog live under `root` (the catalog saved there).

    Unless `serving` is given, the request deadline and stage budgets are seconds, not
    milliseconds: on a shared 2-core CI machine a cold first request can take longer than the
    production 50 ms, and a test that is not about deadlines must not fall back (an answer
    with fallbacks is neither cached nor personal). Tests about deadlines set their own; the
    hard timeout of a request's backend work gets seconds of grace too, so that a request
    with a tiny `deadline_ms` shows the pipeline's own fallbacks."""
    if "serving" not in sections:
        sections["serving"] = ServingConfig(
            deadline_ms=10_000.0,
            budget_features_ms=2_000.0,
            budget_retrieve_ms=5_000.0,
            deadline_grace_ms=5_000.0,
        )
    config = local_config(root, **sections)
    if catalog is None:
        return msgspec.structs.replace(config, catalog=CatalogConfig())
    root.mkdir(parents=True, exist_ok=True)
    save_catalog(catalog, root / "catalog.parquet")
    return config


@pytest.fixture
def config(tmp_path: Path, catalog: Catalog) -> Config:
    return make_config(tmp_path, catalog)


@pytest.fixture
def runtime(config: Config) -> Iterator[Runtime]:
    rt = Runtime.from_config(config)
    yield rt
    rt.close()
