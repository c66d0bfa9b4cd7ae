"""Erasure tombstones in the event stream (`EventType.ERASE`, written by the privacy service).

A tombstone of user U at position i of a batch means: U was erased when it was written. The
events of U before it in the batch are dropped (they were in flight when the user was
erased), the tombstone itself is no event, and the processor deletes U's stored rows before
applying the rest of the batch, so events of U applied by earlier batches leave nothing
either. Events of U after the tombstone are new activity and are applied.
"""

from __future__ import annotations

from collections.abc import Sequence

from tastemaker.events import Event, EventType

__all__ = ["has_tombstones", "kept_and_erased", "without_erased"]


def has_tombstones(events: Sequence[Event]) -> bool:
    erase = EventType.ERASE
    return any(e.type is erase for e in events)


def kept_and_erased(events: Sequence[Event]) -> tuple[list[bool], set[str]]:
    """Which events to apply (a mask) and the users erased by the batch's tombstones."""
    last: dict[str, int] = {}  # user -> index of the user's last tombstone
    for i, e in enumerate(events):
        if e.type is EventType.ERASE:
            last[e.user_id] = i
    keep = [
        e.type is not EventType.ERASE and i > last.get(e.user_id, -1) for i, e in enumerate(events)
    ]
    return keep, set(last)


def without_erased(events: Sequence[Event]) -> tuple[list[Event], set[str]]:
    """The events to apply and the users erased by the batch's tombstones."""
    keep, users = kept_and_erased(events)
    return [e for e, k in zip(events, keep, strict=True) if k], users
