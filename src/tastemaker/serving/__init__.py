"""Serving: the recommend pipeline and the HTTP API."""

from tastemaker.serving.pipeline import Recommendation, RecommendedItem, RecommendPipeline

__all__ = ["RecommendPipeline", "Recommendation", "RecommendedItem"]
