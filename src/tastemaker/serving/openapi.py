"""The OpenAPI 3.1 document, generated from the wire Structs by msgspec, then narrowed to
what the server accepts under its config (`limits.py` adds those limits)."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from tastemaker.config import Config
from tastemaker.events import Event, EventBatch
from tastemaker.serving.auth import document_security
from tastemaker.serving.openapi_limits import apply_limits, body_errors
from tastemaker.serving.privacy_api import openapi_paths
from tastemaker.serving.schemas import (
    Accepted,
    ErrorBody,
    Health,
    ItemsAccepted,
    ItemsBatch,
    Liveness,
    RankRequest,
    Readiness,
    RecommendRequest,
    RecommendResponse,
    SimilarResponse,
    UserFeatures,
)

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{name}"


def _json(ref: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": ref}}}


def openapi_document(
    version: str, config: Config | None = None, dim: int = 0, now: float | None = None
) -> dict[str, Any]:
    """The document for a server running `config` (default: the defaults) on a catalog of
    `dim`-number embeddings; `now` (the clock) bounds `ts` as the server will from now on."""
    config = Config() if config is None else config
    types = (
        Event,
        EventBatch,
        Accepted,
        ErrorBody,
        RecommendRequest,
        RecommendResponse,
        RankRequest,
        SimilarResponse,
        ItemsBatch,
        ItemsAccepted,
        UserFeatures,
        Health,
        Liveness,
        Readiness,
    )
    refs, components = msgspec.json.schema_components(types, ref_template=_REF)
    r = dict(zip((t.__name__ for t in types), refs, strict=True))
    # EventBatch carries raw events (validated one by one for per-index errors); document them.
    components["EventBatch"]["properties"]["events"]["items"] = r["Event"]
    # `erase` is the log's erasure tombstone, refused from clients.
    kinds = components["EventType"]["enum"]
    components["EventType"]["enum"] = [k for k in kinds if k != "erase"]
    apply_limits(components, config, dim, time.time() if now is None else now)
    answers = _answers(r["ErrorBody"])
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "tastemaker",
            "version": version,
            "description": "Real-time personalization: events in, recommendations out.",
        },
        "paths": {
            **_events_paths(r, answers),
            **_recommend_paths(r, answers),
            **_similar_paths(r, answers, config),
            **_features_paths(r, config),
            **_ops_paths(r),
        },
        "components": {"schemas": components},
    }
    paths, more = openapi_paths(_REF)
    doc["paths"].update(paths)
    components.update(more)
    document_security(doc, r["ErrorBody"])
    return doc


# The error answers most paths share: 400 (invalid), the body's own refusals (413, ...), 429.
_Answers = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]


def _answers(error_ref: dict[str, Any]) -> _Answers:
    error = {
        "description": "Invalid request; the body names what is wrong.",
        **_json(error_ref),
    }
    refused = body_errors(error_ref)
    limited = {
        "description": "Over the API key's request rate; retry after the "
        "seconds in the Retry-After header.",
        **_json(error_ref),
    }
    return error, refused, limited


def _events_paths(r: dict[str, Any], answers: _Answers) -> dict[str, Any]:
    """Event ingest: its own 429 (backpressure) and 503 (the log)."""
    error, refused, _ = answers
    return {
        "/v1/events": {
            "post": {
                "summary": "Ingest a batch of events (all or nothing)",
                "requestBody": {"required": True, **_json(r["EventBatch"])},
                "responses": {
                    "202": {"description": "Durably appended", **_json(r["Accepted"])},
                    "400": error,
                    **refused,
                    "429": {
                        "description": "The stream is behind; nothing was written. Retry "
                        "after the seconds in the Retry-After header.",
                        **_json(r["ErrorBody"]),
                    },
                    "503": {
                        "description": "The log cannot be written; nothing was written.",
                        **_json(r["ErrorBody"]),
                    },
                },
            }
        },
    }


def _recommend_paths(r: dict[str, Any], answers: _Answers) -> dict[str, Any]:
    """Recommend, rank and the items feed: the endpoints that take a body and a rate."""
    error, refused, limited = answers
    return {
        "/v1/recommend": {
            "post": {
                "summary": "Recommend items for a user",
                "requestBody": {"required": True, **_json(r["RecommendRequest"])},
                "responses": {
                    "200": {"description": "Ranked items", **_json(r["RecommendResponse"])},
                    "400": error,
                    **refused,
                    "429": limited,
                },
            }
        },
        "/v1/rank": {
            "post": {
                "summary": "Rank the client's candidate items for a user",
                "requestBody": {"required": True, **_json(r["RankRequest"])},
                "responses": {
                    "200": {
                        "description": "The candidates, best first",
                        **_json(r["RecommendResponse"]),
                    },
                    "400": {
                        "description": "Invalid request, or item ids not in the catalog "
                        "(`unknown_items`, naming them); the body says which.",
                        **_json(r["ErrorBody"]),
                    },
                    **refused,
                    "429": limited,
                },
            }
        },
        "/v1/items": {
            "post": {
                "summary": "Upsert or delete items (all or none); every process serves "
                "the change within seconds",
                "requestBody": {"required": True, **_json(r["ItemsBatch"])},
                "responses": {
                    "202": {"description": "Appended to the feed", **_json(r["ItemsAccepted"])},
                    "400": error,
                    **refused,
                    "429": limited,
                },
            }
        },
    }


def _similar_paths(r: dict[str, Any], answers: _Answers, config: Config) -> dict[str, Any]:
    """An item's similar items."""
    error, _, limited = answers
    return {
        "/v1/items/{item_id}/similar": {
            "get": {
                "summary": "Items similar to one item",
                "parameters": [
                    {
                        "name": "item_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "n",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": config.serving.max_n,
                            "default": 10,
                        },
                    },
                ],
                "responses": {
                    "200": {"description": "Similar items", **_json(r["SimilarResponse"])},
                    "400": error,
                    "404": {"description": "Unknown item", **_json(r["ErrorBody"])},
                    "429": limited,
                },
            }
        },
    }


