"""Stages that move vectors give the same catalog rows whether the vectors move in one batch
or in batches of 7 rows ([scale] vector_batch_rows), and when the set is spilled to a memmap."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from tests.conftest import copy_catalog
from vdc_lake.catalog.connection import Catalog
from vdc_lake.stages.cluster import cluster
from vdc_lake.stages.dedup import report
from vdc_lake.stages.filters import filter_by_examples, score_images
from vdc_lake.stages.predict import import_results
from vdc_lake.stages.scan import scan
from vdc_lake.catalog.sets import iter_vectors, read_vectors

N_IMAGES, DIM, SET = 60, 16, "emb"
TINY_BATCH, ONE_BATCH = 7, 1_000_000


def _embeddings_file(path: Path, samples: list[str], vectors: np.ndarray) -> Path:
    """A birder `*_embeddings.parquet`: sample, embedding fixed_size_list<float32>[d]."""
    pq.write_table(pa.table({
        "sample": pa.array(samples, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
    }), path)
    return path


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> dict:
    """A scanned catalog of N_IMAGES noise JPEGs and an embeddings file naming them (rows 1-4
    are near copies of row 0, so dedup finds pairs)."""
    base = tmp_path_factory.mktemp("bounded")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N_IMAGES):
        path = base / "images" / f"img_{i:03d}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path, "JPEG")
        paths.append(str(path))
    with Catalog(base / "base.duckdb") as catalog:
        scan(catalog, [base / "images"], extensions=[".jpg"], workers=1, quiet=True)
    vectors = rng.standard_normal((N_IMAGES, DIM)).astype(np.float32)
    vectors[1:5] = vectors[0] + 0.01 * rng.standard_normal((4, DIM)).astype(np.float32)
    file = _embeddings_file(base / f"bench_x_0_224px_crop1.0_{N_IMAGES}_embeddings.parquet", paths[::-1],
                            vectors[::-1])
    examples = _embeddings_file(base / "examples_embeddings.parquet", ["ex0", "ex1", "ex2"], vectors[[0, 10, 20]])
    head = torch.nn.Linear(DIM, 1)
    torch.nn.init.normal_(head.weight, generator=torch.Generator().manual_seed(0))
    torch.save(head.state_dict(), base / "head.pt")
    return {"base": base, "file": file, "examples": examples, "head": base / "head.pt", "vectors": vectors,
            "paths": paths}


def _run_stages(scanned: dict, name: str, batch_rows: int) -> Path:
    """Copy the scanned catalog, then import, cluster, dedup report, filter and score with batch_rows."""
    path = scanned["base"] / f"{name}.duckdb"
    copy_catalog(scanned["base"] / "base.duckdb", path)
    with Catalog(path, scale={"vector_batch_rows": batch_rows}) as catalog:
        import_results(catalog, str(scanned["file"]), set_name=SET, kind="embedding")
        cluster(catalog, SET, n_clusters=[6, 2], method="resampled", n_samples=[3, 2], n_resamples=2,
                max_iters=10, device="cpu", quiet=True)
        report(catalog, SET, threshold=0.5, method="exact", device="cpu", quiet=True)
        filter_by_examples(catalog, SET, scanned["examples"])
        score_images(catalog, SET, scanned["head"], "aesthetic")
    return path


def _rows(path: Path, sql: str) -> list[tuple]:
    with Catalog(path, read_only=True) as catalog:
        return catalog.rows(sql)


QUERIES = {
    "embeddings": "SELECT image_id, version, vector FROM embeddings ORDER BY image_id",
    "clusters": "SELECT level, cluster_id, parent_id, size, center FROM clusters ORDER BY level, cluster_id",
    "assignments": "SELECT image_id, level, cluster_id, distance FROM assignments ORDER BY image_id, level",
    "dup_edges": "SELECT image_a, image_b, version_a, version_b, distance FROM dup_edges ORDER BY image_a, image_b",
    "example_distances": "SELECT image_id, version, set_name, distance, example FROM example_distances ORDER BY image_id",
}
# A torch head's matmul may block a 7-row input differently from a 60-row one, so its float32
# output can differ in the last bit; ids must match exactly, scores to float32 rounding.
SCORES = "SELECT image_id, version, name, score FROM scores ORDER BY image_id"


@pytest.fixture(scope="module")
def staged(scanned) -> tuple[Path, Path]:
    """Catalogs after every stage: (vectors moved in one batch, in batches of TINY_BATCH rows)."""
    return _run_stages(scanned, "one_batch", ONE_BATCH), _run_stages(scanned, "tiny_batches", TINY_BATCH)


def test_tiny_batches_give_the_same_rows_as_one_batch(scanned, staged):
    one, tiny = staged
    for table, sql in QUERIES.items():
        expected = _rows(one, sql)
        assert expected, f"{table} is empty: the stage wrote nothing"
        assert _rows(tiny, sql) == expected, f"{table} differs between batches of {TINY_BATCH} rows and one batch"
    expected, got = _rows(one, SCORES), _rows(tiny, SCORES)
    assert [r[:3] for r in got] == [r[:3] for r in expected] and len(expected) == N_IMAGES
    np.testing.assert_allclose([r[3] for r in got], [r[3] for r in expected], rtol=1e-6, atol=1e-6)
    edges = _rows(one, "SELECT image_a, image_b FROM dup_edges")
    ids = dict(_rows(one, "SELECT rel_path, image_id FROM images"))
    planted = {ids[f"img_{i:03d}.jpg"] for i in range(5)}
    assert {a for a, _ in edges} | {b for _, b in edges} >= planted  # the near copies were found
    with Catalog(one, read_only=True) as catalog:
        vs = read_vectors(catalog, "embeddings", SET)
    order = np.argsort([Path(scanned["paths"][i]).name for i in range(N_IMAGES)])
    np.testing.assert_array_equal(vs.vectors, scanned["vectors"][order])  # image ids follow file names


def test_spilled_set_equals_the_set_in_memory(staged):
    path = staged[1]
    with Catalog(path, read_only=True, scale={"vector_batch_rows": TINY_BATCH}) as catalog:
        in_memory = read_vectors(catalog, "embeddings", SET)
        spilled = read_vectors(catalog, "embeddings", SET, memory_budget=1)
        streamed = list(iter_vectors(catalog, "embeddings", SET))
    assert isinstance(spilled.vectors, np.memmap) and not isinstance(in_memory.vectors, np.memmap)
    np.testing.assert_array_equal(spilled.image_ids, in_memory.image_ids)
    np.testing.assert_array_equal(spilled.vectors, in_memory.vectors)
    assert max(len(b) for b in streamed) <= TINY_BATCH
    ids = np.concatenate([b.image_ids for b in streamed])
    order = np.argsort(ids)
    np.testing.assert_array_equal(ids[order], in_memory.image_ids)
    np.testing.assert_array_equal(np.concatenate([b.vectors for b in streamed])[order], in_memory.vectors)
    assert list(path.with_name(path.name + ".spill").iterdir()) == []  # the spill file is gone already


def test_the_newest_import_wins_and_stale_versions_drop_out(scanned, tmp_path):
    path = scanned["base"] / "twice.duckdb"
    copy_catalog(scanned["base"] / "base.duckdb", path)
    newer = scanned["vectors"] * 2.0
    second = _embeddings_file(tmp_path / "second_embeddings.parquet", scanned["paths"][:10], newer[:10])
    with Catalog(path, scale={"vector_batch_rows": TINY_BATCH}) as catalog:
        import_results(catalog, str(scanned["file"]), set_name=SET, kind="embedding")
        import_results(catalog, str(second), set_name=SET, kind="embedding")
        ids = dict(catalog.rows("SELECT rel_path, image_id FROM images"))
        gone = ids["img_011.jpg"]
        catalog.execute("UPDATE images SET present = false WHERE image_id = ?", [gone])
        vs = read_vectors(catalog, "embeddings", SET)
    assert len(vs) == N_IMAGES - 1 and gone not in set(vs.image_ids.tolist())
    by_id = dict(zip(vs.image_ids.tolist(), vs.vectors))
    for i in (0, 9, 10, 12):
        expected = newer[i] if i < 10 else scanned["vectors"][i]
        np.testing.assert_array_equal(by_id[ids[f"img_{i:03d}.jpg"]], expected)


@pytest.mark.parametrize("batch_rows", [1, ONE_BATCH])
def test_import_matches_each_sample_once_by_absolute_then_relative_then_cwd_path(tmp_path, monkeypatch,
                                                                                  batch_rows):
    """The whole file is matched in one join: absolute path first, then the path relative to a
    scanned root (the lowest image id when two roots hold it), then a path relative to the
    current directory; whatever the batch size, each row lands on the same image."""
    for root in ("r1", "r2"):
        for i in range(3):
            path = tmp_path / root / f"img_{i}.jpg"
            path.parent.mkdir(exist_ok=True)
            Image.new("RGB", (8, 8), (i * 40, 10 if root == "r1" else 90, 0)).save(path, "JPEG")
    with Catalog(tmp_path / "c.duckdb", scale={"vector_batch_rows": batch_rows}) as catalog:
        scan(catalog, [tmp_path / "r1", tmp_path / "r2"], extensions=[".jpg"], workers=1, quiet=True)
        ids = {f"{r}/{p}": i for i, r, p in catalog.rows(
            "SELECT image_id, parse_filename(root), rel_path FROM images")}
        monkeypatch.chdir(tmp_path)
        samples = [str(tmp_path / "r2" / "img_0.jpg"), "img_1.jpg", "r2/img_2.jpg", "nope.jpg", "img_1.jpg"]
        vectors = np.arange(len(samples) * 2, dtype=np.float32).reshape(-1, 2)
        file = _embeddings_file(tmp_path / "x_embeddings.parquet", samples, vectors)
        summary = import_results(catalog, str(file), set_name="m", kind="embedding")
        stored = catalog.rows("SELECT image_id, vector FROM embeddings WHERE set_name = 'm' ORDER BY rowid")
        got = dict(stored)
    assert (summary.rows, summary.matched, summary.unmatched) == (5, 4, 1)
    assert summary.unmatched_examples == ["nope.jpg"]
    first_img_1 = min(ids["r1/img_1.jpg"], ids["r2/img_1.jpg"])
    # rows 1 and 4 name the same image: both are stored, in file order
    assert [i for i, _ in stored].count(first_img_1) == 2
    assert [list(v) for i, v in stored if i == first_img_1] == [[2.0, 3.0], [8.0, 9.0]]
    assert sorted(got) == sorted([ids["r2/img_0.jpg"], first_img_1, ids["r2/img_2.jpg"]])
    assert list(got[ids["r2/img_0.jpg"]]) == [0.0, 1.0] and list(got[ids["r2/img_2.jpg"]]) == [4.0, 5.0]


def test_streaming_a_set_lowers_duckdbs_limit_but_never_raises_a_smaller_one(staged):
    """While a set streams out DuckDB's limit drops to SCAN_MEMORY_LIMIT, unless the user's own
    [scale] duckdb_memory_limit is already smaller; either way it is put back after."""
    from vdc_lake.catalog import sets
    for configured, during in (("1GB", sets.SCAN_MEMORY_LIMIT), ("64MB", "64MB")):
        with Catalog(staged[0], read_only=True, scale={"duckdb_memory_limit": configured}) as catalog:
            con = catalog.con
            before = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
            seen = []
            for _ in sets._stream_rows(catalog, "embeddings", SET, DIM, TINY_BATCH):
                # memory_limit is the database's: a second cursor reads it while the scan is open
                seen.append(con.cursor().execute("SELECT current_setting('memory_limit')").fetchall()[0][0])
            assert seen and all(abs(sets._setting_bytes(v) - sets._setting_bytes(during)) < 2**20 for v in seen), \
                (configured, seen)
            assert con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0] == before


def test_cwd_paths_of_import_samples_equal_os_path_abspath(tmp_path, monkeypatch):
    """The cwd-relative match path is computed with Arrow kernels; for every shape of sample it
    equals os.path.abspath(os.path.expanduser(sample)), and empty or null samples match nothing."""
    from vdc_lake.stages.predict import _paths_from_cwd

    monkeypatch.chdir(tmp_path)
    samples = ["a/b.jpg", "/x/y.jpg", "./a.jpg", "../a.jpg", "a//b.jpg", "a/b/", "~/x.jpg", "~",
               "/a/../b.jpg", "a/./b.jpg", ".hidden/x.jpg", "a/..b/c.jpg", "..x.jpg", "/", "//x.jpg",
               "a.b/../c.jpg", "~user/x.jpg", "dir with space/ü.jpg", "", None]
    got = _paths_from_cwd(pa.array(samples, pa.string())).to_pylist()
    assert got == [os.path.abspath(os.path.expanduser(s)) if s else None for s in samples]
