"""Embedding and prediction sets (vdc_lake.catalog.sets): registration, bulk writes and streamed reads
through a real catalog of scanned images; only the current version of present images is read, the
newest run's row wins, and a set larger than the memory budget is read into a memmap."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import copy_catalog
from vdc_lake.catalog.connection import Catalog
from vdc_lake.catalog.sets import (count_vectors, iter_vectors, missing_images, read_vectors, register_embedding_set,
                                   register_prediction_set, set_dim, write_vectors)
from vdc_lake.errors import InvalidNameError, StageError
from vdc_lake.stages.scan import scan

DIM = 5


def _images(root: Path, n: int) -> Path:
    root.mkdir(exist_ok=True)
    for i in range(n):
        Image.new("RGB", (64 + 4 * i, 48), (30 * i, 200 - 20 * i, 90)).save(root / f"im{i}.png")
    return root


def _scan(catalog: Catalog, root: Path) -> None:
    scan(catalog, [root], extensions=[".png"], workers=1, quiet=True)


def _current(catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
    """(image_ids, versions) of present images, in image_id order."""
    rows = catalog.rows("SELECT image_id, version FROM images WHERE present ORDER BY image_id")
    return np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int32)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, Path]:
    """(a closed catalog of 8 scanned images, their folder); copy it, never change either."""
    folder = tmp_path_factory.mktemp("sets")
    root = _images(folder / "images", 8)
    with Catalog(folder / "catalog.duckdb") as catalog:
        _scan(catalog, root)
    return folder / "catalog.duckdb", root


@pytest.fixture
def scanned(template, tmp_path) -> Catalog:
    """A private copy of the template catalog, open for writing (its images are the template's: read them only)."""
    copy_catalog(template[0], tmp_path / "catalog.duckdb")
    with Catalog(tmp_path / "catalog.duckdb") as catalog:
        yield catalog


@pytest.fixture
def own_tree(tmp_path) -> tuple[Catalog, Path]:
    """An open catalog of 8 scanned images in a folder of this test's own (to change and scan again)."""
    root = _images(tmp_path / "images", 8)
    with Catalog(tmp_path / "catalog.duckdb") as catalog:
        _scan(catalog, root)
        yield catalog, root


def _write_set(catalog: Catalog, name: str, seed: int) -> np.ndarray:
    """Register `name` and write one random vector per present image, in shuffled order; returns
    the vectors in image_id order."""
    run = catalog.begin_run("predict", {"set": name})
    register_embedding_set(catalog, name, kind="embedding", model=None, dim=DIM, preprocessing={"size": 8},
                           run_id=run)
    ids, versions = _current(catalog)
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(ids), DIM)).astype(np.float32)
    order = rng.permutation(len(ids))
    assert write_vectors(catalog, "embeddings", name, run, ids[order], versions[order], vectors[order]) == len(ids)
    catalog.finish_run(run)
    return vectors


def test_vectors_written_are_read_back_exactly_in_image_order(scanned):
    catalog = scanned
    vectors = _write_set(catalog, "emb", seed=0)
    ids, versions = _current(catalog)
    got = read_vectors(catalog, "embeddings", "emb", batch_rows=3)
    assert len(got) == 8 and repr(got) == "VectorSet('emb', n=8, dim=5)"
    assert got.image_ids.tolist() == ids.tolist() and got.versions.tolist() == versions.tolist()
    assert got.vectors.dtype == np.float32 and np.array_equal(got.vectors, vectors)
    assert set_dim(catalog, "embeddings", "emb") == DIM
    assert count_vectors(catalog, "embeddings", "emb") == 8
    batches = list(iter_vectors(catalog, "embeddings", "emb", batch_rows=3))
    assert max(len(b) for b in batches) <= 3 and sum(len(b) for b in batches) == 8
    by_id = {int(i): v for b in batches for i, v in zip(b.image_ids, b.vectors)}
    assert all(np.array_equal(by_id[int(i)], v) for i, v in zip(ids, vectors))
    assert missing_images(catalog, "embeddings", "emb").num_rows == 0


