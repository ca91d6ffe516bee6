"""Range search for near-duplicates: every pair under the threshold (exact and ANN, images with
more than 100 neighbours included), bf16 scores with the fp32 re-check equal to fp32, the Ray
tiled search equal to the local one (and resumable per tile), centring inside the search, and
no HNSW index built when the report will not use it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import copy_catalog
from vdc_lake.catalog.connection import Catalog
from vdc_lake.kernels import neighbors, neighbors_exact
from vdc_lake.kernels.descriptor import VIEWS
from vdc_lake.kernels.neighbors import build_index, radius_pairs_ann, radius_pairs_exact
from vdc_lake.catalog.sets import read_vectors

N, D = 2400, 64
THRESHOLD = 0.5


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def crowded():
    """Random unit vectors plus two tight groups of 180 and 130 (every member has more than
    100 neighbours under THRESHOLD) and a ring of pairs planted just under / over it.
    Returns (x float32 [N, D], keys [N], brute-force pair set under THRESHOLD)."""
    rng = np.random.default_rng(7)
    x = _unit(rng.standard_normal((N, D)))
    for start, size in ((0, 180), (500, 130)):
        centre = _unit(rng.standard_normal((1, D)))
        x[start:start + size] = _unit(centre + 0.45 * rng.standard_normal((size, D)) / np.sqrt(D))
    # pairs whose exact distance is within bf16's error of the threshold: a bf16 search without
    # the re-check margin gets some of them wrong
    rows = np.arange(1000, 1400).reshape(200, 2)
    target = THRESHOLD + np.linspace(-0.006, 0.006, 200)
    a = x[rows[:, 0]]
    u = rng.standard_normal(a.shape)
    u = _unit(u - (u * a).sum(1, keepdims=True) * a)
    cos = 1 - target
    x[rows[:, 1]] = cos[:, None] * a + np.sqrt(1 - cos[:, None] ** 2) * u
    x = x.astype(np.float32)
    keys = (np.arange(N) * 3 + 11).astype(np.int64)
    truth = _brute_force(x, keys, THRESHOLD)
    return x, keys, truth


def _brute_force(x, keys, threshold):
    """{(key_a, key_b): distance} of every pair under threshold, by numpy in float64."""
    x64 = x.astype(np.float64)
    x64 /= np.linalg.norm(x64, axis=1, keepdims=True)
    dist = (1.0 - x64 @ x64.T).astype(np.float32)
    i, j = np.triu_indices(len(x), 1)
    under = dist[i, j] < np.float32(threshold)
    return {(int(keys[a]), int(keys[b])): float(dist[a, b]) for a, b in zip(i[under], j[under])}


def _as_dict(pairs):
    return {(int(a), int(b)): float(d) for a, b, d in zip(pairs.a, pairs.b, pairs.distance)}


def test_data_has_images_with_more_than_100_neighbours(crowded):
    _, keys, truth = crowded
    degree = np.bincount(np.searchsorted(keys, np.array(list(truth)).ravel()), minlength=len(keys))
    assert (degree > 100).sum() >= 300


def test_exact_range_search_returns_every_pair_under_the_threshold(crowded):
    x, keys, truth = crowded
    pairs = radius_pairs_exact(x, keys, threshold=THRESHOLD, tile_rows=700)
    found = _as_dict(pairs)
    assert found.keys() == truth.keys()
    assert max(abs(found[p] - truth[p]) for p in truth) < 1e-6
    assert len(pairs.truncated) == 0


@pytest.fixture(scope="module")
def crowded_index(crowded):
    x, keys, _ = crowded
    return build_index(x, keys, threads=1)


def test_ann_widens_its_search_until_every_pair_is_found(crowded, crowded_index):
    x, keys, truth = crowded
    pairs = radius_pairs_ann(crowded_index, x, keys, threshold=THRESHOLD, k=16, threads=1)
    assert _as_dict(pairs).keys() == truth.keys()  # k=16 alone would keep ~16 per image
    assert len(pairs.truncated) == 0


def test_ann_cap_names_every_image_it_cut(crowded, crowded_index):
    x, keys, truth = crowded
    pairs = radius_pairs_ann(crowded_index, x, keys, threshold=THRESHOLD, max_pairs_per_image=50, threads=1)
    degree = np.bincount(np.searchsorted(keys, np.array(list(truth)).ravel()), minlength=len(keys))
    assert set(keys[degree > 50].tolist()) <= set(pairs.truncated.tolist())
    found = np.bincount(np.searchsorted(keys, np.r_[pairs.a, pairs.b]), minlength=len(keys))
    assert np.all(found >= np.minimum(degree, 50))  # each image keeps (at least) its own nearest
    assert len(pairs) < len(truth) and _as_dict(pairs).keys() <= truth.keys()


def _near_threshold_pairs(n_pairs=1000, d=32, seed=3):
    """Disjoint pairs whose exact distance lies just under THRESHOLD (within 0.0008): there
    bf16's rounding of the inputs decides whether a pair scores above 1 - THRESHOLD."""
    rng = np.random.default_rng(seed)
    a = _unit(rng.standard_normal((n_pairs, d)))
    u = rng.standard_normal(a.shape)
    u = _unit(u - (u * a).sum(1, keepdims=True) * a)
    cos = 1 - (THRESHOLD - np.linspace(1e-5, 8e-4, n_pairs))
    b = cos[:, None] * a + np.sqrt(1 - cos[:, None] ** 2) * u
    return np.vstack([a, b]).astype(np.float32), np.arange(2 * n_pairs, dtype=np.int64)


