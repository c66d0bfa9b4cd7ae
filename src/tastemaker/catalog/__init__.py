"""Item catalog in RAM as columnar numpy arrays, loaded from Parquet or CSV."""

from tastemaker.catalog.catalog import Catalog, CatalogError, ItemChange
from tastemaker.catalog.checks import EMBEDDING_MAX, EMBEDDING_MIN, ItemProblem, check_items
from tastemaker.catalog.feed import CatalogFeed, SqliteCatalogFeed, open_feed
from tastemaker.catalog.files import load_catalog, save_catalog

__all__ = [
    "EMBEDDING_MAX",
    "EMBEDDING_MIN",
    "Catalog",
    "CatalogError",
    "CatalogFeed",
    "ItemChange",
    "ItemProblem",
    "SqliteCatalogFeed",
    "check_items",
    "load_catalog",
    "open_feed",
    "save_catalog",
]
