"""The one event schema every part of tastemaker speaks.

Events are msgspec Structs: decoding JSON or msgpack into them *is* the validation, so the
ingest path builds no second object per event.
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

__all__ = ["TS_FLOOR", "Context", "Event", "EventBatch", "EventType", "idempotency_key"]


class EventType(enum.StrEnum):
    """What the user did. `impression` means an item was shown, not acted on."""

    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    PURCHASE = "purchase"
    RATE = "rate"
    LIKE = "like"
    DISLIKE = "dislike"
    IMPRESSION = "impression"
    SEARCH = "search"
    # A tombstone: the user was erased (`tastemaker.privacy`). Written to the log by the
    # erasure, never accepted from clients; the stream deletes the user's state when it
    # applies one, so events of the user still in flight before it leave nothing behind.
    ERASE = "erase"


# In characters, the most any setting allows; `events.max_id_bytes` limits the UTF-8 bytes
# (`limits.py`), which no character count can.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=400)]
TS_FLOOR = 978_307_200.0  # 2001-01-01: a date floor that refuses pre-2001 junk
# Seconds since the Unix epoch, as sent by the client. The upper bound rejects milliseconds
# sent by mistake (they would land in the year 50,000); `events.max_future_s` is tighter.
Timestamp = Annotated[float, msgspec.Meta(ge=TS_FLOOR, le=32_503_680_000.0)]


class Context(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """Where the event happened. `extra` is a free-form string map for the client's own keys."""

    device: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    region: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    extra: dict[str, str] = {}


class Event(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """One user interaction. `event_id` is the client's idempotency key: resending the same
    id is harmless, tastemaker counts it once."""

    event_id: Id
    user_id: Id
    item_id: Id
    type: EventType
    ts: Timestamp
    session_id: Id | None = None
    value: float | None = None
    context: Context = Context()


class EventBatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of `POST /v1/events`."""

    events: Annotated[list[msgspec.Raw], msgspec.Meta(min_length=1, max_length=10_000)]


def idempotency_key(user_id: str, event_id: str) -> str:
    """What makes an event a duplicate: its `event_id` among its user's events. The stream's
    and the lake's deduplication both use it, so one id sent for two users is two events,
    never one of them dropped as a copy of the other. The user id's length leads, so no two
    (user, event) pairs share a key whatever characters the ids hold."""
    return f"{len(user_id)}:{user_id}{event_id}"
