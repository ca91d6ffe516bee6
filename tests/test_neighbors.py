"""Tests for vdc_lake.kernels.neighbors: pair finders (usearch + exact torch), components, keepers."""

import numpy as np
import pytest

from vdc_lake.kernels.neighbors import (
    PairSet,
    build_index,
    cap_pairs_per_image,
    choose_keepers,
    connected_components,
    open_index,
    prepare_vectors,
    radius_pairs_ann,
    radius_pairs_exact,
    save_index,
)

N, D = 2000, 128
THRESHOLD = 0.3


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _planted(n=N, d=D, n_pairs=60, max_distance=0.5, seed=0):
    """Random unit vectors (pairwise cosine distance ~1 +- 0.09 at d=128) plus planted
    pairs at known distances spread over [0, max_distance]. Returns (x, pairs, dists),
    pairs as row numbers [p, 2] with row a < row b."""
    rng = np.random.default_rng(seed)
    x = _unit(rng.standard_normal((n, d))).astype(np.float32)
    rows = rng.permutation(n)[: 2 * n_pairs].reshape(n_pairs, 2)
    rows.sort(axis=1)
    dist = np.linspace(0.0, max_distance, n_pairs)
    a = x[rows[:, 0]].astype(np.float64)
    u = rng.standard_normal((n_pairs, d))
    u = _unit(u - (u * a).sum(1, keepdims=True) * a)
    cos = 1.0 - dist
    x[rows[:, 1]] = cos[:, None] * a + np.sqrt(1 - cos**2)[:, None] * u
    return x, rows, dist


def _reference_distance(x, a, b):
    xa, xb = x[a].astype(np.float64), x[b].astype(np.float64)
    return 1 - (xa * xb).sum(1) / np.linalg.norm(xa, axis=1) / np.linalg.norm(xb, axis=1)


def _pair_set(p: PairSet):
    return set(zip(p.a.tolist(), p.b.tolist()))


@pytest.fixture(scope="module")
def data():
    x, rows, dist = _planted()
    keys = np.arange(N, dtype=np.int64)
    return x, keys, rows, dist


@pytest.fixture(scope="module")
def index(data):
    x, keys, _, _ = data
    return build_index(x, keys, threads=1)


@pytest.fixture(scope="module")
def ann_pairs(data, index):
    x, keys, _, _ = data
    return radius_pairs_ann(index, x, keys, threshold=THRESHOLD, threads=1)


def _expected(rows, dist, threshold):
    under = dist < threshold
    return set(map(tuple, rows[under].tolist()))


def _assert_well_formed(p: PairSet):
    assert p.a.dtype == np.int64 and p.b.dtype == np.int64 and p.distance.dtype == np.float32
    assert np.all(p.a < p.b)
    assert len(_pair_set(p)) == len(p)
    order = np.lexsort((p.b, p.a))
    assert np.array_equal(order, np.arange(len(p)))


# ------------------------------------------------------------------ prepare_vectors


def test_prepare_vectors_centres_then_normalises():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 1.0, (500, 16))
    before = x.copy()
    out, mean = prepare_vectors(x, center=True, l2_normalize=True)
    assert out.dtype == np.float32 and mean.dtype == np.float32
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    expected = _unit(x - x.mean(0))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert np.array_equal(x, before)


def test_prepare_vectors_uses_given_mean_and_options():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [2.0, 3.0]])
    given = np.array([2.0, 3.0])
    out, mean = prepare_vectors(x, center=given, l2_normalize=True)
    np.testing.assert_array_equal(mean, given.astype(np.float32))
    s = np.sqrt(0.5)
    np.testing.assert_allclose(out, [[-s, -s], [s, s], [0.0, 0.0]], atol=1e-7)  # zero stays 0

    out, mean = prepare_vectors(x, center=False, l2_normalize=False)
    assert mean is None
    np.testing.assert_array_equal(out, x.astype(np.float32))


