from __future__ import annotations

from tastemaker.stream.sessions import assign_sessions
from tests.conftest import T0, event


def test_gap_longer_than_threshold_opens_a_new_session() -> None:
    events = [
        event("1", "u", "i", ts=T0),
        event("2", "u", "i", ts=T0 + 1799),
        event("3", "u", "i", ts=T0 + 1799 + 1801),
    ]
    ids, state = assign_sessions("u", events, None, 1800)
    assert ids[0] == ids[1] != ids[2]
    assert state == {"id": ids[2], "started": T0 + 3600, "last_ts": T0 + 3600}


def test_session_continues_from_stored_state_and_ids_are_deterministic() -> None:
    first, state = assign_sessions("u", [event("1", "u", "i", ts=T0)], None, 1800)
    later, _ = assign_sessions("u", [event("2", "u", "i", ts=T0 + 60)], state, 1800)
    assert later == first
    again, _ = assign_sessions("u", [event("1", "u", "i", ts=T0)], None, 1800)
    assert again == first


def test_client_session_ids_are_kept() -> None:
    events = [
        event("1", "u", "i", ts=T0, session_id="web-1"),
        event("2", "u", "i", ts=T0 + 5000, session_id="web-1"),
        event("3", "u", "i", ts=T0 + 5001),
    ]
    ids, _ = assign_sessions("u", events, None, 1800)
    assert ids == ["web-1", "web-1", "web-1"]


def test_late_events_join_the_current_session() -> None:
    ids, _ = assign_sessions("u", [event("1", "u", "i", ts=T0 + 100)], None, 1800)
    state = {"id": ids[0], "started": T0 + 100, "last_ts": T0 + 100}
    late, new_state = assign_sessions("u", [event("2", "u", "i", ts=T0)], state, 1800)
    assert late == ids
    assert new_state is not None
    assert new_state["last_ts"] == T0 + 100
