"""Online feature store: rows, families with TTLs, timestamped cells. Backends by URL."""

from collections.abc import Sequence

from tastemaker.store.base import Cell, FamilySpec, Mutation, OnlineStore, RowData, StoreError
from tastemaker.store.embedded import EmbeddedStore
from tastemaker.urls import parse_url

__all__ = [
    "Cell",
    "EmbeddedStore",
    "FamilySpec",
    "Mutation",
    "OnlineStore",
    "RowData",
    "StoreError",
    "open_store",
]


def open_store(url: str, families: Sequence[FamilySpec]) -> OnlineStore:
    """Open the store a URL names. `embedded:///abs/path` or `embedded://rel/path`.

    The registry is this function: one explicit branch per backend, nothing resolved by name.
    """
    parsed = parse_url(url)
    if parsed.scheme == "embedded":
        map_size = int(parsed.params.get("map_size_gb", "8")) << 30
        return EmbeddedStore(parsed.path, families, map_size=map_size)
    raise ValueError(f"unsupported online store URL {url!r}: expected embedded://PATH")
