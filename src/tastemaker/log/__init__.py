"""Event log: durable append, consumer offsets. Backends by URL."""

from typing import cast

from tastemaker.log.base import EventLog, LogRecord
from tastemaker.log.embedded import EmbeddedEventLog, FsyncPolicy
from tastemaker.urls import parse_url

__all__ = ["EmbeddedEventLog", "EventLog", "LogRecord", "open_log"]


def open_log(url: str) -> EventLog:
    """Open the log a URL names: `embedded://PATH?fsync=always|never`."""
    parsed = parse_url(url)
    if parsed.scheme == "embedded":
        fsync = parsed.params.get("fsync", "always")
        if fsync not in ("always", "never"):
            raise ValueError(f"event log URL {url!r}: fsync must be 'always' or 'never'")
        return EmbeddedEventLog(parsed.path, fsync=cast(FsyncPolicy, fsync))
    raise ValueError(f"unsupported event log URL {url!r}: expected embedded://PATH")
