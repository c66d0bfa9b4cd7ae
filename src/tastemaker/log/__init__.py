"""Event log: durable append, partitions, consumer groups. Backends by URL."""

import math
from typing import cast

from tastemaker.log.base import EventLog, LogConsumer, LogError, LogRecord, partition_of
from tastemaker.log.embedded import EmbeddedEventLog, FsyncPolicy
from tastemaker.urls import parse_url

__all__ = [
    "EmbeddedEventLog",
    "EventLog",
    "LogConsumer",
    "LogError",
    "LogRecord",
    "open_log",
    "partition_of",
    "total_lag",
]


def total_lag(log: EventLog, group: str) -> int:
    """Records of every partition that `group` has not committed."""
    return sum(log.lag(group).values())


def _number(url: str, params: dict[str, str], name: str, default: str, kind: type) -> float:
    try:
        value = kind(params.get(name, default))
    except ValueError as exc:
        raise ValueError(f"event log URL {url!r}: {name} must be a number") from exc
    if not math.isfinite(value) or value < (1 if kind is int else 0):
        raise ValueError(f"event log URL {url!r}: {name} is out of range")
    return float(value)


# The options each scheme's URL takes; any other is refused (a misspelt option would
# otherwise be ignored silently).
_OPTIONS = {
    "embedded": {"fsync", "busy_timeout_s", "partitions"},
    "redis": {
        "partitions",
        "prefix",
        "retention_s",
        "lease_s",
        "timeout_ms",
        "connect_timeout_ms",
    },
    "kafka": {"partitions", "session_timeout_s", "timeout_ms"},
}


def open_log(url: str) -> EventLog:
    """Open the log a URL names:

    - `embedded://PATH?fsync=always|never&busy_timeout_s=30&partitions=1`: SQLite in WAL
      mode; `busy_timeout_s` is how long an append waits for another writer before
      `LogError`;
    - `redis://HOST:PORT/DB?partitions=4&prefix=tm:log&retention_s=604800&lease_s=5
      &timeout_ms=5000&connect_timeout_ms=2000`: Redis Streams (Redis >= 6.2 or Valkey), one
      stream per partition; `timeout_ms` bounds every command's reply (an append's included:
      past it the append raises `LogError` with `maybe_written`), `connect_timeout_ms` a
      connection's setup;
    - `kafka://HOST:PORT[,HOST:PORT...]/TOPIC?partitions=4&session_timeout_s=6
      &timeout_ms=10000`: a Kafka topic (created with `partitions` partitions when missing),
      through confluent-kafka; `timeout_ms` bounds an append's delivery and a metadata call.

    An option the scheme does not take is refused (`ValueError`).
    """
    parsed = parse_url(url)
    p = parsed.params
    scheme = "redis" if parsed.scheme == "rediss" else parsed.scheme
    unknown = sorted(set(p) - _OPTIONS.get(scheme, set(p)))
    if unknown:
        raise ValueError(
            f"event log URL {url!r}: unknown option(s) {', '.join(unknown)}; "
            f"{scheme}:// takes {', '.join(sorted(_OPTIONS[scheme]))}"
        )
    if parsed.scheme == "embedded":
        fsync = p.get("fsync", "always")
        if fsync not in ("always", "never"):
            raise ValueError(f"event log URL {url!r}: fsync must be 'always' or 'never'")
        return EmbeddedEventLog(
            parsed.path,
            fsync=cast(FsyncPolicy, fsync),
            busy_timeout_s=_number(url, p, "busy_timeout_s", "30", float),
            partitions=int(_number(url, p, "partitions", "1", int)),
        )
    if scheme == "redis":
        from tastemaker.log.redis_streams import RedisStreamsLog  # only it imports redis-py

        return RedisStreamsLog(
            url.split("?", 1)[0],
            partitions=int(_number(url, p, "partitions", "4", int)),
            prefix=p.get("prefix", "tm:log"),
            retention_s=_number(url, p, "retention_s", str(7 * 86400), float),
            lease_s=_number(url, p, "lease_s", "5", float),
            timeout_s=_positive(url, p, "timeout_ms", "5000") / 1000,
            connect_timeout_s=_positive(url, p, "connect_timeout_ms", "2000") / 1000,
        )
    if parsed.scheme == "kafka":
        return _open_kafka(url, parsed.path, p)
    raise ValueError(
        f"unsupported event log URL {url!r}: expected embedded://PATH, redis://HOST:PORT/DB "
        "or kafka://HOST:PORT/TOPIC"
    )


def _open_kafka(url: str, path: str, p: dict[str, str]) -> EventLog:
    from tastemaker.log.kafka import KafkaLog  # only it imports confluent-kafka

    servers, _, topic = path.partition("/")
    if not topic:
        raise ValueError(f"event log URL {url!r} names no topic (kafka://HOST:PORT/TOPIC)")
    return KafkaLog(
        servers,
        topic,
        partitions=int(_number(url, p, "partitions", "4", int)),
        timeout_s=_positive(url, p, "timeout_ms", "10000") / 1000,
        session_timeout_s=_positive(url, p, "session_timeout_s", "6"),
    )


def _positive(url: str, params: dict[str, str], name: str, default: str) -> float:
    value = _number(url, params, name, default, float)
    if value <= 0:
        raise ValueError(f"event log URL {url!r}: {name} must be above 0")
    return value
