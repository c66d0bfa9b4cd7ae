"""`tastemaker init`, `--version`, the port check, extras and third-party log noise."""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from tastemaker.cli import main
from tastemaker.cli_support import quiet_third_party
from tastemaker.config import load_config
from tastemaker.deployment.runtime import Runtime
from tastemaker.extras import MissingExtraError
from tastemaker.serving.api import build_app
from tests.conftest import wait_until


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("tastemaker ")


def test_init_writes_a_config_that_serves_items_added_through_the_api(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    assert main(["init", str(shop), "--dim", "4"]) == 0
    assert main(["init", str(shop)]) == 2  # never overwrites
    runtime = Runtime.from_config(load_config(shop / "config.toml"))
    runtime.watch_catalog()
    try:
        client = TestClient(build_app(runtime))
        event = {"event_id": "e0", "user_id": "ann", "item_id": "sku1", "type": "click"}
        # An event before any item exists is stored, and the stream keeps going.
        first = client.post("/v1/events", json={"events": [{**event, "ts": time.time()}]})
        assert first.status_code == 202
        assert runtime.processor.process_once() is not None
        assert runtime.ingestor.lag(fresh=True) == 0
        runtime.start_stream()
        items = [
            {"item_id": f"sku{i}", "category": c, "brand": "acme", "price": 9.5, "embedding": e}
            for i, (c, e) in enumerate([("shoes", [1, 0, 0, 0]), ("hats", [0, 1, 0, 0])], 1)
        ]
        assert client.post("/v1/items", json={"items": items}).status_code == 202
        wait_until(lambda: len(runtime.catalog) == 2)
        click = {**event, "event_id": "e1", "type": "click", "ts": time.time()}
        assert client.post("/v1/events", json={"events": [click]}).status_code == 202

        def recommended() -> set[str]:
            answer = client.post("/v1/recommend", json={"user_id": "ann", "n": 2}).json()
            return {i["item_id"] for i in answer["items"]}

        wait_until(lambda: recommended() == {"sku1", "sku2"})
    finally:
        runtime.close()


def test_serve_and_demo_check_the_port_before_any_slow_work(
    tmp_path: Path,
    busy_port: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert main(["init", str(tmp_path / "shop")]) == 0
    config = str(tmp_path / "shop" / "config.toml")
    assert main(["serve", "--config", config, "--port", str(busy_port)]) == 2
    assert f"port {busy_port} on 127.0.0.1 is in use" in capsys.readouterr().err
    monkeypatch.setenv("TASTEMAKER_SERVING__PORT", str(busy_port))  # as `serve` reads it
    assert main(["demo", "--data-dir", str(tmp_path / "demo")]) == 2
    assert f"port {busy_port}" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_serve_without_a_catalog_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.toml").write_text("[serving]\nport = 0\n")
    assert main(["serve", "--config", str(tmp_path / "c.toml")]) == 2
    assert "tastemaker init DIR" in capsys.readouterr().err


def test_a_feature_whose_extra_is_missing_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tastemaker.deployment.evaluate import chart

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    with pytest.raises(MissingExtraError, match=r"pip install 'tastemaker\[offline\]'"):
        chart({"systems": {}}, tmp_path / "c.png")


def test_without_faiss_the_ann_retriever_searches_exactly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tastemaker.catalog import Catalog
    from tastemaker.retrieval import ann

    monkeypatch.setattr(ann, "faiss_installed", lambda: False)
    rng = np.random.default_rng(0)
    n = 50
    catalog = Catalog(
        ids=[f"i{i}" for i in range(n)],
        titles=[""] * n,
        categories=["c"] * n,
        brands=["b"] * n,
        prices=np.ones(n),
        embeddings=rng.normal(size=(n, 8)),
    )
    with caplog.at_level(logging.WARNING):
        retriever = ann.AnnRetriever(catalog, exact_below=10)
    assert retriever.kind == "exact"
    assert "tastemaker[offline]" in caplog.text


def test_third_party_info_is_dropped_unless_verbose() -> None:
    loader = logging.getLogger("faiss.loader")
    try:
        quiet_third_party(verbose=False)
        assert not loader.isEnabledFor(logging.INFO)
        assert loader.isEnabledFor(logging.WARNING)
        quiet_third_party(verbose=True)
        assert loader.isEnabledFor(logging.INFO)
    finally:
        quiet_third_party(verbose=False)
        logging.getLogger("tastemaker").setLevel(logging.NOTSET)


def test_demo_leaves_a_directory_it_did_not_make_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo", "--quick", "--data-dir", str(tmp_path)]) == 2
    assert "not made by tastemaker" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
