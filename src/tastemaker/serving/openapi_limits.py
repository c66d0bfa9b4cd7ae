"""The configured input limits, written into the OpenAPI components msgspec generated.

The Structs carry only the widest bounds any setting allows; what this server accepts
depends on its config (`[events]`, `serving.max_n`) and its catalog (the embedding length),
so the published schema is narrowed here to exactly that. Two limits JSON Schema cannot say
exactly are stated as a bound that never refuses more than the server does:
- an id's limit is in bytes of UTF-8 (`x-maxBytes`); `maxLength` counts characters, which
  equals the bytes for ASCII ids;
- `ts` may be at most `events.max_future_s` past the server clock, a bound that moves: the
  published `maximum` is the one at start, which the server keeps accepting from then on.
"""

from __future__ import annotations

from typing import Any

from tastemaker.catalog import EMBEDDING_MAX, EMBEDDING_MIN
from tastemaker.config import Config

__all__ = ["apply_limits", "body_errors"]


def _id(schema: dict[str, Any], max_bytes: int) -> None:
    schema["maxLength"] = max_bytes
    schema["x-maxBytes"] = max_bytes
    schema["description"] = f"An id: at most {max_bytes} bytes of UTF-8 (events.max_id_bytes)."


def _event(event: dict[str, Any], context: dict[str, Any], config: Config, now: float) -> None:
    limits = config.events
    props = event["properties"]
    for name in ("event_id", "user_id", "item_id"):
        _id(props[name], limits.max_id_bytes)
    _id(props["session_id"]["anyOf"][0], limits.max_id_bytes)
    ts = props["ts"]
    ts["maximum"] = float(int(now + limits.max_future_s))
    ts["description"] = (
        "Seconds since the Unix epoch: not before 2001-01-01T00:00:00Z (a date floor), not more "
        f"than events.max_future_s ({limits.max_future_s:g} s) past the server clock."
    )
    context["properties"]["extra"] = {
        "type": "object",
        "maxProperties": limits.max_extra_entries,
        "propertyNames": {"maxLength": limits.max_extra_key_chars},
        "additionalProperties": {"type": "string", "maxLength": limits.max_extra_value_chars},
        "default": {},
        "description": "The client's own keys (events.max_extra_entries, "
        "events.max_extra_key_chars, events.max_extra_value_chars).",
    }


def _items(change: dict[str, Any], config: Config, dim: int) -> dict[str, Any]:
    """`ItemChange` as what `check_items` takes: a delete, or an upsert with a category, a
    brand and an embedding of the catalog's length that is finite and not zero."""
    props = dict(change["properties"])
    _id(props["item_id"], config.events.max_id_bytes)
    delete = {
        "type": "object",
        "title": "ItemDelete",
        "properties": {**props, "deleted": {"const": True}},
        "required": ["item_id", "deleted"],
        "additionalProperties": False,
    }
    far = {"anyOf": [{"minimum": EMBEDDING_MIN}, {"maximum": -EMBEDDING_MIN}]}
    upsert_props = {
        **props,
        "deleted": {"const": False, "default": False},
        "category": {**props["category"], "minLength": 1},
        "brand": {**props["brand"], "minLength": 1},
        "embedding": {
            "type": "array",
            "items": {"type": "number", "minimum": -EMBEDDING_MAX, "maximum": EMBEDDING_MAX},
            "minItems": dim,
            "maxItems": dim,
            "contains": {"type": "number", **far},
            "description": f"{dim} numbers within +-{EMBEDDING_MAX:g}, at least one "
            f"{EMBEDDING_MIN:g} or more from zero.",
        },
    }
    for name in ("category", "brand", "embedding"):
        upsert_props[name].pop("default", None)
    upsert = {
        "type": "object",
        "title": "ItemUpsert",
        "properties": upsert_props,
        "required": ["item_id", "category", "brand", "embedding"],
        "additionalProperties": False,
    }
    return {"description": change.get("description", ""), "anyOf": [upsert, delete]}


def apply_limits(components: dict[str, Any], config: Config, dim: int, now: float) -> None:
    """Narrow the generated `components` (in place) to what `config` accepts."""
    _event(components["Event"], components["Context"], config, now)
    components["ItemChange"] = _items(components["ItemChange"], config, dim)
    for name in ("RecommendRequest", "RankRequest"):
        props = components[name]["properties"]
        _id(props["user_id"], config.events.max_id_bytes)
        n = props["n"]
        for schema in n.get("anyOf", [n]):
            if schema.get("type") == "number":  # a whole number: JSON Schema's integer
                schema["type"] = "integer"
                schema.pop("multipleOf", None)


def body_errors(error_body: dict[str, Any]) -> dict[str, Any]:
    """The refusals of `RequestGuard`, for every operation that takes a body."""
    return {
        "413": {
            "description": "The body is over serving.max_body_bytes; nothing was written.",
            "content": {"application/json": {"schema": error_body}},
        },
        "415": {
            "description": "The body is not Content-Type: application/json.",
            "content": {"application/json": {"schema": error_body}},
        },
    }
