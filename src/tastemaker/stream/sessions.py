"""Server-side sessionization: a new session starts after a gap of inactivity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tastemaker.events import Event

__all__ = ["assign_sessions"]


def assign_sessions(
    user_id: str, events: Sequence[Event], state: dict[str, Any] | None, gap_s: float
) -> tuple[list[str], dict[str, Any] | None]:
    """Session id of each event (time-ordered, one user) and the new session state.

    A client-sent `session_id` is kept as is. Otherwise an event more than `gap_s` after the
    user's previous one opens a session whose id is derived from the user and its start time,
    so replaying the same events assigns the same ids. Late events (older than the last one
    seen) join the current session. `state` is `{"id", "started", "last_ts"}`.
    """
    current = dict(state) if state else None
    ids: list[str] = []
    for e in events:
        if e.session_id is not None:
            if current is None or current["id"] != e.session_id:
                current = {"id": e.session_id, "started": e.ts, "last_ts": e.ts}
        elif current is None or e.ts - float(current["last_ts"]) > gap_s:
            current = {"id": f"{user_id}/{int(e.ts * 1000)}", "started": e.ts, "last_ts": e.ts}
        current["last_ts"] = max(float(current["last_ts"]), e.ts)
        ids.append(str(current["id"]))
    return ids, current
