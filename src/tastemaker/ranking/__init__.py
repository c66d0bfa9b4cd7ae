"""Ranking: the candidate feature matrix and the scorers over it."""

from tastemaker.ranking.base import Scorer
from tastemaker.ranking.features import FEATURE_NAMES, assemble
from tastemaker.ranking.linear import LinearScorer

__all__ = ["FEATURE_NAMES", "LinearScorer", "Scorer", "assemble"]
