"""The kinds of declared features. Each is a frozen msgspec Struct, so a feature set can be
declared in the TOML config and decoded straight into these classes.

States are plain JSON-able values so every backend stores them and the features endpoint
shows them as they are.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from tastemaker.events import EventType
from tastemaker.features.base import Fact

__all__ = [
    "Centroid",
    "CountByType",
    "DecayedIntensity",
    "DistinctCount",
    "FeatureKind",
    "Histogram",
    "LastN",
    "LastValue",
    "Ratio",
    "WindowedCount",
    "windowed_counts",
]

Field = Literal["category", "brand", "item_id"]

# How much each kind of interaction says about taste. Impressions and searches say nothing
# about the item itself; a dislike pushes away.
DEFAULT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "add_to_cart": 4.0,
    "purchase": 8.0,
    "like": 4.0,
    "rate": 3.0,
    "dislike": -4.0,
    "remove_from_cart": -1.0,
}
ENGAGED: list[EventType] = [
    EventType.VIEW,
    EventType.CLICK,
    EventType.ADD_TO_CART,
    EventType.PURCHASE,
    EventType.LIKE,
    EventType.RATE,
]


_ATTR: dict[str, Any] = {f: operator.attrgetter(f) for f in ("category", "brand", "item_id")}


def _attr(fact: Fact, field: Field) -> str | None:
    value: str | None = _ATTR[field](fact)
    return value


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    name: str
    family: str = "profile"


class CountByType(_Base, frozen=True, tag="count_by_type"):
    """Number of events of each type: `{"view": 12, "click": 3}`."""

    def apply(self, state: Any, facts: Sequence[Fact]) -> Any:
        counts: dict[str, int] = dict(state or {})
        for f in facts:
            counts[f.type] = counts.get(f.type, 0) + 1
        return counts


class DecayedIntensity(_Base, frozen=True, tag="decayed"):
    """Exponentially decayed, weighted interest per value of `field`:
    `{"t": ref_ts, "v": {"shoes": 7.5}}`; each score is as of time `t`."""

    field: Field = "category"
    half_life_s: Annotated[float, msgspec.Meta(gt=0)] = 7 * 86400.0
    weights: dict[str, float] = msgspec.field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    max_keys: int = 50

    def apply(self, state: Any, facts: Sequence[Fact]) -> Any:
        rate = math.log(2) / self.half_life_s
        # Scores are accumulated as of a fixed `anchor` time (one exp per event) and decayed
        # to the newest event's time once at the end. Late events simply weigh less.
        anchor = float(state["t"]) if state else None
        values: dict[str, float] = dict(state["v"]) if state else {}
        newest = anchor
        get_key, weights = _ATTR[self.field], self.weights
        for f in facts:
            key = get_key(f)
            w = weights.get(f.type, 0.0)
            if key is None or w == 0.0:
                continue
            if anchor is None:
                anchor = newest = f.ts
            elif rate * (f.ts - anchor) > 50.0:  # keep exp() far from overflow: re-anchor
                decay = math.exp(-rate * (f.ts - anchor))
                values = {k: v * decay for k, v in values.items()}
                anchor = f.ts
            values[key] = values.get(key, 0.0) + w * math.exp(rate * (f.ts - anchor))
            if newest is None or f.ts > newest:
                newest = f.ts
        if anchor is None or newest is None:
            return state
        ref = max(anchor, newest)
        if ref != anchor:
            decay = math.exp(-rate * (ref - anchor))
            values = {k: v * decay for k, v in values.items()}
        if len(values) > self.max_keys:
            values = dict(sorted(values.items(), key=lambda kv: -kv[1])[: self.max_keys])
        return {"t": ref, "v": values}


class LastN(_Base, frozen=True, tag="last_n"):
    """The last `n` distinct values of `field` (most recent first) among events of `types`."""

    field: Field = "item_id"
    n: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 20
    types: list[EventType] = msgspec.field(default_factory=lambda: list(ENGAGED))

    def apply(self, state: Any, facts: Sequence[Fact]) -> Any:
        # The new values by their latest occurrence (newest first), then the stored ones not
        # seen again, in their order: the same list as moving each value to the front in
        # turn, in one pass with set lookups instead of list scans.
        newest: dict[str, None] = {}
        get_key, types = _ATTR[self.field], self.types
        for f in reversed(facts):
            key = get_key(f)
            if key is not None and key not in newest and f.type in types:
                newest[key] = None
        if not newest:
            return state
        items = list(newest)
        if len(items) < self.n:
            items.extend(x for x in (state or ()) if x not in newest)
        return items[: self.n]


class LastValue(_Base, frozen=True, tag="last_value"):
    """The value of `field` on the latest event of `types` (e.g. last clicked brand)."""

    field: Field = "brand"
    types: list[EventType] = msgspec.field(default_factory=lambda: [EventType.CLICK])

    def apply(self, state: Any, facts: Sequence[Fact]) -> Any:
        for f in reversed(facts):
            key = _attr(f, self.field)
            if key is not None and f.type in self.types:
                return key
        return state


class Histogram(_Base, frozen=True, tag="histogram"):
    """Counts of item prices per band; `edges` are the inner band bounds, so there are
    `len(edges) + 1` bands."""

    edges: list[float] = msgspec.field(default_factory=lambda: [10.0, 25, 50, 100, 250, 500])
    types: list[EventType] = msgspec.field(default_factory=lambda: list(ENGAGED))

    def apply(self, state: Any, facts: Sequence[Fact]) -> Any:
        prices = [f.price for f in facts if f.price is not None and f.type in self.types]
        if not prices:
            return state
        counts = np.bincount(
            np.searchsorted(self.edges, prices, side="right"), minlength=len(self.edges) + 1
        )
        old = state or [0] * (len(self.edges) + 1)
        return [int(a) + int(b) for a, b in zip(old, counts, strict=True)]


class Centroid(_Base, frozen=True, tag="centroid"):
    """Exponential moving average of the embeddings of items in events of `types`:
    the user's short-term taste vector (the `EmbClickSim` feature dots candidates with it)."""

    alpha: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.2
    types: list[EventType] = msgspec.field(
        default_factory=lambda: [
            EventType.CLICK,
            EventType.ADD_TO_CART,
            EventType.PURCHASE,
            EventType.LIKE,
            EventType.RATE,
        ]
    )

    def apply(self, state: Any, facts: Sequence[Fact]) -> Any:
        vec = None if state is None else np.asarray(state, dtype=np.float64)
        for f in facts:
            if f.embedding is None or f.type not in self.types:
                continue
            e = f.embedding.astype(np.float64)
            vec = e if vec is None else (1 - self.alpha) * vec + self.alpha * e
        if vec is None:
            return state
        return np.round(vec, 6).tolist()


