"""The linear scorer: used until a trained model is present."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["LinearScorer"]


class LinearScorer:
    """score = features @ weights; features without a weight count 0."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        self.weights = dict(weights)
        self._cache: tuple[tuple[str, ...], npt.NDArray[np.float32]] | None = None

    def _vector(self, names: Sequence[str]) -> npt.NDArray[np.float32]:
        key = tuple(names)
        if self._cache is None or self._cache[0] != key:
            w = np.array([self.weights.get(n, 0.0) for n in names], np.float32)
            self._cache = (key, w)
        return self._cache[1]

    def score(
        self, features: npt.NDArray[np.float32], names: Sequence[str]
    ) -> npt.NDArray[np.float32]:
        return features @ self._vector(names)

    def contributions(
        self, features: npt.NDArray[np.float32], names: Sequence[str]
    ) -> npt.NDArray[np.float32]:
        """Each feature's share of each score: value times weight."""
        return features * self._vector(names)
