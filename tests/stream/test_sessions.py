from __future__ import annotations

import numpy as np

from tastemaker.store.base import Cell
from tastemaker.stream.covisitation import covisit_pairs
from tastemaker.stream.sessions import SESSION_STATE, assign_sessions, sessionize
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


def test_a_batch_issessionized_as_assign_sessions_does_user_by_user() -> None:
    """`sessionize` (the stream's, numpy over a whole batch) against `assign_sessions` run
    on each user's events in time order: random gaps around the threshold, ties in time,
    late events, stored sessions (some ended long ago), client session ids."""
    rng = np.random.default_rng(11)
    gap = 1800.0
    for trial in range(300):
        n_users = int(rng.integers(1, 6))
        events = []
        for k in range(int(rng.integers(1, 40))):
            u = f"u{int(rng.integers(0, n_users))}"
            step = float(rng.choice([0.0, 10.0, gap - 1, gap, gap + 1, 5 * gap, -gap / 2]))
            ts = T0 + float(rng.integers(0, 4)) * gap + step
            client = "web-1" if trial % 5 == 0 and rng.random() < 0.3 else None
            events.append(event(str(k), u, "i", ts=ts, session_id=client))
        codes: dict[str, int] = {}
        user_of = np.asarray([codes.setdefault(e.user_id, len(codes)) for e in events])
        users = list(codes)
        order = np.lexsort((np.asarray([e.ts for e in events]), user_of))
        starts = np.concatenate([[0], np.cumsum(np.bincount(user_of))]).astype(np.int64)
        stored: list[dict[str, Cell]] = []
        for u in users:
            last = T0 + float(rng.choice([-10 * gap, -gap - 1, -gap, -1.0, 0.0, gap]))
            held = {"id": f"{u}/old", "started": last - 60, "last_ts": last}
            stored.append({} if rng.random() < 0.3 else {SESSION_STATE: Cell(last, held)})
        times = np.asarray([e.ts for e in events])[order]
        got = sessionize(events, users, stored, order, starts, ts=times, gap=gap)
        in_session, same, newest, cells = got[:4]
        for i, u in enumerate(users):
            lo, hi = int(starts[i]), int(starts[i + 1])
            mine = [events[j] for j in order[lo:hi].tolist()]
            old = stored[i].get(SESSION_STATE)
            ids, state = assign_sessions(u, mine, None if old is None else old.value, gap)
            assert state is not None
            assert in_session[lo:hi].tolist() == [sid == state["id"] for sid in ids]
            assert same[i] == (old is not None and state["id"] == old.value["id"])
            assert newest[i] == mine[-1].ts
            assert cells[i] == {SESSION_STATE: Cell(mine[-1].ts, state)}
            # The same grouping of facts into sessions, the current one last; session
            # numbers are not shared with other users.
            keys = got.of_fact[lo:hi].tolist()
            assert [keys.index(k) for k in keys] == [ids.index(x) for x in ids]
            assert keys.index(int(got.current[i])) == ids.index(str(state["id"]))
            others = np.delete(got.of_fact, np.arange(lo, hi))
            assert not set(keys) & set(others.tolist())


def _linked_one_by_one(
    rows: list[int], weights: list[float], sessions: list[int], priors: dict[int, list[int]]
) -> dict[tuple[int, int], float]:
    """The co-visitation rule fact by fact: each session keeps its last `_WINDOW` distinct
    items, most recent last; an engaged fact is linked both ways to those other than its
    own item, then becomes the most recent."""
    linked: dict[tuple[int, int], float] = {}
    recent = {code: list(items) for code, items in priors.items()}
    for row, w, code in zip(rows, weights, sessions, strict=True):
        if row < 0:
            continue
        items = recent.setdefault(code, [])
        for other in items:
            if other != row:
                linked[other, row] = linked.get((other, row), 0.0) + w
                linked[row, other] = linked.get((row, other), 0.0) + w
        if row in items:
            items.remove(row)
        items.append(row)
        del items[:-_WINDOW]
    return linked


_WINDOW = 3


def test_a_batch_is_linked_for_co_visitation_as_fact_by_fact() -> None:
    """`covisit_pairs` (numpy over the whole batch) against the rule applied fact by fact:
    few items, so repeats inside the window are common; sessions interleaved (client ids);
    stored items for some sessions; facts that are not engaged (-1)."""
    rng = np.random.default_rng(12)
    for _ in range(400):
        n = int(rng.integers(0, 60))
        rows = rng.integers(-1, 6, n)
        weights = rng.integers(1, 4, n).astype(np.float64)
        sessions = np.sort(rng.integers(0, 4, n)) if rng.random() < 0.5 else rng.integers(0, 4, n)
        priors = {
            int(code): [int(r) for r in rng.permutation(6)[: int(rng.integers(1, _WINDOW + 1))]]
            for code in range(4)
            if rng.random() < 0.4
        }
        pairs = covisit_pairs(rows, weights, sessions, priors, _WINDOW)
        got: dict[tuple[int, int], float] = {}
        listed = zip(pairs.src.tolist(), pairs.dst.tolist(), pairs.weights.tolist(), strict=True)
        for a, b, w in listed:
            assert a < b  # each link once, lower row first
            got[a, b] = got.get((a, b), 0.0) + w
            got[b, a] = got.get((b, a), 0.0) + w
        assert got == _linked_one_by_one(rows.tolist(), weights.tolist(), sessions.tolist(), priors)
