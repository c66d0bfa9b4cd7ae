"""What every batch job shares: its context, the new events it reads from the lake and the
publishing of the version it makes. Jobs import this, never each other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tastemaker.artifacts.store import ArtifactStore, Version
from tastemaker.catalog import Catalog
from tastemaker.config import Config
from tastemaker.offline.lake import Lake

__all__ = ["JobContext", "JobError", "NewEvents", "new_events", "publish"]


class JobError(RuntimeError):
    """A job cannot run (unknown name, missing input); the message says what is missing."""


@dataclass
class JobContext:
    """What every job reads from and writes to."""

    config: Config
    lake: Lake
    artifacts: ArtifactStore
    catalog: Catalog | None = None  # the ranker needs it (it replays the stream)

    @property
    def state_dir(self) -> Path:
        """Mutable working state of jobs (not versioned), beside the artifacts."""
        return self.artifacts.root / ".state"


@dataclass(frozen=True)
class NewEvents:
    """The lake's events after a job's current watermark, and the version they extend."""

    parent: Version | None
    table: pa.Table
    from_offset: int
    watermark: int

    @property
    def min_ts(self) -> float | None:
        return None if self.table.num_rows == 0 else float(pc.min(self.table["ts"]).as_py())

    @property
    def max_ts(self) -> float | None:
        return None if self.table.num_rows == 0 else float(pc.max(self.table["ts"]).as_py())


def new_events(ctx: JobContext, name: str) -> NewEvents | None:
    """The lake's events after the watermark of `name`'s current version; None if none."""
    parent = ctx.artifacts.current(name)
    start = parent.manifest.watermark if parent else 0
    watermark = ctx.lake.watermark()
    if watermark <= start:
        return None
    return NewEvents(parent, ctx.lake.read(start, watermark), start, watermark)


def publish(
    ctx: JobContext,
    name: str,
    new: NewEvents,
    write: Callable[[Path], dict[str, Any]],
    params: dict[str, Any],
) -> Version:
    """Publish a new version of `name` holding `new`'s watermark and provenance."""
    return ctx.artifacts.publish(
        name,
        write,
        parent=None if new.parent is None else new.parent.manifest.version,
        watermark=new.watermark,
        data_from_offset=new.from_offset,
        events_read=new.table.num_rows,
        min_ts=new.min_ts,
        max_ts=new.max_ts,
        params=params,
    )
