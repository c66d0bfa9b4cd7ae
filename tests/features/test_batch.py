"""The declared features computed over a whole microbatch (`apply_batch`, numpy over all
users' facts) against their definitions written fact by fact, user by user (the reference
functions below, the code the stream ran before it went columnar), over random batches of many
users with prior states, unknown items, late events and repeated values."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from tastemaker.events import EventType
from tastemaker.features import (
    Centroid,
    CountByType,
    DecayedIntensity,
    DistinctCount,
    Fact,
    FeatureKind,
    Histogram,
    LastN,
    LastValue,
    Ratio,
    WindowedCount,
)
from tastemaker.features.aggregations import ENGAGED, windowed_counts
from tastemaker.features.base import FactBatch

T = 1_760_000_000.0
TYPES = list(EventType)


def _count_by_type(_agg: CountByType, state: Any, facts: Sequence[Fact]) -> Any:
    if not facts:
        return state
    counts = dict(state or {})
    for f in facts:
        counts[str(f.type)] = counts.get(str(f.type), 0) + 1
    return counts


def _decayed(agg: DecayedIntensity, state: Any, facts: Sequence[Fact]) -> Any:
    rate = math.log(2) / agg.half_life_s
    t = float(state["t"]) if state else None
    values = dict(state["v"]) if state else {}
    for f in facts:
        key, w = getattr(f, agg.field), agg.weights.get(str(f.type), 0.0)
        if key is None or w == 0.0:
            continue
        if t is None:
            t = f.ts
        if f.ts > t:  # decay everything to the newer time, then add
            values = {k: v * math.exp(-rate * (f.ts - t)) for k, v in values.items()}
            t = f.ts
        values[key] = values.get(key, 0.0) + w * math.exp(-rate * (t - f.ts))
    if t is None:
        return state
    if len(values) > agg.max_keys:
        values = dict(sorted(values.items(), key=lambda kv: -kv[1])[: agg.max_keys])
    return {"t": t, "v": values}


def _last_n(agg: LastN, state: Any, facts: Sequence[Fact]) -> Any:
    items = list(state or [])
    changed = False
    for f in facts:
        key = getattr(f, agg.field)
        if key is None or f.type not in agg.types:
            continue
        if key in items:
            items.remove(key)
        items.insert(0, key)
        changed = True
    return items[: agg.n] if changed else state


def _last_value(agg: LastValue, state: Any, facts: Sequence[Fact]) -> Any:
    for f in facts:
        key = getattr(f, agg.field)
        if key is not None and f.type in agg.types:
            state = key
    return state


def _histogram(agg: Histogram, state: Any, facts: Sequence[Fact]) -> Any:
    counts = list(state or [0] * (len(agg.edges) + 1))
    changed = False
    for f in facts:
        if f.price is not None and f.type in agg.types:
            counts[sum(1 for e in agg.edges if f.price >= e)] += 1
            changed = True
    return counts if changed else state


def _centroid(agg: Centroid, state: Any, facts: Sequence[Fact]) -> Any:
    vec = None if state is None else np.asarray(state, dtype=np.float64)
    for f in facts:
        if f.embedding is None or f.type not in agg.types:
            continue
        e = f.embedding.astype(np.float64)
        vec = e if vec is None else (1 - agg.alpha) * vec + agg.alpha * e
    return state if vec is None else np.round(vec, 6).tolist()


def _windowed(agg: WindowedCount, state: Any, facts: Sequence[Fact]) -> Any:
    picked = [f.ts for f in facts if f.type in agg.types]
    if not picked:
        return state
    buckets = dict(state["buckets"]) if state else {}
    for ts in picked:
        key = str(int(ts // agg.bucket_s * agg.bucket_s))
        buckets[key] = buckets.get(key, 0) + 1
    newest = max([*picked, float(state["t"]) if state else -math.inf])
    horizon = newest - max(agg.windows_s) - agg.bucket_s
    out = {"t": newest, "buckets": {k: v for k, v in buckets.items() if float(k) > horizon}}
    return {**out, "counts": windowed_counts(out, newest, agg.windows_s, agg.bucket_s)}


def _ratio(agg: Ratio, state: Any, facts: Sequence[Fact]) -> Any:
    dn = sum(1 for f in facts if f.type in agg.numerator)
    dd = sum(1 for f in facts if f.type in agg.denominator)
    if dn == 0 and dd == 0:
        return state
    num = (state["num"] if state else 0) + dn
    den = (state["den"] if state else 0) + dd
    return {
        "num": num,
        "den": den,
        "value": round((num + agg.prior_num) / (den + agg.prior_den), 6),
    }


def _distinct(agg: DistinctCount, state: Any, facts: Sequence[Fact]) -> Any:
    seen = list(state["seen"]) if state else []
    n = int(state["n"]) if state else 0
    changed = False
    for f in facts:
        key = getattr(f, agg.field)
        if key is None or f.type not in agg.types or key in seen:
            continue
        n, changed = n + 1, True
        seen.append(key)
    return {"n": n, "seen": seen} if changed else state


REFERENCES: list[tuple[FeatureKind, Callable[[Any, Any, Sequence[Fact]], Any]]] = [
    (CountByType("counts"), _count_by_type),
    (DecayedIntensity("cat", field="category", half_life_s=3600.0), _decayed),
    (DecayedIntensity("brand", field="brand", max_keys=3), _decayed),
    (LastN("items", n=4), _last_n),
    (LastN("cats", field="category", n=2, types=[EventType.CLICK, EventType.VIEW]), _last_n),
    (LastValue("brand", field="brand", types=[EventType.CLICK, EventType.PURCHASE]), _last_value),
    (Histogram("prices", edges=[10.0, 50.0, 100.0]), _histogram),
    (Centroid("centroid", alpha=0.3), _centroid),
    (WindowedCount("activity", windows_s=[600.0, 7200.0], bucket_s=300.0), _windowed),
    (Ratio("ctr"), _ratio),
    (DistinctCount("distinct", field="brand", types=list(ENGAGED)), _distinct),
]


def _random_facts(rng: random.Random, n: int, start: float) -> list[Fact]:
    facts, ts = [], start
    for _ in range(n):
        ts += rng.choice([0.0, 1.0, 30.0, 400.0, 5000.0])
        known = rng.random() < 0.85
        facts.append(
            Fact(
                ts - (rng.choice([0.0, 900.0]) if rng.random() < 0.1 else 0.0),  # a late one
                rng.choice(TYPES),
                f"i{rng.randrange(12)}",
                "s",
                category=rng.choice(["a", "b", "c", "d"]) if known else None,
                brand=rng.choice(["x", "y", "z", "w", "v"]) if known else None,
                price=rng.choice([5.0, 10.0, 49.9, 50.0, 300.0]) if known else None,
                embedding=(
                    np.array([rng.uniform(-1, 1) for _ in range(4)], np.float32) if known else None
                ),
            )
        )
    return facts


def _same(got: Any, want: Any) -> bool:
    """Equal, floats to 1e-9 relative (the batch sums in another order), the centroid's
    6-decimal rounding to one unit of the last place."""
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(_same(got[k], want[k]) for k in want)
        )
    if isinstance(want, list):
        return (
            isinstance(got, list)
            and len(got) == len(want)
            and all(_same(a, b) for a, b in zip(got, want, strict=True))
        )
    if isinstance(want, float):
        return isinstance(got, float) and abs(got - want) <= max(1e-9 * abs(want), 1.01e-6)
    return bool(got == want)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("agg", "reference"), REFERENCES, ids=lambda x: getattr(x, "name", ""))
def test_a_batch_of_users_gives_each_user_its_reference_state(
    agg: FeatureKind, reference: Callable[[Any, Any, Sequence[Fact]], Any], seed: int
) -> None:
    rng = random.Random(seed)
    users = [_random_facts(rng, rng.choice([0, 1, 2, 5, 12]), T + 10_000 * u) for u in range(25)]
    history = [_random_facts(rng, rng.choice([0, 3]), T - 20_000 + 10_000 * u) for u in range(25)]
    states = [reference(agg, None, h) for h in history]
    got = agg.apply_batch(states, FactBatch.from_users(users))
    for u, (state, facts) in enumerate(zip(states, users, strict=True)):
        want = reference(agg, state, facts)
        assert _same(got[u], want), (u, state, got[u], want)
        if want is state:
            assert got[u] is state  # unchanged states come back as they are
        assert _same(agg.apply(state, facts), want)
    # Pure: the stored states are not mutated.
    assert states == [reference(agg, None, h) for h in history]


def test_the_session_view_of_a_batch_keeps_every_user() -> None:
    rng = random.Random(7)
    users = [_random_facts(rng, n, T) for n in (3, 0, 4, 2)]
    batch = FactBatch.from_users(users)
    mask = np.array([i % 2 == 0 for i in range(len(batch))])
    part = batch.take(mask)
    assert part.n_users == 4
    assert part.starts.tolist() == [0, 2, 2, 4, 5]
    assert part.ts.tolist() == batch.ts[mask].tolist()


def test_distinct_count_past_its_cap_counts_each_new_value_once_a_batch() -> None:
    agg = DistinctCount("d", field="brand", max_values=2)
    facts = [Fact(T + i, EventType.VIEW, "i", "s", brand=b) for i, b in enumerate("abcc")]
    assert agg.apply(None, facts) == {"n": 3, "seen": ["a", "b"]}
