"""No accepted event is lost where a read's records went out of sight: a Redis Streams read
whose reply never arrived (a timeout while the server hangs, a reset connection) left its
entries pending on the member; a Kafka `consume` or `seek` that failed left librdkafka's read
position past records never handed out or applied; the stream processor failed after a poll,
before applying it. In each case those records must be applied before anything after them
moves the stored position. Each batch is one user's, so the user's counts show whether it
was applied 0, 1 or 2 times."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from confluent_kafka import KafkaError, KafkaException

from tastemaker.catalog import Catalog
from tastemaker.config import Config
from tastemaker.deployment.runtime import Runtime
from tastemaker.events import Event, EventType
from tastemaker.features.layout import PROFILE
from tastemaker.log import LogConsumer, LogError, open_log
from tastemaker.log.kafka import KafkaLog
from tastemaker.testing.servers import redis_server
from tests.conftest import T0, event, make_config


def _config(tmp_path: Path, catalog: Catalog, log_url: str, poll_s: float = 0.01) -> Config:
    config = make_config(tmp_path, catalog)
    stream = msgspec.structs.replace(config.stream, poll_interval_s=poll_s, member="m1")
    return msgspec.structs.replace(
        config, log=msgspec.structs.replace(config.log, url=log_url), stream=stream
    )


def _batch(user: str, item: str, n: int = 10) -> list[Event]:
    return [event(f"{user}-{k}", user, item, EventType.CLICK, T0 + k) for k in range(n)]


def _clicks(rt: Runtime, users: list[str]) -> dict[str, int]:
    out = {}
    for u in users:
        profile = rt.pipeline.user_features(u).get(PROFILE, {})
        counts = profile.get("counts")
        out[u] = 0 if counts is None else int(counts.value.get("click", 0))
    return out


def test_a_read_whose_reply_was_lost_is_applied_before_later_reads(
    tmp_path: Path, catalog: Catalog, redis_url: str
) -> None:
    prefix = f"lost{uuid.uuid4().hex[:8]}"
    config = _config(tmp_path, catalog, f"{redis_url}?partitions=1&prefix={prefix}")
    item = str(catalog.ids[0])
    rt = Runtime(config, catalog)
    try:
        rt.processor.drain(timeout_s=5)  # joined, owns the partition, nothing to claim
        rt.ingestor.ingest(_batch("lost", item))
        # The read the member would send, its reply discarded: the entries are delivered to
        # the member (pending on it) and the member never saw them.
        client = redis.Redis.from_url(redis_url)
        reply = client.xreadgroup(
            config.stream.group, rt.processor.member, {f"{prefix}:p0": ">"}, count=1000
        )
        client.close()
        assert reply  # the 10 entries went somewhere
        rt.ingestor.ingest(_batch("later", item))
        rt.processor.drain(timeout_s=5)
        first = _clicks(rt, ["lost", "later"])
    finally:
        rt.close()
    again = Runtime(config, catalog)  # a restart: a new processor and member
    try:
        again.processor.drain(timeout_s=5)
        after = _clicks(again, ["lost", "later"])
    finally:
        again.close()
    assert first == {"lost": 10, "later": 10}
    assert after == {"lost": 10, "later": 10}


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A Valkey server of this test's own (it is stopped with SIGSTOP), and its pid."""
    with redis_server(tmp_path / "valkey") as url:
        client = redis.Redis.from_url(url)
        pid = int(client.info("server")["process_id"])
        client.close()
        yield url, pid


@pytest.mark.slow
def test_a_hung_server_loses_no_accepted_event(
    tmp_path: Path, catalog: Catalog, own_redis: tuple[str, int]
) -> None:
    """The server is stopped (SIGSTOP) eight times for 0.4 s while the processor polls with
    a 100 ms socket timeout and batches keep coming: every read, append and commit sent
    meanwhile times out on the client and runs on the server once it resumes. Before each
    stop the processor has run dry and sleeps (0.2 s) while one more batch is appended: its
    first command after waking is a read that times out, which the server runs once it
    resumes, delivering that batch to no one. The leases (30 s) are renewed every 6 s, so
    most stops fall between two renewals. Only the batches answered 503 are resent (with the
    same event ids, as clients are told to): a resent copy would hide a lost original."""
    url, pid = own_redis
    config = _config(tmp_path, catalog, f"{url}?partitions=2&timeout_ms=100&lease_s=30", 0.2)
    item = str(catalog.ids[0])
    rt = Runtime(config, catalog)
    worker = threading.Thread(target=rt.processor.run, daemon=True)
    worker.start()
    users: list[str] = []
    refused: list[str] = []
    try:
        for stop in range(8):
            for _ in range(25):  # running normally, 500 events/s
                users.append(f"u{len(users)}")
                refused += _send(rt, users[-1], item)
                time.sleep(0.02)
            time.sleep(0.3)  # the processor catches up and sleeps
            users.append(f"u{len(users)}")
            refused += _send(rt, users[-1], item)
            os.kill(pid, signal.SIGSTOP)
            try:
                ends = time.monotonic() + 0.4
                while time.monotonic() < ends:  # every append times out
                    users.append(f"u{len(users)}")
                    refused += _send(rt, users[-1], item, once=True)
                    time.sleep(0.02)
            finally:
                os.kill(pid, signal.SIGCONT)
            del stop
        for u in refused:  # resent until accepted
            _send(rt, u, item)
        deadline = time.monotonic() + 30
        live = _clicks(rt, users)
        while time.monotonic() < deadline and set(live.values()) != {10}:
            time.sleep(0.2)
            live = _clicks(rt, users)
    finally:
        rt.processor.stop()
        worker.join(timeout=30)
        rt.close()
    assert refused  # the hang was felt
    # A restart changes nothing (with the default timeout: this machine may be slower than
    # 100 ms now and then, and drain() does not retry).
    relaxed = msgspec.structs.replace(
        config.log, url=config.log.url.split("?")[0] + "?partitions=2"
    )
    again = Runtime(msgspec.structs.replace(config, log=relaxed), catalog)
    try:
        again.processor.drain(timeout_s=10)
        counts = _clicks(again, users)
    finally:
        again.close()
    for when, seen in (("while running", live), ("after a restart", counts)):
        wrong = {u: n for u, n in seen.items() if n != 10}
        assert not wrong, f"{when}: {len(wrong)} of {len(users)} batches applied 0 or 2 times"


