"""Gradient-boosted LambdaMART scores from a LightGBM model file.

The model is trained offline (by the batch jobs) on the columns of `ranking.FEATURE_NAMES`;
loading checks that the file's feature names are those columns, in order, so a model trained
on another feature layout is refused instead of silently scoring the wrong columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["LightGBMScorer", "ModelError"]


class ModelError(ValueError):
    """The model file is missing, unreadable, or trained on other features."""


class LightGBMScorer:
    """Scores the candidate matrix with a LightGBM booster, one thread."""

    def __init__(self, path: str | Path, feature_names: Sequence[str]) -> None:
        import lightgbm  # only this module imports lightgbm

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

    def score(
        self, features: npt.NDArray[np.float32], names: Sequence[str]
    ) -> npt.NDArray[np.float32]:
        if list(names) != self.feature_names:
            raise ModelError(f"scoring columns {list(names)} differ from the model's")
        scores = self.booster.predict(features, num_threads=1)
        return np.asarray(scores, np.float32)
