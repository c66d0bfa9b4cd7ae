"""Event log on a Kafka topic, through confluent-kafka (librdkafka).

- The topic has `partitions` partitions (created with that many when missing); an event goes
  to `partition_of(user_id)`, the same partition the other backends choose, so one user's
  events stay in order.
- Offsets: Kafka's offset + 1 (the protocol's offsets start above 0), dense per partition.
  A group's committed offset is Kafka's committed offset (the next to read), which is the
  same number.
- Consumer groups are Kafka consumer groups: the broker's group coordinator shares the
  partitions among live members and, when one stops heartbeating for `session_timeout_s`,
  gives its partitions to the others, who resume after the committed offsets: the messages
  the dead member had read and not committed are read again.
- `append` produces with `acks=all` and waits for every delivery report. Kafka cannot make a
  batch spanning partitions all-or-nothing without transactions: when an append fails part
  way, the caller is told (`LogError` with `maybe_written`) and its retry may write some
  events twice, which the stream processor and the archiver drop by event id.

The end of a partition is found by reading its tail from the reported high watermark - 1:
Tansu 0.6 (the broker the tests run) reports the last record batch's first offset + 1
instead of its last offset + 1; on Apache Kafka the tail read returns the one last record.

What happens when the broker is down: `append` raises `LogError` after `timeout_s`; consumers
get nothing and the processor waits; librdkafka reconnects by itself.
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict, deque
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import msgspec

from tastemaker.events import Event
from tastemaker.extras import missing_extra
from tastemaker.log.base import LogError, LogRecord, partition_of

try:
    from confluent_kafka import (
        OFFSET_BEGINNING,
        Consumer,
        KafkaError,
        KafkaException,
        Producer,
        TopicPartition,
    )
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
except ImportError as _exc:
    raise missing_extra("confluent-kafka", "kafka", "the Kafka event log") from _exc

__all__ = ["KafkaConsumer", "KafkaLog"]


class KafkaLog:
    """EventLog on one Kafka topic."""

    def __init__(
        self,
        servers: str,
        topic: str,
        *,
        partitions: int = 4,
        timeout_s: float = 10.0,
        session_timeout_s: float = 6.0,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        self.servers = servers
        self.topic = topic
        self.timeout_s = timeout_s
        self.session_timeout_s = session_timeout_s
        # Only needed here: an AdminClient has no close, and one the log held went on
        # reconnecting (and logging) after the broker was gone while the log was kept.
        self.partitions = self._ensure_topic(
            AdminClient({"bootstrap.servers": servers}), partitions
        )
        self._producer = Producer(
            {
                "bootstrap.servers": servers,
                "acks": "all",
                "linger.ms": 2,
                "enable.idempotence": False,
                "message.timeout.ms": int(timeout_s * 1000),
            }
        )
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(Event).decode
        self._lock = threading.Lock()
        # Offsets of the consumer groups are read and committed through one member-less
        # consumer per group (`assign`, never `subscribe`: it takes no partitions from
        # the group's members).
        self._offset_clients: dict[str, Any] = {}
        self._positional: Any = None
        self._closed = False
        self._read_lock = threading.Lock()

    def _ensure_topic(self, admin: AdminClient, partitions: int) -> int:
        try:
            meta = admin.list_topics(timeout=self.timeout_s)
            if self.topic not in meta.topics or meta.topics[self.topic].error is not None:
                futures = admin.create_topics(
                    [NewTopic(self.topic, num_partitions=partitions, replication_factor=1)]
                )
                try:
                    futures[self.topic].result(self.timeout_s)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise
                meta = admin.list_topics(topic=self.topic, timeout=self.timeout_s)
            return len(meta.topics[self.topic].partitions)
        except KafkaException as exc:
            raise LogError(f"kafka log {self.servers}/{self.topic}: {exc}") from exc

    def _client(self, group: str) -> Any:
        with self._lock:
            client = self._offset_clients.get(group)
            if client is None:
                client = self._offset_clients[group] = Consumer(
                    {
                        "bootstrap.servers": self.servers,
                        "group.id": group,
                        "enable.auto.commit": False,
                        "auto.offset.reset": "earliest",
                    }
                )
            return client

    def append(self, events: Sequence[Event]) -> None:
        if not events:
            return
        errors: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        n = self.partitions
        produced = 0
        with self._lock:
            try:
                for e in events:
                    self._producer.produce(
                        self.topic,
                        value=self._encode(e),
                        key=e.user_id.encode(),
                        partition=partition_of(e.user_id, n),
                        on_delivery=delivered,
                    )
                    produced += 1
                    self._producer.poll(0)
                left = self._producer.flush(self.timeout_s)
            except (KafkaException, BufferError) as exc:
                # Those produced before are queued and may still be delivered.
                raise LogError(
                    f"kafka log {self.topic}: cannot append: {exc}"
                    + ("; some events may have been written" if produced else ""),
                    maybe_written=produced > 0,
                ) from exc
        if left or errors:
            # A message not delivered in time, or reported failed (a timeout waiting for the
            # broker's acknowledgement among them), may still have been written.
            detail = errors[0] if errors else f"{left} not delivered in {self.timeout_s} s"
            raise LogError(
                f"kafka log {self.topic}: cannot append: {detail}; some events may have been "
                "written",
                maybe_written=True,
            )

    def records(self, messages: Sequence[Any]) -> list[LogRecord]:
        decode = self._decode
        return [
            LogRecord(m.offset() + 1, decode(m.value()), m.partition())
            for m in messages
            if m.error() is None
        ]

    def _reader(self, partition: int, offset: int) -> Any:
        """The log's one positional reader (a member of no group), assigned to `partition`
        from `offset`. Callers hold `_read_lock`."""
        if self._positional is None:
            self._positional = Consumer(
                {
                    "bootstrap.servers": self.servers,
                    "group.id": f"tastemaker-reader-{uuid.uuid4().hex}",
                    "enable.auto.commit": False,
                    # Answer at once with what there is (some brokers wait the whole
                    # fetch.wait.max.ms otherwise).
                    "fetch.wait.max.ms": 10,
                }
            )
        self._positional.assign([TopicPartition(self.topic, partition, offset)])
        return self._positional

    def read(self, partition: int, after: int, limit: int) -> list[LogRecord]:
        want = min(limit, self._end(partition) - after)
        if want <= 0:
            return []
        out: list[LogRecord] = []
        try:
            with self._read_lock:
                reader = self._reader(partition, after)
                # consume() waits until it has `n` messages or times out: ask for exactly
                # what the partition holds after `after`.
                while len(out) < want:
                    got = self.records(reader.consume(want - len(out), self.timeout_s))
                    if not got:
                        raise LogError(
                            f"kafka log {self.topic}: partition {partition} ended before "
                            f"offset {after + want}"
                        )
                    out.extend(got)
        except KafkaException as exc:
            raise LogError(f"kafka log {self.topic}: cannot read: {exc}") from exc
        return out

    def commit(self, group: str, positions: Mapping[int, int]) -> None:
        if not positions:
            return
        current = self.committed(group)
        ahead = [TopicPartition(self.topic, p, o) for p, o in positions.items() if o > current[p]]
        if ahead:
            try:
                self._client(group).commit(offsets=ahead, asynchronous=False)
            except KafkaException as exc:
                raise LogError(f"kafka log {self.topic}: cannot commit: {exc}") from exc

    def committed(self, group: str) -> dict[int, int]:
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        try:
            got = self._client(group).committed(tps, timeout=self.timeout_s)
        except KafkaException as exc:
            raise LogError(f"kafka log {self.topic}: cannot read offsets: {exc}") from exc
        return {tp.partition: max(0, tp.offset) for tp in got}

    def _end(self, partition: int) -> int:
        client = self._client("tastemaker-offsets")
        try:
            reported = client.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=self.timeout_s, cached=False
            )[1]
            if reported <= 0:
                return 0
            newest = int(reported)
            with self._read_lock:
                reader = self._reader(partition, reported - 1)
                # One message at a time (poll returns as soon as one is there); the tail is
                # one record batch, fetched at once.
                message = reader.poll(self.timeout_s)
                while message is not None:
                    if message.error() is None:
                        newest = max(newest, message.offset() + 1)
                    message = reader.poll(0.01)
        except KafkaException as exc:
            raise LogError(f"kafka log {self.topic}: cannot read offsets: {exc}") from exc
        return newest

    def end_offsets(self) -> dict[int, int]:
        return {p: self._end(p) for p in range(self.partitions)}

    def lag(self, group: str) -> dict[int, int]:
        end, done = self.end_offsets(), self.committed(group)
        return {p: max(0, end[p] - done[p]) for p in range(self.partitions)}

    def consumer(self, group: str, member: str) -> KafkaConsumer:
        return KafkaConsumer(self, group, member)

    def erase_users(self, user_ids: Collection[str]) -> list[str]:
        """Deletes nothing and returns []: Kafka cannot delete single records. The topic's
        retention (`retention.ms`, a delete policy) drops whole old segments, consumed or not;
        `DeleteRecords` only truncates a partition's beginning; compaction keeps the newest
        record of each key (the user), so on this topic it would throw away every user's
        history, and a null-valued tombstone deletes all of a user's records only on a
        compacted topic. The erasure's own tombstone makes the stream and the archiver drop
        the user's records still in flight; the records themselves expire with retention."""
        del user_ids
        return []

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._producer.flush(self.timeout_s)
        # Free the client now, not when the object is collected (a frozen or cyclic heap can
        # keep it, reconnecting and logging, after the broker is gone). Producer.close is
        # newer than the oldest confluent-kafka we accept.
        close = getattr(self._producer, "close", None)
        if close is not None:
            close()
        with self._lock:
            for client in self._offset_clients.values():
                client.close()
            self._offset_clients.clear()
        with self._read_lock:
            if self._positional is not None:
                self._positional.close()
                self._positional = None


