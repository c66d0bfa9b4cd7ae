"""Event log: durable append, partitions, consumer groups. Backends by URL."""

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
    if value < (1 if kind is int else 0):
        raise ValueError(f"event log URL {url!r}: {name} is out of range")
    return float(value)


def open_log(url: str) -> EventLog:
    """Open the log a URL names:

    - `embedded://PATH?fsync=always|never&busy_timeout_s=30&partitions=1`: SQLite in WAL
      mode; `busy_timeout_s` is how long an append waits for another writer before
      `LogError`;
    - `redis://HOST:PORT/DB?partitions=4&prefix=tm:log&retention_s=604800&lease_s=5`:
      Redis Streams (Redis >= 6.2 or Valkey), one stream per partition;
    - `kafka://HOST:PORT[,HOST:PORT...]/TOPIC?partitions=4&session_timeout_s=6`: a Kafka
      topic (created with `partitions` partitions when missing), through confluent-kafka.
    """
    parsed = parse_url(url)
    p = parsed.params
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
    if parsed.scheme in ("redis", "rediss"):
        from tastemaker.log.redis_streams import RedisStreamsLog  # only it imports redis-py

        return RedisStreamsLog(
            url.split("?", 1)[0],
            partitions=int(_number(url, p, "partitions", "4", int)),
            prefix=p.get("prefix", "tm:log"),
            retention_s=_number(url, p, "retention_s", str(7 * 86400), float),
            lease_s=_number(url, p, "lease_s", "5", float),
        )
    if parsed.scheme == "kafka":
        from tastemaker.log.kafka import KafkaLog  # only it imports confluent-kafka

        servers, _, topic = parsed.path.partition("/")
        if not topic:
            raise ValueError(f"event log URL {url!r} names no topic (kafka://HOST:PORT/TOPIC)")
        return KafkaLog(servers, topic, partitions=int(_number(url, p, "partitions", "4", int)))
    raise ValueError(
        f"unsupported event log URL {url!r}: expected embedded://PATH, redis://HOST:PORT/DB "
        "or kafka://HOST:PORT/TOPIC"
    )
