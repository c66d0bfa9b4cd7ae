"""Access control: API keys with scopes over the real app, the key store, the config forms,
the CLI's refusal to serve a non-loopback address open, and the client sending its key."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import uvicorn
from starlette.testclient import TestClient

from tastemaker import __version__
from tastemaker.catalog import Catalog
from tastemaker.cli import main
from tastemaker.client import ApiError, AsyncClient, Client
from tastemaker.config import ApiKey, Config, ConfigError, ServingConfig, load_config
from tastemaker.deployment.runtime import Runtime
from tastemaker.serving import auth
from tastemaker.serving.api import build_app
from tastemaker.serving.auth import KeyStore, check_exposure, hash_key, required_scope
from tastemaker.serving.openapi import openapi_document
from tastemaker.testing.servers import free_port, wait_for_http
from tests.conftest import make_config
from tests.serving.test_workers import write_config

KEYS = {"ingester": "k-ingest", "reader": "k-read", "boss": "k-admin", "scraper": "k-metrics"}
SCOPES: dict[str, list[Any]] = {
    "ingester": ["ingest"],
    "reader": ["read"],
    "boss": ["admin"],
    "scraper": ["metrics"],
}


def keyed(config: Config, **serving: Any) -> Config:
    keys = [ApiKey(name=n, sha256=hash_key(k), scopes=SCOPES[n]) for n, k in KEYS.items()]
    s = msgspec.structs.replace(config.serving, api_keys=keys, **serving)
    return msgspec.structs.replace(config, serving=s)


@pytest.fixture
def keyed_runtime(tmp_path: Path, catalog: Catalog) -> Iterator[Runtime]:
    rt = Runtime.from_config(keyed(make_config(tmp_path, catalog)))
    yield rt
    rt.close()


@pytest.fixture
def client(keyed_runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(build_app(keyed_runtime)) as c:
        yield c


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def endpoints(catalog: Catalog) -> list[tuple[str, str, Any, str, int]]:
    """(method, path, JSON body, scope, success status) of every keyed endpoint."""
    item = str(catalog.ids[0])
    event = {"event_id": "a1", "user_id": "u", "item_id": item, "type": "view", "ts": 1.76e9}
    return [
        ("POST", "/v1/events", {"events": [event]}, "ingest", 202),
        ("POST", "/v1/recommend", {"user_id": "u", "n": 2}, "read", 200),
        ("POST", "/v1/rank", {"user_id": "u", "item_ids": [item]}, "read", 200),
        ("GET", f"/v1/items/{item}/similar?n=2", None, "read", 200),
        ("POST", "/v1/items", {"items": [{"item_id": item, "deleted": True}]}, "admin", 202),
        ("GET", "/v1/users/u/features", None, "admin", 200),
    ]


@pytest.mark.parametrize("index", range(6))
def test_each_endpoint_admits_its_scope_and_admin_and_refuses_the_rest(
    client: TestClient, catalog: Catalog, index: int
) -> None:
    method, path, body, scope, ok = endpoints(catalog)[index]
    for name, scopes in SCOPES.items():
        r = client.request(method, path, json=body, headers=bearer(name))
        if scope in scopes or "admin" in scopes:
            assert r.status_code == ok, (name, r.text)
        else:
            assert r.status_code == 403, (name, r.text)
            assert r.json() == {
                "error": "forbidden",
                "detail": f"API key {name!r} lacks the {scope!r} scope {method} "
                f"{path.split('?')[0]} needs",
                "problems": [],
            }
            assert f'scope="{scope}"' in r.headers["www-authenticate"]
    no_key = client.request(method, path, json=body)
    assert no_key.status_code == 401
    assert no_key.json()["error"] == "unauthorized"
    assert "Authorization: Bearer KEY" in no_key.json()["detail"]
    assert no_key.headers["www-authenticate"].startswith("Bearer")
    wrong = client.request(method, path, json=body, headers={"X-API-Key": "k-guessed"})
    assert wrong.status_code == 401
    assert wrong.json()["detail"] == "the API key is not one this server knows"
    assert "k-guessed" not in wrong.text


def test_either_header_carries_the_key_and_other_schemes_do_not(client: TestClient) -> None:
    body = {"user_id": "u", "n": 1}
    assert client.post("/v1/recommend", json=body, headers=bearer("reader")).status_code == 200
    assert client.post("/v1/recommend", json=body, headers={"X-API-Key": "k-read"}).is_success
    lower = {"authorization": "bearer k-read"}
    assert client.post("/v1/recommend", json=body, headers=lower).status_code == 200
    basic = {"Authorization": "Basic k-read"}
    assert client.post("/v1/recommend", json=body, headers=basic).status_code == 401
    # With both, the Authorization header's key is the one checked.
    both = {"Authorization": "Bearer k-ingest", "X-API-Key": "k-read"}
    assert client.post("/v1/recommend", json=body, headers=both).status_code == 403


def test_health_schema_and_metrics_stay_open_and_new_paths_need_admin(
    client: TestClient,
) -> None:
    for path in ("/healthz", "/openapi.json", "/metrics"):
        assert client.get(path).status_code == 200, path
    for path in ("/livez", "/readyz", "/healthz", "/openapi.json", "/metrics", "/healthz/"):
        assert required_scope("GET", path) is None, path
    # Erasure is not in the table: every endpoint that is not is admin-only.
    assert client.delete("/v1/users/u", headers=bearer("reader")).status_code == 403
    assert client.delete("/v1/users/u", headers=bearer("boss")).is_success
    assert client.get("/v1/no-such-path", headers=bearer("reader")).status_code == 403
    assert required_scope("POST", "/v1/users/u/consent") == "admin"
    assert required_scope("HEAD", "/v1/items/x/similar") == "read"
    assert required_scope("GET", "/v1/events") == "admin"


def test_metrics_can_require_the_metrics_scope(tmp_path: Path, catalog: Catalog) -> None:
    rt = Runtime.from_config(keyed(make_config(tmp_path, catalog), metrics_auth=True))
    try:
        with TestClient(build_app(rt)) as c:
            assert c.get("/metrics").status_code == 401
            assert c.get("/metrics", headers=bearer("reader")).status_code == 403
            assert c.get("/metrics", headers=bearer("scraper")).status_code == 200
            assert c.get("/metrics", headers=bearer("boss")).status_code == 200
            assert c.get("/healthz").status_code == 200
    finally:
        rt.close()


def test_auth_none_and_no_keys_leave_the_api_open(tmp_path: Path, catalog: Catalog) -> None:
    for config in (
        keyed(make_config(tmp_path / "a", catalog), auth="none"),
        make_config(tmp_path / "b", catalog),
    ):
        rt = Runtime.from_config(config)
        try:
            with TestClient(build_app(rt)) as c:
                assert c.get("/v1/users/u/features").status_code == 200
        finally:
            rt.close()


def test_the_rate_limit_bucket_is_the_key_name(tmp_path: Path, catalog: Catalog) -> None:
    config = keyed(
        make_config(tmp_path, catalog),
        rate_limit_rps=0.001,
        rate_limit_burst=2,
        api_key_rps={"boss": 1e6},
    )
    rt = Runtime.from_config(config)
    try:
        with TestClient(build_app(rt)) as c:
            body = {"user_id": "u", "n": 1}
            # The per-key rate is found by the name, whichever header carries the key.
            for headers in (bearer("boss"), {"X-API-Key": "k-admin"}) * 3:
                assert c.post("/v1/recommend", json=body, headers=headers).status_code == 200
            for _ in range(2):
                assert c.post("/v1/recommend", json=body, headers=bearer("reader")).is_success
            # A second header cannot pick another bucket: the name decides.
            spoof = {**bearer("reader"), "X-API-Key": "boss"}
            r = c.post("/v1/recommend", json=body, headers=spoof)
            assert r.status_code == 429
            assert r.json()["detail"] == "API key 'reader' is over its request rate"
    finally:
        rt.close()


def test_the_key_store_compares_every_hash_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = [ApiKey(name=n, sha256=hash_key(k), scopes=SCOPES[n]) for n, k in KEYS.items()]
    store = KeyStore(keys)
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module auth calls through
    found = store.find(b"k-ingest")  # the first stored key
    assert found is not None
    assert found.name == "ingester"
    assert found.allows("ingest")
    assert not found.allows("read")
    assert len(calls) == len(KEYS)  # no early exit on the match
    digest = hashlib.sha256(b"k-ingest").digest()
    assert all(b == digest for _, b in calls)  # the hash is compared, never the key
    calls.clear()
    assert store.find(b"nope") is None
    assert len(calls) == len(KEYS)
    boss = store.find(b"k-admin")
    assert boss is not None
    assert all(boss.allows(s) for s in auth.SCOPES)


def test_keys_from_the_environment(tmp_path: Path) -> None:
    h1, h2 = hash_key("one"), hash_key("two").upper()
    c = load_config(env={"TASTEMAKER_SERVING__API_KEYS": f"shop:{h1}:read+ingest, ops:{h2}:admin"})
    assert c.serving.api_keys == [
        ApiKey(name="shop", sha256=h1, scopes=["read", "ingest"]),
        ApiKey(name="ops", sha256=h2, scopes=["admin"]),
    ]
    assert KeyStore(c.serving.api_keys).find(b"two") is not None  # upper-case hex works
    # The variable replaces the file's keys, as every override does.
    path = tmp_path / "c.toml"
    path.write_text(f'[[serving.api_keys]]\nname = "file"\nsha256 = "{h1}"\nscopes = ["read"]\n')
    assert [k.name for k in load_config(path, env={}).serving.api_keys] == ["file"]
    env = {"TASTEMAKER_SERVING__API_KEYS": f"env:{h1}:read"}
    assert [k.name for k in load_config(path, env=env).serving.api_keys] == ["env"]
    assert load_config(env={"TASTEMAKER_SERVING__AUTH": "none"}).serving.auth == "none"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("shop:rawsecret:read", "sha256"),
        (f"shop:{'0' * 64}", "NAME:SHA256:SCOPE"),
        (f"shop:{'0' * 64}:reed", "reed"),
        (f"shop:{'0' * 64}:", "scopes"),
        (f"a:{'0' * 64}:read,a:{'1' * 64}:read", "same name"),
        (f"a:{'0' * 64}:read,b:{'0' * 64}:read", "same sha256"),
        (f"a b:{'0' * 64}:read", "name"),
    ],
)
def test_bad_keys_in_the_environment_are_named(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_config(env={"TASTEMAKER_SERVING__API_KEYS": value})
    assert "rawsecret" not in str(err.value)


def test_exposure_check(caplog: pytest.LogCaptureFixture) -> None:
    key = ApiKey(name="a", sha256=hash_key("a"), scopes=["read"])
    with caplog.at_level(logging.INFO, logger="tastemaker.serving.auth"):
        check_exposure(ServingConfig(host="127.0.0.1"))
        assert "open" in caplog.text
        check_exposure(ServingConfig(host="0.0.0.0", api_keys=[key]))
        check_exposure(ServingConfig(host="0.0.0.0", auth="none"))
        check_exposure(ServingConfig(host="::1"))
    for host in ("0.0.0.0", "::", "10.1.2.3", "shop.example"):
        with pytest.raises(ConfigError, match=r'serving\.auth = "none"'):
            check_exposure(ServingConfig(host=host))


def test_serve_on_a_public_address_without_keys_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASTEMAKER_")}
    src = str(Path(auth.__file__).parents[2])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "tastemaker", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert "not a loopback address and no API keys" in done.stderr
    assert "[[serving.api_keys]]" in done.stderr
    assert 'serving.auth = "none"' in done.stderr
    assert "serving on" not in done.stdout
    assert not list(tmp_path.iterdir())  # refused before opening a log or a store


def test_keys_cli_makes_a_key_whose_entry_admits_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "new", "--name", "shop", "--scopes", "read+ingest"]) == 0
    out = capsys.readouterr().out
    key = out.split()[1]
    toml = out[out.index("[[serving.api_keys]]") : out.index("or: ")]
    path = tmp_path / "c.toml"
    path.write_text(toml)
    keys = load_config(path, env={}).serving.api_keys
    assert [(k.name, k.scopes) for k in keys] == [("shop", ["read", "ingest"])]
    principal = KeyStore(keys).find(key.encode())
    assert principal is not None
    assert principal.name == "shop"
    assert main(["keys", "hash", key]) == 0
    assert capsys.readouterr().out.strip() == keys[0].sha256
    assert main(["keys", "new", "--name", "x", "--scopes", "root"]) == 2
    assert "root" in capsys.readouterr().err


def test_openapi_documents_the_scopes() -> None:
    doc = openapi_document(__version__)
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    paths = doc["paths"]
    assert paths["/v1/items"]["post"]["security"] == [{"bearer": ["admin"]}, {"apiKey": ["admin"]}]
    assert paths["/v1/events"]["post"]["security"][0] == {"bearer": ["ingest"]}
    assert paths["/v1/items/{item_id}/similar"]["get"]["security"][0] == {"bearer": ["read"]}
    assert paths["/v1/users/{user_id}/features"]["get"]["security"][0] == {"bearer": ["admin"]}
    assert paths["/healthz"]["get"]["security"] == []
    assert {} in paths["/metrics"]["get"]["security"]
    for path, ops in paths.items():
        for op in ops.values():
            refusable = op["security"] != []
            assert ({"401", "403"} <= set(op["responses"])) == refusable, path


@pytest.fixture
def keyed_server(keyed_runtime: Runtime) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        build_app(keyed_runtime),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for_http(url + "/healthz")
    yield url
    srv.should_exit = True
    thread.join(timeout=10)


def test_the_clients_send_their_key(keyed_server: str) -> None:
    with Client(keyed_server, api_key="k-read") as tm:
        assert len(tm.recommend("u", 2).items) == 2
        with pytest.raises(ApiError) as err:
            tm.features("u")
        assert (err.value.status, err.value.error) == (403, "forbidden")
    with Client(keyed_server) as tm, pytest.raises(ApiError) as err:
        tm.recommend("u", 2)
    assert (err.value.status, err.value.error) == (401, "unauthorized")

    async def admin_reads_features() -> str:
        async with AsyncClient(keyed_server, api_key="k-admin") as tm:
            return (await tm.features("u")).user_id

    assert asyncio.run(admin_reads_features()) == "u"


@pytest.mark.slow
def test_keys_from_the_environment_reach_every_worker(tmp_path: Path, catalog: Catalog) -> None:
    port = free_port()
    path = write_config(tmp_path, catalog, port)
    env = {**os.environ, "TASTEMAKER_SERVING__API_KEYS": f"shop:{hash_key('k-shop')}:read"}
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "tastemaker", "serve", "--config", str(path), "--workers", "2"],
            stdout=subprocess.DEVNULL,
            stderr=err.fileno(),
            env=env,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + "/healthz", server, timeout=60, log=log)
        pids = set()
        for _ in range(4):  # a connection each: the supervisor deals them round-robin
            with Client(url, api_key="k-shop") as tm:
                pids.add(tm.health().pid)
                assert len(tm.recommend("u", 1).items) == 1
        for _ in range(2):  # one to each worker
            with Client(url, api_key="k-other") as tm, pytest.raises(ApiError) as refused:
                tm.recommend("u", 1)
            assert refused.value.status == 401
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, log.read_text()
    assert len(pids) == 2
    assert "k-shop" not in log.read_text()
