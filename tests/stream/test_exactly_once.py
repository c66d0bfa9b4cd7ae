"""Exactly-once effect: a stream processor killed with SIGKILL again and again, restarted
each time, ends with exactly the features of a run that was never interrupted."""

from __future__ import annotations

import operator
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tastemaker.catalog import Catalog, load_catalog
from tastemaker.config import Config, dump_config
from tastemaker.data.synthetic import ShopSpec, generate_shop
from tastemaker.deployment.runtime import Runtime
from tastemaker.features.layout import COVIS, GLOBAL_ROW, POPULAR, PROFILE, SESSION, STATS
from tastemaker.log import open_log
from tests.conftest import make_config

KILLS = 10


def _snapshot(config: Config, catalog: Catalog, users: list[str]) -> dict[str, Any]:
    rt = Runtime(config, catalog)
    try:
        rows = [f"u:{u}" for u in users] + [f"i:{i}" for i in catalog.ids] + [GLOBAL_ROW]
        return rt.store.get(rows, [PROFILE, SESSION, STATS, COVIS, POPULAR])
    finally:
        rt.close()


def _write_toml(config: Config, path: Path) -> None:
    stream = msgspec.structs.replace(config.stream, batch_size=2000, poll_interval_s=0.05)
    dump_config(msgspec.structs.replace(config, stream=stream), path)


@pytest.mark.slow
def test_sigkilled_processor_ends_with_the_uninterrupted_features(tmp_path: Path) -> None:
    shop = generate_shop(ShopSpec(n_users=8000, n_items=3000, seed=5))
    make_config(tmp_path / "catalog", shop.catalog())
    # Both runs use the catalog as the worker process loads it (from Parquet).
    catalog = load_catalog(tmp_path / "catalog" / "catalog.parquet")
    events = [e for chunk in shop.events(chunk_users=4000) for e in chunk]
    rnd = random.Random(9)
    # At-least-once senders resend: 5% of the events arrive a second time, later.
    resent = rnd.sample(events, len(events) // 20)
    stream = events + resent
    assert len(stream) >= 200_000
    users = sorted({e.user_id for e in events})

    base = make_config(tmp_path / "base", catalog)
    log = open_log(base.log.url)
    for i in range(0, len(stream), 10_000):
        log.append(stream[i : i + 10_000])
    log.close()
    crashy = make_config(tmp_path / "crashy", catalog)
    shutil.copytree(tmp_path / "base" / "log", tmp_path / "crashy" / "log")

    # The uninterrupted run, with the same microbatch size as the crashing worker.
    rt = Runtime(msgspec.structs.replace(base, stream=_batch(base, 2000)), catalog)
    rt.processor.drain()
    rt.close()
    expected = _snapshot(base, catalog, users)

    toml = tmp_path / "crashy.toml"
    _write_toml(crashy, toml)
    end = len(stream)
    kills = 0
    progress = []
    deadline = time.monotonic() + 300
    while True:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tastemaker", "stream", "--config", str(toml)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if kills < KILLS:
            before = _committed(crashy)
            while _committed(crashy) == before and time.monotonic() < deadline:
                time.sleep(0.02)  # started and committing: now it is mid-stream
            time.sleep(rnd.uniform(0.0, 0.3))
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            kills += 1
            progress.append(_committed(crashy))
            continue
        while _committed(crashy) < end and time.monotonic() < deadline:
            time.sleep(0.2)
        worker.terminate()
        worker.wait(timeout=15)
        break
    assert _committed(crashy) == end
    assert len(set(progress)) == KILLS, f"kills did not land mid-stream: {progress}"
    assert progress[-1] < end
    diff = _diff(_snapshot(crashy, catalog, users), expected)
    assert not diff, f"{len(diff)} cells differ, e.g. {diff[:3]}"


def _batch(config: Config, size: int) -> Any:
    return msgspec.structs.replace(config.stream, batch_size=size)


def _committed(config: Config) -> int:
    log = open_log(config.log.url)
    try:
        return sum(log.committed(config.stream.group).values())
    finally:
        log.close()


def _diff(
    a: dict[str, Any],
    b: dict[str, Any],
    same: Callable[[Any, Any], bool] = operator.eq,
    families: set[str] | None = None,
) -> list[str]:
    """Cells that differ between two snapshots (`same` decides; by default, equal), in
    `families` (default: all)."""
    out = []
    for row in sorted(set(a) | set(b)):
        fams = set(a.get(row, {})) | set(b.get(row, {}))
        for fam in sorted(fams if families is None else fams & families):
            ca, cb = a.get(row, {}).get(fam, {}), b.get(row, {}).get(fam, {})
            for col in sorted(set(ca) | set(cb)):
                if not same(ca.get(col), cb.get(col)):
                    out.append(f"{row}/{fam}/{col}: {ca.get(col)} != {cb.get(col)}")
    return out
