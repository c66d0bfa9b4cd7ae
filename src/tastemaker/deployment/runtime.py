"""Everything one tastemaker process runs, opened from the config and closed together."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Sequence

from tastemaker.catalog import (
    Catalog,
    CatalogError,
    ItemChange,
    ItemProblem,
    check_items,
    load_catalog,
    open_feed,
)
from tastemaker.config import Config
from tastemaker.deployment.artifacts import ArtifactWatcher
from tastemaker.deployment.breaker import (
    CircuitBreaker,
    GuardedLog,
    GuardedStore,
    LogUnavailableError,
    StoreUnavailableError,
    breaker,
)
from tastemaker.deployment.ingest import Ingestor
from tastemaker.deployment.offload import Offloader
from tastemaker.deployment.scheduler import Scheduler
from tastemaker.features.layout import default_families
from tastemaker.log import EventLog, LogError, open_log
from tastemaker.metrics import METRICS
from tastemaker.offline.feature_log import FeatureLogger
from tastemaker.offline.lake import Lake
from tastemaker.privacy.consent import ConsentRegistry
from tastemaker.recommend.pipeline import RecommendPipeline
from tastemaker.store import OnlineStore, StoreError, open_store
from tastemaker.stream.processor import StreamProcessor

__all__ = ["ItemsError", "Runtime", "freeze_loaded_heap"]


def freeze_loaded_heap() -> None:
    """Move everything loaded so far (the catalog's id index, the models) out of the garbage
    collector's reach: a full collection no longer walks them, which takes milliseconds off
    the requests (and stream batches) it would have stalled. Server and stream processes call
    it once loaded."""
    gc.collect()
    gc.freeze()


log = logging.getLogger(__name__)


class ItemsError(ValueError):
    """Item changes refused; `problems` names each bad field by index. Nothing was written."""

    def __init__(self, problems: list[ItemProblem]) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in the items")


class Runtime:
    """The log, store, catalog, pipeline and (optionally) the stream worker of one process.

    With `stream.run_in_server` the stream processor runs in a background thread of the API
    process: the laptop mode. Otherwise run `tastemaker stream` as its own process.
    """

    def __init__(self, config: Config, catalog: Catalog) -> None:
        self.config = config
        # The base catalog plus every change of the feed so far; kept current by
        # `watch_catalog` (or `apply_catalog_changes`).
        self.feed = open_feed(config.catalog.feed_url)
        catalog = catalog.apply(self.feed.read(catalog.version))
        self.catalog = catalog
        self._catalog_lock = threading.Lock()
        self._catalog_stop = threading.Event()
        self._catalog_thread: threading.Thread | None = None
        self.log: EventLog = open_log(config.log.url)
        s = config.store
        self.store: OnlineStore = open_store(
            s.url,
            default_families(
                profile_ttl_s=s.profile_ttl_s,
                session_ttl_s=s.session_ttl_s,
                covis_ttl_s=s.covis_ttl_s,
            ),
            seen_ttl_s=config.stream.dedup_window_s,
        )
        # Requests reach the store and the log through circuit breakers, so a hung backend
        # costs a probe, not a timeout per request (the stream uses them directly: it retries
        # on its own), and their calls run on `offload`'s threads, never on the event loop.
        sv = config.serving
        self.breakers: dict[str, CircuitBreaker] = {
            "store": breaker("store", sv, (StoreError, OSError), StoreUnavailableError),
            "log": breaker("log", sv, (LogError, OSError), LogUnavailableError),
        }
        self.guarded_store = GuardedStore(self.store, self.breakers["store"])
        self.guarded_log = GuardedLog(self.log, self.breakers["log"])
        self.offload = Offloader(sv.backend_threads)
        st = config.stream
        self.ingestor = Ingestor(
            self.guarded_log,
            group=st.group,
            max_lag_events=st.max_lag_events,
            retry_after_s=st.retry_after_s,
            limits=config.events,
            max_json_depth=config.serving.max_json_depth,
        )
        self.pipeline = RecommendPipeline(config, self.guarded_store, catalog)
        # A user's new events make their cached answers stale at once in this process.
        self.ingestor.on_accepted = self.pipeline.cache.invalidate
        self.consent = ConsentRegistry(self.store)
        self.ingestor.admit = self.consent.admit  # opted-out users' events are not stored
        self._processor: StreamProcessor | None = None
        self._thread: threading.Thread | None = None
        self.feature_logger: FeatureLogger | None = None
        if config.offline.feature_log_sample > 0:
            self.feature_logger = FeatureLogger(
                Lake(config.offline.lake_url), config.offline.feature_log_sample
            )
            self.pipeline.feature_logger = self.feature_logger
        self.watcher: ArtifactWatcher | None = None
        self.scheduler: Scheduler | None = None

    def apply_catalog_changes(self) -> int:
        """Apply the feed's changes this process has not seen; returns how many."""
        with self._catalog_lock:
            changes = self.feed.read(self.catalog.version)
            if not changes:
                return 0
            catalog = self.catalog.apply(changes)
            self.catalog = catalog
            self.pipeline.set_catalog(catalog)
            if self._processor is not None:
                self._processor.follow_catalog(catalog)
            if self.watcher is not None:
                self.watcher.catalog = catalog
            METRICS.catalog_changes.inc(len(changes))
            METRICS.catalog_items.set(int(catalog.active.sum()))
            return len(changes)

    def upsert_items(self, changes: Sequence[ItemChange]) -> int:
        """Validate and append item changes to the feed (all or none), then apply them here
        at once; other processes apply them at their next poll. Raises `ItemsError`."""
        problems = check_items(changes, self.catalog, self.config.events.max_id_bytes)
        if problems:
            raise ItemsError(problems)
        position = self.feed.append(changes)
        self.apply_catalog_changes()
        return position

    def watch_catalog(self) -> None:
        """Apply catalog changes every `catalog.poll_interval_s` in a background thread."""
        if self._catalog_thread is None:
            self._catalog_thread = threading.Thread(
                target=self._catalog_loop, name="tastemaker-catalog", daemon=True
            )
            self._catalog_thread.start()

    def _catalog_loop(self) -> None:
        while not self._catalog_stop.wait(self.config.catalog.poll_interval_s):
            try:
                self.apply_catalog_changes()
            except Exception:
                log.exception("could not apply catalog changes; retrying")

    def watch_artifacts(self) -> None:
        """Load the current artifacts now and pick up new versions as they are published."""
        if self.watcher is None:
            self.watcher = ArtifactWatcher(self.config, self.pipeline, self.catalog)
            self.watcher.start()

    def artifact_versions(self) -> dict[str, int | None]:
        return {} if self.watcher is None else dict(self.watcher.loaded)

    def start_scheduler(self) -> None:
        """Run the archiver and every batch job every `offline.schedule_interval_s` in a
        background thread (the embedded, one-machine mode)."""
        if self.scheduler is None and self.config.offline.schedule_interval_s > 0:
            self.scheduler = Scheduler(self.config, self.log, lambda: self.catalog)
            self.scheduler.start()

    @classmethod
    def from_config(cls, config: Config) -> Runtime:
        if config.catalog.path is None:
            raise CatalogError("catalog.path is not set in the config; tastemaker needs items")
        return cls(config, load_catalog(config.catalog.path))

    @property
    def processor(self) -> StreamProcessor:
        if self._processor is None:
            self._processor = StreamProcessor(self.config, self.log, self.store, self.catalog)
        return self._processor

    def stream_stopped(self) -> bool:
        """Whether the stream this process runs (`start_stream`) has stopped by itself."""
        return self._thread is not None and not self._thread.is_alive()

    def start_stream(self) -> None:
        """Run the stream processor in a daemon thread until `close()`."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.processor.run, name="tastemaker-stream", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        self.offload.close()
        self.pipeline.close()
        self._catalog_stop.set()
        if self._catalog_thread is not None:
            self._catalog_thread.join(timeout=5)
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.watcher is not None:
            self.watcher.stop()
        if self.feature_logger is not None:
            self.feature_logger.close()
        if self._thread is not None:
            self.processor.stop()
            self._thread.join(timeout=10)
            self._thread = None
        if self._processor is not None:
            self._processor.close()  # leave the consumer group: partitions move at once
        self.store.close()
        self.log.close()
        self.feed.close()
