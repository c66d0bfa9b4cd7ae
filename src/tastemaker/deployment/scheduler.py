"""Running the offline work: archive the log, keep the lake tidy, run the batch jobs.

`run_offline` is what `tastemaker jobs run` does once (for cron or an orchestrator);
`Scheduler` does the same every `offline.schedule_interval_s` in a background thread of
`tastemaker serve` (the embedded, one-machine mode). A failing run is logged and counted and
the next interval tries again; the serving path never waits for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tastemaker.artifacts.store import ArtifactStore, Version
from tastemaker.catalog import Catalog
from tastemaker.config import Config
from tastemaker.log import EventLog
from tastemaker.metrics import METRICS
from tastemaker.offline.jobs import JOBS, JobContext, run_jobs
from tastemaker.offline.lake import Archiver, ArchiveResult, Lake
from tastemaker.privacy.retention import trim_log

__all__ = ["OfflineBusyError", "OfflineRun", "Scheduler", "run_offline"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfflineRun:
    archived: ArchiveResult | None
    compacted_files: int
    expired_days: list[str]
    versions: dict[str, Version | None]


class OfflineBusyError(RuntimeError):
    """Another archiver/jobs run holds the lock (cron and the in-process scheduler at once)."""


@contextlib.contextmanager
def _exclusive(artifacts_root: Path) -> Iterator[None]:
    """One offline run at a time per artifacts directory: two would race on the lake's files
    and on version numbers. An advisory lock on a file; released when the process dies."""
    state = artifacts_root / ".state"
    state.mkdir(parents=True, exist_ok=True)
    with (state / "offline.lock").open("a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise OfflineBusyError(
                f"another archiver/jobs run holds {state / 'offline.lock'}; try again later"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def run_offline(
    config: Config,
    log_: EventLog | None,
    catalog: Catalog | None,
    names: Sequence[str] = (),
    *,
    archive: bool = True,
) -> OfflineRun:
    """Archive (if `archive` and a log is given), compact, expire, then run the jobs; raises
    `OfflineBusyError` while another run holds the lock."""
    with _exclusive(Path(config.offline.artifacts_path)):
        return _run_offline(config, log_, catalog, names, archive=archive)


def _run_offline(
    config: Config,
    log_: EventLog | None,
    catalog: Catalog | None,
    names: Sequence[str],
    *,
    archive: bool,
) -> OfflineRun:
    o = config.offline
    lake = Lake(o.lake_url)
    archived = None
    if archive and log_ is not None:
        archived = Archiver(log_, lake).run_once(o.archive_batch_size)
        if trimmed := trim_log(log_, config):
            log.info("log retention deleted %d records", trimmed)
    compacted = lake.compact(o.compact_min_files)
    expired = lake.expire(o.retention_days, time.time())
    ctx = JobContext(config, lake, ArtifactStore(o.artifacts_path, keep=o.keep_versions), catalog)
    names = [n for n in (names or JOBS) if n != "ranker" or catalog is not None]
    versions = run_jobs(ctx, names)
    for name, v in versions.items():
        METRICS.jobs_runs.labels(name, "published" if v else "nothing_new").inc()
    return OfflineRun(archived, compacted, expired, versions)


class Scheduler:
    def __init__(self, config: Config, log_: EventLog, catalog: Callable[[], Catalog]) -> None:
        self.config = config
        self.log = log_
        self.catalog = catalog  # the current catalog (it changes with POST /v1/items)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tastemaker-jobs", daemon=True)
        self.last: OfflineRun | None = None

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.offline.schedule_interval_s):
            try:
                self.last = run_offline(self.config, self.log, self.catalog())
            except OfflineBusyError as exc:
                log.info("offline run skipped: %s", exc)
            except Exception:
                log.exception("offline run failed; trying again next interval")
                METRICS.jobs_runs.labels("all", "failed").inc()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
