"""The offline half: the Parquet lake, point-in-time training sets, versioned batch jobs and
their artifacts, the evaluation against baselines."""

from tastemaker.offline.artifacts import ArtifactError, ArtifactStore, Manifest
from tastemaker.offline.lake import Archiver, Lake, LakeError

__all__ = ["Archiver", "ArtifactError", "ArtifactStore", "Lake", "LakeError", "Manifest"]
