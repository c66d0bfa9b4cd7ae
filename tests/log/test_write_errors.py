"""Honest write errors: every failed append raises `LogError` (the API answers 503 with JSON),
says whether the events may have been written, and leaves nothing half-written."""

from __future__ import annotations

import os
import signal
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import redis
from starlette.testclient import TestClient

from tastemaker.catalog import Catalog
from tastemaker.deployment.runtime import Runtime
from tastemaker.events import Event
from tastemaker.log import EmbeddedEventLog, LogError, open_log
from tastemaker.log.redis_streams import RedisStreamsLog
from tastemaker.serving.api import build_app
from tastemaker.testing.servers import redis_server
from tests.conftest import event, make_config


def _fill(db: sqlite3.Connection) -> None:
    """The database may not grow: SQLite answers as on a full disk (SQLITE_FULL), and
    rolls the transaction back itself."""
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")


def _events(tag: str, n: int) -> list[Event]:
    return [event(f"{tag}{i}", f"u{i % 7}", "item-" + "x" * 200) for i in range(n)]


@pytest.mark.parametrize("partitions", [1, 3])
def test_a_full_disk_raises_log_error_and_writes_nothing(tmp_path: Path, partitions: int) -> None:
    log = EmbeddedEventLog(tmp_path / "log", partitions=partitions)
    log.append(_events("a", 10))
    before = log.end_offsets()
    _fill(log._db)
    with pytest.raises(LogError, match="full") as caught:
        log.append(_events("b", 3000))
    assert caught.value.maybe_written is False
    assert log.end_offsets() == before
    # Room again: the next append works (no transaction was left open).
    log._db.execute("PRAGMA max_page_count = 1073741823")
    log.append(_events("c", 5))
    assert sum(len(log.read(p, 0, 100_000)) for p in range(partitions)) == 15
    log.close()


def test_a_read_only_log_raises_log_error_and_writes_nothing(tmp_path: Path) -> None:
    log = EmbeddedEventLog(tmp_path / "log")
    log._db.execute("PRAGMA query_only = 1")  # every write refused, as on a read-only mount
    with pytest.raises(LogError, match="readonly") as caught:
        log.append(_events("a", 3))
    assert caught.value.maybe_written is False
    log._db.execute("PRAGMA query_only = 0")
    assert log.end_offsets() == {0: 0}
    log.close()


def test_the_api_answers_503_with_json_when_the_disk_is_full(
    tmp_path: Path, catalog: Catalog
) -> None:
    runtime = Runtime.from_config(make_config(tmp_path, catalog))
    try:
        assert isinstance(runtime.log, EmbeddedEventLog)
        _fill(runtime.log._db)
        events = [
            {"event_id": f"e{i}", "user_id": "alice", "item_id": str(catalog.ids[0]),
             "type": "click", "ts": 1.76e9 + i,
             "context": {"extra": {"pad": "x" * 1000, "more": "y" * 1000}}}
            for i in range(500)
        ]  # fmt: skip
        with TestClient(build_app(runtime), raise_server_exceptions=False) as client:
            r = client.post("/v1/events", json={"events": events})
        assert r.status_code == 503
        body = r.json()
        assert body["error"] == "log_unavailable"
        assert "nothing was written" in body["detail"]
        assert runtime.log.end_offsets() == {0: 0}
    finally:
        runtime.close()


@pytest.fixture
def hung_redis(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A Valkey server of this test's own, and its pid (the tests stop it)."""
    with redis_server(tmp_path / "valkey") as url:
        client = redis.Redis.from_url(url)
        pid = int(client.info("server")["process_id"])
        client.close()
        yield url, pid


def test_a_redis_append_whose_reply_times_out_may_have_written(
    tmp_path: Path, catalog: Catalog, hung_redis: tuple[str, int]
) -> None:
    """The server hangs after the transaction was sent: the append times out (timeout_ms),
    the API answers 503 saying the events may have been written, and once the server
    resumes they are in the log, once: resending them is what dedup by event id is for."""
    url, pid = hung_redis
    config = make_config(tmp_path, catalog)
    log_url = f"{url}?partitions=2&prefix=h{uuid.uuid4().hex[:8]}&timeout_ms=200"
    runtime = Runtime.from_config(
        msgspec.structs.replace(config, log=msgspec.structs.replace(config.log, url=log_url))
    )
    events = [
        {"event_id": f"e{i}", "user_id": f"u{i}", "item_id": str(catalog.ids[0]),
         "type": "click", "ts": 1.76e9 + i}
        for i in range(10)
    ]  # fmt: skip
    try:
        with TestClient(build_app(runtime), raise_server_exceptions=False) as client:
            # Connections open before the server stops (a new one would time out in its
            # handshake, before anything is sent), for the append and the lag refresh.
            pool = runtime.log.client.connection_pool  # type: ignore[attr-defined]
            for conn in [pool.get_connection() for _ in range(3)]:
                pool.release(conn)
            os.kill(pid, signal.SIGSTOP)
            try:
                r = client.post("/v1/events", json={"events": events})
            finally:
                os.kill(pid, signal.SIGCONT)
        assert r.status_code == 503
        body = r.json()
        assert body["error"] == "log_unavailable"
        assert "may have been written" in body["detail"]
        assert "same event ids" in body["detail"]
        check = open_log(log_url.replace("&timeout_ms=200", ""))  # not as tight
        written = [r.event.event_id for p in range(2) for r in check.read(p, 0, 100)]
        check.close()
        assert sorted(written) == sorted(str(e["event_id"]) for e in events)
    finally:
        runtime.close()


def test_a_redis_append_that_cannot_connect_wrote_nothing(tmp_path: Path) -> None:
    with redis_server(tmp_path / "valkey") as url:
        log = open_log(f"{url}?partitions=1&connect_timeout_ms=100")
    # The server is gone: the connection is refused before anything is sent.
    with pytest.raises(LogError) as caught:
        log.append(_events("a", 3))
    assert caught.value.maybe_written is False
    log.close()


def test_redis_timeouts_come_from_the_url(redis_url: str) -> None:
    log = open_log(f"{redis_url}?partitions=1&timeout_ms=250&connect_timeout_ms=75")
    assert isinstance(log, RedisStreamsLog)
    kwargs = log.client.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.25, 0.075)
    log.close()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("timeout=5", "unknown option.*timeout"),
        ("timeout_ms=0", "timeout_ms must be above 0"),
        ("timeout_ms=soon", "timeout_ms must be a number"),
        ("connect_timeout_ms=nan", "connect_timeout_ms is out of range"),
    ],
)
def test_bad_redis_log_options_are_refused(redis_url: str, query: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_log(f"{redis_url}?partitions=1&{query}")


def test_unknown_options_are_refused_on_every_scheme(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown option.*fsyn.*takes busy_timeout_s"):
        open_log(f"embedded://{tmp_path}/log?fsyn=never")
    with pytest.raises(ValueError, match=r"unknown option.*lease_s"):
        open_log("kafka://127.0.0.1:1/topic?lease_s=5")
