"""After scoring: business filters, diversity, and explanations — all numpy over candidates.

- `Filters` (from the request): categories, brands, a price range, in stock only. Applied as
  one boolean mask over the candidates before the top-n is taken.
- Diversity: at most `max_per_category` items of one category in the answer, and/or MMR
  (maximal marginal relevance: each next item maximizes
  `lambda * relevance - (1 - lambda) * max cosine to the items already chosen`) over the best
  `mmr_pool` candidates.
- Explanations: for each item shown, the retrievers that proposed it and the features that
  added most to its score (the linear weights times the values, or LightGBM's per-feature
  contributions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import msgspec
import numpy as np
import numpy.typing as npt

from tastemaker.arrays import rank_within
from tastemaker.catalog import Catalog

__all__ = ["Contribution", "Filters", "diversify", "filter_mask", "top_contributions"]


class Filters(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Business rules of one request; every given rule must hold."""

    categories: list[str] | None = None
    brands: list[str] | None = None
    price_min: Annotated[float, msgspec.Meta(ge=0)] | None = None
    price_max: Annotated[float, msgspec.Meta(ge=0)] | None = None
    in_stock: bool = False  # true: only items in stock


class Contribution(msgspec.Struct, frozen=True):
    feature: str
    contribution: float


def filter_mask(
    catalog: Catalog, rows: npt.NDArray[np.int64], filters: Filters | None
) -> npt.NDArray[np.bool_]:
    """True where the candidate passes every rule of `filters`."""
    keep = np.ones(rows.size, bool)
    if filters is None:
        return keep
    if filters.categories is not None:
        codes = [
            catalog.category_index[c] for c in filters.categories if c in catalog.category_index
        ]
        keep &= np.isin(catalog.category[rows], codes)
    if filters.brands is not None:
        codes = [catalog.brand_index[b] for b in filters.brands if b in catalog.brand_index]
        keep &= np.isin(catalog.brand[rows], codes)
    # Compared as float64: a bound past float32's range (3.5e38) must not overflow.
    if filters.price_min is not None:
        keep &= catalog.price[rows] >= np.float64(filters.price_min)
    if filters.price_max is not None:
        keep &= catalog.price[rows] <= np.float64(filters.price_max)
    if filters.in_stock:
        keep &= catalog.in_stock[rows]
    return keep


def _category_cap(
    order: npt.NDArray[np.int64], cats: npt.NDArray[np.int32], cap: int
) -> npt.NDArray[np.int64]:
    """`order` (best first) with every item past the `cap`-th of its category dropped."""
    c = cats[order]
    by_cat = np.argsort(c, kind="stable")  # stable: keeps the score order inside a category
    rank = np.empty(c.size, np.int64)
    rank[by_cat] = rank_within(c[by_cat])
    kept: npt.NDArray[np.int64] = order[rank < cap]
    return kept


def _mmr(
    order: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float32],
    emb: npt.NDArray[np.float32],
    n: int,
    lam: float,
) -> npt.NDArray[np.int64]:
    """Greedy MMR over the candidates in `order`; `emb` rows are unit vectors."""
    rel = scores[order].astype(np.float64)
    span = rel.max() - rel.min()
    rel = (rel - rel.min()) / span if span > 0 else np.ones_like(rel)
    sim = emb @ emb.T
    chosen: list[int] = []
    max_sim = np.full(order.size, -np.inf)
    free = np.ones(order.size, bool)
    for _ in range(min(n, order.size)):
        value = lam * rel - (1 - lam) * np.where(np.isfinite(max_sim), max_sim, 0.0)
        value[~free] = -np.inf
        j = int(np.argmax(value))
        chosen.append(j)
        free[j] = False
        max_sim = np.maximum(max_sim, sim[j])
    return order[np.array(chosen, np.int64)]


def diversify(
    rows: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float32],
    catalog: Catalog,
    n: int,
    *,
    max_per_category: int = 0,
    mmr_lambda: float = 1.0,
    mmr_pool: int = 100,
) -> npt.NDArray[np.int64]:
    """Indices into `rows` of the `n` items to show, best first. Scores of -inf never show.
    `max_per_category` 0 and `mmr_lambda` 1 turn diversity off: the plain top n."""
    finite = np.flatnonzero(np.isfinite(scores))
    if finite.size == 0:
        return finite.astype(np.int64)
    if max_per_category <= 0 and mmr_lambda >= 1.0 and finite.size > n:
        # No diversity: only the best n (and any tied with the n-th, so ties break by row
        # as in a full stable sort) need sorting.
        nth = -np.partition(-scores[finite], n - 1)[n - 1]
        finite = finite[scores[finite] >= nth]
    order = finite[np.argsort(-scores[finite], kind="stable")].astype(np.int64)
    if max_per_category > 0:
        order = _category_cap(order, catalog.category[rows], max_per_category)
    if mmr_lambda < 1.0 and order.size > 1:
        pool = order[: max(n, mmr_pool)]
        return _mmr(pool, scores, catalog.embedding[rows[pool]], n, mmr_lambda)
    return order[:n]


def top_contributions(
    contrib: npt.NDArray[np.float32], names: Sequence[str], k: int = 3
) -> list[list[Contribution]]:
    """For each row of per-feature contributions, the `k` largest positive ones."""
    out = []
    for row in contrib:
        best = np.argsort(-row, kind="stable")[:k]
        out.append([Contribution(names[j], round(float(row[j]), 6)) for j in best if row[j] > 0])
    return out
