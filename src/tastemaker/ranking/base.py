"""The Scorer protocol: one score per candidate row of a feature matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["Scorer"]


class Scorer(Protocol):
    """Scores all candidates at once; never loops over them in Python."""

    def score(
        self, features: npt.NDArray[np.float32], names: Sequence[str]
    ) -> npt.NDArray[np.float32]:
        """`features` is (candidates, len(names)); returns one score per candidate."""
        ...

    def contributions(
        self, features: npt.NDArray[np.float32], names: Sequence[str]
    ) -> npt.NDArray[np.float32]:
        """(rows, len(names)): how much each feature added to each row's score."""
        ...
