"""The offline half: the Parquet lake, point-in-time training sets, versioned batch jobs and
the feature log. The artifacts they write are in `tastemaker.artifacts`."""

from tastemaker.offline.lake import Archiver, Lake, LakeError

__all__ = ["Archiver", "Lake", "LakeError"]
