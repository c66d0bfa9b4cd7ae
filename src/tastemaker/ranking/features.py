"""Assemble the candidate feature matrix: one row per candidate, one column per feature,
built with numpy over all candidates at once."""

from __future__ import annotations

import functools
import math
import weakref
from typing import Any

import numpy as np
import numpy.typing as npt

from tastemaker.catalog import Catalog
from tastemaker.features.layout import PROFILE, SESSION
from tastemaker.retrieval import CandidateSet
from tastemaker.store import RowData

__all__ = ["FEATURE_NAMES", "assemble"]

# Retriever name -> its score column.
_RETRIEVER_COLUMNS = {
    "popular": "popularity",
    "trending": "trending",
    "covisitation": "covisitation",
    "session": "session_neighbours",
    "category": "category_retrieval",
    "ann": "ann",
    "item_knn": "item_knn",  # batch item-item model
    "als": "als",  # batch item embeddings (implicit ALS)
    "segment": "segment",  # the user's cohort's popular items
    "popular_long": "popularity_long",  # batch popularity, long half-life
    "new_items": "new_item",  # added through the catalog feed within the window
}
FEATURE_NAMES = [
    *_RETRIEVER_COLUMNS.values(),  # each retriever's score, scaled to (0, 1] per request
    "emb_click_sim",  # dot(candidate embedding, user's click centroid): EmbClickSim
    "category_affinity",  # the user's share of interest in the candidate's category
    "brand_affinity",  # ... in its brand
    "session_category",  # ... in its category during this session
    "price_fit",  # share of the user's engagements in the candidate's price band
    "item_age_days",  # days since the item's first engagement (batch popularity); -1 unknown
    "user_events",  # log1p of the user's event count: lets the model tell new users apart
    "hour_sin",  # the request's hour of day (UTC), on the circle
    "hour_cos",
    "device_mobile",  # 1 when the request comes from a mobile device
]
_COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def _shares(cell_value: Any, index: dict[str, int], size: int) -> npt.NDArray[np.float32]:
    """A decayed-intensity state as a dense array of shares over all codes."""
    out = np.zeros(size, np.float32)
    if cell_value is None:
        return out
    total = 0.0
    for key, v in cell_value["v"].items():
        if v <= 0:
            continue
        total += v  # interest in values the catalog no longer has still counts in the total
        code = index.get(key)
        if code is not None:
            out[code] = v
    return out / total if total > 0 else out


# Weak references: a table must not keep an old catalog version alive.
_CODES: list[tuple[weakref.ref[Catalog], tuple[float, ...], npt.NDArray[np.int32]]] = []


def _item_codes(catalog: Catalog, price_edges: list[float]) -> npt.NDArray[np.int32]:
    """(category, brand, price band) of every item as one (n, 3) table, built once per
    catalog version (a living catalog is a new object after each change) and price bands."""
    edges = tuple(price_edges)
    for cached, cached_edges, table in _CODES:
        if cached() is catalog and cached_edges == edges:
            return table
    table = np.stack(
        [
            catalog.category.astype(np.int32),
            catalog.brand.astype(np.int32),
            np.searchsorted(edges, catalog.price, side="right").astype(np.int32),
        ],
        axis=1,
    )
    # The newest few (a process may assemble for more than one catalog, as the offline
    # replay does); older versions of a living catalog are not served again.
    _CODES[:] = [
        *(c for c in _CODES[-3:] if c[0]() is not None),
        (weakref.ref(catalog), edges, table),
    ]
    return table


@functools.cache
def _score_columns(names: tuple[str, ...]) -> slice | list[int]:
    """The matrix columns of the retrievers' scores, in the candidate set's order: one slice
    when they are contiguous (the pipeline's retrievers come in the order of `FEATURE_NAMES`),
    a block written at once; else the columns one by one."""
    cols = [_COL[_RETRIEVER_COLUMNS[name]] for name in names]
    if cols == list(range(cols[0], cols[0] + len(cols))):
        return slice(cols[0], cols[0] + len(cols))
    return cols


