"""predict through the CLI with tiny birder nets saved by birder's own checkpoint function."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import catalog_rows, noise_jpeg, ok_output
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


# -- import and predict: the whole file or nothing; a mistyped invocation is one Error line; a kill
# loses nothing ---------------------------------------------------------------------------------------




def _images_for_import(tmp_path: Path, n: int = 6) -> tuple[Path, list[str]]:
    images = tmp_path / "images"
    for i in range(n):
        noise_jpeg(images / f"img_{i}.jpg", i, size=(96, 96))
    return images, [str(images / f"img_{i}.jpg") for i in range(n)]


def test_an_import_that_breaks_half_way_leaves_no_partial_set(tmp_path, run_cli):
    """Old code committed every batch: a parquet file damaged in its third row group left a set
    with the first 8 of 12 vectors (and a failed run), which dedup and cluster read as complete."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vdc_lake.stages.predict import import_results
    from vdc_lake.stages.scan import scan

    images, samples = _images_for_import(tmp_path, 12)
    vectors = np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32)
    path = tmp_path / "x_rope_i_vit_b16_pn_aps_c1_pe-core_0_224px_crop1.0_12_embeddings.parquet"
    pq.write_table(pa.table({"sample": samples,
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 8)}),
                   path, row_group_size=4, compression="none")
    offset = pq.ParquetFile(path).metadata.row_group(2).column(1).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset:offset + 40] = b"\xa5" * 40
    path.write_bytes(bytes(data))
    catalog_path = tmp_path / "catalog.duckdb"
    with Catalog(catalog_path, scale={"vector_batch_rows": 4}) as catalog:
        scan(catalog, [images], extensions=[".jpg"], workers=1, quiet=True)
        try:
            import_results(catalog, str(path), set_name="pe")
        except Exception as e:  # noqa: BLE001 - the type and text are checked below
            error = e
    from vdc_lake.errors import VdcLakeError

    assert isinstance(error, VdcLakeError) and "\n" not in str(error) and "damaged or incomplete" in str(error)
    assert catalog_rows(catalog_path, "SELECT count(*) FROM embeddings") == [(0,)]
    assert catalog_rows(catalog_path, "SELECT count(*) FROM embedding_sets WHERE name = 'pe'") == [(0,)]
    assert catalog_rows(catalog_path, "SELECT status FROM runs WHERE stage = 'import'") == [("failed",)]
    result = run_cli(["import", path, "--set", "pe"], catalog_path)
    assert result.exit_code == 1 and result.output.count("\n") == 1 and result.output.startswith("Error: ")


def test_import_counts_duplicated_unknown_and_non_finite_rows(tmp_path, run_cli):
    images, samples = _images_for_import(tmp_path, 4)
    catalog = tmp_path / "catalog.duckdb"
    ok_output(run_cli(["scan", images], catalog))
    lines = ["sample,0,1,2,3"]
    lines += [f"{s},{i},1,2,3" for i, s in enumerate(samples[:3])]
    lines += [f"{samples[0]},9,9,9,9", "img_1.jpg,8,8,8,8", "/elsewhere/img_9.jpg,1,2,3,4",
              f"{samples[3]},nan,1,2,3"]
    path = tmp_path / "resnet_v1_50_c1_sscd_4_320px_crop1.0_7_logits.csv"
    path.write_text("\n".join(lines) + "\n")

    result = run_cli(["import", path], catalog)
    assert result.exit_code == 0, result.output
    assert "5 of 7 rows imported, 1 unmatched" in result.output
    assert "2 row(s) name an image an earlier row named: the last of them counts" in result.output
    assert f"1 row(s) hold NaN or infinite values, not imported (first ones): {samples[3]}" in result.output
    from vdc_lake.catalog.sets import read_vectors

    with Catalog(catalog, read_only=True) as cat:
        vs = read_vectors(cat, "embeddings", "resnet_v1_50_c1_sscd")
        paths = dict(cat.rows("SELECT image_id, rel_path FROM images"))
    got = {paths[int(i)]: v[0] for i, v in zip(vs.image_ids, vs.vectors)}
    assert got == {"img_0.jpg": 9.0, "img_1.jpg": 8.0, "img_2.jpg": 2.0}  # no NaN vector for img_3


