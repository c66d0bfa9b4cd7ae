"""Retention of the embedded event log: records older than `log.retention_s` or beyond the
newest `log.retention_records` of their partition are deleted, but only those every consumer
group has committed past, the stream's and the archiver's included (a group that never
committed keeps everything). Redis Streams trims by age itself (`retention_s` in its URL) and
Kafka by the topic's `retention.ms`."""

from __future__ import annotations

from tastemaker.config import Config
from tastemaker.log import EmbeddedEventLog, EventLog

__all__ = ["required_groups", "trim_log"]


def required_groups(config: Config) -> list[str]:
    """The groups that must have read a record before it may go, whether or not they have
    committed yet: the stream's and `log.retention_groups` (the archiver's by default)."""
    return list(dict.fromkeys([config.stream.group, *config.log.retention_groups]))


def trim_log(log: EventLog, config: Config, *, now: float | None = None) -> int:
    """Apply the configured retention; returns the records deleted (0 on other backends)."""
    c = config.log
    if not isinstance(log, EmbeddedEventLog):
        return 0
    if c.retention_s is None and c.retention_records is None:
        return 0
    return log.trim(
        max_age_s=c.retention_s,
        max_records=c.retention_records,
        groups=required_groups(config),
        now=now,
    )
