"""The process's log output: text or JSON lines, with repeated tracebacks rate-limited.

A backend that is down fails every request the same way, and each of those logs the same
traceback: with Valkey down, 150 requests a second gave ~1,500 tracebacks (~80,000 lines) in
10 s, which buries everything else and costs the CPU the degraded answers need. So each
failure still gets its one line, but a traceback of the same exception type logged from the
same place is written at most once every `logging.traceback_interval_s` per process; the
lines in between carry the exception's type and message instead, and the next traceback of
the kind says how many were left out.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import msgspec

__all__ = ["JsonFormatter", "TracebackLimiter", "configure_logging", "logs_json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Kinds of traceback remembered at most: a log call's place and an exception type each. Past
# this (never in practice: the places are lines of code) the oldest kind is forgotten.
_MAX_KINDS = 1024


@dataclass
class _Kind:
    shown_at: float
    left_out: int = 0


class TracebackLimiter(logging.Filter):
    """Lets a record's traceback through at most once every `interval_s` for each (exception
    type, logging call's file and line); the records in between keep their line, with
    ": Type: message" of the exception appended instead of the traceback. The traceback
    after a quiet spell says how many were left out. Records are changed in place, so put
    the filter on the handler that writes them out."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._kinds: dict[tuple[str, str, int], _Kind] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        if not exc_info or exc_info[0] is None or self.interval_s <= 0:
            return True
        kind = (exc_info[0].__qualname__, record.pathname, record.lineno)
        now = self._clock()
        with self._lock:
            seen = self._kinds.get(kind)
            if seen is None or now - seen.shown_at >= self.interval_s:
                left_out = 0 if seen is None else seen.left_out
                self._remember(kind, _Kind(now))
                if left_out:
                    _append(record, f" [{left_out} more like this since the last traceback]")
                return True
            seen.left_out += 1
        try:
            said = str(exc_info[1])
        except Exception:  # an exception whose __str__ fails: its type says enough
            said = ""
        _append(record, f": {exc_info[0].__name__}" + (f": {said}" if said else ""))
        record.exc_info = None
        record.exc_text = None
        return True

    def _remember(self, kind: tuple[str, str, int], seen: _Kind) -> None:
        self._kinds.pop(kind, None)
        if len(self._kinds) >= _MAX_KINDS:
            del self._kinds[next(iter(self._kinds))]
        self._kinds[kind] = seen


def _append(record: logging.LogRecord, text: str) -> None:
    """`text` after the record's message, its arguments applied first. A message that does
    not format is left as it is: the handler reports that, and a filter must never raise
    into the code that logs."""
    try:
        message = record.getMessage()
    except Exception:
        return
    record.msg = message + text
    record.args = None


class JsonFormatter(logging.Formatter):
    """One JSON object a line: `ts` (ISO 8601, UTC, milliseconds), `level`, `logger`,
    `message`, `pid`, and `exception` (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return msgspec.json.encode(out).decode()


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure_logging` installs, told apart from any other on the root. It
    writes to whatever `sys.stderr` is when a record comes, as `logging.lastResort` does."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(
    log_format: Literal["text", "json"] = "text",
    level: str = "INFO",
    traceback_interval_s: float = 10.0,
) -> None:
    """Send every log record of the process to stderr in `log_format`, tracebacks limited as
    the module says. Replaces the handler an earlier call installed, so a command can set a
    default at start and apply its config once it has read it. In JSON, an exception that
    ends the process or a thread is logged too (as a record of `tastemaker`), so that every
    line of the output is JSON."""
    handler = _Handler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    handler.addFilter(TracebackLimiter(traceback_interval_s))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    if log_format == "json":
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread
    else:  # the hooks set by an earlier JSON call go; anyone else's stay
        if sys.excepthook is _log_uncaught:
            sys.excepthook = sys.__excepthook__
        if threading.excepthook is _log_uncaught_in_thread:
            threading.excepthook = threading.__excepthook__


def logs_json() -> bool:
    """Whether `configure_logging` made this process's output JSON lines."""
    root = logging.getLogger()
    return any(
        isinstance(h, _Handler) and isinstance(h.formatter, JsonFormatter) for h in root.handlers
    )


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("tastemaker").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("tastemaker").critical(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
