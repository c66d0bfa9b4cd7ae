"""The stream processor gives the same features whichever store backend it writes to."""

from __future__ import annotations

import itertools
from pathlib import Path

import msgspec

from tastemaker.catalog import Catalog
from tastemaker.data.synthetic import Shop
from tastemaker.deployment.runtime import Runtime
from tastemaker.features.layout import COVIS, GLOBAL_ROW, POPULAR, PROFILE, SESSION, STATS
from tastemaker.store import RowData
from tests.conftest import make_config

_prefixes = itertools.count()


def _features(rt: Runtime, users: list[str], catalog: Catalog) -> dict[str, RowData]:
    rows = [f"u:{u}" for u in users] + [f"i:{i}" for i in catalog.ids] + [GLOBAL_ROW]
    return rt.store.get(rows, [PROFILE, SESSION, STATS, COVIS, POPULAR])


def test_embedded_and_redis_end_with_identical_features(
    tmp_path: Path, shop: Shop, catalog: Catalog, redis_url: str, redis_cluster_url: str
) -> None:
    events = next(iter(shop.events(chunk_users=60)))
    users = sorted({e.user_id for e in events})
    results = []
    for name, url in (("embedded", None), ("redis", redis_url), ("cluster", redis_cluster_url)):
        config = make_config(tmp_path / name, catalog)
        if url is not None:
            store = msgspec.structs.replace(config.store, url=f"{url}?prefix=s{next(_prefixes)}:")
            config = msgspec.structs.replace(config, store=store)
        rt = Runtime.from_config(config)
        for i in range(0, len(events), 700):  # several microbatches
            rt.ingestor.ingest(events[i : i + 700])
            rt.processor.process_once()
        rt.ingestor.ingest(events[:300])  # a replay changes nothing
        rt.processor.drain()
        results.append(_features(rt, users, catalog))
        rt.close()
    assert results[0] == results[1] == results[2]
    assert len(results[0]) > len(users)
