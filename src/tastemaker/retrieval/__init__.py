"""Retrievers propose candidates as numpy arrays of (catalog row, score)."""

from tastemaker.retrieval.ann import AnnRetriever
from tastemaker.retrieval.base import (
    Candidates,
    CandidateSet,
    RetrievalContext,
    Retriever,
    merge,
    with_rows,
)
from tastemaker.retrieval.batch import (
    BatchModels,
    EmbeddingRetriever,
    ItemKnnRetriever,
    LongPopularRetriever,
    ModelHolder,
    NewItemsRetriever,
    SegmentRetriever,
)
from tastemaker.retrieval.category import CategoryRetriever
from tastemaker.retrieval.covisitation import CovisitationRetriever, NeighbourCache
from tastemaker.retrieval.popular import PopularRetriever, popular_candidates

__all__ = [
    "AnnRetriever",
    "BatchModels",
    "CandidateSet",
    "Candidates",
    "CategoryRetriever",
    "CovisitationRetriever",
    "EmbeddingRetriever",
    "ItemKnnRetriever",
    "LongPopularRetriever",
    "ModelHolder",
    "NeighbourCache",
    "NewItemsRetriever",
    "PopularRetriever",
    "RetrievalContext",
    "Retriever",
    "SegmentRetriever",
    "merge",
    "popular_candidates",
    "with_rows",
]
