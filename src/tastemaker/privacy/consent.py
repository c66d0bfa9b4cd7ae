"""Consent: a user who opted out of personalization gets generic answers and no stored events.

The choice is a cell of the online store (row `c:<user>`, family `consent`, no TTL), so every
API worker and host sees the same answer on its next request. The ingest path reads it for
the users of each event batch (one store read per batch) and drops the events of users who
opted out; the consent row is the one thing an erasure keeps, since it is what makes the
opt-out hold.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence

from tastemaker.events import Event
from tastemaker.features.layout import CONSENT, consent_row
from tastemaker.log import LogError
from tastemaker.metrics import METRICS
from tastemaker.store import Cell, Mutation, OnlineStore, StoreError

__all__ = ["ConsentRegistry"]

_COLUMN = "personalization"


class ConsentRegistry:
    """Reads and writes users' consent in the online store."""

    def __init__(self, store: OnlineStore) -> None:
        self.store = store

    def record(self, user_id: str, personalization: bool, *, ts: float | None = None) -> None:
        """Record the user's choice (the newest `ts` wins, as for every cell)."""
        cell = Cell(time.time() if ts is None else ts, personalization)
        self.store.write([Mutation(consent_row(user_id), CONSENT, {_COLUMN: cell})])

    def opted_out(self, user_ids: Collection[str]) -> set[str]:
        """The users among `user_ids` who withdrew consent to personalization."""
        rows = {consent_row(u): u for u in user_ids}
        found = self.store.get(list(rows), [CONSENT])
        return {
            rows[row]
            for row, data in found.items()
            if (cell := data.get(CONSENT, {}).get(_COLUMN)) is not None and cell.value is False
        }

    def personalized(self, user_id: str) -> bool:
        return user_id not in self.opted_out([user_id])

    def admit(self, events: Sequence[Event]) -> list[Event]:
        """The events whose users did not opt out; the others are counted in
        `tastemaker_events_dropped_no_consent_total`. A store that cannot answer raises
        `LogError` (the API's 503, nothing written): an event is never stored unchecked."""
        try:
            out = self.opted_out({e.user_id for e in events})
        except StoreError as exc:
            raise LogError(f"consent could not be checked: {exc}") from exc
        if not out:
            return list(events)
        kept = [e for e in events if e.user_id not in out]
        METRICS.events_dropped_no_consent.inc(len(events) - len(kept))
        return kept