def test_prepare_vectors_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="mean of descriptors"):
        prepare_vectors(np.ones((3, 4)), center=np.zeros(5), l2_normalize=True)
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        prepare_vectors(np.ones(4), center=True, l2_normalize=True)


# ------------------------------------------------------------------ pair finders


def test_ann_finds_planted_pairs_with_exact_distances(data, ann_pairs):
    x, _, rows, dist = data
    _assert_well_formed(ann_pairs)
    assert _pair_set(ann_pairs) == _expected(rows, dist, THRESHOLD)
    np.testing.assert_allclose(
        ann_pairs.distance, _reference_distance(x, ann_pairs.a, ann_pairs.b), atol=2e-6
    )
    assert ann_pairs.distance.max() < THRESHOLD  # planted pairs above it are left out


def test_exact_finds_the_same_pairs_with_uneven_tiles(data, ann_pairs):
    x, keys, rows, dist = data
    # a last tile shorter than the others exercises the block edges
    exact = radius_pairs_exact(x, keys, threshold=THRESHOLD, tile_rows=300)
    _assert_well_formed(exact)
    assert _pair_set(exact) == _expected(rows, dist, THRESHOLD)
    np.testing.assert_array_equal(exact.a, ann_pairs.a)
    np.testing.assert_array_equal(exact.b, ann_pairs.b)
    np.testing.assert_array_equal(exact.distance, ann_pairs.distance)


