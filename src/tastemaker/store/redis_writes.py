"""The Redis store's prepared writes (`PreparedWrite`): nothing to send, a cluster's write
done whole at `finish`, or a standalone server's MULTI/EXEC sent at `start` and read at
`finish`; and how redis-py's errors become the store's."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import redis
from redis.exceptions import NoScriptError

from tastemaker.redisio import SentCommands
from tastemaker.store.base import StoreError

if TYPE_CHECKING:
    from tastemaker.store.redis import RedisStore

__all__ = ["Deferred", "Done", "StoreTimeoutError", "Transaction", "wrap"]


class StoreTimeoutError(StoreError):
    """A Redis call did not answer within the configured timeout."""


class Done:
    """A write with nothing to send."""

    def start(self) -> None:
        pass

    def finish(self) -> None:
        pass


class Deferred:
    """A write done whole by `finish` (a cluster's: one pipeline per node)."""

    def __init__(self, run: Callable[[], None]) -> None:
        self._run = run

    def start(self) -> None:
        pass

    def finish(self) -> None:
        self._run()


class Transaction:
    """A batch write on a standalone server: one MULTI/EXEC, sent by `start` on a
    connection of its own (`SentCommands`, held until `finish`), whose replies `finish`
    reads. The replies wait in the socket meanwhile, so the caller's thread is free and no
    other thread is needed. If the server lost the scripts (a restart, SCRIPT FLUSH) or had
    closed the connection, the write runs once more through redis-py's pipeline, which
    loads scripts and reconnects: merges and idempotency keys are the same the second time,
    so running it twice is harmless."""

    def __init__(
        self,
        store: RedisStore,
        blobs: Mapping[str, tuple[int, bytes]],
        seen_keys: list[str],
        whole: frozenset[str],
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._seen_keys = seen_keys
        self._whole = whole
        self._sent: SentCommands | None = None
        self._error: redis.RedisError | None = None

    def start(self) -> None:
        if self._sent is not None or self._error is not None:
            return
        try:
            sent = SentCommands(self._store._writer.connection_pool)
            sent.send(*self._store._transaction(self._blobs, self._seen_keys, self._whole))
            self._sent = sent
        except redis.RedisError as exc:
            self._error = exc

    def finish(self) -> None:
        try:
            self._replies()
        except (NoScriptError, redis.ConnectionError) as exc:
            if isinstance(exc, redis.TimeoutError):
                raise wrap(exc) from exc
            self._store._submit(self._blobs, self._seen_keys, self._whole)
        except redis.RedisError as exc:
            raise wrap(exc) from exc

    def _replies(self) -> None:
        if self._sent is None and self._error is None:
            self.start()
        sent, self._sent = self._sent, None
        if self._error is not None:
            raise self._error
        assert sent is not None  # started without an error
        *queued, results = sent.replies()  # MULTI's OK and each command's QUEUED, then EXEC's
        if isinstance(results, redis.ResponseError):  # a command refused when queued: aborted
            refused = [r for r in queued if isinstance(r, redis.ResponseError)]
            raise refused[0] if refused else results
        for result in results:
            if isinstance(result, redis.RedisError):
                raise result


def wrap(exc: redis.RedisError) -> StoreError:
    if isinstance(exc, redis.TimeoutError):
        return StoreTimeoutError(f"redis call timed out: {exc}")
    return StoreError(f"redis call failed: {exc}")