def test_bf16_scores_with_the_recheck_equal_fp32(crowded, monkeypatch):
    for x, keys in (crowded[:2], _near_threshold_pairs()):
        fp32 = radius_pairs_exact(x, keys, threshold=THRESHOLD, precision="fp32", tile_rows=512)
        bf16 = radius_pairs_exact(x, keys, threshold=THRESHOLD, precision="bf16", tile_rows=512)
        for field in ("a", "b", "distance"):
            np.testing.assert_array_equal(getattr(bf16, field), getattr(fp32, field))
        assert _as_dict(fp32).keys() == _brute_force(x, keys, THRESHOLD).keys()
    # the margin is what makes them equal: without it bf16 rounding loses pairs near the threshold
    monkeypatch.setattr(neighbors_exact, "RECHECK_SAFETY", 0.0)
    no_margin = radius_pairs_exact(x, keys, threshold=THRESHOLD, precision="bf16", tile_rows=512)
    assert len(no_margin) < len(fp32)


def test_error_bound_is_derived_per_precision():
    bf16 = neighbors.score_error_bound("bf16", 512)
    assert 0.011 < bf16 < 0.013
    assert neighbors.score_error_bound("tf32", 512) < bf16 / 8
    assert neighbors.score_error_bound("fp32", 512) < 1e-4
    with pytest.raises(ValueError, match="precision must be one of"):
        neighbors.score_error_bound("fp16", 512)


# ------------------------------------------------------------------ Ray tiles

@pytest.fixture(scope="module")
def ray_instance(ray_cluster):
    # only the tests that use Ray skip without it (conftest.ray_cluster)
    yield ray_cluster


def test_ray_tiles_equal_the_local_search_and_resume_from_staged_tiles(crowded, ray_instance, tmp_path):
    from vdc_lake.scale import ray_backend
    x, keys, _ = crowded
    local = radius_pairs_exact(x, keys, threshold=THRESHOLD, max_pairs_per_image=120)
    assert len(local.truncated) > 0  # the cap is applied over the union of the tiles, like locally
    tiled = ray_backend.range_search(x, keys, threshold=THRESHOLD, staging_dir=tmp_path, tile_rows=700,
                                     max_pairs_per_image=120, quiet=True)
    for field in ("a", "b", "distance", "truncated"):
        np.testing.assert_array_equal(getattr(tiled, field), getattr(local, field))
    assert not list(tmp_path.glob("dedup-tiles-*"))  # staging removed once merged

    # a staged tile is taken as it is, not recomputed: plant one holding a marker pair
    folder = ray_backend.range_staging_folder(tmp_path, x, keys, threshold=THRESHOLD, tile_rows=700,
                                              precision=None, max_pairs_per_image=None)
    folder.mkdir(parents=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [11], "b": [14], "distance": [0.25]}, schema=ray_backend.TILE_SCHEMA),
                   ray_backend.tile_part_path(folder, 0, 0))
    resumed = ray_backend.range_search(x, keys, threshold=THRESHOLD, staging_dir=tmp_path, tile_rows=700,
                                       quiet=True)
    found = _as_dict(resumed)
    assert found[(11, 14)] == 0.25
    within_first_block = {p for p in _as_dict(radius_pairs_exact(x, keys, threshold=THRESHOLD))
                          if keys.searchsorted(p[1]) < 700}
    assert not (within_first_block - {(11, 14)}) & found.keys()  # tile (0, 0) was not recomputed


