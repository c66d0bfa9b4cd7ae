"""Item catalog in RAM as columnar numpy arrays, loaded from Parquet or CSV."""

from tastemaker.catalog.catalog import Catalog, CatalogError
from tastemaker.catalog.files import load_catalog, save_catalog

__all__ = ["Catalog", "CatalogError", "load_catalog", "save_catalog"]
