"""Where tastemaker keeps what it downloads or builds once per machine (datasets, compiled
ranking models): `$TASTEMAKER_CACHE_DIR`, else `$XDG_CACHE_HOME/tastemaker`, else
`~/.cache/tastemaker`."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    if env := os.environ.get("TASTEMAKER_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tastemaker"
