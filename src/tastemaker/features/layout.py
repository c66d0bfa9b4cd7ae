"""Where features live in the online store: row keys and families.

Rows are prefixed by entity kind so users and items never collide. Applied event ids are not
features: they are the store's idempotency keys (`OnlineStore.write(..., seen=...)`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tastemaker.store import Cell, FamilySpec

__all__ = [
    "CONSENT",
    "COVIS",
    "GLOBAL_ROW",
    "OFFSETS",
    "POPULAR",
    "PROFILE",
    "SESSION",
    "STATS",
    "consent_row",
    "default_families",
    "item_row",
    "merge_shards",
    "offsets_row",
    "pending_row",
    "shard_column",
    "shard_of",
    "user_row",
]

PROFILE = "profile"  # long-lived user aggregates
SESSION = "session"  # the user's current session: id, items, counts
STATS = "stats"  # per-item stream statistics (popularity accumulator)
COVIS = "covis"  # per-item co-visitation neighbours
POPULAR = "popular"  # global top lists, overall and per category
OFFSETS = "offsets"  # per consumer group: the log position the stored state reflects
CONSENT = "consent"  # a user's consent choices (`tastemaker.privacy`), kept through erasure

GLOBAL_ROW = "g:popular"


def offsets_row(group: str) -> str:
    return "o:" + group


def pending_row(group: str, partition: int, slot: int) -> str:
    """The row of slot `slot` of a log partition's co-visitation pairs that wait to be merged
    into the neighbour maps (`stream.covis_fold_batches`; how many slots wait is the
    `covis_pending` column of `offsets_row(group)`)."""
    return f"j:{partition}:{slot}:{group}"


def consent_row(user_id: str) -> str:
    return "c:" + user_id


def user_row(user_id: str) -> str:
    return "u:" + user_id


def item_row(item_id: str) -> str:
    return "i:" + item_id


def default_families(
    *, profile_ttl_s: float, session_ttl_s: float, covis_ttl_s: float
) -> list[FamilySpec]:
    """The families tastemaker writes, with their TTLs from the config."""
    return [
        FamilySpec(PROFILE, profile_ttl_s),
        FamilySpec(SESSION, session_ttl_s),
        FamilySpec(STATS, None),
        FamilySpec(COVIS, covis_ttl_s),
        FamilySpec(POPULAR, None),
        FamilySpec(OFFSETS, None),
        FamilySpec(CONSENT, None),
    ]


def shard_column(name: str, partition: int, partitions: int) -> str:
    """The column a log partition's stream writes an item-level aggregate to.

    Each partition of the log has one stream reader at a time, which owns the partition's
    share of the item-level aggregates (popularity, co-visitation, top lists): `name#<p>`.
    Readers merge the shares (`merge_shards`). A one-partition log writes `name` itself."""
    return name if partitions == 1 else f"{name}#{partition}"


def shard_of(column: str) -> tuple[str, int | None]:
    """`name#3` -> (`name`, 3); `name` -> (`name`, None)."""
    base, sep, p = column.rpartition("#")
    if sep and p.isdigit():
        return base, int(p)
    return column, None


def merge_shards(cells: Mapping[str, Cell]) -> Mapping[str, Cell]:
    """Merge the per-partition shares of item-level columns into one column each: top lists
    `[ids, log scores]` by log-sum-exp per item (the longest share's length kept), neighbour
    maps `{item: weight}` by adding weights. Columns without shares pass through."""
    if not any("#" in c for c in cells):
        return cells
    groups: dict[str, list[Cell]] = {}
    for column, cell in cells.items():
        groups.setdefault(shard_of(column)[0], []).append(cell)
    out: dict[str, Cell] = {}
    for name, parts in groups.items():
        ts = max(c.ts for c in parts)
        if len(parts) == 1:
            out[name] = parts[0]
        elif isinstance(parts[0].value, dict):
            merged: dict[str, float] = {}
            for c in parts:
                for item, w in c.value.items():
                    merged[item] = merged.get(item, 0.0) + w
            out[name] = Cell(ts, merged)
        else:
            out[name] = Cell(ts, _merge_lists([c.value for c in parts]))
    return out


def _merge_lists(lists: list[Any]) -> list[Any]:
    ids = np.array([i for ids, _ in lists for i in ids], dtype=object)
    scores = np.array([s for _, ss in lists for s in ss], dtype=np.float64)
    if ids.size == 0:
        return [[], []]
    keys, inverse = np.unique(ids.astype(str), return_inverse=True)
    total = np.full(keys.size, -np.inf)
    np.logaddexp.at(total, inverse, scores)
    keep = max(len(ids_) for ids_, _ in lists)
    order = np.argsort(-total, kind="stable")[:keep]
    return [keys[order].tolist(), np.round(total[order], 6).tolist()]
