"""Ranking: the candidate feature matrix and the scorers over it."""

from tastemaker.ranking.base import Scorer
from tastemaker.ranking.features import FEATURE_NAMES, assemble
from tastemaker.ranking.lightgbm import LightGBMScorer, ModelError
from tastemaker.ranking.linear import LinearScorer

__all__ = ["FEATURE_NAMES", "LightGBMScorer", "LinearScorer", "ModelError", "Scorer", "assemble"]
