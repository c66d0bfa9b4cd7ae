"""The recommend pipeline's answer cache: per (user, request), indexed by user.

Thread-safe: API requests read and fill it from the backend thread pool while accepted
events invalidate it from other threads. Everything is done under one lock, and each step
is O(1) or O(the user's answers): forgetting a user's answers is one index lookup, not a
scan of the cache, because every event POST does it.

An answer is only served while it is still true of the catalog: each entry keeps the catalog
rows of its items, and after the catalog changed (an item deleted, repriced, out of stock) a
hit is served only if every item is still active and passes the request's filters;
otherwise it is dropped and recomputed.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Collection
from typing import TYPE_CHECKING

import msgspec
import numpy as np
import numpy.typing as npt

from tastemaker.catalog import Catalog
from tastemaker.ranking.rerank import Filters, filter_mask

if TYPE_CHECKING:
    from tastemaker.recommend.types import Recommendation, Request

__all__ = ["CacheKey", "RecommendCache"]

CacheKey = tuple[str, bytes]  # (user id, the request's options encoded)


class _Entry:
    __slots__ = ("catalog_version", "expires", "rec", "rows", "version")

    def __init__(
        self,
        expires: float,
        version: tuple[float, int],
        rec: Recommendation,
        rows: npt.NDArray[np.int64],
        catalog_version: int,
    ) -> None:
        self.expires = expires
        self.version = version
        self.rec = rec
        self.rows = rows
        self.catalog_version = catalog_version


class RecommendCache:
    """Answers per (user, request), for `ttl_s`, valid while the user's features are
    unchanged (`version`) and the catalog still allows their items. At most `size` answers;
    when full, the oldest tenth is dropped (hot users come straight back). Requests with an
    `exclude` list or a fixed `now` are not cached."""

    def __init__(self, ttl_s: float, size: int) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._users: dict[str, dict[bytes, _Entry]] = {}
        self._order: dict[CacheKey, None] = {}  # every key, oldest first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._order)

    def key(self, user_id: str, req: Request) -> CacheKey | None:
        if self.ttl_s <= 0 or req.exclude or req.now is not None:
            return None
        return user_id, msgspec.msgpack.encode(
            (req.n, req.filters, req.explain, req.region, req.device)
        )

    def get(
        self,
        key: CacheKey,
        version: tuple[float, int],
        catalog: Catalog,
        filters: Filters | None,
    ) -> Recommendation | None:
        """The cached answer, if still valid for the user's features (`version`) and for
        `catalog` (every item active and passing `filters`)."""
        user, options = key
        now = time.monotonic()
        with self._lock:
            entry = self._users.get(user, {}).get(options)
            if entry is None:
                return None
            if entry.expires < now or entry.version != version:
                self._drop(user, options)
                return None
            if entry.catalog_version == catalog.version:
                return entry.rec
            rows = entry.rows
        # The catalog changed since: a vectorized check over the answer's few items.
        valid = bool(np.all(catalog.active[rows]) and np.all(filter_mask(catalog, rows, filters)))
        with self._lock:
            if self._users.get(user, {}).get(options) is not entry:
                return None  # invalidated or replaced meanwhile
            if not valid:
                self._drop(user, options)
                return None
            entry.catalog_version = max(entry.catalog_version, catalog.version)
            return entry.rec

    def put(
        self, key: CacheKey, version: tuple[float, int], rec: Recommendation, catalog: Catalog
    ) -> None:
        """Cache `rec`, computed from `catalog` for a user whose features were at
        `version`."""
        rows = catalog.rows([item.item_id for item in rec.items])
        if (rows < 0).any():
            return  # an item the catalog does not know cannot be checked later
        entry = _Entry(time.monotonic() + self.ttl_s, version, rec, rows, catalog.version)
        user, options = key
        with self._lock:
            if key in self._order:
                self._drop(user, options)
            elif len(self._order) >= self.size:
                for old in list(itertools.islice(self._order, max(1, self.size // 10))):
                    self._drop(*old)
            self._users.setdefault(user, {})[options] = entry
            self._order[key] = None

    def invalidate(self, user_ids: Collection[str]) -> None:
        """Forget the users' answers (their new events were just accepted here)."""
        with self._lock:
            for user in user_ids:
                answers = self._users.pop(user, None)
                if answers is not None:
                    for options in answers:
                        del self._order[user, options]

    def clear(self) -> None:
        with self._lock:
            self._users.clear()
            self._order.clear()

    def _drop(self, user: str, options: bytes) -> None:
        """Remove one entry; the caller holds the lock."""
        answers = self._users.get(user)
        if answers is not None and answers.pop(options, None) is not None:
            del self._order[user, options]
            if not answers:
                del self._users[user]
