"""Limits on what one event may hold, checked after decoding and before anything is written.

Ids become keys of the online store (LMDB refuses a key over 511 bytes; the store adds a row
prefix and a family name) and of the dedup state, so their limit is in bytes of UTF-8, not in
characters: 170 CJK characters are 510 bytes. The default, 128 bytes, leaves room for every
prefix and fits any UUID, ULID or hex digest.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Sequence
from typing import Annotated

import msgspec

from tastemaker.events.schema import Event

__all__ = ["MAX_ID_BYTES_CEILING", "EventLimits", "check_events", "id_problem"]

# No setting may raise the id limit past this: 511 (LMDB's key limit) less the longest row
# prefix and family name the store puts around an id.
MAX_ID_BYTES_CEILING = 400
_TS = operator.attrgetter("ts")


class EventLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[events]` of the config: what the API accepts in an event (and ids of items)."""

    max_id_bytes: Annotated[int, msgspec.Meta(ge=1, le=MAX_ID_BYTES_CEILING)] = 128
    # How far past the server clock an event's `ts` may be: clients' clocks drift, but an
    # event from the future would hold the item aggregates' stream clock there.
    max_future_s: Annotated[float, msgspec.Meta(ge=0)] = 86_400.0
    max_extra_entries: Annotated[int, msgspec.Meta(ge=0)] = 32
    max_extra_key_chars: Annotated[int, msgspec.Meta(ge=1)] = 64
    max_extra_value_chars: Annotated[int, msgspec.Meta(ge=1)] = 1024


def id_problem(value: str, limit: int) -> str | None:
    """Why `value` cannot be an id (None: it can)."""
    if value.isascii() and len(value) <= limit:  # isascii is O(1): the common case is free
        return None
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > limit:
        return f"{size} bytes of UTF-8, over the limit of {limit} bytes (events.max_id_bytes)"
    return None


def _event_problems(e: Event, limits: EventLimits, latest_ts: float) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for name in ("event_id", "user_id", "item_id", "session_id"):
        value = getattr(e, name)
        if value is not None and (why := id_problem(value, limits.max_id_bytes)) is not None:
            found.append((name, why))
    if e.ts > latest_ts:
        ahead = e.ts - (latest_ts - limits.max_future_s)
        found.append(
            (
                "ts",
                f"{ahead:.0f} s in the future of the server clock, beyond the limit of "
                f"{limits.max_future_s:g} s (events.max_future_s)",
            )
        )
    if e.value is not None and not math.isfinite(e.value):
        found.append(("value", "must be finite"))
    extra = e.context.extra
    if extra:
        if len(extra) > limits.max_extra_entries:
            found.append(
                (
                    "context.extra",
                    f"{len(extra)} entries, over the limit of {limits.max_extra_entries} "
                    "(events.max_extra_entries)",
                )
            )
        for key, value in extra.items():
            if len(key) > limits.max_extra_key_chars:
                found.append(
                    (
                        "context.extra",
                        f"key of {len(key)} characters, over the limit of "
                        f"{limits.max_extra_key_chars} (events.max_extra_key_chars)",
                    )
                )
            if len(value) > limits.max_extra_value_chars:
                found.append(
                    (
                        f"context.extra.{key[:64]}",
                        f"value of {len(value)} characters, over the limit of "
                        f"{limits.max_extra_value_chars} (events.max_extra_value_chars)",
                    )
                )
    return found


def _fits(ids: list[str], limit: int) -> bool:
    return all(map(str.isascii, ids)) and max(map(len, ids), default=0) <= limit


def _all_within(events: Sequence[Event], limits: EventLimits, latest_ts: float) -> bool:
    """Whether no event breaks a limit: one pass per check in C (`map`), where the loop of
    `check_events` costs ~0.7 us an event, a third of decoding."""
    ids = [e.event_id for e in events]
    users = [e.user_id for e in events]
    sessions = [e.session_id for e in events if e.session_id is not None]
    values = [e.value for e in events if e.value is not None]
    return (
        _fits(ids, limits.max_id_bytes)
        and _fits(users, limits.max_id_bytes)
        and _fits([e.item_id for e in events], limits.max_id_bytes)
        and _fits(sessions, limits.max_id_bytes)
        and max(map(_TS, events), default=0.0) <= latest_ts
        and all(map(math.isfinite, values))
        and _extras_within([e.context.extra for e in events], limits)
        and len(set(ids)) == len(ids)
    )


def _extras_within(extras: list[dict[str, str]], limits: EventLimits) -> bool:
    extras = [x for x in extras if x]
    if not extras:
        return True
    keys = itertools.chain.from_iterable(extras)
    values = itertools.chain.from_iterable(map(dict.values, extras))
    return (
        max(map(len, extras)) <= limits.max_extra_entries
        and max(map(len, keys)) <= limits.max_extra_key_chars
        and max(map(len, values)) <= limits.max_extra_value_chars
    )


def check_events(
    events: Sequence[Event], limits: EventLimits, now: float
) -> list[tuple[int, str, str]]:
    """`(index, field, error)` of every limit an event breaks, and of every event id that two
    events of the batch give to different users (the stream counts an id once, so the second
    user's event would be silently dropped). The same id for the same user is a resend."""
    latest_ts = now + limits.max_future_s
    if _all_within(events, limits, latest_ts):
        return []
    found: list[tuple[int, str, str]] = []
    owners: dict[str, int] = {}
    for index, e in enumerate(events):
        found.extend((index, field, why) for field, why in _event_problems(e, limits, latest_ts))
        first = owners.setdefault(e.event_id, index)
        if first != index and events[first].user_id != e.user_id:
            found.append(
                (
                    index,
                    "event_id",
                    f"the same event_id as events[{first}] but another user_id; an event id "
                    "names one event",
                )
            )
    return found
