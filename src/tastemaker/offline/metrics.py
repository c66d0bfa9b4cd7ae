"""Ranking metrics shared by the evaluation and the ranker job's validation."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["ndcg_at"]


def ndcg_at(hits: npt.NDArray[np.bool_], n_relevant: int, k: int = 10) -> float:
    """Binary-relevance NDCG@k of a ranked list: `hits[i]` says whether the item at rank
    i is relevant; `n_relevant` relevant items exist in all (0 gives 0)."""
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = disc[: min(n_relevant, k)].sum()
    top = hits[:k]
    return float(top @ disc[: top.size]) / ideal if ideal > 0 else 0.0
