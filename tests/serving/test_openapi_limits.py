"""The published schema says what this server accepts under its config."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from tastemaker.catalog import Catalog, ItemChange, check_items
from tastemaker.config import Config, ServingConfig
from tastemaker.deployment.runtime import Runtime
from tastemaker.events import EventLimits, InvalidBatchError
from tastemaker.serving.openapi import openapi_document
from tests.conftest import event


def test_the_schema_carries_the_configured_limits() -> None:
    config = Config(
        events=EventLimits(max_id_bytes=40, max_future_s=10, max_extra_entries=3),
        serving=ServingConfig(max_n=50),
    )
    doc = openapi_document("1", config, dim=8, now=2_000_000_000.0)
    schemas = doc["components"]["schemas"]
    event = schemas["Event"]["properties"]
    assert event["user_id"]["maxLength"] == event["user_id"]["x-maxBytes"] == 40
    assert event["ts"]["maximum"] == 2_000_000_010.0
    assert event["ts"]["minimum"] == 978_307_200.0
    assert schemas["Context"]["properties"]["extra"]["maxProperties"] == 3
    similar = doc["paths"]["/v1/items/{item_id}/similar"]["get"]["parameters"][1]["schema"]
    assert similar["maximum"] == 50
    n = schemas["RecommendRequest"]["properties"]["n"]
    assert (n["type"], n["minimum"], n["maximum"]) == ("integer", 1, 1000)
    upsert, delete = schemas["ItemChange"]["anyOf"]
    assert set(upsert["required"]) == {"item_id", "category", "brand", "embedding"}
    assert upsert["properties"]["embedding"]["minItems"] == 8
    assert upsert["properties"]["embedding"]["maxItems"] == 8
    assert delete["properties"]["deleted"] == {"const": True}
    for path in ("/v1/events", "/v1/recommend", "/v1/rank", "/v1/items"):
        assert {"400", "413", "415"} <= set(doc["paths"][path]["post"]["responses"])
    assert "unknown_items" in doc["paths"]["/v1/rank"]["post"]["responses"]["400"]["description"]


def test_check_items_refuses_what_the_catalog_could_not_take(catalog: Catalog) -> None:
    dim = catalog.dim

    def change(**kw: object) -> ItemChange:
        fields = {"item_id": "x", "category": "c", "brand": "b", "embedding": [1.0] * dim}
        return msgspec.convert({**fields, **kw}, ItemChange)

    changes = [
        change(),
        change(embedding=[1e300] + [0.0] * (dim - 1)),
        change(embedding=[1e-300] * dim),
        change(embedding=[2e9] * dim),
        change(item_id="ü" * 65),
        change(category=""),
        change(item_id="ü" * 65, deleted=True),
    ]
    found = [(p.index, p.field) for p in check_items(changes, catalog, max_id_bytes=128)]
    assert found == [
        (1, "embedding"),
        (2, "embedding"),
        (3, "embedding"),
        (4, "item_id"),
        (5, "category"),
        (6, "item_id"),
    ]
    assert np.isfinite(catalog.apply([(1, changes[0], 0.0)]).embedding).all()


def test_typed_events_are_held_to_the_limits_too(runtime: Runtime) -> None:
    too_long = event("e1", "用" * 170, "i1")
    with pytest.raises(InvalidBatchError) as info:
        runtime.ingestor.ingest([too_long])
    assert info.value.problems[0].field == "user_id"
    assert sum(runtime.log.end_offsets().values()) == 0
