"""Online feature store: rows, families with TTLs, timestamped cells. Backends by URL."""

from collections.abc import Sequence
from typing import cast

from tastemaker.store.base import (
    Cell,
    FamilySpec,
    Mutation,
    OnlineStore,
    PreparedWrite,
    PreparedWrites,
    RowData,
    StoreError,
)
from tastemaker.store.embedded import EmbeddedStore, FsyncPolicy
from tastemaker.urls import parse_url

__all__ = [
    "Cell",
    "EmbeddedStore",
    "FamilySpec",
    "Mutation",
    "OnlineStore",
    "PreparedWrite",
    "PreparedWrites",
    "RowData",
    "StoreError",
    "open_store",
]


def open_store(
    url: str, families: Sequence[FamilySpec], *, seen_ttl_s: float = 7 * 86400.0
) -> OnlineStore:
    """Open the store a URL names:

    - `embedded:///abs/path` or `embedded://rel/path` (`?map_size_gb=8`, `readahead=0` for a
      store larger than the RAM it may use, `fsync=always|never`: see `EmbeddedStore`): LMDB;
    - `redis://host:port/db`: a Redis >= 6.2 or Valkey server;
    - `redis+cluster://host:port`: a Redis Cluster, through any of its nodes.

    Redis URLs take `timeout_ms` (per read, default 250), `write_timeout_ms` (per batch write,
    default 10000), `max_connections` (default 64) and `prefix` (prepended to every key).
    The registry is this function: one explicit branch per backend, nothing resolved by name.
    `seen_ttl_s` is how long idempotency keys (event ids) are remembered.
    """
    parsed = parse_url(url)
    if parsed.scheme == "embedded":
        map_size = int(parsed.params.get("map_size_gb", "8")) << 30
        readahead = parsed.params.get("readahead", "1")
        if readahead not in ("0", "1"):
            raise ValueError(f"online store URL {url!r}: readahead must be 0 or 1")
        fsync = parsed.params.get("fsync", "always")
        if fsync not in ("always", "never"):
            raise ValueError(f"online store URL {url!r}: fsync must be 'always' or 'never'")
        return EmbeddedStore(
            parsed.path,
            families,
            map_size=map_size,
            seen_ttl_s=seen_ttl_s,
            readahead=readahead == "1",
            fsync=cast("FsyncPolicy", fsync),
        )
    if parsed.scheme in ("redis", "redis+cluster"):
        from tastemaker.store.redis import RedisStore  # only this backend imports redis-py

        params = dict(parsed.params)
        try:
            timeout_s = float(params.pop("timeout_ms", "250")) / 1000
            write_timeout_s = float(params.pop("write_timeout_ms", "10000")) / 1000
            max_connections = int(params.pop("max_connections", "64"))
        except ValueError as exc:
            raise ValueError(f"online store URL {url!r}: {exc}") from exc
        prefix = params.pop("prefix", "")
        base = url.split("?", 1)[0]
        rest = "&".join(f"{k}={v}" for k, v in params.items())
        return RedisStore.from_url(
            base + (f"?{rest}" if rest else ""),
            families,
            timeout_s=timeout_s,
            write_timeout_s=write_timeout_s,
            max_connections=max_connections,
            prefix=prefix,
            seen_ttl_s=seen_ttl_s,
        )
    raise ValueError(
        f"unsupported online store URL {url!r}: expected embedded://PATH, redis://HOST:PORT/DB "
        "or redis+cluster://HOST:PORT"
    )
