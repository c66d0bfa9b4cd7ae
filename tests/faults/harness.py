"""The processes a fault test runs and breaks: a Valkey server with its AOF, `tastemaker serve
--workers 2` with one stream process, and a disk that fills up under the embedded log.

Every server listens on a free loopback port and keeps its files under the test's tmp_path.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import msgspec
import redis

from tastemaker.config import Config, dump_config
from tastemaker.testing.servers import free_port, redis_binary, wait_for_http

__all__ = ["FullDisk", "Served", "Valkey", "descendants"]


class Valkey:
    """A Valkey (or `$TASTEMAKER_TEST_REDIS_SERVER`) server on a fixed port with its append-only
    file on (`appendfsync always`), so it can be killed and started again from its AOF on the
    same port and directory, or hung with SIGSTOP. Always a server of its own: a fault test
    cannot break a shared one."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            redis_binary(),
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)),
            *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
            *("--daemonize", "no", "--loglevel", "warning"),
        ]
        with (self.directory / "server.log").open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 30
        try:
            while True:
                try:
                    # PING answers while the AOF still loads; a loaded server answers DBSIZE.
                    client.dbsize()
                    return
                except redis.BusyLoadingError:
                    pass
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"Valkey did not start on port {self.port}") from None
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: what was acknowledged is in the AOF (written before the reply)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def hang(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def close(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.stopped:
            self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def descendants(root: int) -> dict[int, list[str]]:
    """Every live process below `root` (children, theirs, ...), pid -> argv, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":  # a zombie is dead, whatever its parent has not reaped
            parents[int(entry.name)] = int(fields[1])
    found: dict[int, list[str]] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = _argv(pid)
                frontier.append(pid)
    return found


class Served:
    """`tastemaker serve --workers N --stream-workers M` over `config`, on a free port, its
    output in `<directory>/serve.log`."""

    def __init__(self, config: Config, directory: Path, workers: int = 2, streams: int = 1):
        self.port = free_port()
        self.directory = directory
        self.log_path = directory / "serve.log"
        serving = msgspec.structs.replace(config.serving, host="127.0.0.1", port=self.port)
        self.config = msgspec.structs.replace(config, serving=serving)
        self.config_path = dump_config(self.config, directory / "serve.toml")
        argv = ["serve", "--config", str(self.config_path), "--workers", str(workers)]
        argv += ["--stream-workers", str(streams)]
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tastemaker", *argv], stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120.0) -> None:
        wait_for_http(f"{self.url}/healthz", self.proc, timeout=timeout, log=self.log_path)

    def stream_pids(self) -> list[int]:
        """The stream processes under `serve`: `tastemaker stream`, however it is started
        (an argument `stream`, or a module of the `tastemaker.stream` package)."""
        return sorted(
            pid
            for pid, argv in descendants(self.proc.pid).items()
            if "stream" in argv or any(a.startswith("tastemaker.stream") for a in argv)
        )

    def worker_pid(self) -> int:
        """The pid of the API worker that answers a new connection (`/healthz` says it)."""
        with httpx2.Client(base_url=self.url, timeout=10) as client:
            pid: int = client.get("/healthz").json()["pid"]
        assert pid in descendants(self.proc.pid), f"{pid} is not a worker of serve"
        return pid

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Whatever a killed supervisor left behind (a worker, a stream process).
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class FullDisk:
    """A disk that fills up under a directory and is freed again.

    Where this process may mount (root, CAP_SYS_ADMIN), the directory is a small tmpfs, and
    `fill` writes a file until the file system answers ENOSPC: every process writing there
    fails as on a full disk. Elsewhere `fill` lowers the file-size limit (RLIMIT_FSIZE) of
    the processes `victims` names to the current size of the directory's SQLite WAL: a write
    that grows it (every commit until a checkpoint wraps it) fails with EFBIG (Python ignores
    SIGXFSZ), the other failure `write(2)` gives when no more may be written."""

    def __init__(self, directory: Path, size_mb: int = 64, *, mount: bool = True) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        argv = ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(directory)]
        done = subprocess.run(argv, check=False, capture_output=True) if mount else None
        self.mounted = done is not None and done.returncode == 0
        self.filler = directory / "filler"
        self.limited: list[int] = []

    @property
    def how(self) -> str:
        return "tmpfs filled (ENOSPC)" if self.mounted else "RLIMIT_FSIZE lowered (EFBIG)"

    def fill(self, victims: list[int]) -> None:
        if self.mounted:
            with self.filler.open("wb", buffering=0) as out:
                for chunk in (1 << 20, 4096, 1):
                    with contextlib.suppress(OSError):
                        while out.write(b"\0" * chunk):
                            pass
            with contextlib.suppress(OSError), (self.directory / "probe").open("wb", 0) as probe:
                probe.write(b"\0" * 4096)
                raise AssertionError("the tmpfs is not full")
            return
        sizes = [p.stat().st_size for p in self.directory.rglob("*-wal")]
        assert sizes, f"no SQLite WAL under {self.directory}"
        for pid in victims:
            _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (min(sizes), hard))
            self.limited.append(pid)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)
        (self.directory / "probe").unlink(missing_ok=True)
        for pid in self.limited:
            with contextlib.suppress(ProcessLookupError):
                _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
        self.limited.clear()

    def close(self) -> None:
        self.free()
        if self.mounted:
            for _ in range(50):
                umount = ["umount", str(self.directory)]
                if subprocess.run(umount, check=False, capture_output=True).returncode == 0:
                    return
                time.sleep(0.1)  # a process still closing its files
            subprocess.run(["umount", "-l", str(self.directory)], check=False)
