"""The catalog change feed's Protocol: item upserts and deletes, in order, shared by every
process. Backends: `sqlite.py` (`embedded://`), `redis.py` (`redis://`, `redis+cluster://`),
chosen by URL in `open_feed`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tastemaker.catalog.catalog import ItemChange

__all__ = ["CatalogFeed"]


class CatalogFeed(Protocol):
    """An append-only, ordered log of item changes; positions start at 1 and only grow."""

    def append(self, changes: Sequence[ItemChange]) -> int:
        """Append all changes at once (all or none); returns the position of the last."""
        ...

    def read(self, after: int) -> list[tuple[int, ItemChange, float]]:
        """(position, change, time appended) of every change after `after`, in order."""
        ...

    def close(self) -> None: ...
