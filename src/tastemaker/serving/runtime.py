"""Everything one tastemaker process runs, opened from the config and closed together."""

from __future__ import annotations

import threading
from pathlib import Path

from tastemaker.catalog import Catalog, CatalogError, load_catalog
from tastemaker.config import Config
from tastemaker.features.layout import default_families
from tastemaker.log import EventLog, open_log
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
        self._processor: StreamProcessor | None = None
        self._thread: threading.Thread | None = None

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
        if self._thread is not None:
            self.processor.stop()
            self._thread.join(timeout=10)
            self._thread = None
        self.store.close()
        self.log.close()
