"""Declared feature aggregations (pure functions) and the store layout they write to."""

from tastemaker.features.aggregations import (
    Centroid,
    CountByType,
    DecayedIntensity,
    DistinctCount,
    FeatureKind,
    Histogram,
    LastN,
    LastValue,
    Ratio,
    WindowedCount,
    windowed_counts,
)
from tastemaker.features.base import Aggregation, Fact
from tastemaker.features.items import Popularity, update_covisitation

__all__ = [
    "Aggregation",
    "Centroid",
    "CountByType",
    "DecayedIntensity",
    "DistinctCount",
    "Fact",
    "FeatureKind",
    "Histogram",
    "LastN",
    "LastValue",
    "Popularity",
    "Ratio",
    "WindowedCount",
    "update_covisitation",
    "windowed_counts",
]
