"""Item-level aggregates the stream keeps: time-decayed popularity and co-visitation."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Popularity", "update_covisitation"]

# Popularity scores are kept as log(sum_e w_e * exp(rate * (t_e - EPOCH))). Every item decays
# at the same rate, so the ranking by this number never changes with time alone: a top list
# computed now stays right until the next event, and nothing has to be rewritten as time
# passes. The score at time T is exp(log_score - rate * (T - EPOCH)).
EPOCH = 1_577_836_800.0  # 2020-01-01T00:00:00Z


class Popularity:
    """Decayed popularity of every catalog item, as a numpy array of log-scores."""

    def __init__(self, n_items: int, half_life_s: float) -> None:
        self.rate = math.log(2) / half_life_s
        self.log_score: npt.NDArray[np.float64] = np.full(n_items, -np.inf)

    def add(
        self,
        rows: npt.NDArray[np.int64],
        ts: npt.NDArray[np.float64],
        weights: npt.NDArray[np.float64],
    ) -> None:
        """Add weighted events for items `rows` at times `ts`, vectorized over the batch."""
        keep = (rows >= 0) & (weights > 0)
        contrib = self.rate * (ts[keep] - EPOCH) + np.log(weights[keep])
        # logaddexp.at handles repeated rows in one batch correctly (unbuffered).
        np.logaddexp.at(self.log_score, rows[keep], contrib)

    def top(self, k: int, among: npt.NDArray[np.int64] | None = None) -> npt.NDArray[np.int64]:
        """Rows of the `k` most popular items (optionally among a subset), best first,
        leaving out items never seen."""
        scores = self.log_score if among is None else self.log_score[among]
        seen = np.flatnonzero(np.isfinite(scores))
        if seen.size > k:
            seen = seen[np.argpartition(-scores[seen], k - 1)[:k]]
        order = seen[np.argsort(-scores[seen], kind="stable")]
        return order if among is None else among[order]


def update_covisitation(
    state: Any, increments: Iterable[tuple[str, float]], max_neighbours: int
) -> dict[str, float]:
    """Add each `(other_item, weight)` to an item's links; keep the strongest
    `max_neighbours` (ties broken by item id, so the result does not depend on the order
    the increments came in). Pure: returns a new map."""
    links: dict[str, float] = dict(state or {})
    get = links.get
    for other, weight in increments:
        links[other] = get(other, 0.0) + weight
    n = len(links)
    if n > max_neighbours:
        # Strongest first by a C-level key (one float sort); only the links that tie with
        # the last one kept are then ordered by id, cheaper than sorting every link by id
        # as well (same results); this runs for most touched items of every stream batch.
        order = sorted(links, key=links.__getitem__, reverse=True)
        cut = links[order[max_neighbours - 1]]
        if links[order[max_neighbours]] != cut:
            kept = order[:max_neighbours]
        else:
            lo = max_neighbours - 1
            while lo > 0 and links[order[lo - 1]] == cut:
                lo -= 1
            hi = max_neighbours + 1
            while hi < n and links[order[hi]] == cut:
                hi += 1
            kept = order[:lo] + sorted(order[lo:hi])[: max_neighbours - lo]
        links = {other: links[other] for other in kept}
    return links
