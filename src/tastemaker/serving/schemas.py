"""Wire shapes of the HTTP API (msgspec Structs; the OpenAPI document is generated from them)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from tastemaker.catalog import ItemChange
from tastemaker.events import EventProblem
from tastemaker.ranking.rerank import Filters
from tastemaker.recommend.pipeline import RecommendedItem

__all__ = [
    "Accepted",
    "ErrorBody",
    "FeatureCell",
    "Health",
    "ItemsAccepted",
    "ItemsBatch",
    "Liveness",
    "RankRequest",
    "Readiness",
    "RecommendRequest",
    "RecommendResponse",
    "SimilarResponse",
    "UserFeatures",
]


class Accepted(msgspec.Struct, frozen=True):
    accepted: int


class ErrorBody(msgspec.Struct, frozen=True):
    """Every 4xx/5xx answer. `problems` names each bad event of a refused batch."""

    error: str
    detail: str
    problems: list[EventProblem] = []


UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=400)]
# Counts JSON may write as 89 or 89.0: JSON Schema's `integer` takes both, so the server
# does too (a whole number, `multipleOf: 1`); the handler makes it an int.
RecommendCount = Annotated[float, msgspec.Meta(ge=1, le=1000, multiple_of=1)]
RankCount = Annotated[float, msgspec.Meta(ge=1, le=5000, multiple_of=1)]


class RequestContext(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the request comes from: popular items of the region, device as a feature."""

    region: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    device: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class RecommendRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    user_id: UserId
    n: RecommendCount = 10
    context: RequestContext | None = None
    filters: Filters | None = None  # business rules: categories, brands, price range, stock
    explain: bool = False  # add each item's top contributing features
    deadline_ms: Annotated[float, msgspec.Meta(gt=0, le=10_000)] | None = None


class RankRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Rerank the client's own candidates for a user."""

    user_id: UserId
    item_ids: Annotated[list[str], msgspec.Meta(min_length=1, max_length=5000)]
    context: RequestContext | None = None
    n: RankCount | None = None  # default: all of them
    filters: Filters | None = None
    explain: bool = False
    deadline_ms: Annotated[float, msgspec.Meta(gt=0, le=10_000)] | None = None


class RecommendResponse(msgspec.Struct, frozen=True):
    items: list[RecommendedItem]
    degraded: bool = False
    # Identifies this answer: send it back as `context.extra.request_id` on the impression
    # and click events it leads to (feature logging joins on it).
    request_id: str | None = None
    fallbacks: list[str] = []  # the stages that fell back (failed or out of budget)
    cached: bool = False


class SimilarResponse(msgspec.Struct, frozen=True):
    item_id: str
    items: list[RecommendedItem]


class ItemsBatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of `POST /v1/items`: upserts and deletes, applied in order, all or none."""

    items: Annotated[list[ItemChange], msgspec.Meta(min_length=1, max_length=10_000)]


class ItemsAccepted(msgspec.Struct, frozen=True):
    accepted: int
    catalog_version: int  # the feed position; every process serves it within seconds


class FeatureCell(msgspec.Struct, frozen=True):
    value: Any
    ts: float


class UserFeatures(msgspec.Struct, frozen=True):
    user_id: str
    features: dict[str, dict[str, FeatureCell]]


class Health(msgspec.Struct, frozen=True):
    status: str  # "ok", or "degraded" with the reasons
    log_end_offset: int
    stream_lag: int
    items: int
    artifacts: dict[str, int] = {}  # artifact name -> version served
    pid: int = 0  # the API process that answered (one of several with `serve --workers N`)
    reasons: list[str] = []  # what is wrong: a backend unreachable, the stream stalled


class Liveness(msgspec.Struct, frozen=True):
    status: str  # always "ok": the process answers
    pid: int


class Readiness(msgspec.Struct, frozen=True):
    status: str  # "ready", or "not_ready" (with 503) and the reasons
    reasons: list[str]
    pid: int