def test_predict_mistakes_are_one_error_line_naming_the_fix(tmp_path, run_cli):
    """Old code ignored --tag/--size for builtin (a silently different set than asked for) and
    answered a checkpoint path with 'not a birder pretrained name'."""
    images, catalog = tmp_path / "images", tmp_path / "catalog.duckdb"
    noise_jpeg(images / "a.jpg", 0)
    ok_output(run_cli(["scan", images], catalog))
    cases = [
        (["--model", "builtin", "--kind", "descriptor", "--tag", "x"],
         "Error: the builtin descriptor takes no --tag (it has no weights and a fixed thumbnail size): leave --tag "
         "out, or give '' for it in a pass with other models\n"),
        (["--model", "builtin", "--kind", "descriptor", "--size", "64"], "the builtin descriptor takes no --size"),
        (["--model", "models/resnet_v1_50_c1_sscd.pt", "--kind", "descriptor"],
         "Error: --model takes a weights name, not a file: use --model resnet_v1_50_c1_sscd --models-dir models "
         "(the checkpoint is MODELS_DIR/NAME.pt)\n"),
    ]
    for args, expected in cases:
        result = run_cli(["predict", *args], catalog)
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
        assert expected in result.output and result.output.startswith("Error: ")
    assert catalog_rows(catalog, "SELECT count(*) FROM runs WHERE stage = 'predict'") == [(0,)]
    assert catalog_rows(catalog, "SELECT count(*) FROM embeddings") == [(0,)]


def test_a_killed_builtin_predict_resumes_with_no_duplicate_and_none_missing(tmp_path):
    import subprocess
    import sys
    import textwrap

    from vdc_lake.stages.scan import scan

    images, catalog_path = tmp_path / "images", tmp_path / "catalog.duckdb"
    for i in range(10):
        noise_jpeg(images / f"img_{i}.jpg", i, size=(96, 96))
    with Catalog(catalog_path) as catalog:
        scan(catalog, [images], extensions=[".jpg"], workers=1, quiet=True)
    script = textwrap.dedent(f"""
        import os, signal
        import vdc_lake.stages.predict as p
        from vdc_lake.catalog.connection import Catalog
        original, commits = p._commit, []
        def commit_then_die(*args):
            original(*args)
            commits.append(1)
            if len(commits) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        p._commit = commit_then_die
        with Catalog({str(catalog_path)!r}) as catalog:
            p.predict(catalog, model="builtin", kind="descriptor", num_workers=0, commit_every=3, quiet=True)
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parent.parent)
    assert child.returncode == -9, child.stderr
    assert catalog_rows(catalog_path, "SELECT count(*) FROM embeddings") == [(6,)]
    from vdc_lake.stages.predict import predict

    with Catalog(catalog_path) as catalog:
        summary = predict(catalog, model="builtin", kind="descriptor", num_workers=0, quiet=True)
    assert (summary.todo, summary.written) == (4, 4)
    assert catalog_rows(catalog_path, "SELECT count(*), count(DISTINCT image_id) FROM embeddings") == [(10, 10)]


def test_a_models_dir_under_home_in_a_config_file_is_found(tmp_path, run_cli, monkeypatch):
    """Old code: `models_dir = "~/models"` in vdc-lake.toml (no shell to expand it) was looked
    up as ./~/models: "models directory .../~/models does not exist"."""
    from tests.tiny_models import SSCD, make_tiny_models

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    make_tiny_models(tmp_path / "home" / "models")
    images, catalog = tmp_path / "images", tmp_path / "catalog.duckdb"
    for i in range(2):
        noise_jpeg(images / f"img_{i}.jpg", i, size=(80, 80))
    config = tmp_path / "models.toml"
    config.write_text('[predict]\nmodels_dir = "~/models"\ndevice = "cpu"\nnum_workers = 0\n')
    ok_output(run_cli(["scan", images], catalog))
    out = ok_output(run_cli(["predict", "--model", SSCD, "--kind", "descriptor"], catalog, config=config))
    assert "2 of 2 images written" in out
