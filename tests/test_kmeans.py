"""k-means kernels: planted clusters, exact assignments, hierarchy, determinism, resume."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vdc_lake.kernels.kmeans import hierarchical_kmeans, kmeans
from vdc_lake.kernels.kmeans_lloyd import lloyd
from vdc_lake.kernels.kmeans_pass import segment_sums
from vdc_lake.kernels.kmeans_rows import Rows

# The kernels have no defaults of their own: VDC's Lloyd settings (defaults.toml's) are passed.
LLOYD = {"max_iters": 50, "tol": 1e-4}


def _planted(n=1200, d=16, k=6, seed=0):
    """Points around k well-separated centres (10 x random unit vectors, unit noise)."""
    generator = torch.Generator().manual_seed(seed)
    centers = 10 * F.normalize(torch.randn(k, d, generator=generator), dim=1)
    truth = torch.arange(n) % k
    return centers[truth] + torch.randn(n, d, generator=generator), truth


def _adjusted_rand(a, b) -> float:
    """Adjusted Rand index of two labellings (Hubert & Arabie 1985)."""
    table = np.zeros((int(a.max()) + 1, int(b.max()) + 1))
    np.add.at(table, (np.asarray(a), np.asarray(b)), 1)
    pairs = lambda x: (x * (x - 1) / 2).sum()  # noqa: E731
    both, rows, cols, total = pairs(table), pairs(table.sum(1)), pairs(table.sum(0)), pairs(np.array([table.sum()]))
    expected = rows * cols / total
    return float((both - expected) / ((rows + cols) / 2 - expected))


def _brute_force(x, centers, metric):
    """Exact distances [n, k] in float64."""
    x, centers = x.double(), centers.double()
    if metric == "cosine":
        return 1 - F.normalize(x, dim=1) @ F.normalize(centers, dim=1).T
    return torch.cdist(x, centers) ** 2


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_kmeans_recovers_planted_clusters(metric, init):
    x, truth = _planted()
    # random init can put two seeds in one cluster, a local optimum Lloyd never leaves;
    # seed 0 does not (a fixed seed keeps the test deterministic)
    result = kmeans(x, 6, metric=metric, init=init, seed=0, **LLOYD)
    assert _adjusted_rand(result.assignments, truth) >= 0.95


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_kmeans_result_is_exact_and_well_formed(metric):
    x, _ = _planted(n=2000, d=24, k=20, seed=2)
    result = kmeans(x, 30, metric=metric, seed=3, chunk_size=500, **LLOYD)
    assert result.centers.shape == (30, 24) and result.centers.dtype == torch.float32
    assert result.assignments.shape == (2000,) and result.assignments.dtype == torch.int64
    assert result.distances.shape == (2000,) and result.distances.dtype == torch.float32
    assert 1 <= result.n_iter <= 50 and len(result) == 30
    exact = _brute_force(x, result.centers, metric)
    own = exact.gather(1, result.assignments.unsqueeze(1)).squeeze(1)
    assert torch.all(own <= exact.min(dim=1).values + 1e-5)  # nearest centre, up to fp32 ties
    assert torch.allclose(result.distances.double(), own, atol=1e-4, rtol=1e-4)
    if metric == "cosine":
        assert torch.allclose(result.centers.norm(dim=1), torch.ones(30), atol=1e-5)
    assert repr(result).startswith("KMeansResult(k=30, d=24, n=2000, n_iter=")


def test_bounded_lloyd_follows_plain_lloyd():
    # the bounds only skip work: iteration by iteration, the labels are those of a plain
    # Lloyd that scores every point against every centre
    x = F.normalize(_planted(n=3000, d=12, k=40, seed=11)[0] + 4 * torch.randn(3000, 12), dim=1)
    rows = Rows(x, device=torch.device("cpu"), metric="cosine", unit=True)
    start = x[:60].clone()
    centers, assignment, n_iter = lloyd(rows, start, max_iters=40, tol=0.0, chunk=256, progress=None,
                                        stage="t")
    plain = start
    for _ in range(n_iter):
        labels = (x @ plain.T).argmax(dim=1)
        sums = torch.zeros(60, 12, dtype=torch.float64).index_add_(0, labels, x.double())
        plain = F.normalize((sums / torch.bincount(labels, minlength=60).unsqueeze(1)).float(), dim=1)
    assert torch.equal(assignment.labels, (x @ plain.T).argmax(dim=1))
    assert torch.allclose(centers, plain, atol=1e-5)


def test_kmeans_is_deterministic_and_takes_numpy_and_memmaps(tmp_path):
    x, _ = _planted(n=1500, d=16, k=15, seed=4)
    first = kmeans(x, 20, seed=5, **LLOYD)
    again = kmeans(x.numpy(), 20, seed=5, **LLOYD)
    path = tmp_path / "x.npy"
    np.save(path, x.numpy())
    streamed = kmeans(np.load(path, mmap_mode="r"), 20, seed=5, **LLOYD)
    for other in (again, streamed):
        assert torch.equal(first.assignments, other.assignments)
        assert torch.allclose(first.centers, other.centers, atol=1e-6)
    assert not torch.equal(first.centers, kmeans(x, 20, seed=6, **LLOYD).centers)


def test_kmeans_with_as_many_clusters_as_points():
    x, _ = _planted(n=60, d=8, k=6, seed=7)
    result = kmeans(x, 60, metric="l2", seed=0, **LLOYD)
    assert torch.equal(torch.sort(result.assignments).values, torch.arange(60))
    assert result.distances.max() < 1e-4


def test_empty_cluster_is_reseeded_with_the_farthest_point():
    x = torch.cat([torch.zeros(10, 2), torch.tensor([[0.0, 1.0], [0.0, 9.0]])])  # 9 is far
    rows = Rows(x, device=torch.device("cpu"), metric="l2", unit=False)
    twins = torch.zeros(2, 2)  # the second centre gets no point in the first pass
    centers, assignment, _ = lloyd(rows, twins, max_iters=10, tol=1e-4, chunk=4, progress=None, stage="t")
    assert centers[1].tolist() == [0.0, 9.0]
    assert assignment.labels.tolist() == [0] * 11 + [1]


def test_duplicate_points_leave_clusters_empty_without_failing():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]).repeat(20, 1)
    first, second = kmeans(x, 5, seed=0, **LLOYD), kmeans(x, 5, seed=0, **LLOYD)
    assert torch.equal(first.assignments, second.assignments)
    assert len(torch.unique(first.assignments)) == 3  # three distinct points, three clusters
    assert first.distances.max() < 1e-6


def test_one_cluster_is_the_mean():
    x, _ = _planted(n=300, d=8, k=3, seed=9)
    result = kmeans(x, 1, metric="l2", seed=0, **LLOYD)
    assert torch.equal(result.assignments, torch.zeros(300, dtype=torch.int64))
    assert torch.allclose(result.centers[0], x.mean(dim=0), atol=1e-5)
    top = hierarchical_kmeans(x, [12, 1], method="resampled", n_samples=[4, 2], n_resamples=2, seed=0, **LLOYD)
    assert torch.equal(top[1].assignments, torch.zeros(300, dtype=torch.int64))


def test_progress_can_be_a_tqdm_bar():
    tqdm = pytest.importorskip("tqdm")
    x, _ = _planted(n=300, d=8, k=3, seed=10)
    with tqdm.tqdm(file=io.StringIO()) as bar:
        kmeans(x, 3, progress=bar, seed=0, **LLOYD)
        assert bar.desc.startswith("lloyd") and bar.total == 50 and 1 <= bar.n <= 50


def test_kmeans_rejects_bad_arguments():
    x, _ = _planted(n=50, d=4, k=2)
    with pytest.raises(ValueError, match="between 1 and the number of rows"):
        kmeans(x, 51, seed=0, **LLOYD)
    with pytest.raises(ValueError, match="metric must be 'cosine' or 'l2'"):
        kmeans(x, 2, metric="dot", seed=0, **LLOYD)
    with pytest.raises(ValueError, match="init must be"):
        kmeans(x, 2, init="k-means||", seed=0, **LLOYD)
    with pytest.raises(ValueError, match=r"\[n, d\] matrix"):
        kmeans(x[:, 0], 2, seed=0, **LLOYD)
    with pytest.raises(ValueError, match="max_iters must be at least 1"):
        kmeans(x, 2, seed=0, max_iters=0, tol=1e-4)
    with pytest.raises(TypeError, match="tol"):  # no default of its own: the caller's config decides
        kmeans(x, 2, seed=0, max_iters=50)


def test_segment_sums_match_index_add():
    # the fixed-order sum used on CUDA, checked on the CPU
    labels = torch.randint(0, 9, (500,), generator=torch.Generator().manual_seed(0))
    rows = torch.randn(500, 7, dtype=torch.float64)
    ids, totals = segment_sums(labels, rows)
    expected = torch.zeros(9, 7, dtype=torch.float64).index_add_(0, labels, rows)
    assert torch.equal(ids, torch.unique(labels))
    assert torch.allclose(totals, expected[ids])


# ----------------------------------------------------------------------------- hierarchy


def _hierarchy_data():
    x, _ = _planted(n=1500, d=16, k=40, seed=8)
    return x


@pytest.mark.parametrize("method", ["centers", "resampled"])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_hierarchy_shapes_and_parent_child_consistency(method, metric):
    x = _hierarchy_data()
    result = hierarchical_kmeans(x, [50, 10, 3], method=method, n_samples=[6, 3, 2], n_resamples=3,
                                 metric=metric, seed=1, **LLOYD)
    assert len(result) == 3 and result.assignment_matrix().shape == (1500, 3)
    inputs = x
    for level, (k, m) in enumerate(zip([50, 10, 3], [1500, 50, 10])):
        this = result[level]
        assert this.centers.shape == (k, 16)
        assert this.assignments.shape == (1500,) and this.input_assignments.shape == (m,)
        assert int(this.input_assignments.max()) < k
        if level > 0:  # a point's cluster is the parent of its cluster one level down
            parent_of_child = this.input_assignments[result[level - 1].assignments]
            assert torch.equal(this.assignments, parent_of_child)
        exact = _brute_force(inputs, this.centers, metric)
        own = exact.gather(1, this.input_assignments.unsqueeze(1)).squeeze(1)
        assert torch.all(own <= exact.min(dim=1).values + 1e-5)  # every input at its nearest
        assert torch.allclose(this.input_distances.double(), own, atol=1e-4, rtol=1e-4)
        inputs = this.centers
    assert np.array_equal(result.assignment_matrix()[:, 1], result[1].assignments.numpy())
    assert repr(result) == "HierarchicalKMeansResult(n=1500, clusters=50/10/3)"


def test_hierarchy_is_deterministic_for_a_seed():
    x = _hierarchy_data()
    runs = [hierarchical_kmeans(x, [40, 8], method="resampled", n_samples=[5, 2], n_resamples=3, seed=s, **LLOYD)
            for s in (2, 2, 3)]
    for a, b in zip(runs[0].levels, runs[1].levels):
        assert torch.equal(a.centers, b.centers) and torch.equal(a.assignments, b.assignments)
    assert not torch.equal(runs[0][0].centers, runs[2][0].centers)


class _Interrupt(Exception):
    pass


def _stop_at(stage, step):
    def progress(name, done, total):
        if name == stage and done == step:
            raise _Interrupt(f"{name} {done}/{total}")
    return progress


@pytest.mark.parametrize("stage, step", [("level 0 resample", 2), ("level 1 lloyd", 1), ("level 0 lloyd", 3)])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, stage, step):
    x = _hierarchy_data()
    options = dict(method="resampled", n_samples=[5, 3], n_resamples=4, seed=4, **LLOYD)
    whole = hierarchical_kmeans(x, [40, 8], **options)
    with pytest.raises(_Interrupt):
        hierarchical_kmeans(x, [40, 8], checkpoint_dir=tmp_path, progress=_stop_at(stage, step), **options)
    seen = []
    resumed = hierarchical_kmeans(x, [40, 8], checkpoint_dir=tmp_path,
                                  progress=lambda name, done, total: seen.append((name, done)), **options)
    for a, b in zip(whole.levels, resumed.levels):
        assert torch.equal(a.centers, b.centers)
        assert torch.equal(a.assignments, b.assignments)
        assert torch.equal(a.input_distances, b.input_distances)
    if stage == "level 0 resample":  # finished steps are not run again
        assert ("level 0 resample", 1) not in seen and ("level 0 resample", 3) in seen
        assert not any(name == "level 0 lloyd" for name, _ in seen)


def test_checkpoint_refuses_other_arguments_or_data(tmp_path):
    x = _hierarchy_data()
    hierarchical_kmeans(x, [40, 5], method="centers", checkpoint_dir=tmp_path, seed=0, **LLOYD)
    assert (tmp_path / "hierarchical_kmeans.pt").exists()
    with pytest.raises(ValueError, match=r"other arguments or data \(n_clusters: saved \[40, 5\], now \[40, 6\]"):
        hierarchical_kmeans(x, [40, 6], method="centers", checkpoint_dir=tmp_path, seed=0, **LLOYD)
    with pytest.raises(ValueError, match="data"):
        hierarchical_kmeans(x + 1, [40, 5], method="centers", checkpoint_dir=tmp_path, seed=0, **LLOYD)
    calls = []
    hierarchical_kmeans(x, [40, 5], method="centers", checkpoint_dir=tmp_path, seed=0,
                        progress=lambda *a: calls.append(a), **LLOYD)
    assert calls == []  # a finished run is read back, not recomputed


def test_hierarchy_rejects_bad_arguments():
    x = _hierarchy_data()
    with pytest.raises(ValueError, match="must shrink from level to level"):
        hierarchical_kmeans(x, [10, 20], method="centers", seed=0, **LLOYD)
    with pytest.raises(ValueError, match="needs n_samples"):
        hierarchical_kmeans(x, [10, 5], method="resampled", n_resamples=10, seed=0, **LLOYD)
    with pytest.raises(ValueError, match="n_resamples must be at least 1"):
        hierarchical_kmeans(x, [10, 5], method="resampled", n_samples=[3, 2], seed=0, **LLOYD)
    with pytest.raises(ValueError, match="exceeds the 1500 points"):
        hierarchical_kmeans(x, [4000, 5], method="centers", seed=0, **LLOYD)
    with pytest.raises(ValueError, match="method must be"):
        hierarchical_kmeans(x, [10, 5], method="resample", seed=0, **LLOYD)
