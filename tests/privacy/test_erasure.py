"""Erase a user end to end, then look for the id everywhere tastemaker keeps data.

What is scanned after the erasure:
- the event log, through its own `read` of every partition: only the erasure's tombstone
  (type `erase`) may name the user;
- the online store, through `get` of the user's row (every family) and `seen` of each of the
  user's event ids;
- every file under the lake (events and feature log) and the artifacts directory: Parquet
  files decoded (every cell of every row), every other file (manifests, `.npy`, models) as
  raw bytes. The LMDB and SQLite files themselves are not grepped as files: their free pages keep
  deleted bytes until reused, which only their own APIs (above) see past.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient

from tastemaker.catalog import Catalog
from tastemaker.config import Config, LogConfig, StoreConfig
from tastemaker.data.synthetic import Shop
from tastemaker.deployment.runtime import Runtime
from tastemaker.deployment.scheduler import run_offline
from tastemaker.events import Event, EventType, idempotency_key
from tastemaker.features.layout import user_row
from tastemaker.serving.api import build_app
from tastemaker.store import EmbeddedStore
from tests.conftest import event, make_config

USER = "erase-me-7f3a"
JOBS = ["covisitation", "embeddings", "segments"]


def _config(request: pytest.FixtureRequest, tmp_path: Path, catalog: Catalog) -> Config:
    config = make_config(tmp_path, catalog)
    offline = msgspec.structs.replace(config.offline, feature_log_sample=1.0)
    config = msgspec.structs.replace(config, offline=offline)
    if request.param == "redis":
        base = request.getfixturevalue("redis_url")
        name = tmp_path.name[-12:].replace("-", "")
        config = msgspec.structs.replace(
            config,
            log=LogConfig(url=f"{base}?partitions=3&prefix=l{name}"),
            store=StoreConfig(url=f"{base}?prefix=s{name}:"),
        )
    return config


@pytest.fixture(params=["embedded", "redis"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path, catalog: Catalog) -> Iterator[Runtime]:
    rt = Runtime.from_config(_config(request, tmp_path, catalog))
    yield rt
    rt.close()


def _files_naming(root: Path, needle: str) -> list[str]:
    hits = []
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            found = needle in repr(pq.read_table(path).to_pylist())
        else:
            found = needle.encode() in path.read_bytes()
        if found:
            hits.append(str(path.relative_to(root)))
    return hits


def _store_keys_and_values_naming(rt: Runtime, needle: str) -> list[bytes]:
    """Every live key of the store whose key or value bytes hold `needle`, read through the
    backend's own iteration (LMDB cursors; Redis SCAN and GET), which sees no free pages."""
    raw = needle.encode()
    hits: list[bytes] = []
    if isinstance(rt.store, EmbeddedStore):
        env = rt.store._env  # the test looks at every entry, past the protocol
        for name in (b"cells", b"seen"):
            with env.begin(db=env.open_db(name)) as txn:
                hits += [bytes(k) for k, v in txn.cursor() if raw in bytes(k) or raw in bytes(v)]
        return hits
    client = rt.store._client  # type: ignore[attr-defined]
    prefix = rt.config.store.url.split("prefix=")[1]
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        value = client.get(key) if client.type(key) == b"string" else repr(client.hgetall(key))
        if raw in key or (
            value is not None and raw in (value if isinstance(value, bytes) else value.encode())
        ):
            hits.append(key)
    return hits


def _user_events(catalog: Catalog, n: int, start: int) -> list[Event]:
    items = catalog.ids
    return [
        event(f"{USER}-{start + k}", USER, items[(7 * k) % 50], EventType.PURCHASE, 1.76e9 + k)
        for k in range(n)
    ]


def _everywhere(rt: Runtime, tmp_path: Path, event_ids: list[str]) -> dict[str, Any]:
    """Where the user still is: log records other than tombstones, store rows and keys,
    files."""
    records = [
        r.event
        for p in range(rt.log.partitions)
        for r in rt.log.read(p, 0, 10**7)
        if r.event.user_id == USER
    ]
    return {
        "log": [e.event_id for e in records if e.type is not EventType.ERASE],
        "tombstones": [e.item_id for e in records if e.type is EventType.ERASE],
        "store": rt.store.get([user_row(USER)], rt.store.families),
        "store_scan": _store_keys_and_values_naming(rt, USER),
        "seen": rt.store.seen([idempotency_key(USER, i) for i in event_ids]),
        "files": _files_naming(tmp_path / "lake", USER)
        + _files_naming(tmp_path / "artifacts", USER),
    }


