"""Import of result files from VDC and pandas (issue 23, item 4): variable-length list columns
(every row one length, else one error naming the first other row), float64 vectors, VDC's file
names (logits.parquet, embeddings.parquet) with --kind / --model, and one clear error for a CSV
without a sample column. Real catalogs of scanned images, files written by pyarrow as pandas and
VDC (polars) write them, the real CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import catalog_rows, cli_fails, random_image


@pytest.fixture
def scanned(tmp_path, run_cli) -> tuple[Path, list[str]]:
    """(catalog, the absolute paths of its 5 images, in image_id order)."""
    root = tmp_path / "images"
    for i in range(5):
        random_image(root / f"im{i}.jpg", seed=i)
    catalog = tmp_path / "catalog.duckdb"
    assert run_cli(["scan", root], catalog).exit_code == 0
    paths = [f"{root}/{rel}" for (rel,) in catalog_rows(catalog, "SELECT rel_path FROM images ORDER BY image_id")]
    return catalog, paths


def _vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim))  # float64, as pandas and numpy make them


def _stored(catalog: Path, set_name: str) -> np.ndarray:
    rows = catalog_rows(catalog, "SELECT e.vector FROM embeddings e JOIN images i USING (image_id, version) "
                                 "WHERE e.set_name = ? ORDER BY i.image_id", [set_name])
    return np.array([r[0] for r in rows], np.float32)


def test_a_pandas_embedding_column_of_variable_length_float64_lists_is_imported(scanned, run_cli, tmp_path):
    catalog, paths = scanned
    vectors = _vectors(len(paths), 6)
    path = tmp_path / "embeddings.parquet"  # pandas: df.to_parquet writes list<double> for arrays of float64
    pq.write_table(pa.table({"sample": paths, "embedding": pa.array(list(vectors), pa.list_(pa.float64()))}), path)
    result = run_cli(["import", path, "--kind", "embedding", "--model", "dinov2_vit_s14"], catalog)
    assert result.exit_code == 0, result.output
    assert "set dinov2_vit_s14 (embedding): 5 of 5 rows imported" in result.output
    np.testing.assert_array_equal(_stored(catalog, "dinov2_vit_s14"), vectors.astype(np.float32))
    assert catalog_rows(catalog, "SELECT model, kind, dim FROM embedding_sets WHERE name = 'dinov2_vit_s14'") == [
        ("dinov2_vit_s14", "embedding", 6)]


def test_a_fixed_size_list_of_float64_is_imported_as_float32(scanned, run_cli, tmp_path):
    catalog, paths = scanned
    vectors = _vectors(len(paths), 4, seed=1)
    path = tmp_path / "vectors.parquet"
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 4)
    pq.write_table(pa.table({"sample": paths, "embedding": column}), path)
    assert run_cli(["import", path, "--set", "f64"], catalog).exit_code == 0
    np.testing.assert_array_equal(_stored(catalog, "f64"), vectors.astype(np.float32))


def test_rows_of_different_lengths_are_one_error_naming_the_first_and_import_nothing(scanned, run_cli, tmp_path):
    catalog, paths = scanned
    rows = [list(v) for v in _vectors(len(paths), 3)]
    rows[3] = rows[3][:2]
    path = tmp_path / "embeddings.parquet"
    pq.write_table(pa.table({"sample": paths, "embedding": pa.array(rows, pa.list_(pa.float64()))}), path)
    cli_fails(run_cli(["import", path, "--kind", "embedding", "--model", "m"], catalog),
              f"embeddings.parquet: row 4 (sample {paths[3]!r}) has 2 embedding values where the rows before have "
              "3: every row of the embedding column must have the same length; fix or drop that row and import "
              "again")
    assert catalog_rows(catalog, "SELECT count(*) FROM embeddings") == [(0,)]
    assert catalog_rows(catalog, "SELECT count(*) FROM vector_parts") == [(0,)]


def test_a_null_row_is_named_too(scanned, run_cli, tmp_path):
    catalog, paths = scanned
    rows = [list(v) for v in _vectors(len(paths), 3)]
    rows[1] = None
    path = tmp_path / "embeddings.parquet"
    pq.write_table(pa.table({"sample": paths, "embedding": pa.array(rows, pa.list_(pa.float32()))}), path)
    result = run_cli(["import", path, "--kind", "embedding", "--model", "m"], catalog)
    assert result.exit_code == 1 and f"row 2 (sample {paths[1]!r}) has 0 embedding values" in result.output


@pytest.mark.parametrize("args", [["--kind", "descriptor", "--model", "resnet_v1_50_c1_sscd"], []])
def test_vdcs_logits_parquet_is_imported_by_its_name(scanned, run_cli, tmp_path, args):
    catalog, paths = scanned
    logits = _vectors(len(paths), 5, seed=2)
    path = tmp_path / "logits.parquet"  # VDC (polars): sample, then one float64 column per class
    pq.write_table(pa.table({"sample": paths, **{str(j): logits[:, j] for j in range(5)}}), path)
    result = run_cli(["import", path, *args], catalog)
    assert result.exit_code == 0, result.output
    name = "resnet_v1_50_c1_sscd" if args else "logits"
    assert f"set {name} (descriptor): 5 of 5 rows imported" in result.output
    np.testing.assert_array_equal(_stored(catalog, name), logits.astype(np.float32))
    if args:  # the model's recommended thresholds come with its name
        assert catalog_rows(catalog, "SELECT apply_threshold, report_threshold FROM embedding_sets "
                                     "WHERE name = ?", [name]) == [(0.25, 0.5)]


def test_a_file_whose_name_says_nothing_takes_its_kind_from_the_option(scanned, run_cli, tmp_path):
    catalog, paths = scanned
    values = _vectors(len(paths), 4, seed=3)
    path = tmp_path / "scores.parquet"
    pq.write_table(pa.table({"sample": paths, **{f"c{j}": values[:, j] for j in range(4)}}), path)
    cli_fails(run_cli(["import", path], catalog),
              "scores.parquet: cannot tell logits from embeddings without birder's file name (..._logits.csv / "
              "..._embeddings.csv): pass --kind (descriptor or embedding for vectors, rotation for rotation "
              "probabilities) or rename the file")
    result = run_cli(["import", path, "--kind", "embedding", "--set", "scores"], catalog)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(_stored(catalog, "scores"), values.astype(np.float32))


def test_a_csv_without_a_sample_column_is_one_error_that_says_what_is_expected(scanned, run_cli, tmp_path):
    catalog, paths = scanned
    path = tmp_path / "embeddings.csv"
    path.write_text("path,0,1\n" + "".join(f"{p},0.5,0.25\n" for p in paths))
    cli_fails(run_cli(["import", path, "--kind", "embedding"], catalog),
              "embeddings.csv has no 'sample' column (its columns: path, 0, 1): a result file needs a column named "
              "sample with each image's path, then the values: one column per class or dimension, or an "
              "'embedding' list column (what birder and VDC write); rename the path column to sample")
    assert catalog_rows(catalog, "SELECT count(*) FROM embedding_sets") == [(0,)]
