"""Prometheus metrics named `tastemaker_*`: one registry for the process, or, when several
processes serve one deployment, the sum over all of them.

Several processes: `tastemaker serve` with API worker processes or stream processes sets
`PROMETHEUS_MULTIPROC_DIR` to a fresh directory it owns before it starts any of them (see
`serving/workers.py`), so each child's prometheus-client keeps its values in memory-mapped
files there (its "multiprocess mode") and any process's `/metrics` reads every file. This
was chosen over the supervisor scraping its children: the values of a process that died stay
counted (a counter does not fall back when a stream process is restarted), a scrape needs no
call between processes, and the supervisor, which serves no HTTP, stays a few hundred lines.
Gauges say how the processes' values combine (`multiprocess_mode`); `live*` modes drop a
dead process's value once the supervisor has seen it exit (`metrics_files.py`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import values as prom_values
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from tastemaker.metrics_files import DeploymentCollector

# prometheus-client's own `le` format ("1.0", "+Inf"), which it leaves untyped.
_go_float = cast("Callable[[float], str]", floatToGoString)

__all__ = ["METRICS", "BatchHistogram", "Metrics", "SupervisorMetrics", "multiprocess"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)

# Counted by the supervisor of `tastemaker serve`, which writes them into the multiprocess
# directory itself (`SupervisorMetrics`); every process declares them, so a single process
# exports them too (as 0).
STREAM_RESTARTS = (
    "tastemaker_stream_restarts",
    "Stream processes that died and were started again.",
)
WORKER_RESTARTS = (
    "tastemaker_worker_restarts",
    "API worker processes that died and were started again.",
)


def multiprocess() -> bool:
    """Whether this process keeps its metrics in `PROMETHEUS_MULTIPROC_DIR`'s files: decided
    by prometheus-client when it is first imported, from that variable."""
    return prom_values.ValueClass is not prom_values.MutexValue


class SupervisorMetrics:
    """The counters the supervisor writes into the multiprocess directory
    `PROMETHEUS_MULTIPROC_DIR` (set in its own environment first). The supervisor imported
    prometheus-client before it made that directory, so its own `METRICS` are single-process;
    these values are a file of the directory, as a child's counters are, summed with theirs
    at every scrape. One value class for both: each class maps the process's file once."""

    def __init__(self) -> None:
        value_class: Any = prom_values.MultiProcessValue()  # type: ignore[no-untyped-call]

        def counter(name: str, documentation: str) -> Any:
            return value_class("counter", name, name + "_total", (), (), documentation)

        self.stream_restarts = counter(*STREAM_RESTARTS)
        self.worker_restarts = counter(*WORKER_RESTARTS)


