"""Retrievers propose candidates as numpy arrays of (catalog row, score)."""

from tastemaker.retrieval.ann import AnnRetriever
from tastemaker.retrieval.base import (
    Candidates,
    CandidateSet,
    RetrievalContext,
    Retriever,
    merge,
)
from tastemaker.retrieval.category import CategoryRetriever
from tastemaker.retrieval.covisitation import CovisitationRetriever
from tastemaker.retrieval.popular import PopularRetriever, popular_candidates

__all__ = [
    "AnnRetriever",
    "CandidateSet",
    "Candidates",
    "CategoryRetriever",
    "CovisitationRetriever",
    "PopularRetriever",
    "RetrievalContext",
    "Retriever",
    "merge",
    "popular_candidates",
]
