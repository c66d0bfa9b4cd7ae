"""Commands sent on a Redis connection of their own, their replies read later.

redis-py sends a command and waits for its reply (a pipeline: all of them, then all the
replies). Three writers here gain by not waiting: a chunked bulk write (the server merges a
chunk while the next is encoded), the stream's MULTI/EXEC (the server applies it while the
next batch is computed) and the Redis Streams log commit (read at the consumer's next call).
`SentCommands` is that one mechanism: a connection taken from a pool, commands packed and
sent as they come, every reply read at the end, and the connection given back only in step
with the server (dropped otherwise).

`pack` turns commands into the bytes sent, with hiredis's packer called directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hiredis
import redis

__all__ = ["SentCommands", "pack"]


def pack(commands: Iterable[tuple[Any, ...]]) -> bytes:
    """`commands` in the Redis protocol, their arguments str (sent as UTF-8), bytes, int or
    float. redis-py wraps the same hiredis packer in a Python pass over every argument
    (a type check and an `Encoder.encode` call each), several times slower for the stream's
    EVALSHA of thousands of arguments, and a large share of a Redis stream drain. An argument
    of another type raises `redis.DataError`, as redis-py does."""
    try:
        return b"".join(map(hiredis.pack_command, commands))
    except TypeError as exc:
        raise redis.DataError(str(exc)) from exc


class SentCommands:
    """Commands sent on one connection of `pool`, held until `replies` is called."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._conn: Any = pool.get_connection()
        self._sent = 0

    def send(self, *commands: tuple[Any, ...]) -> None:
        """Pack and send `commands` without reading their replies. On an error the
        connection is dropped and returned, and the error raised."""
        conn = self._conn
        try:
            conn.send_packed_command([pack(commands)], check_health=self._sent == 0)
        except BaseException:
            self._drop()
            raise
        self._sent += len(commands)

    def replies(self) -> list[Any]:
        """Every command's reply, in order; a command the server refused gives its
        `ResponseError` as its reply. A connection error or timeout is raised (the
        connection dropped); either way the connection goes back to the pool."""
        conn = self._conn
        out: list[Any] = []
        try:
            for _ in range(self._sent):
                try:
                    out.append(conn.read_response())
                except redis.ResponseError as exc:
                    # Kept without its traceback, whose frame holds `out`: the cycle kept
                    # every frame below alive (a stream batch's events and cells) until a
                    # full collection.
                    out.append(exc.with_traceback(None))
        except BaseException:
            self._drop()
            raise
        self._pool.release(conn)
        return out

    def _drop(self) -> None:
        """Replies may be left unread: the connection is never used again."""
        self._conn.disconnect()
        self._pool.release(self._conn)