class WindowedCount(_Base, frozen=True, tag="windowed_count"):
    """Events of `types` in sliding windows, counted in `bucket_s` buckets:
    `{"t": newest_ts, "buckets": {"<bucket start>": n}, "counts": {"3600": n, ...}}`.
    `counts` holds each window's count as of `t`; `windowed_counts(state, now)` recounts
    from the buckets for any later time. Buckets older than the longest window are dropped,
    so the state stays small; a window is exact to one bucket."""

    windows_s: list[Annotated[float, msgspec.Meta(gt=0)]] = msgspec.field(
        default_factory=lambda: [3600.0, 86400.0, 7 * 86400.0]
    )
    bucket_s: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    types: list[EventType] = msgspec.field(default_factory=lambda: list(ENGAGED))

    def apply(self, state: Any, facts: Sequence[Fact]) -> Any:
        picked = [f.ts for f in facts if f.type in self.types]
        if not picked:
            return state
        buckets: dict[str, int] = dict(state["buckets"]) if state else {}
        for ts in picked:
            key = str(int(ts // self.bucket_s * self.bucket_s))
            buckets[key] = buckets.get(key, 0) + 1
        newest = max([*picked, float(state["t"]) if state else -math.inf])
        horizon = newest - max(self.windows_s) - self.bucket_s
        buckets = {k: v for k, v in buckets.items() if float(k) > horizon}
        out = {"t": newest, "buckets": buckets}
        return {**out, "counts": windowed_counts(out, newest, self.windows_s, self.bucket_s)}


def windowed_counts(
    state: Any, now: float, windows_s: Sequence[float], bucket_s: float
) -> dict[str, int]:
    """Each window's count at `now` from a `WindowedCount` state: the buckets that end after
    `now - window`."""
    if not state:
        return {str(int(w)): 0 for w in windows_s}
    starts = [(float(k), v) for k, v in state["buckets"].items()]
    return {
        str(int(w)): sum(v for s, v in starts if s + bucket_s > now - w and s <= now)
        for w in windows_s
    }


class Ratio(_Base, frozen=True, tag="ratio"):
    """A smoothed rate of two counts, e.g. CTR = clicks / impressions:
    `{"num": n, "den": d, "value": (n + prior_num) / (d + prior_den)}`. The prior keeps a new
    user's rate near `prior_num / prior_den` instead of 0/0 or 1/1."""

    numerator: list[EventType] = msgspec.field(default_factory=lambda: [EventType.CLICK])
    denominator: list[EventType] = msgspec.field(default_factory=lambda: [EventType.IMPRESSION])
    prior_num: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    prior_den: Annotated[float, msgspec.Meta(gt=0)] = 20.0

    def apply(self, state: Any, facts: Sequence[Fact]) -> Any:
        dn = sum(1 for f in facts if f.type in self.numerator)
        dd = sum(1 for f in facts if f.type in self.denominator)
        if dn == 0 and dd == 0:
            return state
        num = (state["num"] if state else 0) + dn
        den = (state["den"] if state else 0) + dd
        value = (num + self.prior_num) / (den + self.prior_den)
        return {"num": num, "den": den, "value": round(value, 6)}


class DistinctCount(_Base, frozen=True, tag="distinct_count"):
    """How many distinct values of `field` the user engaged with (events of `types`):
    `{"n": count, "seen": [values]}`. Exact up to `max_values` tracked values; past that the
    count goes on for values not tracked and is an upper bound."""

    field: Field = "category"
    types: list[EventType] = msgspec.field(default_factory=lambda: list(ENGAGED))
    max_values: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000

    def apply(self, state: Any, facts: Sequence[Fact]) -> Any:
        keys = [
            k for f in facts if f.type in self.types and (k := _attr(f, self.field)) is not None
        ]
        if not keys:
            return state
        seen: list[str] = list(state["seen"]) if state else []
        known = set(seen)
        n = int(state["n"]) if state else 0
        changed = False
        for key in keys:
            if key in known:
                continue
            n += 1
            changed = True
            if len(seen) < self.max_values:
                seen.append(key)
                known.add(key)
        return {"n": n, "seen": seen} if changed else state


FeatureKind = (
    CountByType
    | DecayedIntensity
    | LastN
    | LastValue
    | Histogram
    | Centroid
    | WindowedCount
    | Ratio
    | DistinctCount
)
