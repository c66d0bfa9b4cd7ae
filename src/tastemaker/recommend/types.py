"""What a recommend call takes and gives: the request's options, the answer, and the sink
that sampled requests' feature rows go to."""

from __future__ import annotations

from typing import Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from tastemaker.ranking.rerank import Contribution, Filters

__all__ = ["FeatureSink", "Recommendation", "RecommendedItem", "Request"]


class FeatureSink(Protocol):
    """Where sampled requests' scored feature rows go (`offline.feature_log.FeatureLogger`)."""

    def wants(self, request_id: str) -> bool: ...

    def log(
        self,
        request_id: str,
        user_id: str,
        ts: float,
        *,
        item_ids: list[str],
        scores: npt.NDArray[np.float32],
        x: npt.NDArray[np.float32],
    ) -> None: ...


class RecommendedItem(msgspec.Struct, frozen=True, omit_defaults=True):
    item_id: str
    score: float
    sources: list[str]
    # With `explain`: the features that added most to the score.
    because: list[Contribution] | None = None


class Recommendation(msgspec.Struct, frozen=True):
    items: list[RecommendedItem]
    degraded: bool = False
    # Send it back as `context.extra.request_id` on impression and click events.
    request_id: str | None = None
    fallbacks: list[str] = []  # the stages that fell back
    cached: bool = False


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """One recommend call's options (the HTTP body maps onto it)."""

    n: int = 10
    filters: Filters | None = None
    explain: bool = False
    deadline_ms: float | None = None  # default: serving.deadline_ms
    exclude: frozenset[str] = frozenset()  # item ids never to return
    now: float | None = None  # the time features are computed at (default: the clock)
    region: str | None = None  # popular items of this region; the fallback's too
    device: str | None = None
