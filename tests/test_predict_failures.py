"""predict records why an image failed (predict_failures), shows it in `status`, and does not try
the same bytes again for the same set unless asked (--retry-failed); a changed file is tried again."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.tiny_models import PE_CORE, SSCD, TINY_SPECS, make_tiny_model, write_test_images
from vdc_lake.catalog.connection import Catalog
from vdc_lake.cli import cli

N_GOOD = 6
TINY_CPU = ["--device", "cpu", "--decode", "cpu", "--num-workers", "0", "--batch-size", "4"]


def invoke(catalog, *args):
    result = CliRunner().invoke(cli, ["--catalog", str(catalog), "-q", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def builtin(catalog, *extra):
    return invoke(catalog, "predict", "--model", "builtin", "--kind", "descriptor", "--num-workers", "0", *extra)


@pytest.fixture()
def images(tmp_path):
    """N_GOOD images and cut.png: a PNG whose header reads (scan records it) but whose pixels do
    not decode; nobody sanitized it, so predict meets it."""
    folder = tmp_path / "images"
    good = write_test_images(folder, N_GOOD)[1]
    (folder / "cut.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return folder


@pytest.fixture()
def catalog(tmp_path, images):
    path = tmp_path / "catalog.duckdb"
    invoke(path, "scan", images)
    return path


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    for name in (SSCD, PE_CORE):
        make_tiny_model(folder, TINY_SPECS[name])
    return folder


def failures(catalog):
    """predict_failures rows as (set, rel_path, version, error, transient), oldest first."""
    with Catalog(catalog, read_only=True) as c:
        return c.rows("SELECT f.set_name, i.rel_path, f.version, f.error, f.transient FROM predict_failures f "
                      "JOIN images i USING (image_id) ORDER BY f.run_id, i.rel_path")


def result_rows(catalog, table, set_name):
    with Catalog(catalog, read_only=True) as c:
        return dict(c.rows(f"SELECT i.rel_path, e.version FROM {table} e JOIN images i USING (image_id) "
                           "WHERE e.set_name = ?", [set_name]))


def test_a_failure_is_recorded_shown_not_retried_on_the_same_bytes_and_retried_when_asked_or_changed(
        catalog, images):
    first = builtin(catalog)
    assert f"{N_GOOD} of {N_GOOD + 1} images written, 1 failed" in first, first
    assert "failed in set builtin:" in first and "cut.png: truncated: decoding failed" in first, first
    (recorded,) = failures(catalog)
    assert recorded[:3] == ("builtin", "cut.png", 1) and "truncated" in recorded[3] and recorded[4] is False
    with Catalog(catalog, read_only=True) as c:  # a record, never a deletion
        assert c.scalar("SELECT count(*) FROM sanitize_actions") == 0
        assert c.scalar("SELECT count(*) FROM findings") == 0
        assert c.scalar("SELECT count(*) FROM curated") == N_GOOD + 1

    status = invoke(catalog, "status")
    line = next(line for line in status.splitlines() if line.startswith("builtin "))
    assert line.split()[1] == "1" and f"{images}/cut.png: truncated: decoding failed" in line, status
    invoke(catalog, "report", "-o", images.parent / "report", "--thumbnails", "0")
    index = (images.parent / "report/index.html").read_text()
    failures_part = index[index.index('id="predict-failures"'):]
    assert "cut.png: truncated: decoding failed" in failures_part.split("<h2")[0]

    again = builtin(catalog)  # the same bytes: not tried, nothing computed, nothing recorded
    assert "0 of 0 images written, 0 failed" in again and "1 not tried again" in again, again
    assert len(failures(catalog)) == 1
    assert len(result_rows(catalog, "embeddings", "builtin")) == N_GOOD

    retried = builtin(catalog, "--retry-failed")
    assert "0 of 1 images written, 1 failed" in retried, retried
    assert [f[:3] for f in failures(catalog)] == [("builtin", "cut.png", 1)] * 2
    with Catalog(catalog, read_only=True) as c:
        assert c.rows("SELECT set_name, version, attempts FROM failed_predictions") == [("builtin", 1, 2)]

    # the file is fixed: a rescan gives it a new version, which predict tries by itself
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)).save(images / "cut.png")
    invoke(catalog, "scan", images)
    fixed = builtin(catalog)
    assert "1 of 1 images written, 0 failed" in fixed, fixed
    assert result_rows(catalog, "embeddings", "builtin")["cut.png"] == 2
    with Catalog(catalog, read_only=True) as c:
        assert c.scalar("SELECT count(*) FROM failed_predictions") == 0
    assert "predict failed in set" not in invoke(catalog, "status")


@pytest.mark.parametrize("model", ["builtin", SSCD])
def test_a_file_that_could_not_be_read_is_tried_again(catalog, images, models_dir, model):
    (images / "img_000.jpg").unlink()  # gone since the scan: says nothing about its bytes
    args = ["predict", "--model", model, "--kind", "descriptor", "--models-dir", models_dir, *TINY_CPU]
    first = invoke(catalog, *args)
    assert f"{N_GOOD - 1} of {N_GOOD + 1} images written, 2 failed" in first, first
    assert "img_000.jpg: " in first and "No such file or directory" in first, first
    again = invoke(catalog, *args)
    # the missing file is tried again; cut.png (its bytes did not decode) is not
    assert "0 of 1 images written, 1 failed" in again and "1 not tried again" in again, again
    rows = [f for f in failures(catalog) if f[1] == "img_000.jpg"]
    assert len(rows) == 2 and all(transient for *_, transient in rows)


def test_many_failures_print_the_first_few_and_a_count(tmp_path):
    folder = tmp_path / "images"
    good = write_test_images(folder, 2)[1]
    for i in range(8):
        (folder / f"cut_{i}.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    catalog = tmp_path / "catalog.duckdb"
    invoke(catalog, "scan", folder)
    output = builtin(catalog)
    assert output.count("cut_") == 5 and "and 3 more (vdc-lake status)" in output, output
    assert len(failures(catalog)) == 8


def test_a_pass_records_failures_per_set_and_retries_only_the_sets_that_did_not_fail(catalog, models_dir):
    invoke(catalog, "predict", "--model", SSCD, "--kind", "descriptor", "--models-dir", models_dir, *TINY_CPU)
    assert [f[:3] for f in failures(catalog)] == [(SSCD, "cut.png", 1)]

    both = ["predict", "--model", SSCD, "--kind", "descriptor", "--model", PE_CORE, "--kind", "embedding",
            "--models-dir", models_dir, *TINY_CPU]
    output = invoke(catalog, *both)
    # SSCD failed on these bytes already; PE-Core never tried them: only it decodes the file, and fails
    assert f"set {SSCD} (descriptor): 0 of 0 images written, 0 failed" in output, output
    assert f"set {PE_CORE} (embedding): {N_GOOD} of {N_GOOD + 1} images written, 1 failed" in output, output
    assert [f[:3] for f in failures(catalog)] == [(SSCD, "cut.png", 1), (PE_CORE, "cut.png", 1)]
    assert all("cannot decode" in f[3] and f[4] is False for f in failures(catalog))
    status = invoke(catalog, "status")
    assert all(any(line.startswith(f"{name} ") for line in status.splitlines()) for name in (SSCD, PE_CORE)), status

    again = invoke(catalog, *both)
    assert again.count("0 of 0 images written, 0 failed") == 2 and again.count("1 not tried again") == 2, again
    assert len(failures(catalog)) == 2

    retried = invoke(catalog, *both, "--retry-failed")
    assert retried.count("0 of 1 images written, 1 failed") == 2, retried
    assert sorted(f[0] for f in failures(catalog)) == sorted([SSCD, PE_CORE] * 2)
    assert len(result_rows(catalog, "embeddings", SSCD)) == len(result_rows(catalog, "embeddings", PE_CORE)) == N_GOOD
