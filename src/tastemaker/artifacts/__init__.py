"""The artifact format: versioned batch outputs with manifests (`store`), and how the models
that serving loads are read from them (`models`). Offline jobs write it; serving and privacy
read it."""

from tastemaker.artifacts.store import ArtifactError, ArtifactStore, Manifest, Version

__all__ = ["ArtifactError", "ArtifactStore", "Manifest", "Version"]
