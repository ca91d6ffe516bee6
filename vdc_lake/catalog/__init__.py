"""The catalog: the DuckDB connection and writer lock, migrations and views, settings, vector sets."""

from vdc_lake.catalog.connection import DEFAULT_CATALOG, Catalog

__all__ = ["Catalog", "DEFAULT_CATALOG"]
