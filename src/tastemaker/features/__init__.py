"""Declared feature aggregations (pure functions) and the store layout they write to."""

from tastemaker.features.aggregations import (
    Centroid,
    CountByType,
    DecayedIntensity,
    FeatureKind,
    Histogram,
    LastN,
    LastValue,
)
from tastemaker.features.base import Aggregation, Fact
from tastemaker.features.items import Popularity, update_covisitation

__all__ = [
    "Aggregation",
    "Centroid",
    "CountByType",
    "DecayedIntensity",
    "Fact",
    "FeatureKind",
    "Histogram",
    "LastN",
    "LastValue",
    "Popularity",
    "update_covisitation",
]
