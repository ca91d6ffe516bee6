"""The quickstart pipeline end to end on generated sample data, then restore byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.make_sample_data import make_sample_data
from tests.conftest import tree_hashes
from vdc_lake.catalog.connection import Catalog

REPO = Path(__file__).resolve().parent.parent
SAMPLE_TOTAL = 150


@pytest.fixture
def quickstart_dir(in_tmp_cwd):
    """The working folder (cwd) with the full default sample data where quickstart.toml expects it."""
    manifest = make_sample_data(in_tmp_cwd / "data/quickstart/images")
    (in_tmp_cwd / "data/quickstart/images/manifest.json").unlink()
    return in_tmp_cwd, manifest


def test_quickstart_pipeline_handles_planted_problems_and_restores(quickstart_dir, run_cli):
    quickstart_dir, manifest = quickstart_dir
    images = quickstart_dir / "data/quickstart/images"
    catalog = quickstart_dir / "data/quickstart/catalog.duckdb"
    before = tree_hashes(images)
    pipeline = REPO / "examples/quickstart.toml"

    dry = run_cli(["run", pipeline], None)
    assert dry.exit_code == 0, dry.output
    assert "dry run" in dry.output
    assert tree_hashes(images) == before

    result = run_cli(["run", pipeline, "--apply"], None)
    assert result.exit_code == 0, result.output

    remaining = {p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file()}
    for kind in ("truncated_jpeg", "zero_byte", "non_image", "tiny", "panoramic"):
        assert not set(manifest[kind]) & remaining, kind
    for kind in ("exact_copy", "resized_copy", "recompressed_copy"):
        for copy in manifest[kind]:
            assert not ({copy, manifest["copy_of"][copy]} <= remaining), f"{kind} {copy} kept with its original"
    with Catalog(catalog, read_only=True) as c:
        present = c.scalar("SELECT count(*) FROM images WHERE present")
        sampled = c.scalar("SELECT count(*) FROM samples WHERE run_id = (SELECT max(run_id) FROM samples)")
        # the files apply sanitize rewrote were checked again, and have their descriptors
        unchecked = c.rows("""SELECT rel_path FROM images i WHERE present AND NOT EXISTS (SELECT 1 FROM
                              sanitize_checks s WHERE s.image_id = i.image_id AND s.version = i.version)""")
        no_descriptor = c.rows("""SELECT rel_path FROM images i WHERE present AND NOT EXISTS (SELECT 1 FROM
                                  embeddings e WHERE e.set_name = 'builtin' AND e.image_id = i.image_id
                                  AND e.version = i.version)""")
        rewritten = c.scalar("SELECT count(*) FROM images WHERE present AND version > 1")
    assert unchecked == [] and no_descriptor == [] and rewritten > 0
    assert sampled == SAMPLE_TOTAL
    assert present == SAMPLE_TOTAL == len(remaining)

    restored = run_cli(["restore"], catalog)
    assert restored.exit_code == 0, restored.output
    assert tree_hashes(images) == before
