"""Erasure: remove users from every place tastemaker keeps them (docs/privacy.md).

`Eraser.erase(ids)`, in this order:

1. a tombstone per user is appended to the event log (`EventType.ERASE`): the stream deletes
   the user's rows again when it reaches it, dropping the user's events that were still in
   flight, and the archiver deletes the user from the lake and does not archive them;
2. the log deletes the user's records where it can (`EventLog.erase_users`: the embedded log
   and Redis Streams; Kafka cannot delete single records);
3. the online store: the user's row (every family) and the idempotency keys of the user's
   event ids found in the log and the lake (`OnlineStore.forget`); the consent row is kept;
4. the lake: the day files holding the user's events are rewritten without them; the
   feature log's files too;
5. the batch artifacts (`privacy.artifacts`);
6. this process's recommend cache (`on_erased`). Other processes need no message: a cached
   answer is used only while the user's stored features are unchanged, which the request
   reads first, so the deleted rows invalidate it everywhere; an answer of a user with no
   stored features (built from batch artifacts) lives at most `serving.cache_ttl_s`.

Every step is idempotent: an erasure that failed half way is completed by running it again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tastemaker.artifacts.store import ArtifactStore
from tastemaker.events import Event, EventType, idempotency_key
from tastemaker.features.layout import user_row
from tastemaker.log import EventLog
from tastemaker.metrics import METRICS
from tastemaker.offline.lake import Lake
from tastemaker.privacy.artifacts import scrub_artifacts
from tastemaker.store import OnlineStore

__all__ = ["Eraser", "ErasureReport", "check_user_ids", "tombstone"]

MAX_ID = 256  # the event schema's longest id


def check_user_ids(user_ids: Collection[str]) -> list[str]:
    """The ids, each once, or ValueError naming the first bad one."""
    out = list(dict.fromkeys(user_ids))
    if not out:
        raise ValueError("no user id given")
    for u in out:
        if not 1 <= len(u) <= MAX_ID:
            raise ValueError(f"user id {u[:40]!r} must be 1..{MAX_ID} characters")
    return out


def tombstone(user_id: str, ts: float | None = None) -> Event:
    """The log record that erases `user_id` when the stream applies it."""
    return Event(
        event_id=f"erase:{uuid.uuid4().hex}",
        user_id=user_id,
        item_id="*",
        type=EventType.ERASE,
        ts=time.time() if ts is None else ts,
    )


@dataclass
class ErasureReport:
    """What one erasure removed, by place."""

    users: list[str]
    log_records: int = 0
    store_rows: int = 0
    seen_keys: int = 0
    lake_events: int = 0
    feature_log_rows: int = 0
    artifact_rows: dict[str, int] = field(default_factory=dict)


class Eraser:
    """Erases users through the backends' own methods; `lake` and `artifacts` are optional
    (a deployment without batch jobs has neither)."""

    def __init__(
        self,
        log: EventLog,
        store: OnlineStore,
        *,
        lake: Lake | None = None,
        artifacts: ArtifactStore | None = None,
        on_erased: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.log = log
        self.store = store
        self.lake = lake
        self.artifacts = artifacts
        self.on_erased = on_erased

    def erase(self, user_ids: Collection[str]) -> ErasureReport:
        users = check_user_ids(user_ids)
        report = ErasureReport(users)
        self.log.append([tombstone(u) for u in users])
        # Per user, so that each event id is known with its user (the idempotency key).
        keys = {idempotency_key(u, e) for u in users for e in self.log.erase_users([u])}
        report.log_records = len(keys)
        rows = [user_row(u) for u in users]
        report.store_rows = len(self.store.get(rows, self.store.families))
        self.store.delete_rows(rows)
        if self.lake is not None:
            keys |= {idempotency_key(u, e) for u, e in lake_events(self.lake, users)}
            report.lake_events = self.lake.delete_users(users)
            report.feature_log_rows = scrub_feature_log(self.lake, users)
        self.store.forget(sorted(keys))
        report.seen_keys = len(keys)
        if self.artifacts is not None:
            report.artifact_rows = scrub_artifacts(self.artifacts, users)
        METRICS.users_erased.inc(len(users))
        if self.on_erased is not None:
            self.on_erased(set(users))
        return report


def lake_events(lake: Lake, user_ids: Collection[str]) -> set[tuple[str, str]]:
    """(user id, event id) of the users' events in the lake (two columns read per file)."""
    users = pa.array(sorted(set(user_ids)), pa.string())
    out: set[tuple[str, str]] = set()
    for f in lake.files():
        with lake.fs.open(f.path, "rb") as fh:
            t = pq.read_table(fh, columns=["user_id", "event_id"])
        hit = t.filter(pc.is_in(t.column("user_id"), value_set=users))
        out.update(
            zip(hit.column("user_id").to_pylist(), hit.column("event_id").to_pylist(), strict=True)
        )
    return out


def feature_log_files(lake: Lake) -> list[str]:
    base = f"{lake.root}/features"
    if not lake.fs.exists(base):
        return []
    return sorted(p for p in lake.fs.glob(f"{base}/day=*/part-*.parquet") if "/.tmp-" not in p)


def scrub_feature_log(lake: Lake, user_ids: Collection[str]) -> int:
    """Rewrite each feature log file holding the users' rows without them (same name, written
    to a temporary file and renamed); returns the rows removed."""
    users = pa.array(sorted(set(user_ids)), pa.string())
    removed = 0
    for path in feature_log_files(lake):
        with lake.fs.open(path, "rb") as fh:
            table = pq.read_table(fh)
        keep = pc.invert(pc.is_in(table.column("user_id"), value_set=users))
        kept = table.filter(keep)
        if kept.num_rows == table.num_rows:
            continue
        directory, _, name = path.rpartition("/")
        lake.write_file(kept, directory, name)
        removed += table.num_rows - kept.num_rows
    return removed
