"""A deployment to break: `tastemaker serve --workers 2` with one stream process, over Valkey
(the event log with 4 partitions and the store, AOF on) or over the embedded log on a disk
that can fill up and the embedded (LMDB) store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tastemaker.catalog import Catalog
from tastemaker.config import LogConfig, ServingConfig, StoreConfig
from tests.conftest import make_config
from tests.faults.harness import FullDisk, Served, Valkey


@dataclass
class OnValkey:
    served: Served
    valkey: Valkey
    items: list[str]


@dataclass
class OnDisk:
    served: Served
    disk: FullDisk
    items: list[str]


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[Valkey]:
    server = Valkey(tmp_path / "valkey")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def on_valkey(tmp_path: Path, catalog: Catalog, valkey: Valkey) -> Iterator[OnValkey]:
    """Serving as an operator would: production deadlines (ServingConfig's defaults), the
    log (4 partitions) and the store in one Valkey, every other setting its default."""
    config = make_config(
        tmp_path / "data",
        catalog,
        serving=ServingConfig(),
        log=LogConfig(url=f"{valkey.url}?partitions=4"),
        store=StoreConfig(url=valkey.url),
    )
    served = Served(config, tmp_path)
    try:
        served.wait_ready()
        yield OnValkey(served, valkey, catalog.ids.tolist())
    finally:
        served.close()


@pytest.fixture
def on_full_disk(tmp_path: Path, catalog: Catalog) -> Iterator[OnDisk]:
    """The embedded log (fsync always) on a disk of its own, the LMDB store elsewhere."""
    disk = FullDisk(tmp_path / "disk")
    try:
        config = make_config(
            tmp_path / "data",
            catalog,
            serving=ServingConfig(),
            log=LogConfig(url=f"embedded://{disk.directory}/log"),
        )
        served = Served(config, tmp_path)
        try:
            served.wait_ready()
            yield OnDisk(served, disk, catalog.ids.tolist())
        finally:
            served.close()
    finally:
        disk.close()
