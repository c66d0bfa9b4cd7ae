"""Erasure and consent for a running process (the API's routes and the CLI call these)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from typing import TYPE_CHECKING

from tastemaker.artifacts.store import ArtifactStore
from tastemaker.offline.lake import Lake
from tastemaker.privacy.erasure import Eraser, ErasureReport, check_user_ids, scrub_feature_log

if TYPE_CHECKING:
    from tastemaker.deployment.runtime import Runtime

__all__ = ["erase_users", "set_consent"]

log = logging.getLogger(__name__)

# Feature log rows buffered in another process when a user is erased are written within its
# flush interval (`FeatureLogger`, 5 s); the feature log is scrubbed again after that long.
_RESCRUB_AFTER_S = 6.0


def eraser(runtime: Runtime) -> Eraser:
    o = runtime.config.offline
    return Eraser(
        runtime.log,
        runtime.store,
        lake=Lake(o.lake_url),
        artifacts=ArtifactStore(o.artifacts_path, keep=o.keep_versions),
        on_erased=runtime.pipeline.cache.invalidate,
    )


def erase_users(runtime: Runtime, user_ids: Collection[str]) -> ErasureReport:
    """Erase the users everywhere (`Eraser`), then load the scrubbed artifacts here at once
    (other processes' watchers within `offline.reload_interval_s`)."""
    users = check_user_ids(user_ids)
    if runtime.feature_logger is not None:
        runtime.feature_logger.flush()  # this process's buffered rows reach the lake first
    report = eraser(runtime).erase(users)
    if runtime.watcher is not None:
        runtime.watcher.check()
    if runtime.config.offline.feature_log_sample > 0:
        lake = Lake(runtime.config.offline.lake_url)
        timer = threading.Timer(_RESCRUB_AFTER_S, _rescrub, (lake, users))
        timer.daemon = True
        timer.start()
    return report


def _rescrub(lake: Lake, users: list[str]) -> None:
    try:
        scrub_feature_log(lake, users)
    except Exception:  # a timer thread has no caller to tell
        log.exception("could not scrub the feature log again for erased users")


def set_consent(runtime: Runtime, user_id: str, personalization: bool) -> ErasureReport | None:
    """Record the user's choice; withdrawing it also erases what is stored of the user (the
    consent row stays). Returns the erasure's report when there was one."""
    (user,) = check_user_ids([user_id])
    runtime.consent.record(user, personalization)
    if personalization:
        return None
    return erase_users(runtime, [user])
