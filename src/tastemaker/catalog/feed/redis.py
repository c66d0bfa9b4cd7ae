"""The catalog change feed on one Redis stream, for processes on many machines.

One stream key (`<prefix>{tm:catalog}`: one hash slot, so it works on a cluster too); each
`append` is one MULTI/EXEC of XADDs, so a batch of changes is all or none and contiguous. A
position is the entry id `ms-seq` as one integer (`ms << 20 | seq`), so it orders like the
stream. Only this module imports redis for the feed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec
import redis
from redis.cluster import RedisCluster

from tastemaker.catalog.catalog import CatalogError, ItemChange

__all__ = ["RedisCatalogFeed"]

_SEQ_BITS = 20


def _position(entry_id: bytes) -> int:
    ms, seq = entry_id.split(b"-")
    return int(ms) << _SEQ_BITS | int(seq)


def _entry_id(position: int) -> str:
    return f"{position >> _SEQ_BITS}-{position & ((1 << _SEQ_BITS) - 1)}"


class RedisCatalogFeed:
    """The feed on one Redis stream (`<prefix>{tm:catalog}`)."""

    def __init__(self, client: Any, key: str) -> None:
        self.client = client
        self.key = key
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(ItemChange)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "", timeout_s: float = 5.0) -> RedisCatalogFeed:
        """`url` without options (`open_feed` parses them): `redis://` or `redis+cluster://`."""
        opts: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": 1.0}
        if url.startswith("redis+cluster://"):
            client: Any = RedisCluster.from_url("redis://" + url[len("redis+cluster://") :], **opts)
        else:
            client = redis.Redis.from_url(url, **opts)
        return cls(client, f"{prefix}{{tm:catalog}}")

    def append(self, changes: Sequence[ItemChange]) -> int:
        now = repr(time.time())
        try:
            pipe = self.client.pipeline(transaction=True)
            for c in changes:
                pipe.xadd(self.key, {b"ts": now, b"c": self._enc.encode(c)})
            ids = pipe.execute()
        except redis.RedisError as exc:
            raise CatalogError(f"catalog feed at {self.key}: {exc}") from exc
        return _position(ids[-1])

    def read(self, after: int) -> list[tuple[int, ItemChange, float]]:
        start = "-" if after <= 0 else "(" + _entry_id(after)
        try:
            entries = self.client.xrange(self.key, min=start, max="+")
        except redis.RedisError as exc:
            raise CatalogError(f"catalog feed at {self.key}: {exc}") from exc
        return [
            (_position(eid), self._dec.decode(fields[b"c"]), float(fields[b"ts"]))
            for eid, fields in entries
        ]

    def close(self) -> None:
        self.client.close()
