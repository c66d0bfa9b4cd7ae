"""Prometheus metrics, one registry for the process, named `tastemaker_*`."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# prometheus-client's own `le` format ("1.0", "+Inf"), which it leaves untyped.
_go_float = cast("Callable[[float], str]", floatToGoString)

__all__ = ["METRICS", "BatchHistogram", "Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


class BatchHistogram(Collector):
    """A Prometheus histogram that takes a whole array of observations in one call.

    Written here because prometheus-client's `Histogram` takes one value a call, walking its
    bounds in Python: the stream observes the freshness of every user row it writes, ~2,000
    a microbatch, a visible share of a drain. Here a batch is counted with numpy
    (`searchsorted` puts a value in the first bucket whose bound is >= it, as `Histogram`
    does) and exported through the public collector API, as `Histogram` exports it:
    `_bucket` (cumulative, `le`), `_sum` and `_count`."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = np.asarray(sorted(float(b) for b in buckets), dtype=np.float64)
        self._counts = np.zeros(self._bounds.size + 1, dtype=np.int64)  # the last is +Inf
        self._labels = [_go_float(b) for b in [*self._bounds.tolist(), math.inf]]
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        self.observe_many(np.asarray([value], dtype=np.float64))

    def observe_many(self, values: npt.NDArray[np.float64]) -> None:
        if values.size == 0:
            return
        slots = np.searchsorted(self._bounds, values, side="left")
        counts = np.bincount(slots, minlength=self._counts.size)
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        family = HistogramMetricFamily(self._name, self._documentation, labels=[])
        family.add_metric([], list(zip(self._labels, cumulative, strict=True)), total)
        yield family


class Metrics:
    """Every metric tastemaker exports. One instance per process (`METRICS`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.events_accepted = Counter(
            "tastemaker_events_accepted", "Events appended to the log via the API.", registry=r
        )
        self.events_rejected = Counter(
            "tastemaker_events_rejected",
            "Events refused by validation (whole batches).",
            registry=r,
        )
        self.backpressure = Counter(
            "tastemaker_events_backpressure",
            "POST /v1/events answered 429 because the stream lagged too far.",
            registry=r,
        )
        self.events_processed = Counter(
            "tastemaker_events_processed", "Events applied to features by the stream.", registry=r
        )
        self.duplicates_dropped = Counter(
            "tastemaker_duplicates_dropped",
            "Events skipped because their id was applied.",
            registry=r,
        )
        self.stream_errors = Counter(
            "tastemaker_stream_errors",
            "Stream microbatches that failed and were retried.",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "tastemaker_stream_batch_seconds",
            "Time to apply one microbatch.",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.batch_events = Histogram(
            "tastemaker_stream_batch_events",
            "Events read per microbatch.",
            registry=r,
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000),
        )
        self.batch_limit = Gauge(
            "tastemaker_stream_batch_limit",
            "The most records the stream's next poll may read (stream.batch_target_s).",
            registry=r,
        )
        self.freshness_seconds = BatchHistogram(
            "tastemaker_feature_freshness_seconds",
            "Now minus the newest event time of each user row when it is written.",
            (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 30, 300, 3600, 86400),
            registry=r,
        )
        self.covis_waiting = Gauge(
            "tastemaker_stream_covis_waiting_batches",
            "Batches of each log partition whose co-visitation pairs wait to be merged into "
            "the neighbour maps (stream.covis_fold_batches).",
            ["partition"],
            registry=r,
        )
        self.lag_events = Gauge(
            "tastemaker_stream_lag_events",
            "Events of each log partition not yet applied (committed) by the stream group.",
            ["partition"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "tastemaker_request_seconds",
            "API request latency by endpoint.",
            ["endpoint"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.artifact_version = Gauge(
            "tastemaker_artifact_version",
            "Artifact version this process serves (-1: none yet).",
            ["artifact"],
            registry=r,
        )
        self.artifact_reloads = Counter(
            "tastemaker_artifact_reloads", "New artifact versions swapped in.", registry=r
        )
        self.artifact_reload_errors = Counter(
            "tastemaker_artifact_reload_errors",
            "Artifact versions that failed to load (the previous ones kept serving).",
            registry=r,
        )
        self.jobs_runs = Counter(
            "tastemaker_job_runs",
            "Batch job runs by job and outcome.",
            ["job", "outcome"],
            registry=r,
        )
        self.stage_fallbacks = Counter(
            "tastemaker_stage_fallbacks",
            "Recommend stages replaced by their fallback (failed or out of budget).",
            ["stage"],
            registry=r,
        )
        self.stage_overruns = Counter(
            "tastemaker_stage_overruns",
            "Recommend stages (or whole requests) that took longer than their budget.",
            ["stage"],
            registry=r,
        )
        self.rate_limited = Counter(
            "tastemaker_rate_limited",
            "Requests answered 429 by the per-key rate limit.",
            registry=r,
        )
        self.catalog_changes = Counter(
            "tastemaker_catalog_changes",
            "Item upserts and deletes applied from the feed.",
            registry=r,
        )
        self.catalog_items = Gauge(
            "tastemaker_catalog_items", "Active items in this process's catalog.", registry=r
        )
        self.rate_limit_errors = Counter(
            "tastemaker_rate_limit_errors",
            "Requests let through because the shared rate limiter could not be reached.",
            registry=r,
        )
        self.recommendations = Counter(
            "tastemaker_recommendations", "Recommend calls by path taken.", ["path"], registry=r
        )
        self.breaker_state = Gauge(
            "tastemaker_breaker_state",
            "Each backend's circuit breaker: 0 closed, 1 open (failing fast), 2 half-open.",
            ["backend"],
            registry=r,
        )
        self.breaker_opened = Counter(
            "tastemaker_breaker_opened",
            "Times each backend's circuit breaker opened.",
            ["backend"],
            registry=r,
        )
        self.breaker_rejected = Counter(
            "tastemaker_breaker_rejected",
            "Backend calls failed at once because the backend's circuit was open.",
            ["backend"],
            registry=r,
        )
        self.events_dropped_no_consent = Counter(
            "tastemaker_events_dropped_no_consent",
            "Events dropped at ingest: their user opted out of personalization.",
            registry=r,
        )
        self.users_erased = Counter(
            "tastemaker_users_erased", "Users erased (DELETE /v1/users/{id}, CLI).", registry=r
        )


METRICS = Metrics()
