"""Load and save catalogs as Parquet or CSV.

Columns: `item_id`, `title`, `category`, `brand`, `price`, `embedding`, and optionally
`in_stock` (boolean; every item is in stock without it). In Parquet the embedding is a
list<float> column; in CSV it is one field of space-separated numbers. A `postgresql://` URL
reads a table instead (`catalog/postgres.py`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tastemaker.catalog.catalog import Catalog, CatalogError
from tastemaker.catalog.postgres import POSTGRES_SCHEMES, load_postgres_catalog

__all__ = ["load_catalog", "save_catalog"]

_REQUIRED = ("item_id", "title", "category", "brand", "price", "embedding")


def _from_table(table: pa.Table, source: str) -> Catalog:
    missing = [c for c in _REQUIRED if c not in table.column_names]
    if missing:
        raise CatalogError(f"{source}: missing column(s) {missing}; required: {list(_REQUIRED)}")
    emb_col = table.column("embedding")
    if pa.types.is_string(emb_col.type) or pa.types.is_large_string(emb_col.type):
        texts = emb_col.to_pylist()
        try:
            vectors = [np.array(t.split(), dtype=np.float32) for t in texts]
        except (AttributeError, ValueError) as exc:
            raise CatalogError(f"{source}: column 'embedding' must hold numbers: {exc}") from exc
        lengths = {len(v) for v in vectors}
        if len(lengths) > 1:
            raise CatalogError(f"{source}: column 'embedding' has vectors of lengths {lengths}")
        emb = np.stack(vectors) if vectors else np.zeros((0, 1), np.float32)
    else:
        flat = pa.chunked_array(emb_col).combine_chunks()
        values = np.asarray(flat.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        n = len(flat)
        if n and values.size % n:
            raise CatalogError(f"{source}: column 'embedding' vectors differ in length")
        # An empty file keeps its dimension in a fixed-size list's type.
        width = emb_col.type.list_size if pa.types.is_fixed_size_list(emb_col.type) else 1
        emb = values.reshape(n, -1 if n else width)
    try:
        price = table.column("price").cast(pa.float32()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid as exc:
        raise CatalogError(f"{source}: column 'price' must be numeric: {exc}") from exc
    in_stock = None
    if "in_stock" in table.column_names:
        col = table.column("in_stock")
        if not pa.types.is_boolean(col.type):
            raise CatalogError(f"{source}: column 'in_stock' must be boolean, got {col.type}")
        if col.null_count:
            raise CatalogError(f"{source}: column 'in_stock' has {col.null_count} empty value(s)")
        in_stock = col.to_numpy(zero_copy_only=False)
    return Catalog(
        in_stock=in_stock,
        ids=[str(x) for x in table.column("item_id").to_pylist()],
        titles=[str(x) for x in table.column("title").to_pylist()],
        categories=[str(x) for x in table.column("category").to_pylist()],
        brands=[str(x) for x in table.column("brand").to_pylist()],
        prices=price,
        embeddings=emb,
    )


def load_catalog(path: str | Path) -> Catalog:
    """Read a catalog from a `.parquet` or `.csv` file, or a `postgresql://` table."""
    if isinstance(path, str) and path.startswith(POSTGRES_SCHEMES):
        return load_postgres_catalog(path)
    p = Path(path)
    if not p.exists():
        raise CatalogError(f"catalog file {p} does not exist")
    if p.suffix == ".parquet":
        return _from_table(pq.read_table(p), str(p))
    if p.suffix == ".csv":
        opts = pacsv.ConvertOptions(
            column_types={
                "item_id": pa.string(),
                "embedding": pa.string(),
                "brand": pa.string(),
                "category": pa.string(),
                "title": pa.string(),
            }
        )
        return _from_table(pacsv.read_csv(p, convert_options=opts), str(p))
    raise CatalogError(f"catalog file {p}: expected .parquet or .csv")


def save_catalog(catalog: Catalog, path: str | Path) -> None:
    """Write a catalog as Parquet (embedding as list<float32>)."""
    emb = catalog.embedding
    table = pa.table(
        {
            "item_id": pa.array(catalog.ids.tolist(), pa.string()),
            "title": pa.array(catalog.titles.tolist(), pa.string()),
            "category": pa.array(catalog.category_names[catalog.category].tolist(), pa.string()),
            "brand": pa.array(catalog.brand_names[catalog.brand].tolist(), pa.string()),
            "price": pa.array(catalog.price, pa.float32()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1]),
            "in_stock": pa.array(catalog.in_stock, pa.bool_()),
        }
    )
    pq.write_table(table, Path(path))
