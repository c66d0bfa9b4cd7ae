"""Erasing users from the batch artifacts: every Parquet file with a `user_id` column (ALS
interactions and users, segments, the co-visitation tail) loses the users' rows, and ALS
`user_factors.npy` the matching rows.

The current version of an artifact that holds a user is published again, scrubbed, as a new
version (serving's watcher loads it within `offline.reload_interval_s`; it never sees a
version change under it); the other kept versions, which only a rollback would serve, are
scrubbed in place, one file at a time (a temporary file, then a rename).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tastemaker.artifacts.store import ArtifactStore, Version

__all__ = ["scrub_artifacts", "scrub_directory"]

_FACTORS = {"users.parquet": "user_factors.npy"}  # rows aligned with a Parquet file's rows


def _mask(path: Path, users: pa.Array) -> tuple[pa.Table, Any] | None:
    """The table and the keep mask of a Parquet file holding some of `users`, else None."""
    if "user_id" not in pq.read_schema(path).names:
        return None
    table = pq.read_table(path)
    keep = pc.invert(pc.is_in(table.column("user_id"), value_set=users))
    if pc.all(keep).as_py() in (True, None):
        return None
    return table, keep


def scrub_directory(directory: Path, user_ids: Collection[str]) -> int:
    """Remove the users' rows from every file of one artifact version; returns how many."""
    users = pa.array(sorted(set(user_ids)), pa.string())
    removed = 0
    for path in sorted(directory.glob("*.parquet")):
        found = _mask(path, users)
        if found is None:
            continue
        table, keep = found
        factors = directory / _FACTORS.get(path.name, "-")
        if factors.exists():  # first: a reader may pair a new users file with old factors
            rows = np.load(factors)[keep.to_numpy(zero_copy_only=False)]
            tmp_npy = factors.with_name(f".tmp-{factors.name}")
            np.save(tmp_npy, rows)
            os.replace(tmp_npy, factors)
        kept = table.filter(keep)
        tmp = path.with_name(f".tmp-{path.name}")
        pq.write_table(kept, tmp)
        os.replace(tmp, path)
        removed += table.num_rows - kept.num_rows
    return removed


def _holds(directory: Path, users: pa.Array) -> bool:
    return any(_mask(p, users) is not None for p in directory.glob("*.parquet"))


def _republish(store: ArtifactStore, name: str, current: Version, user_ids: set[str]) -> int:
    m = current.manifest
    removed = 0

    def write(d: Path) -> dict[str, Any]:
        nonlocal removed
        for f in current.path.iterdir():
            if f.is_file() and f.name != "manifest.json":
                shutil.copy2(f, d / f.name)
        removed = scrub_directory(d, user_ids)
        return {"rows": dict(m.rows), "metrics": dict(m.metrics)}

    store.publish(
        name,
        write,
        parent=m.version,
        watermark=m.watermark,
        data_from_offset=m.data_from_offset,
        events_read=m.events_read,
        min_ts=m.min_ts,
        max_ts=m.max_ts,
        params={**m.params, "erasure_of": m.version},
    )
    return removed


def scrub_artifacts(store: ArtifactStore, user_ids: Collection[str]) -> dict[str, int]:
    """Erase the users from every kept version of every artifact; returns rows removed per
    artifact (its current version's, republished, plus the older versions')."""
    users_set = set(user_ids)
    users = pa.array(sorted(users_set), pa.string())
    out: dict[str, int] = {}
    for name in store.names():
        removed = 0
        current = store.current(name)
        if current is not None and _holds(current.path, users):
            removed += _republish(store, name, current, users_set)
        now = store.current_version(name)
        for version in store.versions(name):
            if version.manifest.version != now:
                removed += scrub_directory(version.path, users_set)
        if removed:
            out[name] = removed
    return out
