"""`BatchHistogram` against prometheus-client's own `Histogram`."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from tastemaker.metrics import BatchHistogram

_BOUNDS = (0.05, 0.1, 0.25, 1, 5, 86400)


def _exposed(registry: CollectorRegistry) -> list[str]:
    """The exposition's sample lines, without `_created` (a time, which differs)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def test_a_batch_is_exposed_as_the_same_values_one_at_a_time_give() -> None:
    rng = np.random.default_rng(3)
    # Values on the bounds too: a value equal to a bound belongs to that bound's bucket.
    # Multiples of 1/64, so that every order of summing gives the same `_sum`.
    spread = np.round(rng.exponential(2.0, 500) * 64) / 64
    values = np.concatenate([spread, np.asarray(_BOUNDS, np.float64), [1e6]])
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("fresh_seconds", "Freshness.", _BOUNDS, registry=ours)
    single = Histogram("fresh_seconds", "Freshness.", registry=theirs, buckets=_BOUNDS)
    batch.observe_many(values[:200])
    batch.observe_many(values[200:])
    batch.observe(0.0625)
    for v in [*values.tolist(), 0.0625]:
        single.observe(v)
    assert _exposed(ours) == _exposed(theirs)
    assert 'fresh_seconds_bucket{le="0.05"}' in "\n".join(_exposed(ours))


def test_an_empty_batch_changes_nothing() -> None:
    registry = CollectorRegistry()
    batch = BatchHistogram("h_seconds", "H.", _BOUNDS, registry=registry)
    before = _exposed(registry)
    batch.observe_many(np.empty(0, np.float64))
    assert _exposed(registry) == before
    assert "h_seconds_count 0.0" in before
