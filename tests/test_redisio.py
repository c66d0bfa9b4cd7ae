"""Commands packed with hiredis's packer and sent without waiting (tastemaker.redisio)."""

from __future__ import annotations

import pytest
import redis
from redis.connection import Connection

from tastemaker.redisio import SentCommands, pack


def test_pack_gives_the_bytes_redis_py_sends() -> None:
    commands = [
        ("EVALSHA", "ab" * 20, 2, "tm:{u:1}:p", "tm:{u:2}:p", 86_400_000, b"\x00\xffblob", 2.5),
        ("MGET", "é", "k\r\n"),
        ("MULTI",),
    ]
    packed: list[bytes] = Connection().pack_commands(commands)  # type: ignore[no-untyped-call]
    assert pack(commands) == b"".join(packed)


def test_pack_refuses_an_argument_redis_cannot_take() -> None:
    with pytest.raises(redis.DataError):
        pack([("SET", "key", None)])


def test_a_refused_command_is_a_reply_that_holds_no_frame(redis_url: str) -> None:
    """A reply that is an error is kept without its traceback: its frame would hold the
    replies, which hold it (a cycle that kept the caller's frames, a stream batch's data
    included, alive until a full collection)."""
    client = redis.Redis.from_url(redis_url)
    sent = SentCommands(client.connection_pool)
    sent.send(("SET", "redisio:k", "1"), ("EVALSHA", "0" * 40, 0), ("GET", "redisio:k"))
    ok, refused, value = sent.replies()
    assert ok == b"OK"
    assert isinstance(refused, redis.exceptions.NoScriptError)
    assert refused.__traceback__ is None
    assert value == b"1"
    client.close()
