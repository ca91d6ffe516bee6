"""Decision settings inside the catalog (vdc_lake.catalog.settings, vdc_lake.catalog.sync): a writer
records the effective config, says what changed, and every reader (a read-only Catalog, a plain DuckDB
connection, a run's params) takes the values from the catalog."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from vdc_lake.catalog.connection import Catalog
from vdc_lake.catalog.sets import register_embedding_set
from vdc_lake.catalog.settings import (DECISION_SECTIONS, changed_note, changes, decision_settings,
                                       record_settings, setting_text, stored_settings)
from vdc_lake.catalog.sync import sync_settings
from vdc_lake.config.loader import Config
from vdc_lake.kernels.descriptor import MULTI_VIEW_NAME

STRICT = "[rotation_correction]\nthreshold = 0.9\n\n[apply_deduplication]\nkeep = \"largest-file\"\n"


@pytest.fixture(scope="module")
def strict(tmp_path_factory) -> tuple[Config, str]:
    """(a config that changes two decision settings, the file that says so)."""
    folder = tmp_path_factory.mktemp("strict")
    path = folder / "strict.toml"
    path.write_text(STRICT)
    return Config.load(path, search_dir=folder), str(path)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, strict) -> Path:
    """A new catalog whose settings were then recorded from `strict`; read it only."""
    catalog_path = tmp_path_factory.mktemp("recorded") / "catalog.duckdb"
    with Catalog(catalog_path) as catalog:
        record_settings(catalog, strict[0])
    return catalog_path


def test_setting_text_is_what_sql_casts_back():
    assert [setting_text(v) for v in (True, False, 0.25, float("inf"), float("-inf"), 3, "WEBP")] == [
        "true", "false", "0.25", "inf", "-inf", "3", "WEBP"]
    assert setting_text([".jpg", ".png"]) == '[".jpg", ".png"]'
    assert duckdb.sql("SELECT 'inf'::DOUBLE = 'Infinity'::DOUBLE, '0.25'::DOUBLE").fetchall() == [(True, 0.25)]


def test_a_new_catalog_holds_every_bundled_default_the_config_does_not_change(recorded, strict):
    with Catalog(recorded, read_only=True) as catalog:
        stored = stored_settings(catalog)
    changed = {("rotation_correction", "threshold"): ("0.9", strict[1]),
               ("apply_deduplication", "keep"): ("largest-file", strict[1])}
    assert stored == {(s, k): changed.get((s, k), (setting_text(v), "default"))
                      for s, k, v, _ in Config.bundled().describe()}


def test_record_settings_stores_the_config_and_says_what_changed(catalog_path, strict):
    config, path = strict
    with Catalog(catalog_path) as catalog:
        assert record_settings(catalog, Config.bundled()) == []  # a new catalog holds the defaults already
        done = record_settings(catalog, config)
        assert done == [f"apply_deduplication.keep: largest-resolution -> largest-file ({path})",
                        f"rotation_correction.threshold: 0.75 -> 0.9 ({path})"]
        assert stored_settings(catalog)[("rotation_correction", "threshold")] == ("0.9", path)
        assert record_settings(catalog, config) == []  # the same config again: nothing to do
        assert record_settings(catalog, Config.bundled()) == [
            "apply_deduplication.keep: largest-file -> largest-resolution (default)",
            "rotation_correction.threshold: 0.9 -> 0.75 (default)"]
        assert stored_settings(catalog)[("rotation_correction", "threshold")] == ("0.75", "default")
    assert changed_note(done) == "settings recorded in the catalog: " + "; ".join(done)
    assert changed_note([]) is None


def test_changes_against_an_empty_catalog_lists_every_option_as_unset():
    listed = changes({}, Config.bundled())
    assert len(listed) == len(Config.bundled().describe())
    assert "sanitize.min_width: (unset) -> 80 (default)" in listed


def test_readers_see_the_catalogs_settings_not_their_own_config(recorded, strict):
    with Catalog(recorded, read_only=True) as catalog:  # a reader with no config of its own
        assert decision_settings(catalog)["rotation_correction.threshold"] == "0.9"
        assert catalog.scalar("SELECT setting('apply_deduplication', 'keep')") == "largest-file"
    con = duckdb.connect(str(recorded), read_only=True)
    try:
        assert con.execute("SELECT setting('rotation_correction', 'threshold')::DOUBLE").fetchall() == [(0.9,)]
        assert con.execute("SELECT source FROM settings WHERE section = 'rotation_correction' "
                           "AND key = 'threshold'").fetchall() == [(strict[1],)]
    finally:
        con.close()


def test_decision_settings_hold_the_decision_sections_and_each_sets_thresholds(catalog_path, tmp_path):
    with Catalog(catalog_path) as catalog:
        run = catalog.begin_run("predict", {})
        register_embedding_set(catalog, "builtin", kind="descriptor", model=MULTI_VIEW_NAME, dim=4,
                               preprocessing=None, run_id=run)
        register_embedding_set(catalog, "other", kind="embedding", model=None, dim=4, preprocessing=None,
                               run_id=run)
        got = decision_settings(catalog)
        assert {key.split(".")[0] for key in got} == set(DECISION_SECTIONS) | {"dedup_thresholds"}
        assert got["apply_deduplication.threshold"] == "0.25"
        assert got["dedup_thresholds.builtin"] == {"apply": 0.08, "apply_source": "set builtin",
                                                   "report": 0.16, "report_source": "set builtin"}
        assert got["dedup_thresholds.other"] == {"apply": 0.25, "apply_source": "default",
                                                 "report": 0.5, "report_source": "default"}
        sample = catalog.begin_run("sample", {})  # what a run's params record
        params = json.loads(catalog.scalar("SELECT params FROM runs WHERE run_id = ?", [sample]))
        assert params["settings"] == json.loads(json.dumps(got))

        wide = tmp_path / "wide.toml"  # a configured threshold applies to every set, its own included
        wide.write_text("[apply_deduplication]\nthreshold = 0.3\n")
        record_settings(catalog, Config.load(wide, search_dir=tmp_path))
        assert decision_settings(catalog)["dedup_thresholds.builtin"] == {
            "apply": 0.3, "apply_source": str(wide), "report": 0.16, "report_source": "set builtin"}


def test_sync_settings_records_a_changed_config_when_the_catalog_is_free(tmp_path, catalog_path, strict):
    config, path = strict
    assert sync_settings(str(tmp_path / "absent.duckdb"), config) is None
    assert not (tmp_path / "absent.duckdb").exists()
    with Catalog(catalog_path):
        pass
    assert sync_settings(str(catalog_path), Config.bundled()) is None  # the same settings: nothing to say
    note = sync_settings(str(catalog_path), config)
    assert note == ("settings recorded in the catalog: "
                    f"apply_deduplication.keep: largest-resolution -> largest-file ({path}); "
                    f"rotation_correction.threshold: 0.75 -> 0.9 ({path})")
    with Catalog(catalog_path, read_only=True) as catalog:
        assert stored_settings(catalog)[("rotation_correction", "threshold")] == ("0.9", path)
    assert sync_settings(str(catalog_path), config) is None


def test_sync_settings_uses_the_catalogs_settings_while_a_writer_holds_it(tmp_path, strict):
    catalog_path = tmp_path / "catalog.duckdb"
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from vdc_lake.catalog.connection import Catalog
        with Catalog({str(catalog_path)!r}) as catalog:  # another command, between two of its writes
            catalog.release()
            print("ready", flush=True)
            sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        note = sync_settings(str(catalog_path), strict[0])
    finally:
        writer.communicate("\n", timeout=60)
    assert writer.returncode == 0
    assert note == ("note: the config or vdc-lake version differs from the catalog's (apply_deduplication.keep: "
                    f"largest-resolution -> largest-file ({strict[1]}) and 1 more); the catalog is busy or "
                    "read-only, so this command uses the catalog's settings; the next writing command records "
                    "the config")
    with Catalog(catalog_path, read_only=True) as catalog:
        assert stored_settings(catalog)[("rotation_correction", "threshold")] == ("0.75", "default")