def _value(user: RowData, family: str, column: str) -> Any:
    cell = user.get(family, {}).get(column)
    return None if cell is None else cell.value


def _item_age(
    age: npt.NDArray[np.float32],
    rows: npt.NDArray[np.int64],
    item_first_ts: npt.NDArray[np.float64] | None,
    n_items: int,
    now: float,
) -> None:
    """Days since each candidate was first seen, into `age`; -1 where unknown."""
    age[:] = -1.0
    if item_first_ts is not None and item_first_ts.shape[0] <= n_items:
        if rows.max() < item_first_ts.shape[0]:
            first = item_first_ts.take(rows)
        else:  # items added since the artifact: unknown
            inside = rows < item_first_ts.shape[0]
            first = np.full(rows.size, np.inf)
            first[inside] = item_first_ts[rows[inside]]
        with np.errstate(invalid="ignore"):  # inf - inf where the first time is unknown
            days = np.maximum(0.0, (now - first) / 86400.0)
        age[:] = np.where(np.isfinite(first), days, -1.0)


def assemble(
    cands: CandidateSet,
    user: RowData,
    catalog: Catalog,
    price_edges: list[float],
    *,
    item_first_ts: npt.NDArray[np.float64] | None = None,
    now: float = 0.0,
    device: str | None = None,
) -> npt.NDArray[np.float32]:
    """The (len(cands.rows), len(FEATURE_NAMES)) matrix for one user, as of time `now`
    (which only the item age depends on; it is -1 without `item_first_ts`)."""
    rows = cands.rows
    x = np.zeros((rows.size, len(FEATURE_NAMES)), np.float32, order="F")
    if rows.size == 0:
        return x
    _item_age(x[:, _COL["item_age_days"]], rows, item_first_ts, len(catalog), now)
    if cands.names:  # each retriever's scores over its best, all columns in one go
        top = cands.scores.max(axis=0)
        top[top <= 0] = 1
        cols = _score_columns(tuple(cands.names))
        if isinstance(cols, slice):
            np.divide(cands.scores, top, out=x[:, cols])
        else:
            x[:, cols] = cands.scores / top
    hour = (now % 86400.0) / 3600.0
    x[:, _COL["hour_sin"]] = math.sin(2 * math.pi * hour / 24.0)
    x[:, _COL["hour_cos"]] = math.cos(2 * math.pi * hour / 24.0)
    x[:, _COL["device_mobile"]] = 1.0 if device == "mobile" else 0.0
    counts = _value(user, PROFILE, "counts")
    if counts:
        x[:, _COL["user_events"]] = np.log1p(sum(counts.values()))
    centroid = _value(user, PROFILE, "click_centroid")
    if centroid is not None:
        c = np.asarray(centroid, np.float32)
        norm = float(np.linalg.norm(c))
        if norm > 0 and c.shape[0] == catalog.dim:
            x[:, _COL["emb_click_sim"]] = catalog.embedding.take(rows, axis=0) @ (c / norm)
    n_cat, n_brand = len(catalog.category_names), len(catalog.brand_names)
    # Category, brand and price band of each candidate in one gather: rows are scattered
    # over the catalog, so each separate lookup misses the cache once per candidate.
    codes = _item_codes(catalog, price_edges).take(rows, axis=0)
    cats, brands = codes[:, 0], codes[:, 1]
    affinity = _shares(_value(user, PROFILE, "category_intensity"), catalog.category_index, n_cat)
    x[:, _COL["category_affinity"]] = affinity[cats]
    brand = _shares(_value(user, PROFILE, "brand_intensity"), catalog.brand_index, n_brand)
    x[:, _COL["brand_affinity"]] = brand[brands]
    session = _shares(_value(user, SESSION, "session_category"), catalog.category_index, n_cat)
    x[:, _COL["session_category"]] = session[cats]
    hist = _value(user, PROFILE, "price_hist")
    if hist is not None and len(hist) == len(price_edges) + 1 and sum(hist) > 0:
        dist = np.asarray(hist, np.float32) / float(sum(hist))
        x[:, _COL["price_fit"]] = dist[codes[:, 2]]
    return x
