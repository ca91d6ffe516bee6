"""Distributed k-means on 2 gloo ranks equals the single-process k-means with the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vdc_lake.kernels.kmeans import hierarchical_kmeans, kmeans
from vdc_lake.scale.kmeans_distributed import (
    hierarchical_kmeans_distributed, kmeans_distributed, load_result, rank_rows, save_result,
)

# (name, metric, init, k): every case runs in the same two spawned processes
CASES = [("cosine-kmeans++", "cosine", "kmeans++", 12), ("l2-random", "l2", "random", 7),
         ("l2-kmeans++", "l2", "kmeans++", 20)]
LEVELS = [16, 4]
RESAMPLED = dict(method="resampled", n_samples=[7, 2], n_resamples=3)
# The kernels have no defaults of their own: VDC's Lloyd settings (defaults.toml's) are passed.
LLOYD = {"max_iters": 50, "tol": 1e-4}


def _blobs(n: int = 1501, d: int = 8, centers: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middles = rng.normal(size=(centers, d)) * 4
    return (middles[rng.integers(centers, size=n)] + rng.normal(size=(n, d))).astype(np.float32)


def _few_distinct() -> np.ndarray:
    """90 rows of only 6 distinct points: k = 8 leaves clusters empty (the farthest-row rule)."""
    rng = np.random.default_rng(1)
    return np.repeat(rng.normal(size=(6, 4)).astype(np.float32), 15, axis=0)[rng.permutation(90)]


def _worker(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        x = _blobs()
        results = {}
        for name, metric, init, k in CASES:
            results[name] = kmeans_distributed(x, k, metric=metric, init=init, seed=3, **LLOYD)
        results["empty-clusters"] = kmeans_distributed(_few_distinct(), 8, metric="l2", init="random", seed=0, **LLOYD)
        results["hierarchy"] = hierarchical_kmeans_distributed(x, LEVELS, method="centers", seed=5, **LLOYD)
        results["resampled"] = hierarchical_kmeans_distributed(x, LEVELS, seed=5, **RESAMPLED, **LLOYD)
        # odd row counts per rank and clusters smaller than n_samples
        results["resampled-l2"] = hierarchical_kmeans_distributed(x[:301], [40, 6], seed=2, metric="l2",
                                                                  method="resampled", n_samples=[9, 3], n_resamples=2,
                                                                  **LLOYD)
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    out = folder / "results.pt"
    mp.spawn(_worker, args=(2, str(folder / "store"), str(out)), nprocs=2, join=True)
    return torch.load(out, weights_only=False)


def _same(got, want) -> None:
    torch.testing.assert_close(got.centers, want.centers, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.assignments, want.assignments)
    torch.testing.assert_close(got.distances, want.distances, rtol=1e-4, atol=1e-5)
    assert got.n_iter == want.n_iter


@pytest.mark.parametrize("name,metric,init,k", CASES)
def test_two_ranks_match_the_single_process_kmeans(distributed_results, name, metric, init, k):
    _same(distributed_results[name], kmeans(_blobs(), k, metric=metric, init=init, seed=3, **LLOYD))


def test_empty_clusters_are_reseeded_as_in_the_single_process_kmeans(distributed_results):
    want = kmeans(_few_distinct(), 8, metric="l2", init="random", seed=0, **LLOYD)
    assert len(torch.unique(want.assignments)) < 8  # the case really has empty clusters
    _same(distributed_results["empty-clusters"], want)


def _same_hierarchy(got, want) -> None:
    assert len(got) == len(want)
    for got_level, want_level in zip(got.levels, want.levels):
        torch.testing.assert_close(got_level.centers, want_level.centers, rtol=1e-5, atol=1e-5)
        assert torch.equal(got_level.assignments, want_level.assignments)
        assert torch.equal(got_level.input_assignments, want_level.input_assignments)
        torch.testing.assert_close(got_level.input_distances, want_level.input_distances, rtol=1e-4, atol=1e-5)


def test_hierarchy_matches_the_single_process_centers_method(distributed_results):
    _same_hierarchy(distributed_results["hierarchy"], hierarchical_kmeans(_blobs(), LEVELS, method="centers", seed=5, **LLOYD))


def test_hierarchy_matches_the_single_process_resampled_method(distributed_results):
    want = hierarchical_kmeans(_blobs(), LEVELS, seed=5, **RESAMPLED, **LLOYD)
    centers_only = hierarchical_kmeans(_blobs(), LEVELS, method="centers", seed=5, **LLOYD)
    assert not torch.equal(want.levels[0].centers, centers_only.levels[0].centers)  # resampling moved them
    _same_hierarchy(distributed_results["resampled"], want)


def test_resampled_with_small_clusters_and_l2_matches(distributed_results):
    want = hierarchical_kmeans(_blobs()[:301], [40, 6], seed=2, metric="l2", method="resampled",
                               n_samples=[9, 3], n_resamples=2, **LLOYD)
    _same_hierarchy(distributed_results["resampled-l2"], want)


def test_saved_result_loads_back_equal(distributed_results, tmp_path):
    result = distributed_results["resampled"]
    save_result(result, tmp_path / "clusters.npz")
    _same_hierarchy(load_result(tmp_path / "clusters.npz"), result)


def test_rank_rows_cover_every_row_once():
    blocks = [rank_rows(10, r, 3) for r in range(3)]
    assert blocks == [(0, 3), (3, 6), (6, 10)]


def test_without_a_process_group_the_error_says_how_to_launch():
    with pytest.raises(RuntimeError, match="launch with torchrun"):
        kmeans_distributed(_blobs(n=20), 2, seed=0, **LLOYD)
