"""predict through the CLI with tiny birder nets saved by birder's own checkpoint function."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from tests.tiny_models import PE_CORE, ROTNET, SSCD, TINY_EMBEDDING_SIZE, make_tiny_models, write_test_images
from vdc_lake.catalog.connection import Catalog
from vdc_lake.cli import cli
from vdc_lake.catalog.sets import read_vectors

N_IMAGES = 10


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    make_tiny_models(folder)
    return folder


@pytest.fixture()
def scanned(tmp_path):
    images = tmp_path / "images"
    write_test_images(images, N_IMAGES)
    (images / "broken.jpg").write_bytes(b"not an image")
    catalog = tmp_path / "catalog.duckdb"
    result = CliRunner().invoke(cli, ["--catalog", str(catalog), "-q", "scan", str(images)])
    assert result.exit_code == 0, result.output
    return catalog


def predict(catalog, models_dir, model, kind, *extra):
    args = ["--catalog", str(catalog), "-q", "predict", "--model", model, "--kind", kind, "--models-dir",
            str(models_dir), "--device", "cpu", "--num-workers", "0", "--batch-size", "4", *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    "model, kind, table, dim",
    [(ROTNET, "rotation", "predictions", 4), (SSCD, "descriptor", "embeddings", 512),
     (PE_CORE, "embedding", "embeddings", TINY_EMBEDDING_SIZE)],
)
def test_predict_writes_one_row_per_image_and_reruns_compute_nothing(scanned, models_dir, model, kind, table, dim):
    output = predict(scanned, models_dir, model, kind)
    assert f"{N_IMAGES} of {N_IMAGES} images written" in output
    with Catalog(scanned, read_only=True) as catalog:
        vs = read_vectors(catalog, table, model)
        assert vs.vectors.shape == (N_IMAGES, dim)
        assert np.isfinite(vs.vectors).all()
        assert len(set(vs.image_ids.tolist())) == N_IMAGES
        rows = catalog.scalar(f"SELECT count(*) FROM {table} WHERE set_name = ?", [model])
    assert rows == N_IMAGES
    if kind == "rotation":
        np.testing.assert_allclose(vs.vectors.sum(axis=1), 1.0, atol=1e-5)
    again = predict(scanned, models_dir, model, kind)
    assert "0 of 0 images written" in again


def test_rotation_set_is_what_rotation_actions_reads(scanned, models_dir):
    predict(scanned, models_dir, ROTNET, "rotation")
    with Catalog(scanned, read_only=True) as catalog:
        n = catalog.scalar("SELECT count(*) FROM rotation_actions(threshold := 0.0)")
        angles = {r[0] for r in catalog.rows("SELECT DISTINCT angle FROM rotation_actions()")}
    assert n == N_IMAGES
    assert angles <= {0, 90, 180, 270}


def test_killed_predict_resumes_without_duplicates(scanned, models_dir):
    # A child process commits every 4 images and SIGKILLs itself right after its second commit.
    script = textwrap.dedent(f"""
        import os, signal
        import vdc_lake.stages.predict as p
        from vdc_lake.catalog.connection import Catalog
        original, commits = p._commit_pass, []
        def commit_then_die(*args):
            original(*args)
            commits.append(1)
            if len(commits) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        p._commit_pass = commit_then_die
        with Catalog({str(scanned)!r}) as catalog:
            p.predict(catalog, model={SSCD!r}, kind="descriptor", models_dir={str(models_dir)!r}, device="cpu",
                      batch_size=4, num_workers=0, commit_every=4, quiet=True)
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert child.returncode == -9, child.stderr
    with Catalog(scanned, read_only=True) as catalog:
        done_before = catalog.scalar("SELECT count(*) FROM embeddings WHERE set_name = ?", [SSCD])
    assert 0 < done_before < N_IMAGES
    output = predict(scanned, models_dir, SSCD, "descriptor")
    assert f"{N_IMAGES - done_before} of {N_IMAGES - done_before} images written" in output
    with Catalog(scanned, read_only=True) as catalog:
        total, distinct = catalog.rows(
            "SELECT count(*), count(DISTINCT image_id) FROM embeddings WHERE set_name = ?", [SSCD])[0]
        statuses = [r[0] for r in catalog.rows("SELECT status FROM runs WHERE stage = 'predict' ORDER BY run_id")]
    assert total == distinct == N_IMAGES
    assert statuses == ["interrupted", "done"]


def test_missing_model_error_names_the_download_command(scanned, tmp_path):
    result = CliRunner().invoke(cli, ["--catalog", str(scanned), "predict", "--model", SSCD, "--kind", "descriptor",
                                      "--models-dir", str(tmp_path / "nowhere"), "--device", "cpu"])
    assert result.exit_code == 1
    assert "download-model" in result.output and SSCD in result.output


def test_builtin_descriptor_predict_fills_missing_vectors(scanned):
    result = CliRunner().invoke(cli, ["--catalog", str(scanned), "-q", "predict", "--model", "builtin",
                                      "--kind", "descriptor", "--num-workers", "1"])
    assert result.exit_code == 0, result.output
    with Catalog(scanned, read_only=True) as catalog:
        vs = read_vectors(catalog, "embeddings", "builtin")
    assert len(vs) == N_IMAGES
    np.testing.assert_allclose(np.linalg.norm(vs.vectors, axis=1), 1.0, atol=1e-5)


def test_models_list_shows_the_tiny_models(models_dir, tmp_path):
    result = CliRunner().invoke(cli, ["--catalog", str(tmp_path / "c.duckdb"), "models", "list",
                                      "--models-dir", str(models_dir)])
    assert result.exit_code == 0, result.output
    for name in (SSCD, ROTNET, PE_CORE):
        assert name in result.output
    assert "no:" not in result.output
