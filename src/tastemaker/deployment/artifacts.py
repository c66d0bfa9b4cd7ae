"""Serving picks up new artifact versions without a restart.

`ArtifactWatcher` polls each artifact's CURRENT pointer every `offline.reload_interval_s`.
When one moved (a job published, or someone rolled back), it loads the new set in its own
thread and swaps it in with one assignment; requests in flight finish on the old one. A
version that fails to load is logged and counted, and the old one keeps serving. When the
artifacts directory is missing (no batch job has run yet) serving runs without batch models
and the linear scorer, as before.
"""

from __future__ import annotations

import logging
import threading

from tastemaker.artifacts.models import MODEL_ARTIFACTS, load_models
from tastemaker.artifacts.store import ArtifactStore
from tastemaker.catalog import Catalog
from tastemaker.config import Config
from tastemaker.metrics import METRICS
from tastemaker.ranking import FEATURE_NAMES
from tastemaker.ranking.lightgbm import LightGBMScorer
from tastemaker.recommend.pipeline import RecommendPipeline

__all__ = ["ArtifactWatcher"]

log = logging.getLogger(__name__)


class ArtifactWatcher:
    def __init__(self, config: Config, pipeline: RecommendPipeline, catalog: Catalog) -> None:
        self.config = config
        self.pipeline = pipeline
        self.catalog = catalog
        self.artifacts = ArtifactStore(config.offline.artifacts_path)
        self.loaded: dict[str, int | None] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> dict[str, int | None]:
        return {n: self.artifacts.current_version(n) for n in (*MODEL_ARTIFACTS, "ranker")}

    def check(self) -> bool:
        """Load whatever changed since the last check; True if anything was swapped in."""
        versions = self.current()
        if versions == self.loaded:
            return False
        changed = False
        try:
            if any(versions[n] != self.loaded.get(n) for n in MODEL_ARTIFACTS):
                self.pipeline.models.models = load_models(
                    self.artifacts,
                    self.catalog,
                    exact_below=self.config.serving.ann_exact_below,
                    index_k=self.config.serving.als_candidates,
                    index_recall=self.config.serving.ann_recall,
                )
                changed = True
            ranker = versions["ranker"]
            explicit = self.config.ranking.model_path is not None  # a configured file wins
            if ranker != self.loaded.get("ranker") and ranker is not None and not explicit:
                current = self.artifacts.current("ranker")
                if current is not None:
                    self.pipeline.scorer = LightGBMScorer(
                        current.path / "model.txt",
                        FEATURE_NAMES,
                        compile_model=self.config.ranking.compile_model,
                    )
                    changed = True
        except Exception:
            log.exception("could not load artifacts %s; serving the previous ones", versions)
            METRICS.artifact_reload_errors.inc()
            return False
        self.loaded = versions
        for name, v in versions.items():
            METRICS.artifact_version.labels(name).set(-1 if v is None else v)
        if changed:
            METRICS.artifact_reloads.inc()
            log.info("serving artifacts %s", versions)
        return changed

    def start(self) -> None:
        self.check()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="tastemaker-artifacts", daemon=True
            )
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.offline.reload_interval_s):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
