"""Server-side sessionization: a new session starts after a gap of inactivity.

`assign_sessions` is the rule for one user's events; `sessionize` applies it to a whole
microbatch at once with numpy (the stream's), and is tested against it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import numpy as np
import numpy.typing as npt

from tastemaker.events import Event
from tastemaker.store import Cell

__all__ = ["SESSION_STATE", "Sessions", "assign_sessions", "sessionize"]

SESSION_STATE = "_session"
"""The session bookkeeping column (id, start, last event time), beside the declared session
features."""


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


class Sessions(NamedTuple):
    """A batch's sessions (`sessionize`): per fact in user order, whether it is in its
    user's current session and that session's number (unique in the batch); per user,
    whether the current session is the stored one, its newest event time, its session state
    cell and its current session's number."""

    in_session: npt.NDArray[np.bool_]
    same: list[bool]
    newest: list[float]
    mutations: list[dict[str, Cell]]
    of_fact: npt.NDArray[np.int64]
    current: npt.NDArray[np.int64]


def sessionize(
    events: list[Event],
    users: list[str],
    session_cells: list[dict[str, Cell]],
    order: npt.NDArray[np.int64],
    starts: npt.NDArray[np.int64],
    *,
    ts: npt.NDArray[np.float64],
    gap: float,
) -> Sessions:
    """Sessionization of the batch (`Sessions`), `assign_sessions`'s rules over all users at
    once, facts taken in `order` (grouped by user, `starts` apart, each user's in time
    order; `ts` their times in that order). A fact opens a session when it comes more than
    the gap after its user's latest event so far (the stored `last_ts`, then the batch's
    earlier facts: they are in time order); a user with a client-sent `session_id` in the
    batch goes through `assign_sessions` itself."""
    n_users = len(users)
    olds = [cells.get(SESSION_STATE) for cells in session_cells]
    stored_last = np.fromiter(
        (-np.inf if c is None else float(c.value["last_ts"]) for c in olds), np.float64, n_users
    )
    user, number, opened_at = _by_gap(ts, starts, stored_last, gap)
    firsts, lasts = starts[:-1], starts[1:] - 1
    final = number[lasts]
    in_session = number == final[user]
    client = {e.user_id for e in events if e.session_id is not None}
    same_session: list[bool] = []
    newest: list[float] = []
    session_mutations: list[dict[str, Cell]] = []
    ts_list = ts.tolist()
    for u, (user_id, old) in enumerate(zip(users, olds, strict=True)):
        lo, hi = int(firsts[u]), int(lasts[u]) + 1
        newest_ts = ts_list[hi - 1]
        state: dict[str, Any]
        if user_id in client:
            ordered = [events[i] for i in order[lo:hi].tolist()]
            state, number[lo:hi], final[u] = _client_sessions(user_id, ordered, old, gap)
            in_session[lo:hi] = number[lo:hi] == final[u]
            same = old is not None and state["id"] == old.value["id"]
        elif final[u] == 0 and old is not None:  # the stored session goes on
            state = {**old.value, "last_ts": max(float(old.value["last_ts"]), newest_ts)}
            same = True
        else:
            start = ts_list[int(opened_at[u])]
            state = {"id": f"{user_id}/{int(start * 1000)}", "started": start}
            state["last_ts"] = newest_ts
            same = False
        same_session.append(same)
        newest.append(newest_ts)
        session_mutations.append({SESSION_STATE: Cell(newest_ts, state)})
    span = int(number.max()) + 1 if number.size else 1
    current = np.arange(n_users, dtype=np.int64) * span + final
    return Sessions(
        in_session, same_session, newest, session_mutations, user * span + number, current
    )


def _client_sessions(
    user_id: str, events: list[Event], old: Cell | None, gap: float
) -> tuple[dict[str, Any], list[int], int]:
    """A user with client-sent session ids, by `assign_sessions`: the new session state,
    the user's sessions numbered as they come (per event) and the current one's number."""
    ids, found = assign_sessions(user_id, events, None if old is None else old.value, gap)
    state = cast("dict[str, Any]", found)
    local: dict[str, int] = {}
    numbers = [local.setdefault(sid, len(local)) for sid in ids]
    return state, numbers, local[str(state["id"])]


def _by_gap(
    ts: npt.NDArray[np.float64],
    starts: npt.NDArray[np.int64],
    stored_last: npt.NDArray[np.float64],
    gap: float,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per fact (grouped by user, `starts` apart, in time order) its user and its session's
    number within the user (0: the stored one, 1.. those the batch opens); per user the
    fact that opens its final session."""
    n_users = stored_last.size
    user = np.repeat(np.arange(n_users), np.diff(starts))
    firsts = starts[:-1]
    previous = np.empty_like(ts)
    previous[1:] = ts[:-1]
    previous[firsts] = -np.inf
    opens = ts - np.maximum(previous, stored_last[user]) > gap
    number = np.cumsum(opens, dtype=np.int64)
    number -= np.repeat(number[firsts] - opens[firsts], np.diff(starts))
    opened_at = np.zeros(n_users, dtype=np.int64)
    np.maximum.at(opened_at, user[opens], np.flatnonzero(opens))
    return user, number, opened_at