class BatchHistogram(Collector):
    """A Prometheus histogram that takes a whole array of observations in one call.

    Written here because prometheus-client's `Histogram` takes one value a call, walking its
    bounds in Python: the stream observes the freshness of every user row it writes, ~2,000
    a microbatch, a visible share of a drain. Here a batch is counted with numpy
    (`searchsorted` puts a value in the first bucket whose bound is >= it, as `Histogram`
    does) and exported through the public collector API, as `Histogram` exports it:
    `_bucket` (cumulative, `le`), `_sum` and `_count`. The counts are kept in
    prometheus-client's value objects, under the names `Histogram` gives them, so in
    multiprocess mode they are files of the directory that every process's scrape sums."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = np.asarray(sorted(float(b) for b in buckets), dtype=np.float64)
        self._labels = [_go_float(b) for b in [*self._bounds.tolist(), math.inf]]
        value: Any = prom_values.ValueClass
        self._buckets = [
            value("histogram", name, name + "_bucket", ("le",), (le,), documentation)
            for le in self._labels  # the last is +Inf
        ]
        self._sum = value("histogram", name, name + "_sum", (), (), documentation)
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        self.observe_many(np.asarray([value], dtype=np.float64))

    def observe_many(self, values: npt.NDArray[np.float64]) -> None:
        if values.size == 0:
            return
        slots = np.searchsorted(self._bounds, values, side="left")
        counts = np.bincount(slots, minlength=len(self._buckets)).tolist()
        total = float(values.sum())
        with self._lock:
            for bucket, count in zip(self._buckets, counts, strict=True):
                if count:
                    bucket.inc(count)
            self._sum.inc(total)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative = np.cumsum([b.get() for b in self._buckets]).tolist()
            total = self._sum.get()
        family = HistogramMetricFamily(self._name, self._documentation, labels=[])
        family.add_metric([], list(zip(self._labels, cumulative, strict=True)), total)
        yield family


def _declare(
    attr: str, kind: Callable[..., object], *args: Any, **kwargs: Any
) -> tuple[str, Callable[..., object], tuple[Any, ...], dict[str, Any]]:
    return attr, kind, args, kwargs


# Every metric of `Metrics`, in the order `/metrics` lists them: the attribute it is kept
# in, its class, and its arguments but the registry.
_DECLARED = (
    _declare(
        "events_accepted",
        Counter,
        "tastemaker_events_accepted",
        "Events appended to the log via the API.",
    ),
    _declare(
        "events_rejected",
        Counter,
        "tastemaker_events_rejected",
        "Events refused by validation (whole batches).",
    ),
    _declare(
        "backpressure",
        Counter,
        "tastemaker_events_backpressure",
        "POST /v1/events answered 429 because the stream lagged too far.",
    ),
    _declare(
        "events_processed",
        Counter,
        "tastemaker_events_processed",
        "Events applied to features by the stream.",
    ),
    _declare(
        "duplicates_dropped",
        Counter,
        "tastemaker_duplicates_dropped",
        "Events skipped because their id was applied.",
    ),
    _declare(
        "stream_errors",
        Counter,
        "tastemaker_stream_errors",
        "Stream microbatches that failed and were retried.",
    ),
    _declare(
        "batch_seconds",
        Histogram,
        "tastemaker_stream_batch_seconds",
        "Time to apply one microbatch.",
        buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    ),
    _declare(
        "batch_events",
        Histogram,
        "tastemaker_stream_batch_events",
        "Events read per microbatch.",
        buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000),
    ),
    _declare(
        "batch_limit",
        Gauge,
        "tastemaker_stream_batch_limit",
        "The most records the stream's next poll may read (stream.batch_target_s).",
        # The largest of the stream processes' (an API process's is 0, never set).
        multiprocess_mode="livemax",
    ),
    _declare(
        "freshness_seconds",
        BatchHistogram,
        "tastemaker_feature_freshness_seconds",
        "Now minus the newest event time of each user row when it is written.",
        (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 30, 300, 3600, 86400),
    ),
    _declare(
        "covis_waiting",
        Gauge,
        "tastemaker_stream_covis_waiting_batches",
        "Batches of each log partition whose co-visitation pairs wait to be merged into "
        "the neighbour maps (stream.covis_fold_batches).",
        ["partition"],
        # Set by the process that owns the partition, which the newest setter is.
        multiprocess_mode="livemostrecent",
    ),
    _declare(
        "lag_events",
        Gauge,
        "tastemaker_stream_lag_events",
        "Events of each log partition not yet applied (committed) by the stream group.",
        ["partition"],
        # Every stream process measures the whole group's lag of every partition about
        # once a second: the newest measurement is the true one (a max would keep the
        # figure of a process that measured before the others applied their batches).
        multiprocess_mode="livemostrecent",
    ),
    _declare(
        "request_seconds",
        Histogram,
        "tastemaker_request_seconds",
        "API request latency by endpoint.",
        ["endpoint"],
        buckets=_LATENCY_BUCKETS,
    ),
    _declare(
        "responses",
        Counter,
        "tastemaker_responses",
        "API responses by endpoint and status class (2xx, 4xx, 5xx: an exception too).",
        ["endpoint", "code"],
    ),
    _declare(
        "stage_seconds",
        Histogram,
        "tastemaker_recommend_stage_seconds",
        "Time of each recommend stage: features (store read), retrieve, rank (features, "
        "score, filter, diversify, explain); for /v1/recommend and /v1/rank.",
        ["stage"],
        buckets=_LATENCY_BUCKETS,
    ),
    _declare(
        "artifact_version",
        Gauge,
        "tastemaker_artifact_version",
        "Artifact version this process serves (-1: none yet).",
        ["artifact"],
        multiprocess_mode="liveall",  # one a process, labelled by its pid
    ),
    _declare(
        "artifact_reloads",
        Counter,
        "tastemaker_artifact_reloads",
        "New artifact versions swapped in.",
    ),
    _declare(
        "artifact_reload_errors",
        Counter,
        "tastemaker_artifact_reload_errors",
        "Artifact versions that failed to load (the previous ones kept serving).",
    ),
    _declare(
        "jobs_runs",
        Counter,
        "tastemaker_job_runs",
        "Batch job runs by job and outcome.",
        ["job", "outcome"],
    ),
    _declare(
        "stage_fallbacks",
        Counter,
        "tastemaker_stage_fallbacks",
        "Recommend stages replaced by their fallback (failed or out of budget).",
        ["stage"],
    ),
    _declare(
        "stage_overruns",
        Counter,
        "tastemaker_stage_overruns",
        "Recommend stages (or whole requests) that took longer than their budget.",
        ["stage"],
    ),
    _declare(
        "rate_limited",
        Counter,
        "tastemaker_rate_limited",
        "Requests answered 429 by the per-key rate limit.",
    ),
    _declare(
        "catalog_changes",
        Counter,
        "tastemaker_catalog_changes",
        "Item upserts and deletes applied from the feed.",
    ),
    _declare(
        "catalog_items",
        Gauge,
        "tastemaker_catalog_items",
        "Active items in this process's catalog.",
        multiprocess_mode="liveall",  # one a process, labelled by its pid
    ),
    _declare(
        "rate_limit_errors",
        Counter,
        "tastemaker_rate_limit_errors",
        "Requests let through because the shared rate limiter could not be reached.",
    ),
    _declare(
        "recommendations",
        Counter,
        "tastemaker_recommendations",
        "Recommend calls by path taken.",
        ["path"],
    ),
    _declare(
        "breaker_state",
        Gauge,
        "tastemaker_breaker_state",
        "Each backend's circuit breaker: 0 closed, 1 open (failing fast), 2 half-open.",
        ["backend"],
        multiprocess_mode="liveall",  # one a process, labelled by its pid
    ),
    _declare(
        "breaker_opened",
        Counter,
        "tastemaker_breaker_opened",
        "Times each backend's circuit breaker opened.",
        ["backend"],
    ),
    _declare(
        "breaker_rejected",
        Counter,
        "tastemaker_breaker_rejected",
        "Backend calls failed at once because the backend's circuit was open.",
        ["backend"],
    ),
    _declare(
        "events_dropped_no_consent",
        Counter,
        "tastemaker_events_dropped_no_consent",
        "Events dropped at ingest: their user opted out of personalization.",
    ),
    _declare(
        "users_erased",
        Counter,
        "tastemaker_users_erased",
        "Users erased (DELETE /v1/users/{id}, CLI).",
    ),
    _declare("stream_restarts", Counter, *STREAM_RESTARTS),
    _declare("worker_restarts", Counter, *WORKER_RESTARTS),
)


class Metrics:
    """Every metric tastemaker exports. One instance per process (`METRICS`); `registry` is
    what `/metrics` exports: this process's metrics, or in multiprocess mode every process's
    (their files read afresh at each scrape, this process's among them)."""

    events_accepted: Counter
    events_rejected: Counter
    backpressure: Counter
    events_processed: Counter
    duplicates_dropped: Counter
    stream_errors: Counter
    batch_seconds: Histogram
    batch_events: Histogram
    batch_limit: Gauge
    freshness_seconds: BatchHistogram
    covis_waiting: Gauge
    lag_events: Gauge
    request_seconds: Histogram
    responses: Counter
    stage_seconds: Histogram
    artifact_version: Gauge
    artifact_reloads: Counter
    artifact_reload_errors: Counter
    jobs_runs: Counter
    stage_fallbacks: Counter
    stage_overruns: Counter
    rate_limited: Counter
    catalog_changes: Counter
    catalog_items: Gauge
    rate_limit_errors: Counter
    recommendations: Counter
    breaker_state: Gauge
    breaker_opened: Counter
    breaker_rejected: Counter
    events_dropped_no_consent: Counter
    users_erased: Counter
    stream_restarts: Counter
    worker_restarts: Counter

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        if multiprocess():
            self.registry = CollectorRegistry()
            DeploymentCollector(self.registry)
        else:
            self.registry = r
        for attr, kind, args, kwargs in _DECLARED:
            setattr(self, attr, kind(*args, registry=r, **kwargs))


METRICS = Metrics()
