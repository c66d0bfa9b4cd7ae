"""Versioned artifacts: what batch jobs produce and serving loads.

    <root>/<name>/000003/manifest.json   what it was built from and what it holds
    <root>/<name>/000003/...             the artifact's files
    <root>/<name>/CURRENT                "000003": the version serving uses

A version is written under a temporary directory and renamed into place whole, then CURRENT
is replaced atomically (write + rename), so a reader sees the old version or the new one,
never a mix. Old versions are kept (the newest `keep` of them), so `rollback` is one rename.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

import tastemaker

__all__ = ["ArtifactError", "ArtifactStore", "Manifest", "code_version"]


class ArtifactError(RuntimeError):
    """An artifact or version does not exist, or could not be written."""


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """What one artifact version is: its inputs (log offsets and event times), its outputs
    (row counts, quality metrics) and the code that built it."""

    name: str
    version: int
    created_at: float
    code_version: str
    parent: int | None  # the version this one was built on incrementally (None: from scratch)
    watermark: int  # the newest log offset it includes
    data_from_offset: int  # the offsets read for this version: (data_from_offset, watermark]
    events_read: int
    min_ts: float | None
    max_ts: float | None
    rows: dict[str, int] = {}
    metrics: dict[str, float] = {}
    params: dict[str, Any] = {}


@functools.cache
def code_version() -> str:
    """tastemaker's version, plus the git commit when run from a checkout."""
    version = tastemaker.__version__
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except OSError:
        sha = ""
    return f"{version}+g{sha}" if sha else version


@dataclass(frozen=True)
class Version:
    manifest: Manifest
    path: Path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    def __init__(self, root: str | Path, keep: int = 10) -> None:
        self.root = Path(root)
        self.keep = keep

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "CURRENT").exists())

    def versions(self, name: str) -> list[Version]:
        directory = self.root / name
        if not directory.is_dir():
            return []
        out = []
        for p in sorted(directory.iterdir()):
            if p.name.isdigit() and (p / "manifest.json").exists():
                manifest = msgspec.json.decode((p / "manifest.json").read_bytes(), type=Manifest)
                out.append(Version(manifest, p))
        return out

    def current_version(self, name: str) -> int | None:
        try:
            return int((self.root / name / "CURRENT").read_text().strip())
        except FileNotFoundError:
            return None

    def current(self, name: str) -> Version | None:
        """The version serving should use, or None before the first publish."""
        v = self.current_version(name)
        if v is None:
            return None
        path = self.root / name / f"{v:06d}"
        manifest = msgspec.json.decode((path / "manifest.json").read_bytes(), type=Manifest)
        return Version(manifest, path)

    def publish(
        self,
        name: str,
        write: Callable[[Path], dict[str, Any]],
        *,
        parent: int | None,
        watermark: int,
        data_from_offset: int,
        events_read: int,
        min_ts: float | None,
        max_ts: float | None,
        params: dict[str, Any] | None = None,
    ) -> Version:
        """Build a new version with `write(directory)`, which fills the directory and returns
        `{"rows": {...}, "metrics": {...}}`; then make it current."""
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        existing = [v.manifest.version for v in self.versions(name)]
        version = max(existing, default=0) + 1
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version:06d}-", dir=directory))
        try:
            info = write(tmp)
            manifest = Manifest(
                name=name,
                version=version,
                created_at=time.time(),
                code_version=code_version(),
                parent=parent,
                watermark=watermark,
                data_from_offset=data_from_offset,
                events_read=events_read,
                min_ts=min_ts,
                max_ts=max_ts,
                rows=dict(info.get("rows", {})),
                metrics={k: float(v) for k, v in info.get("metrics", {}).items()},
                params=dict(params or {}),
            )
            (tmp / "manifest.json").write_bytes(msgspec.json.format(msgspec.json.encode(manifest)))
            for f in tmp.iterdir():
                with f.open("rb") as fh:
                    os.fsync(fh.fileno())
            final = directory / f"{version:06d}"
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(directory)
        self._set_current(name, version)
        self._prune(name)
        return Version(manifest, final)

    def rollback(self, name: str, version: int) -> Version:
        """Make an older (or any kept) version current again."""
        path = self.root / name / f"{version:06d}"
        if not (path / "manifest.json").exists():
            kept = [v.manifest.version for v in self.versions(name)]
            raise ArtifactError(f"artifact {name!r} has no version {version} (kept: {kept})")
        self._set_current(name, version)
        current = self.current(name)
        assert current is not None
        return current

    def _set_current(self, name: str, version: int) -> None:
        directory = self.root / name
        tmp = directory / f".CURRENT.{os.getpid()}"
        tmp.write_text(f"{version:06d}\n")
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(directory / "CURRENT")
        _fsync_dir(directory)

    def _prune(self, name: str) -> None:
        versions = self.versions(name)
        current = self.current_version(name)
        for v in versions[: max(0, len(versions) - self.keep)]:
            if v.manifest.version != current:
                shutil.rmtree(v.path, ignore_errors=True)