# ------------------------------------------------------------------ the dedup stage


@pytest.fixture(scope="module")
def builtin_template(sample_template, tmp_path_factory):
    """A catalog of the sample collection, scanned and sanitized once (builtin descriptors);
    tests copy the file (the dedup stage reads no image)."""
    from click.testing import CliRunner

    from vdc_lake.cli import cli

    path = tmp_path_factory.mktemp("builtin") / "c.duckdb"
    for args in (["scan", str(sample_template.root)], ["sanitize"]):
        result = CliRunner().invoke(cli, ["--catalog", str(path), "-q", *args])
        assert result.exit_code == 0, result.output
    return path


def _catalog_with_builtin(builtin_template, catalog_path):
    copy_catalog(builtin_template, catalog_path)


def _edges(catalog_path, run_id=None):
    with Catalog(catalog_path, read_only=True) as c:
        run_id = run_id or c.scalar("SELECT max(run_id) FROM runs WHERE stage = 'dedup-report'")
        return set(c.rows("SELECT image_a, image_b, distance FROM dup_edges WHERE run_id = ?", [run_id]))


def test_index_is_not_built_when_the_report_does_not_use_it(builtin_template, catalog_path, run_cli):
    _catalog_with_builtin(builtin_template, catalog_path)
    # the walkthrough's order: index, then report with the auto method, centring in the search
    result = run_cli(["dedup", "index", "--set", "builtin", "--center", "--l2-normalize"], catalog_path)
    assert result.exit_code == 0, result.output
    assert "index not built" in result.output and "exact search" in result.output
    result = run_cli(["dedup", "report", "--set", "builtin", "--report-threshold", "0.3", "--center"], catalog_path)
    assert result.exit_code == 0, result.output
    assert "method exact: " in result.output and "<= 200,000 on the CPU" in result.output
    with Catalog(catalog_path, read_only=True) as c:
        assert c.scalar("SELECT count(*) FROM ann_indexes") == 0
        params = json.loads(c.scalar("SELECT params FROM runs WHERE stage = 'dedup-report'"))
        assert not (c.path.parent / (c.path.name + ".indexes")).exists()
    assert params["center"] is True and params["method"] == "exact"
    # --force builds it (for --method ann)
    result = run_cli(["dedup", "index", "--set", "builtin", "--force"], catalog_path)
    assert result.exit_code == 0 and "index run" in result.output, result.output
    with Catalog(catalog_path, read_only=True) as c:
        assert c.scalar("SELECT count(*) FROM ann_indexes") == 1


def test_report_centres_in_the_search_without_an_index(builtin_template, catalog_path, run_cli):
    _catalog_with_builtin(builtin_template, catalog_path)
    result = run_cli(["dedup", "report", "--set", "builtin", "--report-threshold", "0.6", "--center",
                      "--method", "exact"], catalog_path)
    assert result.exit_code == 0, result.output
    edges = _edges(catalog_path)
    with Catalog(catalog_path) as c:
        vs = read_vectors(c, "embeddings", "builtin")
    # the builtin set holds VIEWS views per image, centred per view and compared as sets
    views = vs.vectors.astype(np.float64).reshape(len(vs), VIEWS, -1)
    centred = views - views.reshape(-1, views.shape[2]).mean(0)
    truth = _set_brute_force(centred.reshape(len(vs), -1), vs.image_ids, 0.6)
    assert {(a, b) for a, b, _ in edges} == truth.keys() and truth
    assert max(abs(d - truth[(a, b)]) for a, b, d in edges) < 1e-5
    uncentred = _set_brute_force(vs.vectors, vs.image_ids, 0.6)
    assert uncentred.keys() != truth.keys()  # centring changed the answer: it was applied