def _send(rt: Runtime, user: str, item: str, *, once: bool = False) -> list[str]:
    """Append one user's batch; retried on `LogError` unless `once`. Returns [user] if it
    was ever refused."""
    refused: list[str] = []
    while True:
        try:
            rt.ingestor.ingest(_batch(user, item))
            return refused
        except LogError:
            refused = [user]
            if once:
                return refused
            time.sleep(0.05)


@pytest.mark.parametrize("backend", ["embedded", "redis", "kafka"])
def test_a_batch_whose_partition_state_cannot_be_loaded_is_read_again(
    tmp_path: Path, catalog: Catalog, request: pytest.FixtureRequest, backend: str
) -> None:
    """The store fails after the poll, while the processor loads the partition's stored state
    (a store that hangs, say): the records polled are read again, not skipped by the
    consumer's read position while the next batch's write moves the stored one past them."""
    url = f"embedded://{tmp_path}/log?partitions=2"
    if backend == "redis":
        url = f"{request.getfixturevalue('redis_url')}?partitions=2&prefix=l{uuid.uuid4().hex}"
    elif backend == "kafka":
        url = f"kafka://{request.getfixturevalue('kafka_servers')}/l{uuid.uuid4().hex}?partitions=2"
    config = _config(tmp_path, catalog, url)
    item = str(catalog.ids[0])
    rt = Runtime(config, catalog)
    load = rt.processor._load_shard
    failures = [ConnectionError("the store did not answer")]

    def flaky(partition: int) -> object:
        if failures:
            raise failures.pop()
        return load(partition)

    rt.processor._load_shard = flaky  # type: ignore[assignment,method-assign]
    try:
        rt.ingestor.ingest(_batch("first", item))
        with pytest.raises(ConnectionError):
            _process_until_a_batch(rt)
        rt.ingestor.ingest(_batch("first", item, 12)[10:])  # more of the same partition
        rt.processor.drain(timeout_s=5)
        counts = _clicks(rt, ["first"])
    finally:
        rt.close()
    assert counts == {"first": 12}


def _process_until_a_batch(rt: Runtime) -> None:
    deadline = time.monotonic() + 30
    while rt.processor.process_once() is None and time.monotonic() < deadline:
        pass


class _Faulty:
    """A Kafka consumer client whose next `seek`, or next `consume` that gets messages,
    fails: a real client (a real broker behind it) with one fault injected."""

    def __init__(self, real: Any, fault: str) -> None:
        self._real = real
        self.fault = fault

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def seek(self, partition: Any) -> None:
        if self.fault == "seek":
            self.fault = ""
            raise KafkaException(KafkaError(KafkaError._STATE))
        self._real.seek(partition)

    def consume(self, n: int, timeout: float) -> list[Any]:
        messages: list[Any] = self._real.consume(n, timeout)
        if self.fault == "consume" and messages:
            self.fault = ""  # taken from librdkafka's queue, then lost
            raise KafkaException(KafkaError(KafkaError._FAIL))
        return messages


def _kafka_log(kafka_servers: str) -> KafkaLog:
    log = open_log(f"kafka://{kafka_servers}/t{uuid.uuid4().hex[:10]}?partitions=1")
    assert isinstance(log, KafkaLog)
    return log


def _poll_until(consumer: LogConsumer, last: str, *, errors: int = 0) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + 30
    while last not in got and time.monotonic() < deadline:
        try:
            got += [r.event.event_id for r in consumer.poll(100)]
        except LogError:
            errors -= 1
            assert errors >= 0, "more read errors than faults"
    return got


def test_kafka_a_seek_that_fails_holds_the_partition_back_until_it_is_made(
    kafka_servers: str,
) -> None:
    log = _kafka_log(kafka_servers)
    log.append([event(f"e{i}", "u", "i") for i in range(6)])
    consumer = log.consumer("g", "a")
    got = _poll_until(consumer, "e5")
    assert got == [f"e{i}" for i in range(6)]
    first = log.read(0, 0, 10)
    consumer._consumer = _Faulty(consumer._consumer, "seek")  # type: ignore[assignment]
    with pytest.raises(LogError, match="cannot seek"):
        consumer.seek(0, first[1].offset)  # e2... were not applied
    log.append([event("f0", "u", "i")])
    again = _poll_until(consumer, "f0")
    consumer.close()
    log.close()
    assert again == ["e2", "e3", "e4", "e5", "f0"]


def test_kafka_records_a_failed_consume_took_are_read_again(kafka_servers: str) -> None:
    log = _kafka_log(kafka_servers)
    log.append([event(f"e{i}", "u", "i") for i in range(3)])
    consumer = log.consumer("g", "a")
    assert _poll_until(consumer, "e2") == ["e0", "e1", "e2"]
    consumer._consumer = _Faulty(consumer._consumer, "consume")  # type: ignore[assignment]
    log.append([event(f"f{i}", "u", "i") for i in range(3)])
    again = _poll_until(consumer, "f2", errors=1)
    consumer.close()
    log.close()
    assert again == ["f0", "f1", "f2"]