def test_a_set_holds_the_current_version_of_present_images_and_the_newest_run(own_tree):
    catalog, root = own_tree
    first = _write_set(catalog, "emb", seed=1)
    ids, versions = _current(catalog)
    newer = np.full((1, DIM), 7.0, np.float32)  # image 0 computed again by a later run
    run = catalog.begin_run("predict", {"set": "emb"})
    write_vectors(catalog, "embeddings", "emb", run, ids[:1], versions[:1], newer)
    catalog.finish_run(run)

    (root / "im1.png").unlink()  # gone
    Image.new("RGB", (70, 70), (1, 2, 3)).save(root / "im2.png")  # changed: a new version, no vector yet
    _scan(catalog, root)
    got = read_vectors(catalog, "embeddings", "emb")
    changed = int(catalog.scalar("SELECT image_id FROM images WHERE rel_path = 'im2.png'"))
    gone = int(catalog.scalar("SELECT image_id FROM images WHERE rel_path = 'im1.png'"))
    kept = [i for i in ids.tolist() if i not in (changed, gone)]
    assert got.image_ids.tolist() == kept
    assert np.array_equal(got.vectors[0], newer[0])
    assert np.array_equal(got.vectors[1:], first[[ids.tolist().index(i) for i in kept[1:]]])
    assert count_vectors(catalog, "embeddings", "emb") == 6
    assert missing_images(catalog, "embeddings", "emb").column("image_id").to_pylist() == [changed]


def test_a_set_beyond_the_memory_budget_is_read_into_a_memmap_that_leaves_no_file(scanned, tmp_path):
    catalog = scanned
    vectors = _write_set(catalog, "emb", seed=2)
    in_memory = read_vectors(catalog, "embeddings", "emb", memory_budget=8 * DIM * 4)  # exactly fits
    assert not isinstance(in_memory.vectors, np.memmap)
    spilled = read_vectors(catalog, "embeddings", "emb", batch_rows=2, memory_budget=16)
    assert isinstance(spilled.vectors, np.memmap) and repr(spilled).endswith(", spilled)")
    assert np.array_equal(np.asarray(spilled.vectors), vectors)
    assert np.array_equal(spilled.image_ids, in_memory.image_ids)
    spill = tmp_path / "catalog.duckdb.spill"
    assert spill.is_dir() and os.listdir(spill) == []  # unlinked at once: nothing left after a crash


def test_predictions_are_a_set_of_their_own_sized_by_their_class_names(scanned):
    catalog = scanned
    run = catalog.begin_run("predict", {})
    register_prediction_set(catalog, "rot", kind="rotation", model=None, class_names=["0", "90", "180", "270"],
                            preprocessing=None, run_id=run)
    register_prediction_set(catalog, "rot", kind="rotation", model=None, class_names=["0"], preprocessing=None,
                            run_id=run)  # registered already: kept as it is
    ids, versions = _current(catalog)
    probs = np.random.default_rng(3).dirichlet(np.ones(4), len(ids)).astype(np.float32)
    write_vectors(catalog, "predictions", "rot", run, ids, versions, probs)
    assert set_dim(catalog, "predictions", "rot") == 4
    assert np.array_equal(read_vectors(catalog, "predictions", "rot").vectors, probs)
    with pytest.raises(StageError, match=r"^no set named 'rot'; known sets: none yet "):
        set_dim(catalog, "embeddings", "rot")


def test_registration_checks_the_name_and_the_dimension(scanned):
    catalog = scanned
    run = catalog.begin_run("predict", {})
    register_embedding_set(catalog, "sscd_v2", kind="embedding", model="sscd_disc_mixup", dim=DIM,
                           preprocessing=None, run_id=run)
    assert catalog.rows("SELECT apply_threshold, report_threshold FROM embedding_sets WHERE name = 'sscd_v2'") == [
        (0.25, 0.5)]  # the model's recommended dedup thresholds
    register_embedding_set(catalog, "sscd_v2", kind="embedding", model="sscd_disc_mixup", dim=DIM,
                           preprocessing=None, run_id=run)  # the same again: fine
    with pytest.raises(StageError, match=r"^embedding set 'sscd_v2' holds 5-d vectors, not 6-d; "):
        register_embedding_set(catalog, "sscd_v2", kind="embedding", model=None, dim=6, preprocessing=None,
                               run_id=run)
    with pytest.raises(InvalidNameError, match=r"^set name '\.\./x' is not allowed"):
        register_embedding_set(catalog, "../x", kind="embedding", model=None, dim=DIM, preprocessing=None,
                               run_id=run)
    with pytest.raises(StageError, match=r"^no set named 'nope'; known sets: sscd_v2 "):
        read_vectors(catalog, "embeddings", "nope")
    assert catalog.scalar("SELECT count(*) FROM embedding_sets") == 1