def test_exact_returns_every_pair_of_a_group_and_reports_progress():
    # 6 copies of one vector: all 15 pairs come back (a range search, not the k nearest)
    rng = np.random.default_rng(2)
    x = _unit(rng.standard_normal((40, 32))).astype(np.float32)
    x[10:16] = x[10]
    calls = []
    pairs = radius_pairs_exact(
        x, np.arange(40), threshold=0.1, tile_rows=7,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert _pair_set(pairs) == {(a, b) for a in range(10, 16) for b in range(a + 1, 16)}
    assert calls[-1] == (21, 21) and len(calls) == 21  # 6 x 6 blocks, upper triangle
    assert len(pairs.truncated) == 0


def test_cap_keeps_each_images_nearest_pairs_and_names_the_cut_images():
    # row 0 close to rows 1..8 at rising distances; rows 1..8 far from each other
    rng = np.random.default_rng(5)
    base = _unit(rng.standard_normal((1, 64)))
    others = _unit(rng.standard_normal((20, 64)))
    others -= (others @ base.T) * base
    others = _unit(others)
    cos = 1 - np.linspace(0.01, 0.08, 8)
    x = np.vstack([base, cos[:, None] * base + np.sqrt(1 - cos[:, None] ** 2) * others[:8], others[8:]])
    x = x.astype(np.float32)
    keys = np.arange(len(x)) * 10
    full = radius_pairs_exact(x, keys, threshold=0.1)
    assert {(0, b) for b in range(10, 90, 10)} <= _pair_set(full)
    # reference: each image's 3 nearest pairs (ties: smaller partner), union over images
    by_image = {}
    for a, b, d in zip(full.a.tolist(), full.b.tolist(), full.distance.tolist()):
        by_image.setdefault(a, []).append((d, b, (a, b)))
        by_image.setdefault(b, []).append((d, a, (a, b)))
    expected = {p for lst in by_image.values() for _, _, p in sorted(lst)[:3]}
    cut = sorted(k for k, lst in by_image.items() if len(lst) > 3)
    assert 0 in cut and len(expected) < len(full)
    for capped in (radius_pairs_exact(x, keys, threshold=0.1, max_pairs_per_image=3, tile_rows=4),
                   cap_pairs_per_image(full, 3)):
        _assert_well_formed(capped)
        assert _pair_set(capped) == expected
        assert capped.truncated.tolist() == cut
        assert {(0, 10), (0, 20), (0, 30)} <= _pair_set(capped)  # row 0's nearest
    assert _pair_set(cap_pairs_per_image(full, None)) == _pair_set(full)


def test_pairs_are_reported_in_key_space(data, ann_pairs):
    x, _, _, _ = data
    keys = 10**12 + np.random.default_rng(3).permutation(N).astype(np.int64) * 7
    by_key = radius_pairs_exact(x, keys, threshold=THRESHOLD)
    expected = {tuple(sorted((keys[a], keys[b]))) for a, b in _pair_set(ann_pairs)}
    assert _pair_set(by_key) == expected
    _assert_well_formed(by_key)


def test_threshold_change_is_a_filter(data, ann_pairs):
    x, keys, rows, dist = data
    tighter = ann_pairs.below(0.1)
    assert _pair_set(tighter) == _expected(rows, dist, 0.1)
    recomputed = radius_pairs_exact(x, keys, threshold=0.1)
    np.testing.assert_array_equal(tighter.a, recomputed.a)
    np.testing.assert_array_equal(tighter.distance, recomputed.distance)
    assert "pairs" in repr(tighter) and len(tighter) < len(ann_pairs)


def test_saved_index_viewed_from_disk_gives_same_pairs(tmp_path, data, index, ann_pairs):
    x, keys, _, _ = data
    path = tmp_path / "dedup.usearch"
    save_index(index, path)
    viewed = open_index(path)
    assert len(viewed) == N
    again = radius_pairs_ann(viewed, x, keys, threshold=THRESHOLD, threads=1, batch_size=333)
    np.testing.assert_array_equal(again.a, ann_pairs.a)
    np.testing.assert_array_equal(again.distance, ann_pairs.distance)


def test_single_row_batches_and_progress(data):
    x, keys, rows, dist = data
    small = x[:50] * 3.0  # usearch rescales rows for cos, even in i8
    small[7] = small[3]
    built = []
    index = build_index(small, keys[:50], dtype="i8", threads=1,
                        progress=lambda done, total: built.append((done, total)))
    assert built and built[-1] == (50, 50)
    calls = []
    pairs = radius_pairs_ann(
        index, small, keys[:50], threshold=0.05, batch_size=1, threads=1,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert (3, 7) in _pair_set(pairs)
    assert calls[-1] == (50, 50) and len(calls) == 50


def test_argument_errors_tell_what_to_do(data, index):
    x, keys, _, _ = data
    with pytest.raises(ValueError, match="one key per row"):
        build_index(x, keys[:-1])
    with pytest.raises(ValueError, match="unique"):
        build_index(x[:3], np.array([1, 1, 2]))
    with pytest.raises(ValueError, match="dtype must be one of"):
        build_index(x[:3], keys[:3], dtype="f8")
    with pytest.raises(ValueError, match="threshold"):
        radius_pairs_exact(x, keys, threshold=0)
    with pytest.raises(ValueError, match="same vectors and keys"):
        radius_pairs_ann(index, x, keys + 5000, threshold=THRESHOLD)
    with pytest.raises(FileNotFoundError, match="build_index"):
        open_index("/nonexistent/dedup.usearch")


# ------------------------------------------------------------------ components


def test_components_of_chains_stars_and_singletons():
    # chain 2-5-1-7, star centred on 8 with leaves 3, 9, 0, singletons 4 and 6
    a = np.array([2, 5, 1, 8, 9, 8])
    b = np.array([5, 1, 7, 3, 8, 0])
    labels = connected_components(a, b, 10)
    assert labels.dtype == np.int64
    assert labels.tolist() == [0, 1, 1, 0, 4, 1, 6, 1, 0, 0]  # label = smallest member
    shuffled = np.random.default_rng(0).permutation(6)
    np.testing.assert_array_equal(connected_components(b[shuffled], a[shuffled], 10), labels)
    assert connected_components(np.array([]), np.array([]), 3).tolist() == [0, 1, 2]


def test_components_reject_out_of_range_nodes():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        connected_components(np.array([0]), np.array([3]), 3)


# ------------------------------------------------------------------ keepers

LABELS = np.array([0, 0, 0, 3, 3, 5, 6, 6])  # groups {0,1,2}, {3,4}, {5}, {6,7}
PATHS = np.array(["b.jpg", "a.jpg", "c.jpg", "z.png", "y.png", "s.jpg", "x/1.jpg", "x/1.jpg"])


def _one_per_group(mask):
    assert mask.dtype == bool
    assert np.bincount(LABELS[mask], minlength=LABELS.max() + 1)[np.unique(LABELS)].tolist() == [
        1, 1, 1, 1
    ]


def test_keep_alphabetical_breaks_equal_paths_by_row():
    mask = choose_keepers(LABELS, keep="alphabetical", paths=PATHS)
    _one_per_group(mask)
    assert np.flatnonzero(mask).tolist() == [1, 4, 5, 6]


def test_keep_largest_resolution_ties_go_to_smaller_path():
    width = np.array([100, 200, 200, 50, 50, 1, 10, 10])
    height = np.array([100, 100, 100, 50, 50, 1, 10, 10])
    mask = choose_keepers(LABELS, keep="largest-resolution", width=width, height=height,
                          paths=PATHS)
    _one_per_group(mask)
    # group 0: rows 1 and 2 tie at 20000 px, "a.jpg" < "c.jpg"; group 3: "y.png" wins;
    # group 6: equal paths and sizes, the smaller row wins
    assert np.flatnonzero(mask).tolist() == [1, 4, 5, 6]
    no_paths = choose_keepers(LABELS, keep="largest-resolution", width=width, height=height)
    assert np.flatnonzero(no_paths).tolist() == [1, 3, 5, 6]


def test_keep_largest_file_missing_sizes_lose():
    size = np.array([10.0, np.nan, 30.0, np.nan, np.nan, 1.0, 5.0, 9.0])
    mask = choose_keepers(LABELS, keep="largest-file", size_bytes=size, paths=PATHS)
    _one_per_group(mask)
    assert np.flatnonzero(mask).tolist() == [2, 4, 5, 7]


def test_keep_random_is_seeded_and_one_per_group():
    first = choose_keepers(LABELS, keep="random", seed=7)
    _one_per_group(first)
    np.testing.assert_array_equal(first, choose_keepers(LABELS, keep="random", seed=7))
    labels = np.repeat(np.arange(200), 5)
    picks = [np.flatnonzero(choose_keepers(labels, keep="random", seed=s)) % 5 for s in range(3)]
    assert len(picks[0]) == 200 and not np.array_equal(picks[0], picks[1])
    assert set(picks[2].tolist()) == set(range(5))  # not always the first member


def test_keep_options_are_checked():
    with pytest.raises(ValueError, match="needs paths"):
        choose_keepers(LABELS, keep="alphabetical")
    with pytest.raises(ValueError, match="needs width"):
        choose_keepers(LABELS, keep="largest-resolution", width=np.ones(8))
    with pytest.raises(ValueError, match="keep must be one of"):
        choose_keepers(LABELS, keep="newest")
    with pytest.raises(ValueError, match="one value per image"):
        choose_keepers(LABELS, keep="largest-file", size_bytes=np.ones(3))


def test_pipeline_from_pairs_to_keepers(data, ann_pairs):
    _, _, rows, dist = data
    labels = connected_components(ann_pairs.a, ann_pairs.b, N)  # keys are row numbers here
    mask = choose_keepers(labels, keep="random", seed=0)
    removed = N - int(mask.sum())
    assert removed == int((dist < THRESHOLD).sum())  # planted pairs are disjoint
    a, b = rows[dist < THRESHOLD].T
    assert np.all(mask[a] ^ mask[b])
