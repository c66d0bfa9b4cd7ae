"""What `POST /v1/events` acknowledged survives a SIGKILL of the server process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx2 as httpx
import msgspec
import pytest

from tastemaker.catalog import Catalog
from tastemaker.config import dump_config
from tastemaker.log import open_log
from tastemaker.testing.servers import free_port, wait_for_http
from tests.conftest import make_config, wait_until


def _write_config(tmp_path: Path, catalog: Catalog, port: int) -> Path:
    config = make_config(tmp_path, catalog)
    serving = msgspec.structs.replace(config.serving, port=port)
    return dump_config(msgspec.structs.replace(config, serving=serving), tmp_path / "c.toml")


@pytest.mark.slow
def test_acknowledged_events_survive_sigkill(tmp_path: Path, catalog: Catalog) -> None:
    port = free_port()
    config_path = _write_config(tmp_path, catalog, port)
    server = subprocess.Popen(
        [sys.executable, "-m", "tastemaker", "serve", "--config", str(config_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    acked: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=base, timeout=5) as http:
            batch = 0
            while not stop.is_set():
                ids = [f"b{batch}-{i}" for i in range(20)]
                events = [
                    {
                        "event_id": e,
                        "user_id": f"u{batch % 7}",
                        "item_id": "item000001",
                        "type": "view",
                        "ts": 1.76e9 + batch,
                    }
                    for e in ids
                ]
                try:
                    r = http.post(
                        "/v1/events",
                        content=msgspec.json.encode({"events": events}),
                        headers={"content-type": "application/json"},
                    )
                except httpx.TransportError:
                    return  # the server died mid-request: that batch was never acknowledged
                if r.status_code == 202:
                    acked.extend(ids)
                batch += 1

    try:
        wait_for_http(base + "/healthz", server, timeout=30)
        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        wait_until(lambda: len(acked) >= 2000, timeout=60)
        os.kill(server.pid, signal.SIGKILL)  # while the clients are still sending
        server.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=10)
    finally:
        stop.set()
        if server.poll() is None:
            server.kill()
    log = open_log(make_config(tmp_path).log.url)
    stored = {r.event.event_id for r in log.read(0, 0, 10**7)}
    log.close()
    missing = set(acked) - stored
    assert len(acked) >= 2000
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"
