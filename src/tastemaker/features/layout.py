"""Where features live in the online store: row keys and families.

Rows are prefixed by entity kind so users and items never collide. Applied event ids are not
features: they are the store's idempotency keys (`OnlineStore.write(..., seen=...)`).
"""

from __future__ import annotations

from tastemaker.store import FamilySpec

__all__ = [
    "COVIS",
    "GLOBAL_ROW",
    "OFFSETS",
    "POPULAR",
    "PROFILE",
    "SESSION",
    "STATS",
    "default_families",
    "item_row",
    "offsets_row",
    "user_row",
]

PROFILE = "profile"  # long-lived user aggregates
SESSION = "session"  # the user's current session: id, items, counts
STATS = "stats"  # per-item stream statistics (popularity accumulator)
COVIS = "covis"  # per-item co-visitation neighbours
POPULAR = "popular"  # global top lists, overall and per category
OFFSETS = "offsets"  # per consumer group: the log position the stored state reflects

GLOBAL_ROW = "g:popular"


def offsets_row(group: str) -> str:
    return "o:" + group


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
    ]