@pytest.mark.slow
def test_an_erased_user_is_nowhere(
    runtime: Runtime, tmp_path: Path, shop: Shop, catalog: Catalog
) -> None:
    rt = runtime
    config = rt.config
    others = [e for chunk in shop.events(chunk_users=100) for e in chunk][:3000]
    mine = _user_events(catalog, 12, 0)
    rt.watch_artifacts()
    with TestClient(build_app(rt)) as client:
        rt.ingestor.ingest(others)
        assert (
            client.post("/v1/events", json={"events": msgspec.to_builtins(mine)}).status_code == 202
        )
        rt.processor.drain()
        for _ in range(3):  # feature log rows of the user's requests
            assert client.post("/v1/recommend", json={"user_id": USER, "n": 5}).status_code == 200
        assert rt.feature_logger is not None
        rt.feature_logger.flush()
        run_offline(config, rt.log, catalog, JOBS)
        more = _user_events(catalog, 5, 100)
        rt.ingestor.ingest(more + others[:50])
        rt.processor.drain()
        run_offline(config, rt.log, catalog, JOBS)  # a second version of each artifact
        # In flight: appended, not yet applied by the stream nor archived.
        late = _user_events(catalog, 3, 200)
        rt.ingestor.ingest(late)
        ids = [e.event_id for e in mine + more + late]
        before = _everywhere(rt, tmp_path, ids)
        assert before["store_scan"]
        assert before["log"]
        assert before["store"]
        assert before["seen"]
        assert any(f.startswith("events/") for f in before["files"])
        assert any(f.startswith("features/") for f in before["files"])
        assert any("embeddings/" in f for f in before["files"])
        assert any("segments/" in f for f in before["files"])
        assert any("covisitation/" in f for f in before["files"])

        r = client.delete(f"/v1/users/{USER}")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["user_id"] == USER
        assert body["store_rows"] == 1
        assert body["lake_events"] > 0
        assert body["feature_log_rows"] > 0
        assert set(body["artifact_rows"]) == {"covisitation", "embeddings", "segments"}
        rt.processor.drain()  # applies the tombstone
        run_offline(config, rt.log, catalog, JOBS)  # the archiver meets it too
        after = _everywhere(rt, tmp_path, ids)
        assert after == {
            "log": [],
            "tombstones": ["*"],
            "store": {},
            "store_scan": [],
            "seen": set(),
            "files": [],
        }
        cold = client.post("/v1/recommend", json={"user_id": "never-seen", "n": 5}).json()
        mine_now = client.post("/v1/recommend", json={"user_id": USER, "n": 5}).json()
        assert [i["item_id"] for i in mine_now["items"]] == [i["item_id"] for i in cold["items"]]
    # Serving loaded the republished artifacts: the user has no ALS vector any more.
    assert USER not in repr(rt.pipeline.models.models.versions)


def test_the_erase_command(tmp_path: Path, catalog: Catalog) -> None:
    from tastemaker.cli import main

    config = make_config(tmp_path, catalog)
    path = tmp_path / "config.toml"
    path.write_text(
        f'[log]\nurl = "{config.log.url}"\n[store]\nurl = "{config.store.url}"\n'
        f'[offline]\nlake_url = "{config.offline.lake_url}"\n'
        f'artifacts_path = "{config.offline.artifacts_path}"\n'
    )
    rt = Runtime.from_config(config)
    try:
        rt.ingestor.ingest([event("e1", "zed", catalog.ids[0]), event("e2", "amy", catalog.ids[1])])
        rt.processor.drain()
    finally:
        rt.close()
    assert main(["users", "erase", "zed", "--config", str(path)]) == 0
    assert main(["users", "erase", "--config", str(path), ""]) == 2
    rt = Runtime.from_config(config)
    try:
        assert rt.store.get([user_row("zed"), user_row("amy")], ["profile"]).keys() == {
            user_row("amy")
        }
        assert [r.event.user_id for r in rt.log.read(0, 0, 100)] == ["amy", "zed"]  # tombstone
    finally:
        rt.close()