def _set_brute_force(x, keys, threshold):
    """_brute_force for multi-view set vectors (descriptor.set_distances)."""
    from vdc_lake.kernels.descriptor import set_distances

    dist = set_distances(x).astype(np.float32)
    i, j = np.triu_indices(len(x), 1)
    under = dist[i, j] < np.float32(threshold)
    return {(int(keys[a]), int(keys[b])): float(dist[a, b]) for a, b in zip(i[under], j[under])}


def test_cap_warns_and_ray_report_equals_local(builtin_template, catalog_path, run_cli, tmp_path, ray_instance):
    _catalog_with_builtin(builtin_template, catalog_path)
    config = tmp_path / "small_tiles.toml"
    config.write_text("[dedup]\nray_tile_rows = 16\n")
    runs = {}
    for backend in ("local", "ray"):
        result = run_cli(["dedup", "report", "--set", "builtin", "--report-threshold", "0.5", "--exact",
                          "--max-pairs-per-image", "2", "--backend", backend], catalog_path, config=config)
        assert result.exit_code == 0, result.output
        assert "Warning:" in result.output and "Raise --max-pairs-per-image" in result.output
        runs[backend] = _edges(catalog_path)
    assert runs["ray"] == runs["local"] and runs["local"]
    result = run_cli(["dedup", "report", "--set", "builtin", "--method", "ann", "--backend", "ray"], catalog_path)
    assert result.exit_code == 1 and "--backend ray runs the exact search only" in result.output


def test_multi_view_rows_keep_only_pairs_that_decide_an_image_pair():
    """Rows of a 3-view set (keys image_id * 3 + view): an image's own views, which sit close
    together, and pairs of two partial views are dropped where they are found, so they never
    count against the cap (each image here has one partner: none is truncated at cap 1), and
    every backend agrees with the brute force over the kept rule."""
    from vdc_lake.stages.dedup import fold_view_pairs

    rng = np.random.default_rng(3)
    n, views, d = 40, 3, 32
    base = _unit(rng.standard_normal((n, d)))
    base[1] = _unit(base[:1] + 0.05 * rng.standard_normal((1, d)))[0]  # images 0 and 1: a real pair
    rows = _unit(np.repeat(base, views, axis=0) + 0.02 * rng.standard_normal((n * views, d))).astype(np.float32)
    keys = (np.arange(n)[:, None] * views + np.arange(views)).reshape(-1)
    dist = 1.0 - rows @ rows.T
    truth = {(int(a), int(b)) for a, b in zip(*np.nonzero(np.triu(dist < 0.3, 1)))
             if neighbors.view_pairs_kept(np.array([keys[a]]), np.array([keys[b]]), views)[0]}
    assert truth and all(keys[a] // views != keys[b] // views for a, b in truth)
    index = build_index(rows, keys, dtype="f32")
    exact = lambda **kw: radius_pairs_exact(rows, keys, threshold=0.3, tile_rows=17, **kw)  # noqa: E731
    ann = lambda **kw: radius_pairs_ann(index, rows, keys, threshold=0.3, k=2, **kw)  # noqa: E731
    for search in (exact, ann):
        found = search(views=views)
        assert {(int(a), int(b)) for a, b in zip(found.a, found.b)} == {(keys[a], keys[b]) for a, b in truth}
        everything = search()  # without the rule: the own-view pairs are there
        assert any(a // views == b // views for a, b in zip(everything.a, everything.b))
    # capped at one partner per image (views pairs per row): nobody is cut. (The ANN path flags
    # a row whose list may go on past its cap, exactly full included, so it is held to +1.)
    for search, row_cap in ((exact, views), (ann, views + 1)):
        capped = fold_view_pairs(search(views=views, max_pairs_per_image=row_cap), views, 1)
        assert len(capped.truncated) == 0 and {(int(a), int(b)) for a, b in zip(capped.a, capped.b)} == {(0, 1)}
