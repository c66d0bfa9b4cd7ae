"""Helpers shared by the benchmarks: a prepared demo shop and server processes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tastemaker.catalog import save_catalog
from tastemaker.config import dump_config, local_config
from tastemaker.data.synthetic import ShopSpec, generate_shop
from tastemaker.deployment.runtime import Runtime
from tastemaker.testing.servers import free_port, wait_for_http

__all__ = ["free_port", "prepare_shop", "server", "tree_cpu_seconds"]


def prepare_shop(directory: Path, spec: ShopSpec) -> tuple[Path, list[str]]:
    """Generate a shop, ingest and process all its events; return the config path and the ids
    of users that have features."""
    directory.mkdir(parents=True, exist_ok=True)
    shop = generate_shop(spec)
    save_catalog(shop.catalog(), directory / "catalog.parquet")
    config = local_config(directory, fsync="never")
    config_path = dump_config(config, directory / "config.toml")
    runtime = Runtime.from_config(config)
    for events in shop.events():
        runtime.ingestor.ingest(events)
    runtime.processor.drain()
    runtime.close()
    return config_path, [str(u) for u in shop.user_ids]


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children (a server's supervisor and
    its workers), from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # Fields after the command (which may hold spaces) start at its closing parenthesis:
        # state, ppid, ..., utime and stime are the 12th and 13th after it.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


@contextlib.contextmanager
def server(argv: list[str], port: int, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server command until the block ends; wait until /healthz answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=60)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=15)
