"""Before a read-only command: bring the catalog's settings up to the effective config when the
writer lock is free (see vdc_lake.catalog.settings for what the settings are and who reads them)."""

from __future__ import annotations

from pathlib import Path

import duckdb

from vdc_lake.catalog.connection import Catalog
from vdc_lake.catalog.settings import changed_note, changes, record_settings, stored_settings
from vdc_lake.config.loader import Config
from vdc_lake.errors import CatalogAccessError, CatalogLockedError, DiskFullError

# How long a read-only command waits for a busy file before it reads the catalog's settings as they are.
SYNC_WAIT_SECONDS = 1.0


def sync_settings(catalog_path: str, config: Config) -> str | None:
    """Before a read-only command: record the effective config when it differs from the
    catalog's settings and the writer lock is free. Returns a one-line note for the user
    (what changed, or that the catalog's settings are used because the catalog is busy),
    or None when the settings already match or there is no catalog yet."""
    if not Path(catalog_path).exists():
        return None
    scale = config.values["scale"]
    try:
        with Catalog(catalog_path, read_only=True, scale=scale) as catalog:
            pending = changes(stored_settings(catalog), config)
            if not catalog.schema_is_current():  # written by another vdc-lake: a writer migrates it
                pending.append("(tables and views of another vdc-lake version)")
    except duckdb.CatalogException:  # a catalog from before the settings table: a writer migrates it
        pending = ["(no settings table yet)"]
    if not pending:
        return None
    try:
        with Catalog(catalog_path, scale=scale, wait_seconds=SYNC_WAIT_SECONDS) as catalog:
            done = record_settings(catalog, config)
    except (CatalogLockedError, CatalogAccessError, DiskFullError, OSError, duckdb.IOException,
            duckdb.PermissionException):
        return (f"note: the config or vdc-lake version differs from the catalog's ({pending[0]}"
                f"{f' and {len(pending) - 1} more' if len(pending) > 1 else ''}); the catalog is busy or "
                "read-only, so this command uses the catalog's settings; the next writing command records the config")
    return changed_note(done)
