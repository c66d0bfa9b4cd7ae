"""Directories tastemaker writes: a marker file says tastemaker made one (so only such a
directory is ever emptied), and a lock file says which server uses one (so two servers never
share an embedded store)."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from types import TracebackType

from tastemaker.config import Config
from tastemaker.urls import parse_url

__all__ = [
    "LOCK",
    "MARKER",
    "DataDirError",
    "ServerLock",
    "lock_holder",
    "prepare_dir",
    "server_lock_dir",
]

MARKER = ".tastemaker"
LOCK = "server.lock"
_MARKER_TEXT = (
    "This directory was made by tastemaker. `tastemaker demo` may empty it; tastemaker never\n"
    "empties a directory without this file.\n"
)


class DataDirError(Exception):
    """A directory tastemaker should write is not its own, or another server uses it."""


def _read_pid(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def lock_holder(directory: Path) -> str | None:
    """The pid written by the server holding a lock in `directory` or one level below it
    (the store's directory), or None when no server holds one."""
    candidates = [directory / LOCK, *directory.glob(f"*/{LOCK}")]
    for lock in candidates:
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(lock)
        finally:
            os.close(fd)  # closing releases a lock taken here
    return None


def prepare_dir(directory: Path, *, empty: bool) -> Path:
    """Create `directory` with tastemaker's marker, or reuse one that has it (`empty`: its
    contents deleted first). Refuses a non-empty directory without the marker, and one that a
    running server uses."""
    if directory.exists():
        if not directory.is_dir():
            raise DataDirError(f"{directory} exists and is not a directory")
        entries = list(directory.iterdir())
        if entries and not (directory / MARKER).exists():
            raise DataDirError(
                f"{directory} is not empty and was not made by tastemaker (it has no {MARKER} "
                "file): choose a new or empty directory"
            )
        holder = lock_holder(directory)
        if holder is not None:
            raise DataDirError(
                f"{directory} is in use by a tastemaker server (pid {holder}): stop it first, "
                "or choose another directory"
            )
        if empty:
            for entry in entries:
                if entry.name == MARKER:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
    else:
        directory.mkdir(parents=True)
    (directory / MARKER).write_text(_MARKER_TEXT)
    return directory


def server_lock_dir(config: Config) -> Path | None:
    """Where a server on `config` takes its lock: the embedded store's directory (one server
    at a time owns an LMDB store); None for a store on a server (Redis), which any number of
    tastemaker servers share by design."""
    parsed = parse_url(config.store.url)
    if parsed.scheme != "embedded":
        return None
    return Path(parsed.path)


class ServerLock:
    """An exclusive lock on `directory/server.lock` holding this process's pid, for as long as
    the server runs; the kernel releases it when the process dies, however it dies."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / LOCK
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirError(
                f"another tastemaker server (pid {_read_pid(self.path)}) uses {directory}: "
                "stop it first, or serve another data directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ServerLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
