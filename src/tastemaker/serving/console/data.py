"""What the console's pages show, as JSON-ready values: read from the metrics registry,
the pipeline, the catalog and the artifacts' manifests (blocking: run on the backend threads)."""

from __future__ import annotations

import math
import time
from typing import Any

import msgspec

from tastemaker.artifacts.store import ArtifactStore
from tastemaker.deployment.runtime import Runtime
from tastemaker.features.layout import GLOBAL_ROW, POPULAR, SESSION, merge_shards
from tastemaker.metrics import METRICS
from tastemaker.recommend.pipeline import Request as PipelineRequest

__all__ = ["item_view", "metric_samples", "summary", "user_view"]

Sample = tuple[str, dict[str, str], float]


def metric_samples() -> list[Sample]:
    """Every `tastemaker_*` sample `/metrics` exports now (the same registry, so in
    multiprocess mode the sum over every process)."""
    out: list[Sample] = []
    for family in METRICS.registry.collect():
        if not family.name.startswith("tastemaker_"):
            continue
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            value = float(s.value)
            out.append((s.name, dict(s.labels), value if math.isfinite(value) else -1.0))
    return out


def _artifacts(runtime: Runtime) -> dict[str, Any]:
    """Each artifact's current version and its manifest; the versions this process serves."""
    store = ArtifactStore(runtime.config.offline.artifacts_path)
    current = {}
    for name in store.names():
        version = store.current(name)
        if version is not None:
            current[name] = msgspec.to_builtins(version.manifest)
    return {"current": current, "served": runtime.artifact_versions()}


def summary(runtime: Runtime) -> dict[str, Any]:
    return {
        "time": time.time(),
        "samples": metric_samples(),
        "artifacts": _artifacts(runtime),
        "items": len(runtime.catalog),
    }


def user_view(runtime: Runtime, user_id: str, options: PipelineRequest) -> dict[str, Any]:
    """The user's stored features by family (each cell with its time) and recommendations
    with their sources and, when `options.explain`, the contributions behind each."""
    data = runtime.pipeline.user_features(user_id)
    features = {
        family: {
            column: {"value": cell.value, "ts": cell.ts}
            for column, cell in sorted(cells.items())
            if not column.startswith("_")
        }
        for family, cells in sorted(data.items())
    }
    rec = runtime.pipeline.recommend(user_id, request=options)
    return {
        "user_id": user_id,
        "features": features,
        "session": features.get(SESSION, {}),
        "recommendations": msgspec.to_builtins(rec),
    }


def _popularity(runtime: Runtime, item_id: str) -> dict[str, Any]:
    """The item's log score and rank in each global top list the stream keeps ("all",
    "trending", "c:CATEGORY", "r:REGION"); a list the item is not in is left out."""
    row = runtime.guarded_store.get([GLOBAL_ROW], [POPULAR]).get(GLOBAL_ROW, {})
    out: dict[str, Any] = {}
    for name, cell in sorted(merge_shards(row.get(POPULAR, {})).items()):
        ids, scores = cell.value if isinstance(cell.value, list) else ([], [])
        if item_id in ids:
            at = list(ids).index(item_id)
            out[name] = {"score": float(scores[at]), "rank": at + 1, "of": len(ids)}
    return out


def item_view(runtime: Runtime, item_id: str, n: int) -> dict[str, Any] | None:
    """The item's catalog attributes, its place in the popularity lists, and its similar
    items with the retrievers that found each (None: not in the catalog)."""
    catalog = runtime.catalog
    row = catalog.index.get(item_id)
    if row is None:
        return None
    attributes = {
        "title": str(catalog.titles[row]),
        "category": str(catalog.category_names[catalog.category[row]]),
        "brand": str(catalog.brand_names[catalog.brand[row]]),
        "price": float(str(catalog.price[row])),  # the float32 shortest repr: 27.4
        "in_stock": bool(catalog.in_stock[row]),
        "active": bool(catalog.active[row]),
        "added_ts": float(catalog.added_ts[row]) if math.isfinite(catalog.added_ts[row]) else None,
    }
    similar = runtime.pipeline.similar(item_id, n) if catalog.active[row] else []
    return {
        "item_id": item_id,
        "time": time.time(),
        "attributes": attributes,
        "popularity": _popularity(runtime, item_id),
        "similar": msgspec.to_builtins(similar),
    }
