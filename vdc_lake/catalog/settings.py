"""Decision settings inside the catalog: the one place every reader takes them from.

The `settings` table holds the effective config (defaults.toml < vdc-lake.toml < --config),
one row per option, with the file each value came from. The decision macros
(`rotation_actions()`, `dedup_actions()`, `example_actions()`, `score_actions()`, `curated`)
default their parameters to these rows, so `plan`, `status`, `curated`, `export`, `report`
and a plain `duckdb.connect(catalog, read_only=True)` give the same answer.

Who writes them: every command that opens the catalog for writing records the effective
config first (`record_settings`). A command that only reads (status, plan, report, sql) does
the same when the config differs and the writer lock is free (`vdc_lake.catalog.sync.sync_settings`); when another
command holds the lock it reads the catalog's settings and says that they differ. CLI options
(`plan dedup --threshold 0.1`) apply to that one invocation only and are recorded in that
run's `runs.params`; they never change the settings.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import TYPE_CHECKING, Any

from vdc_lake.config.loader import Config

if TYPE_CHECKING:  # the connection module records settings through this one
    from vdc_lake.catalog.connection import Catalog

# Sections whose values change what a decision view selects; recorded in every run's params.
DECISION_SECTIONS = ("rotation_correction", "dedup", "apply_deduplication", "filter_by_examples", "filter_by_score",
                     "quality")


def setting_text(value: Any) -> str:
    """The stored text form of a config value: SQL casts it back (0.25::DOUBLE, 'inf'::DOUBLE)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value)


def _config_rows(config: Config) -> dict[tuple[str, str], tuple[str, str]]:
    return {(section, key): (setting_text(value), source) for section, key, value, source in config.describe()}


def stored_settings(catalog: Catalog) -> dict[tuple[str, str], tuple[str, str]]:
    """{(section, key): (value text, source)} as the catalog holds them."""
    return {(s, k): (v, src) for s, k, v, src in catalog.rows("SELECT section, key, value, source FROM settings")}


def _write(catalog: Catalog, rows: dict[tuple[str, str], tuple[str, str]], *, replace: bool) -> None:
    now = dt.datetime.now()
    with catalog.transaction():
        if replace:
            catalog.execute("DELETE FROM settings")
        for (section, key), (value, source) in sorted(rows.items()):
            catalog.execute("INSERT INTO settings VALUES (?, ?, ?, ?, ?)", [section, key, value, source, now])


def seed_settings(catalog: Catalog) -> None:
    """Store the bundled default of every option the catalog has no setting for yet (a new
    catalog, or a vdc-lake version with new options); existing settings are kept."""
    stored = stored_settings(catalog)
    missing = {k: v for k, v in _config_rows(Config.bundled()).items() if k not in stored}
    if missing:
        _write(catalog, missing, replace=False)


def changes(stored: dict[tuple[str, str], tuple[str, str]], config: Config) -> list[str]:
    """'section.key: stored -> effective (source)' for every value the config changes."""
    out = []
    for (section, key), (value, source) in sorted(_config_rows(config).items()):
        old = stored.get((section, key))
        if old is None or old[0] != value:
            out.append(f"{section}.{key}: {old[0] if old else '(unset)'} -> {value} ({source})")
    return out


def record_settings(catalog: Catalog, config: Config) -> list[str]:
    """Make the catalog's settings the effective config; returns what changed (see `changes`)."""
    stored = stored_settings(catalog)
    rows = _config_rows(config)
    if stored == rows:
        return []
    _write(catalog, rows, replace=True)
    return changes(stored, config)


def decision_settings(catalog: Catalog) -> dict[str, Any]:
    """{'section.key': value} of the decision sections, plus {'dedup_thresholds.SET': {apply,
    apply_source, report, report_source}} per embedding set: what a run's params record."""
    placeholders = ", ".join("?" for _ in DECISION_SECTIONS)
    rows = catalog.rows(f"SELECT section, key, value FROM settings WHERE section IN ({placeholders}) "
                        "ORDER BY section, key", list(DECISION_SECTIONS))
    out: dict[str, Any] = {f"{section}.{key}": value for section, key, value in rows}
    # the dedup thresholds in force per embedding set (a set's own unless the config sets one)
    for name, apply_at, apply_source, report_at, report_source in catalog.rows(
            "SELECT set_name, apply_threshold, apply_source, report_threshold, report_source FROM dedup_thresholds "
            "WHERE set_name IS NOT NULL ORDER BY set_name"):
        out[f"dedup_thresholds.{name}"] = {"apply": apply_at, "apply_source": apply_source,
                                           "report": report_at, "report_source": report_source}
    return out


def changed_note(done: list[str]) -> str | None:
    """The one line a command prints when it changed the catalog's settings (None: nothing changed)."""
    if not done:
        return None
    return "settings recorded in the catalog: " + "; ".join(done)


def dedup_thresholds(catalog: Catalog, set_name: str | None) -> dict[str, Any]:
    """The set's effective dedup thresholds and their sources (the dedup_thresholds view):
    {'apply_threshold', 'apply_source', 'report_threshold', 'report_source'}. A set that is not
    registered gets the configured values."""
    row = catalog.rows(
        "SELECT apply_threshold, apply_source, report_threshold, report_source FROM dedup_thresholds "
        "WHERE set_name IS NOT DISTINCT FROM ? OR set_name IS NULL ORDER BY set_name NULLS LAST LIMIT 1",
        [set_name])[0]
    return dict(zip(("apply_threshold", "apply_source", "report_threshold", "report_source"), row))
