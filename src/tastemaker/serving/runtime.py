"""Everything one tastemaker process runs, opened from the config and closed together."""

from __future__ import annotations

import threading
from pathlib import Path

from tastemaker.catalog import Catalog, CatalogError, load_catalog
from tastemaker.config import Config
from tastemaker.features.layout import default_families
from tastemaker.log import EventLog, open_log
from tastemaker.offline.feature_log import FeatureLogger
from tastemaker.offline.lake import Lake
from tastemaker.offline.scheduler import Scheduler
from tastemaker.serving.artifacts import ArtifactWatcher
from tastemaker.serving.ingest import Ingestor
from tastemaker.serving.pipeline import RecommendPipeline
from tastemaker.store import OnlineStore, open_store
from tastemaker.stream.processor import StreamProcessor

__all__ = ["Runtime"]


class Runtime:
    """The log, store, catalog, pipeline and (optionally) the stream worker of one process.

    With `stream.run_in_server` the stream processor runs in a background thread of the API
    process: the laptop mode. Otherwise run `tastemaker stream` as its own process.
    """

    def __init__(self, config: Config, catalog: Catalog) -> None:
        self.config = config
        self.catalog = catalog
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
        st = config.stream
        self.ingestor = Ingestor(
            self.log,
            group=st.group,
            max_lag_events=st.max_lag_events,
            retry_after_s=st.retry_after_s,
        )
        self.pipeline = RecommendPipeline(config, self.store, catalog)
        # A user's new events make their cached answers stale at once in this process.
        self.ingestor.on_accepted = self.pipeline.cache.invalidate
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
            self.scheduler = Scheduler(self.config, self.log, self.catalog)
            self.scheduler.start()

    @classmethod
    def from_config(cls, config: Config) -> Runtime:
        if config.catalog.path is None:
            raise CatalogError("catalog.path is not set in the config; tastemaker needs items")
        return cls(config, load_catalog(Path(config.catalog.path)))

    @property
    def processor(self) -> StreamProcessor:
        if self._processor is None:
            self._processor = StreamProcessor(self.config, self.log, self.store, self.catalog)
        return self._processor

    def start_stream(self) -> None:
        """Run the stream processor in a daemon thread until `close()`."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.processor.run, name="tastemaker-stream", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
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
        self.store.close()
        self.log.close()
