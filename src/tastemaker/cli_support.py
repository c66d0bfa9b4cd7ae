"""What the commands share: the port check, third-party log noise, progress on long work."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from tastemaker.config import ConfigError

__all__ = ["check_port", "progress_of", "quiet_third_party"]

# Loggers of libraries that report their own details at INFO (faiss's loader names every
# CPU build it tries: "ModuleNotFoundError ... avx512") or chatter at WARNING about what is
# expected here.
_NOISY = (
    "faiss",
    "faiss.loader",
    "numexpr",
    "matplotlib",
    "lightgbm",
    "implicit",
    "httpx",
    "httpx2",
)


def quiet_third_party(verbose: bool) -> None:
    """Third-party log records below WARNING are dropped unless `--verbose`."""
    level = logging.DEBUG if verbose else logging.WARNING
    for name in _NOISY:
        logging.getLogger(name).setLevel(level)
    if verbose:
        logging.getLogger("tastemaker").setLevel(logging.DEBUG)


def check_port(host: str, port: int) -> None:
    """Fail now, before anything slow, when `host:port` cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is in use (another server?): choose another with "
                    f"--port N or TASTEMAKER_SERVING__PORT=N"
                ) from None
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


class _ToProgress(logging.Handler):
    """Shows each INFO record of tastemaker's as the progress line instead of a log line."""

    def __init__(self, progress: Progress, task: TaskID, label: str) -> None:
        super().__init__(logging.INFO)
        self.progress, self.task, self.label = progress, task, label

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().splitlines()[0][:100]
        if record.levelno >= logging.WARNING:
            self.progress.console.print(f"{record.levelname} {record.name}: {record.getMessage()}")
            return
        self.progress.update(self.task, description=f"{self.label}: {message}")


@contextlib.contextmanager
def progress_of(label: str, *, quiet: bool, verbose: bool) -> Iterator[None]:
    """A live line on stderr (spinner, current step, elapsed time) while the block runs; the
    INFO log records of `tastemaker.*` become its steps. `--verbose` keeps the log lines
    instead, `--quiet` shows neither; warnings and errors are always logged."""
    logger = logging.getLogger("tastemaker")
    if verbose:
        yield
        return
    if quiet or not sys.stderr.isatty():
        previous = logger.level
        logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            logger.setLevel(previous)
        return
    console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(label, total=None)
        handler = _ToProgress(progress, task, label)
        propagate = logger.propagate
        logger.addHandler(handler)
        logger.propagate = False  # the steps show on the progress line, not as log lines
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate
