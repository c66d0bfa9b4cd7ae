"""The user-feature fold: the users' stored feature cells and a microbatch's facts -> the
cells that change.

Pure: no store, no log. The stream's microbatch and the offline replay both come through
here, so training never sees features computed differently from serving. The facts are the
events of many users as numpy columns (`FactBatch`), grouped by user and in time order
within each (`group_by_user`, `CatalogJoin.facts`); which facts are in each user's current
session is the sessionizer's answer (`stream/sessions.py`), given to `fold`.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from tastemaker.catalog import Catalog
from tastemaker.events import Event
from tastemaker.features.base import TYPES, Aggregation, FactBatch, factorize
from tastemaker.features.layout import PROFILE, SESSION
from tastemaker.store import Cell, Mutation

__all__ = ["CatalogJoin", "EventColumns", "UserGroups", "fold", "group_by_user", "whole_families"]

_TYPE_CODE = {t: i for i, t in enumerate(TYPES)}
# A feature with no stored cell, as `fold` looks it up: no state, older than any event.
_NO_CELL = Cell(-np.inf, None)
_cell_value = operator.attrgetter("value")
_cell_ts = operator.attrgetter("ts")


class EventColumns(NamedTuple):
    """A batch's events as columns, in log order: item ids, their catalog rows (-1 for items
    not in the catalog), times and event-type codes."""

    item_ids: list[str]
    rows: npt.NDArray[np.int64]
    ts: npt.NDArray[np.float64]
    type: npt.NDArray[np.int64]


class UserGroups(NamedTuple):
    """A batch's users in order of first appearance, and its events taken in `order`:
    grouped by user (user `u` owns `order[starts[u]:starts[u + 1]]`), each user's in time
    order (ties in log order)."""

    users: list[str]
    order: npt.NDArray[np.int64]
    starts: npt.NDArray[np.int64]


def group_by_user(events: Sequence[Event], ts: npt.NDArray[np.float64]) -> UserGroups:
    """The batch's users and the order that groups their events (`UserGroups`)."""
    codes: dict[str, int] = {}
    user_of = np.fromiter(
        (codes.setdefault(e.user_id, len(codes)) for e in events), np.int64, len(events)
    )
    order = np.lexsort((ts, user_of))  # stable: ties stay in log order
    starts = np.zeros(len(codes) + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_of, minlength=len(codes)), out=starts[1:])
    return UserGroups(list(codes), order, starts)


class CatalogJoin:
    """Events joined with one catalog's attributes, as the aggregations' fact columns."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        # The vocabularies of the catalog's category and brand codes, as the facts' keys.
        self._category_names = [str(c) for c in catalog.category_names.tolist()]
        self._brand_names = [str(b) for b in catalog.brand_names.tolist()]
        # Item ids by catalog row: the `item_id` key's vocabulary (`_item_codes`).
        self._item_names = [str(i) for i in catalog.ids.tolist()]

    def columns(self, events: Sequence[Event]) -> EventColumns:
        """The events' columns, once, in log order."""
        item_ids = [e.item_id for e in events]
        return EventColumns(
            item_ids=item_ids,
            rows=self.catalog.rows(item_ids),
            ts=np.fromiter((e.ts for e in events), np.float64, len(events)),
            type=np.fromiter((_TYPE_CODE[e.type] for e in events), np.int64, len(events)),
        )

    def facts(self, groups: UserGroups, columns: EventColumns) -> FactBatch:
        """The events taken in `groups.order` joined with the catalog, as columns."""
        cat = self.catalog
        take = groups.order
        rows = columns.rows[take]
        known = rows >= 0
        if len(cat):
            safe = np.where(known, rows, 0)
            category = np.where(known, cat.category[safe], -1).astype(np.int64)
            brand = np.where(known, cat.brand[safe], -1).astype(np.int64)
            price = np.where(known, cat.price[safe].astype(np.float64), np.nan)
        else:  # no item yet (a catalog `tastemaker init` made): no event's item is known
            category = brand = np.full(len(rows), -1, np.int64)
            price = np.full(len(rows), np.nan)
        return FactBatch(
            groups.starts,
            ts=columns.ts[take],
            type_=columns.type[take],
            keys={
                "category": (category, self._category_names),
                "brand": (brand, self._brand_names),
                "item_id": self._item_codes(rows, take, columns.item_ids),
            },
            price=price,
            embedding_rows=(rows, cat.embedding),
        )

    def _item_codes(
        self, rows: npt.NDArray[np.int64], take: npt.NDArray[np.int64], item_ids: list[str]
    ) -> tuple[npt.NDArray[np.int64], list[str]]:
        """The `item_id` key of facts whose catalog rows are `rows` (taken from the events
        at `take`): the row itself, the catalog's ids the vocabulary; items not in the catalog
        are coded after them, which spares factorizing every fact's id in Python; the
        aggregations order values by the facts, never by code."""
        unknown = np.flatnonzero(rows < 0)
        if not unknown.size:
            return rows, self._item_names
        extra, names = factorize([item_ids[i] for i in take[unknown].tolist()])
        codes = rows.copy()
        codes[unknown] = len(self._item_names) + extra
        return codes, self._item_names + names


def fold(
    aggregations: Sequence[Aggregation],
    facts: FactBatch,
    *,
    in_session: npt.NDArray[np.bool_],
    stored: Mapping[str, list[dict[str, Cell]]],
    same_session: list[bool],
    newest: list[float],
    session_state: list[dict[str, Cell]],
) -> dict[str, list[dict[str, Cell]]]:
    """Each declared feature applied to the batch's users at once: per family (`PROFILE`,
    `SESSION`), per user, the cells that change. `stored` holds the users' stored cells of
    each family; session features see only the facts `in_session` (the session each user is
    in now), and start from nothing where that session is not the stored one (`same_session`
    false). A changed cell is stamped with the user's `newest` event time or the stored
    cell's, whichever is later. `session_state` holds each user's changed session cells
    (the sessionizer's bookkeeping); the session features' cells join those dicts."""
    profile_cells, session_cells = stored[PROFILE], stored[SESSION]
    session_facts = facts.take(in_session)
    out: dict[str, list[dict[str, Cell]]] = {
        PROFILE: [{} for _ in newest],
        SESSION: session_state,
    }
    n_users = len(newest)
    newest_array = np.asarray(newest, dtype=np.float64)
    for agg in aggregations:
        name = agg.name
        # Each user's stored cell of the feature (`_NO_CELL` where none is stored or a new
        # session starts it from nothing), gathered with C-level `map`s, cheaper than a
        # listcomp per step; the cells themselves are most of what is left.
        if agg.family == PROFILE:
            olds = list(
                map(dict.get, profile_cells, itertools.repeat(name), itertools.repeat(_NO_CELL))
            )
            batch = facts
        else:
            olds = [
                cells.get(name, _NO_CELL) if same else _NO_CELL
                for cells, same in zip(session_cells, same_session, strict=True)
            ]
            batch = session_facts
        values = list(map(_cell_value, olds))
        news = agg.apply_batch(values, batch)
        # Only the users whose state changed (a new object: an aggregation gives an
        # unchanged state back as the very object) get a new cell.
        changed = np.flatnonzero(np.fromiter(map(operator.is_not, news, values), np.bool_, n_users))
        if changed.size == 0:
            continue
        stamps = np.maximum(
            newest_array[changed],
            np.fromiter(map(_cell_ts, map(olds.__getitem__, changed.tolist())), np.float64),
        ).tolist()
        family = out[agg.family]
        for i, ts in zip(changed.tolist(), stamps, strict=True):
            new = news[i]
            if new is not None:
                family[i][name] = Cell(ts, new)
    return out


def whole_families(
    rows: Sequence[str],
    stored: Mapping[str, list[dict[str, Cell]]],
    changed: Mapping[str, list[dict[str, Cell]]],
) -> list[Mutation]:
    """A changed family is written whole: the stored cells as read (their own times) with
    the changed ones over them. The stored result is what merging only the changed cells
    gives. `whole`: the stream is the rows' only writer, so the stores set them as sent
    without reading them first (LMDB puts them; Redis runs `set_whole.lua` instead of its
    merge script)."""
    return [
        Mutation(row, family, {**stored[family][i], **cells[i]}, whole=True)
        for family, cells in changed.items()
        for i, row in enumerate(rows)
        if cells[i]
    ]
