"""The catalog summary behind `vdc-lake status` (vdc_lake.review.status.catalog_status) on small real
catalogs built with the CLI: images by state, what each decision would do, overrides, curated, the
settings in force and their sources, recent runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.conftest import copy_catalog
from vdc_lake.catalog.connection import Catalog
from vdc_lake.catalog.settings import record_settings
from vdc_lake.config.loader import Config
from vdc_lake.review.status import catalog_status, decision_settings_in_force, dedup_threshold_notes


def _photos(root: Path) -> Path:
    """photo_0..3.jpg (120x100 noise), tiny.jpg (40x40: below min_width) and copy.jpg (photo_0's bytes)."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        pixels = np.random.default_rng(i).integers(0, 256, (100, 120, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"photo_{i}.jpg", quality=90)
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "tiny.jpg")
    (root / "copy.jpg").write_bytes((root / "photo_0.jpg").read_bytes())
    return root


def _cli(catalog: Path, *args) -> str:
    from vdc_lake.cli import cli

    result = CliRunner().invoke(cli, ["--catalog", str(catalog), "-q", *map(str, args)], prog_name="vdc-lake")
    assert result.exit_code == 0, result.output
    return result.output


def _noise(path: Path, seed: int) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (100, 120, 3), dtype=np.uint8)).save(path, quality=90)


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> Path:
    """The six photos scanned and sanitized, photo_3.jpg kept by override; then photo_1.jpg deleted,
    later.jpg added and the folder scanned again (later.jpg never sanitized). Read it only."""
    folder = tmp_path_factory.mktemp("status")
    catalog, root = folder / "catalog.duckdb", _photos(folder / "images")
    _cli(catalog, "scan", root)
    _cli(catalog, "sanitize")
    _cli(catalog, "override", "keep", "photo_3.jpg", "--reason", "mine")
    (root / "photo_1.jpg").unlink()
    _noise(root / "later.jpg", 5)
    _cli(catalog, "scan", root)
    return catalog


@pytest.fixture(scope="module")
def status(curated) -> dict:
    with Catalog(curated, read_only=True) as catalog:
        return catalog_status(catalog)


def test_status_counts_images_decisions_overrides_and_runs(curated, status):
    with Catalog(curated, read_only=True) as catalog:
        newest = catalog_status(catalog, recent_runs=1)["runs"]
        deletes = {stage: catalog.rows(f"SELECT image_id FROM {view} WHERE action = 'delete'")
                   for stage, view in (("sanitize", "sanitize_actions"), ("dedup", "dedup_actions()"))}
        ids = dict(catalog.rows("SELECT rel_path, image_id FROM images"))
    assert status["images"] == [("present", 6), ("gone (not present)", 1), ("never sanitized", 1),
                                ("with findings", 1)]
    assert status["pending"] == [("sanitize", "delete", 1), ("dedup", "delete", 1)]
    assert deletes["sanitize"] == [(ids["tiny.jpg"],)]  # what status counts is what the decision deletes
    assert deletes["dedup"] in ([(ids["copy.jpg"],)], [(ids["photo_0.jpg"],)])  # one of the exact copies
    assert status["curated"] == 4
    assert status["overrides"] == [("keep", 1)]
    assert [(run_id, stage, state) for run_id, stage, state, _, _ in status["runs"]] == [
        (4, "scan", "done"), (3, "override", "done"), (2, "sanitize", "done"), (1, "scan", "done")]
    assert [row[:3] for row in newest] == [(4, "scan", "done")]
    assert status["stale_sample"] is None and status["predict_failures"] == []


def test_status_lists_the_decision_settings_in_force_and_where_each_comes_from(curated, status, tmp_path):
    assert status["settings"][:3] == [("rotation_correction.threshold", "0.75", "default"),
                                      ("apply_deduplication.threshold (set builtin)", "0.08", "set builtin's own"),
                                      ("apply_deduplication.keep", "largest-resolution", "default")]
    assert [row[0] for row in status["settings"][3:]] == [
        "apply_deduplication.seed", "filter_by_examples.threshold", "filter_by_score.name",
        "filter_by_score.min_score", "filter_by_score.max_score",
        *(f"quality.{key}" for issue in ("dark", "bright", "blurry", "low_information", "grayscale")
          for key in (issue, f"delete_{issue}"))]
    assert len(status["setting_notes"]) == 1 and status["setting_notes"][0].startswith("a set's own dedup threshold")

    copy = tmp_path / "catalog.duckdb"
    copy_catalog(curated, copy)
    config_file = tmp_path / "wide.toml"
    config_file.write_text("[apply_deduplication]\nthreshold = 0.3\n\n[rotation_correction]\nthreshold = 0.5\n")
    with Catalog(copy) as catalog:
        record_settings(catalog, Config.load(config_file, search_dir=tmp_path))
        in_force = decision_settings_in_force(catalog)
        notes = dedup_threshold_notes(catalog)
    assert in_force[:2] == [("rotation_correction.threshold", "0.5", str(config_file)),
                            ("apply_deduplication.threshold (set builtin)", "0.3", str(config_file))]
    assert notes == []  # no set's own threshold applies any more
