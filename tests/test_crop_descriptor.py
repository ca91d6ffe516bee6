"""The multi-view builtin descriptor (builtin-dct-msa, builtin-dct-ms before issue 23) finds centre crops through the real
scan -> sanitize -> dedup report -> plan dedup path; a one-view set made before it keeps working."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from examples.make_sample_data import make_sample_data
from vdc_lake.catalog.connection import Catalog
from vdc_lake.stages.dedup import fold_view_pairs, view_rows
from vdc_lake.kernels.descriptor import (
    ALPHA_VIEW_NAME,
    DEDUP_THRESHOLDS,
    DESCRIPTOR_DIM,
    DESCRIPTOR_NAME,
    MULTI_VIEW_NAME,
    SET_DIM,
    VIEWS,
    builtin_descriptor,
    descriptors_from_thumbnails,
    set_distances,
)
from vdc_lake.kernels.neighbors import radius_pairs_exact
from vdc_lake.catalog.sets import register_embedding_set, write_vectors

DEDUP_APPLY_THRESHOLD, DEDUP_REPORT_THRESHOLD = DEDUP_THRESHOLDS[MULTI_VIEW_NAME]

N_BASE = 24
# Centre crops keeping 80..90% of each side (1/12 cut from each side keeps 0.833).
KEEP = (0.8, 10 / 12, 0.867, 0.9)


def _cli(args: list, catalog: Path, cwd: Path) -> str:
    from vdc_lake.cli import cli

    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, ["--catalog", str(catalog), "-q", *map(str, args)], prog_name="vdc-lake")
    finally:
        os.chdir(old)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """(work folder, image root, manifest, {crop path: original path}): the sample data plus
    a centre crop of every base image in crops/ (JPEG q90)."""
    work = tmp_path_factory.mktemp("crops")
    root = work / "data"
    manifest = make_sample_data(root, n_base=N_BASE, seed=0)
    (root / "manifest.json").unlink()
    (root / "crops").mkdir()
    crop_of = {}
    for i, rel in enumerate(manifest["clean"]):
        with Image.open(root / rel) as img:
            rgb = img.convert("RGB")
        w, h = rgb.size
        keep = KEEP[i % len(KEEP)]
        dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
        crop = f"crops/{Path(rel).stem}_{round(keep * 100)}.jpg"
        rgb.crop((dx, dy, w - dx, h - dy)).save(root / crop, quality=90)
        crop_of[crop] = rel
    return work, root, manifest, crop_of


def _catalog(collection, name: str, *, one_view: bool) -> Path:
    """scan -> sanitize -> dedup report --set builtin on a fresh catalog; one_view registers the
    builtin set as a catalog from before the multi-view descriptor had it (builtin-dct, 143-d)."""
    work, root, _, _ = collection
    catalog = work / f"{name}.duckdb"
    _cli(["scan", root], catalog, work)
    if one_view:
        with Catalog(catalog) as c:
            run_id = c.begin_run("sanitize", {})
            register_embedding_set(c, "builtin", kind="descriptor", model=DESCRIPTOR_NAME, dim=DESCRIPTOR_DIM,
                                   preprocessing={"thumbnail": 32, "grayscale": True}, run_id=run_id)
            # Its images with transparency were described then, alpha ignored (a new one would be refused).
            transparent = c.rows("SELECT image_id, version, rel_path FROM images WHERE has_transparency")
            with Image.open(root / transparent[0][2]) as img:
                old = builtin_descriptor(img.convert("RGB"))[:DESCRIPTOR_DIM] * np.float32(VIEWS ** 0.5)
            write_vectors(c, "embeddings", "builtin", run_id, np.array([transparent[0][0]]),
                          np.array([transparent[0][1]]), old[None])
            c.finish_run(run_id)
    _cli(["sanitize"], catalog, work)
    _cli(["dedup", "report", "--set", "builtin"], catalog, work)
    return catalog


@pytest.fixture(scope="module")
def multi_view(collection):
    return _catalog(collection, "multi", one_view=False)


@pytest.fixture(scope="module")
def one_view(collection):
    return _catalog(collection, "single", one_view=True)


def _edges(catalog: Path, set_name: str = "builtin") -> dict[frozenset, float]:
    """{frozenset(rel_path a, rel_path b): distance} of the newest report's pairs."""
    with Catalog(catalog, read_only=True) as c:
        rows = c.rows(
            """
            SELECT ia.rel_path, ib.rel_path, e.distance FROM dup_edges e
            JOIN images ia ON ia.image_id = e.image_a JOIN images ib ON ib.image_id = e.image_b
            WHERE e.set_name = ? AND e.run_id = (SELECT max(run_id) FROM dup_edges WHERE set_name = ?)
            """, [set_name, set_name])
    return {frozenset((a, b)): d for a, b, d in rows}


def _recorded(catalog: Path) -> tuple:
    with Catalog(catalog, read_only=True) as c:
        return c.rows("SELECT model, dim, apply_threshold, report_threshold FROM embedding_sets "
                      "WHERE name = 'builtin'")[0]


def _crop_recall(catalog: Path, crop_of: dict[str, str], threshold: float) -> float:
    edges = _edges(catalog)
    return np.mean([edges.get(frozenset((c, o)), 1.0) < threshold for c, o in crop_of.items()])


def _family(manifest: dict, crop_of: dict[str, str]) -> dict[str, str]:
    """path -> its original's path, for every copy and crop (an original maps to itself)."""
    family = {p: p for p in manifest["clean"]}
    family.update(manifest["copy_of"])
    family.update(crop_of)
    family["modes/anim.webp"] = "modes/anim.gif"  # the same frames in two formats
    return family


