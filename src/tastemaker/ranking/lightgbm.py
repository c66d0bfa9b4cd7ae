"""Gradient-boosted LambdaMART scores from a LightGBM model file.

The model is trained offline (by the batch jobs) on the columns of `ranking.FEATURE_NAMES`;
loading checks that the file's feature names are those columns, in order, so a model trained
on another feature layout is refused instead of silently scoring the wrong columns.

Compiled by default: tl2cgen turns the trees into C, built once per model file (cached under
`~/.cache/tastemaker/models/<sha256>.so`, shared by every worker process) and loaded as a
shared library. Measured here on 1,000 candidates and 100 trees of 31 leaves: LightGBM's own
predict 1.75 / 1.94 ms (p50 / p99), the compiled model 0.30 / 0.42 ms, same scores. Without a
C compiler the scorer falls back to LightGBM's predict and says so in the log.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tastemaker.cache import cache_dir
from tastemaker.extras import missing_extra

__all__ = ["LightGBMScorer", "ModelError"]

log = logging.getLogger(__name__)


class ModelError(ValueError):
    """The model file is missing, unreadable, or trained on other features."""


def _compile(model_file: Path) -> Any:
    """A tl2cgen predictor for the model, built at most once per model content."""
    try:
        import tl2cgen
        import treelite
    except ImportError as exc:
        raise missing_extra("treelite and tl2cgen", "offline", "compiling the ranker") from exc

    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()[:32]
    library = cache_dir() / "models" / f"{digest}.so"
    if not library.exists():
        library.parent.mkdir(parents=True, exist_ok=True)
        model = treelite.frontend.load_lightgbm_model(str(model_file))
        # Build beside the target, then rename: workers compiling at once never load half a file.
        fd, tmp = tempfile.mkstemp(dir=library.parent, suffix=".so")
        os.close(fd)
        tl2cgen.export_lib(
            model,
            toolchain="gcc",
            libpath=tmp,
            params={"parallel_comp": 8},
            nthread=2,
            verbose=False,
        )
        os.replace(tmp, library)
    return tl2cgen.Predictor(str(library), nthread=1, verbose=False)


class LightGBMScorer:
    """Scores the candidate matrix with a LightGBM model, compiled to C where possible."""

    def __init__(
        self, path: str | Path, feature_names: Sequence[str], *, compile_model: bool = True
    ) -> None:
        try:
            import lightgbm  # only this module and the ranker job import lightgbm
        except ImportError as exc:
            raise missing_extra("lightgbm", "offline", "the LambdaMART ranker") from exc

        p = Path(path)
        if not p.exists():
            raise ModelError(f"ranking model {p} does not exist")
        try:
            self.booster = lightgbm.Booster(model_file=str(p))
        except lightgbm.basic.LightGBMError as exc:
            raise ModelError(f"ranking model {p} cannot be read: {exc}") from exc
        trained_on = list(self.booster.feature_name())
        if trained_on != list(feature_names):
            raise ModelError(
                f"ranking model {p} was trained on features {trained_on}, "
                f"serving builds {list(feature_names)}"
            )
        self.feature_names = list(feature_names)
        self._compiled: Any = None
        if compile_model:
            try:
                self._compiled = _compile(p)
            except Exception:  # no compiler, read-only cache, ...: the model still serves
                log.warning(
                    "could not compile %s; scoring with LightGBM's predict", p, exc_info=True
                )

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def score(
        self, features: npt.NDArray[np.float32], names: Sequence[str]
    ) -> npt.NDArray[np.float32]:
        if list(names) != self.feature_names:
            raise ModelError(f"scoring columns {list(names)} differ from the model's")
        if self._compiled is not None:
            import tl2cgen

            out = self._compiled.predict(tl2cgen.DMatrix(features))
            return np.asarray(out, np.float32).reshape(-1)
        return np.asarray(self.booster.predict(features, num_threads=1), np.float32)

    def contributions(
        self, features: npt.NDArray[np.float32], names: Sequence[str]
    ) -> npt.NDArray[np.float32]:
        """Per-feature contributions to each score (TreeSHAP, LightGBM's `pred_contrib`);
        meant for the few items shown, not for all candidates."""
        if list(names) != self.feature_names:
            raise ModelError(f"scoring columns {list(names)} differ from the model's")
        out = self.booster.predict(features, pred_contrib=True, num_threads=1)
        return np.asarray(out, np.float32)[:, :-1]  # the last column is the expected value