class KafkaConsumer:
    """A member of a Kafka consumer group. The broker assigns the partitions; this class
    hands out one partition's records at a time, as the protocol asks.

    librdkafka keeps a read position per partition that moves when messages are consumed,
    not when they are applied. Wherever records may be gone from sight (a `consume` that
    failed, a `seek` that failed) the partition owes a seek (`_owed`): until it is made, none
    of its records is handed out, so no later record is applied, and its stored position
    moved, past ones never applied."""

    def __init__(self, log: KafkaLog, group: str, member: str) -> None:
        self.log = log
        self.group = group
        self._owned: frozenset[int] = frozenset()
        self._buffer: dict[int, deque[LogRecord]] = defaultdict(deque)
        # Per partition: the offset of the last record handed out since it was assigned,
        # and the seeks owed (read again after this offset; None: from the group's commit).
        self._handed: dict[int, int] = {}
        self._owed: dict[int, int | None] = {}
        self._consumer = Consumer(
            {
                "bootstrap.servers": log.servers,
                "group.id": group,
                "client.id": member,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": int(log.session_timeout_s * 1000),
                "fetch.wait.max.ms": 50,
                "heartbeat.interval.ms": max(100, int(log.session_timeout_s * 1000 / 6)),
            }
        )
        self._consumer.subscribe([log.topic], on_assign=self._assigned, on_revoke=self._revoked)

    def _assigned(self, _consumer: Any, partitions: list[Any]) -> None:
        self._owned = self._owned | {tp.partition for tp in partitions}

    def _revoked(self, _consumer: Any, partitions: list[Any]) -> None:
        gone = {tp.partition for tp in partitions}
        self._owned = self._owned - gone
        for p in gone:  # read but not applied: the next owner reads them from the commit
            self._buffer.pop(p, None)
            self._handed.pop(p, None)
            self._owed.pop(p, None)

    def assignment(self) -> frozenset[int]:
        return self._owned

    def poll(self, limit: int) -> list[LogRecord]:
        if limit <= 0:
            return []
        self._pay_seeks()
        if not any(self._buffer.values()):
            try:
                # Also serves the group protocol: heartbeats and rebalance callbacks.
                messages = self._consumer.consume(limit, 0.05)
            except KafkaException as exc:
                # Messages it took from librdkafka's queue are lost from sight.
                for p in self._owned:
                    self._owed.setdefault(p, self._handed.get(p))
                raise LogError(f"kafka log {self.log.topic}: cannot read: {exc}") from exc
            for r in self.log.records(messages):
                if r.partition in self._owned and r.partition not in self._owed:
                    self._buffer[r.partition].append(r)
        for p, queued in self._buffer.items():
            if queued:
                out = [queued.popleft() for _ in range(min(limit, len(queued)))]
                self._handed[p] = out[-1].offset
                return out
        return []

    def _pay_seeks(self) -> None:
        """Make the seeks owed; one that fails again stays owed (a partition assigned a
        moment ago cannot be sought until librdkafka has started fetching it)."""
        for p, after in list(self._owed.items()):
            if p not in self._owned:
                del self._owed[p]
                continue
            try:
                if after is None:
                    got = self._consumer.committed(
                        [TopicPartition(self.log.topic, p)], timeout=self.log.timeout_s
                    )[0].offset
                    offset = got if got >= 0 else OFFSET_BEGINNING
                else:
                    offset = after  # Kafka's offset of the record after `after`
                self._consumer.seek(TopicPartition(self.log.topic, p, offset))
            except KafkaException:
                continue
            del self._owed[p]
            self._buffer.pop(p, None)

    def commit(self, partition: int, offset: int) -> None:
        try:
            self._consumer.commit(
                offsets=[TopicPartition(self.log.topic, partition, offset)], asynchronous=False
            )
        except KafkaException as exc:
            raise LogError(f"kafka log {self.log.topic}: cannot commit: {exc}") from exc

    def seek(self, partition: int, offset: int) -> None:
        self._buffer.pop(partition, None)
        if partition not in self._owned:
            return
        self._owed[partition] = offset
        self._handed[partition] = offset
        self._pay_seeks()
        if partition in self._owed:
            raise LogError(
                f"kafka log {self.log.topic}: cannot seek partition {partition} yet; "
                "its records are held back until it can"
            )

    def close(self) -> None:
        self._consumer.close()  # leaves the group: a rebalance gives the partitions away