def _features_paths(r: dict[str, Any], config: Config) -> dict[str, Any]:
    """A user's stored features: a store read, so a 503 of its own."""
    error = _answers(r["ErrorBody"])[0]
    return {
        "/v1/users/{user_id}/features": {
            "get": {
                "summary": "A user's online features as stored",
                "parameters": [
                    {
                        "name": "user_id",
                        "in": "path",
                        "required": True,
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": config.events.max_id_bytes,
                            "x-maxBytes": config.events.max_id_bytes,
                        },
                    }
                ],
                "responses": {
                    "200": {
                        "description": "Features by family and column",
                        **_json(r["UserFeatures"]),
                    },
                    "503": {
                        "description": "The online store did not answer in time; retry "
                        "after the seconds in the Retry-After header.",
                        **_json(r["ErrorBody"]),
                    },
                    "400": error,
                },
            }
        },
    }


def _ops_paths(r: dict[str, Any]) -> dict[str, Any]:
    """Health, liveness, readiness and metrics."""
    return {
        "/healthz": {
            "get": {
                "summary": "Summary: log end, stream lag, items, artifacts; status 'ok' or "
                "'degraded' with the reasons",
                "responses": {"200": {"description": "Always", **_json(r["Health"])}},
            }
        },
        "/livez": {
            "get": {
                "summary": "Liveness: the process answers (no backend is asked)",
                "responses": {"200": {"description": "Alive", **_json(r["Liveness"])}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: the store and the log answer, the stream progresses",
                "responses": {
                    "200": {"description": "Ready", **_json(r["Readiness"])},
                    "503": {"description": "Not ready; the reasons", **_json(r["Readiness"])},
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Prometheus text format"}},
            }
        },
    }
