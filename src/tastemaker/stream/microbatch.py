"""One microbatch's effect on the stored state, without a log: read what it needs, drop the
events applied before, sessionize, fold the users' features (`features/fold.py`), update
the item statistics (`ItemStats`). The stream processor and the offline replay both apply
events through `MicrobatchFold`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from tastemaker.catalog import Catalog
from tastemaker.config import Config
from tastemaker.events import Event, idempotency_key
from tastemaker.features.fold import CatalogJoin, fold, group_by_user, whole_families
from tastemaker.features.layout import COVIS, PROFILE, SESSION, user_row
from tastemaker.store import Mutation, RowData
from tastemaker.stream.covisitation import covisit_pairs
from tastemaker.stream.item_stats import ENGAGED, NO_COVIS, TYPE_WEIGHT, CovisReads, ItemStats
from tastemaker.stream.sessions import sessionize

__all__ = ["Computed", "MicrobatchFold", "Reads", "StateReader"]

# The declared session feature listing the session's items (co-visitation links new items
# to them across batches).
_SESSION_ITEMS = "session_items"


class StateReader(Protocol):
    """Reads of the stored state (a store, or the stream's reads through its write in
    flight)."""

    def get(self, rows: Sequence[str], families: Iterable[str]) -> dict[str, RowData]: ...

    def seen(self, ids: list[str]) -> set[str]: ...


class Reads(NamedTuple):
    """The stored state a batch needs: which of its events' idempotency keys (`keys`, one an
    event) were applied before, the users' profile and session families, and the
    co-visitation rows read ahead."""

    seen: set[str]
    states: dict[str, RowData]
    covis: CovisReads
    keys: list[str]


class Computed(NamedTuple):
    """A batch's effect, ready to write: the mutations, the ids of the events applied (the
    idempotency keys) and, per user, its newest event time."""

    mutations: list[Mutation]
    seen: list[str]
    newest_ts: dict[str, float]


class MicrobatchFold:
    """Events and the stored state they need -> the mutations that apply them."""

    def __init__(self, config: Config, catalog: Catalog) -> None:
        self._config = config
        self.set_catalog(catalog)

    def set_catalog(self, catalog: Catalog) -> None:
        self._join = CatalogJoin(catalog)

    def read(
        self, reader: StateReader, events: list[Event], items: ItemStats, *, covis: bool
    ) -> Reads:
        """What `compute` reads, in multi-gets: the events' ids, the users' rows and, with
        `covis`, the co-visitation rows of the items the batch may link (its engaged items
        and the items of the stored sessions it may continue) and of the waiting pairs."""
        ikeys = [idempotency_key(e.user_id, e.event_id) for e in events]
        seen = reader.seen(ikeys)
        rows = [user_row(u) for u in dict.fromkeys([e.user_id for e in events])]
        states = reader.get(rows, [PROFILE, SESSION])
        if not covis:
            # `ItemStats` reads exactly the rows it links, when it needs them (reading them
            # here makes an embedded drain slower: more rows, held decoded through the batch).
            return Reads(seen, states, NO_COVIS, ikeys)
        engaged = [e for e in events if e.type in ENGAGED]
        linked = {e.item_id for e in engaged}
        for row in {user_row(e.user_id) for e in engaged}:  # only they can link items
            prior = states.get(row, {}).get(SESSION, {}).get(_SESSION_ITEMS)
            if prior is not None:
                linked.update(prior.value)
        keys = items.covis_rows(linked)
        return Reads(seen, states, CovisReads(reader.get(keys, [COVIS]), set(keys)), ikeys)

    def compute(
        self,
        events: list[Event],
        extra: Sequence[Mutation],
        reads: Reads,
        items: ItemStats,
        *,
        merge: bool,
    ) -> Computed:
        """The batch's effect (events applied before dropped), with `extra` mutations; with
        `merge`, its co-visitation pairs and those waiting are merged into the neighbour
        maps, otherwise they wait."""
        fresh, keys = _drop_duplicates(events, reads.keys, reads.seen)
        if not fresh:
            return Computed(list(extra), [], {})
        mutations, newest_ts = self._apply(fresh, reads, items, merge=merge)
        mutations.extend(extra)
        return Computed(mutations, keys, newest_ts)

    def _apply(
        self, events: list[Event], reads: Reads, items: ItemStats, *, merge: bool
    ) -> tuple[list[Mutation], dict[str, float]]:
        s = self._config.stream
        columns = self._join.columns(events)  # in log order, as the item statistics take them
        groups = group_by_user(events, columns.ts)
        rows = [user_row(u) for u in groups.users]
        states = reads.states
        stored = {
            family: [states.get(row, {}).get(family, {}) for row in rows]
            for family in (PROFILE, SESSION)
        }
        facts = self._join.facts(groups, columns)
        sessions = sessionize(
            events,
            groups.users,
            stored[SESSION],
            groups.order,
            groups.starts,
            ts=facts.ts,
            gap=s.session_gap_s,
        )
        in_session, same_session, newest, session_state = sessions[:4]
        # Co-visitation: the engaged facts' catalog rows (-1 for the others) and weights, and
        # the stored items of the sessions that go on.
        item_rows = facts.embedding_rows  # the catalog rows, in user order
        weight = TYPE_WEIGHT[facts.type]
        engaged = np.where((weight > 0) & (item_rows >= 0), item_rows, -1)
        index = self._join.catalog.index
        priors: dict[int, list[int]] = {}
        for u, (same, cells) in enumerate(zip(same_session, stored[SESSION], strict=True)):
            prior = cells.get(_SESSION_ITEMS) if same else None
            if prior is not None:  # most recent first, as `last_n` keeps them
                known = [index.get(i) for i in reversed(prior.value)]
                priors[int(sessions.current[u])] = [r for r in known if r is not None][
                    -s.covis_window :
                ]
        pairs = covisit_pairs(engaged, weight, sessions.of_fact, priors, s.covis_window)
        changed = fold(
            self._config.features,
            facts,
            in_session=in_session,
            stored=stored,
            same_session=same_session,
            newest=newest,
            session_state=session_state,
        )
        mutations = whole_families(rows, stored, changed)
        mutations.extend(items.apply(events, columns, pairs, reads.covis, merge=merge))
        return mutations, dict(zip(groups.users, newest, strict=True))


def _drop_duplicates(
    events: list[Event], keys: list[str], seen: set[str]
) -> tuple[list[Event], list[str]]:
    """The events whose idempotency key (`keys`, one an event) is not in `seen` (applied
    before), each key once; and their keys."""
    seen = set(seen)
    fresh: list[Event] = []
    fresh_keys: list[str] = []
    for e, key in zip(events, keys, strict=True):
        if key not in seen:
            seen.add(key)  # a repeat inside the batch is a duplicate too
            fresh.append(e)
            fresh_keys.append(key)
    return fresh, fresh_keys
