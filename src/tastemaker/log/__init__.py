"""Event log: durable append, consumer offsets. Backends by URL."""

from typing import cast

from tastemaker.log.base import EventLog, LogError, LogRecord
from tastemaker.log.embedded import EmbeddedEventLog, FsyncPolicy
from tastemaker.urls import parse_url

__all__ = ["EmbeddedEventLog", "EventLog", "LogError", "LogRecord", "open_log"]


def open_log(url: str) -> EventLog:
    """Open the log a URL names: `embedded://PATH?fsync=always|never&busy_timeout_s=30`.

    `busy_timeout_s` is how long an append waits for another writer before `LogError`."""
    parsed = parse_url(url)
    if parsed.scheme == "embedded":
        fsync = parsed.params.get("fsync", "always")
        if fsync not in ("always", "never"):
            raise ValueError(f"event log URL {url!r}: fsync must be 'always' or 'never'")
        try:
            busy = float(parsed.params.get("busy_timeout_s", "30"))
        except ValueError as exc:
            raise ValueError(f"event log URL {url!r}: busy_timeout_s must be a number") from exc
        return EmbeddedEventLog(parsed.path, fsync=cast(FsyncPolicy, fsync), busy_timeout_s=busy)
    raise ValueError(f"unsupported event log URL {url!r}: expected embedded://PATH")