def test_new_set_is_multi_view_and_matches_centre_crops(multi_view, one_view, collection):
    _, _, _, crop_of = collection
    assert _recorded(multi_view) == (ALPHA_VIEW_NAME, SET_DIM, DEDUP_APPLY_THRESHOLD, DEDUP_REPORT_THRESHOLD)
    new = _crop_recall(multi_view, crop_of, DEDUP_APPLY_THRESHOLD)
    old = _crop_recall(one_view, crop_of, DEDUP_APPLY_THRESHOLD)
    assert new >= 0.9, new  # measured: every crop keeping 80..90% of each side
    assert old <= 0.5 and old < new, old  # the one view finds few: this test can fail


def test_plan_dedup_removes_crops_with_their_originals(multi_view, collection):
    work, root, _, crop_of = collection
    out = _cli(["plan", "dedup", "--set", "builtin"], multi_view, work)
    assert "plan dedup" in out, out
    with Catalog(multi_view, read_only=True) as c:
        deleted = {r[0] for r in c.rows("SELECT rel_path FROM dedup_actions() JOIN images USING (image_id) "
                                        "WHERE action = 'delete'")}
    together = [c for c, o in crop_of.items() if not {c, o} & deleted]
    assert len(together) <= 0.1 * len(crop_of), together  # crop or original removed from each pair


def test_unrelated_images_do_not_pair_at_the_apply_threshold(multi_view, collection):
    _, _, manifest, crop_of = collection
    family = _family(manifest, crop_of)
    false = {tuple(sorted(p)): d for p, d in _edges(multi_view).items()
             if d < DEDUP_APPLY_THRESHOLD and len({family.get(x, x) for x in p}) == 2}
    assert not false, false


def test_one_view_set_reports_as_before(one_view, collection):
    """A builtin set made before the multi-view descriptor stays 143-d (sanitize writes view 0) and
    its report is the plain one-view search: the pairs of 1 - cos under the report threshold."""
    work, _, manifest, _ = collection
    assert _recorded(one_view)[:2] == (DESCRIPTOR_NAME, DESCRIPTOR_DIM)
    with Catalog(one_view, read_only=True) as c:
        rows = c.rows("SELECT i.rel_path, e.vector FROM embeddings e JOIN images i USING (image_id) "
                      "WHERE e.set_name = 'builtin' ORDER BY i.rel_path")
    paths = [r[0] for r in rows]
    vectors = np.array([r[1] for r in rows], np.float64)
    assert vectors.shape[1] == DESCRIPTOR_DIM
    dist = 1 - vectors @ vectors.T
    i, j = np.nonzero(np.triu(dist < DEDUP_REPORT_THRESHOLD - 1e-4, 1))
    expected = {frozenset((paths[a], paths[b])) for a, b in zip(i, j)}
    edges = _edges(one_view)
    assert expected <= set(edges) and all(d < DEDUP_REPORT_THRESHOLD for d in edges.values())
    # resized / recompressed copies still found at the apply threshold, and plan dedup runs on it
    for kind in ("resized_copy", "recompressed_copy"):
        for copy in manifest[kind]:
            assert edges.get(frozenset((copy, manifest["copy_of"][copy])), 1.0) < DEDUP_APPLY_THRESHOLD, copy
    assert "plan dedup" in _cli(["plan", "dedup", "--set", "builtin"], one_view, work)


def test_ann_path_gives_the_exact_image_pairs(multi_view, collection):
    work, _, _, _ = collection
    exact = _edges(multi_view)
    _cli(["dedup", "report", "--set", "builtin", "--method", "ann"], multi_view, work)
    ann = _edges(multi_view)
    assert set(ann) == set(exact)  # a small set: the graph reaches every pair
    assert all(abs(ann[p] - exact[p]) < 1e-6 for p in exact)


def test_fold_gives_one_pair_per_image_pair_with_the_set_distance():
    rng = np.random.default_rng(3)
    n = 40
    thumbs = rng.random((n // 2, VIEWS, 32, 32))
    # half the images are noisy centre-view shuffles of the others: some close pairs of every kind
    other = thumbs[:, ::-1] + 0.05 * rng.random(thumbs.shape)
    vectors = descriptors_from_thumbnails(np.concatenate([thumbs, other]).reshape(-1, 32, 32)).reshape(n, SET_DIM)
    ids = np.arange(100, 100 + n, dtype=np.int64) * 7  # image ids are not row numbers
    rows, keys = view_rows(vectors, ids, VIEWS)
    assert rows.shape == (n * VIEWS, DESCRIPTOR_DIM) and np.shares_memory(rows, vectors)
    threshold = 0.9
    dist = set_distances(vectors)
    i, j = np.nonzero(np.triu(dist < threshold, 1))
    pairs = fold_view_pairs(radius_pairs_exact(rows, keys, threshold=threshold), VIEWS)
    assert len(pairs) == len(i) > n // 2
    assert np.array_equal(pairs.a, ids[i]) and np.array_equal(pairs.b, ids[j])  # sorted, once, no self pairs
    np.testing.assert_allclose(pairs.distance, dist[i, j], atol=1e-5)
    capped = fold_view_pairs(radius_pairs_exact(rows, keys, threshold=threshold, max_pairs_per_image=2 * VIEWS),
                             VIEWS, 2)
    assert 0 < len(capped) < len(pairs) and len(capped.truncated)
    assert len(capped) <= 2 * n  # each pair is among the nearest 2 of one of its images
