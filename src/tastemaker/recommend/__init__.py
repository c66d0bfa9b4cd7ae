"""The recommend pipeline: features -> retrieve -> rank -> rerank under one deadline, with its
answer cache. The HTTP handler, the console and the offline evaluation all call it."""

from tastemaker.recommend.pipeline import (
    Recommendation,
    RecommendedItem,
    RecommendPipeline,
    Request,
)

__all__ = ["RecommendPipeline", "Recommendation", "RecommendedItem", "Request"]
