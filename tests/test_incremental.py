"""Incremental curation when new images arrive (issue 22): `dedup report` searches only new or
changed images against all and equals a full search; `cluster --assign-new` puts new images
into the existing hierarchy (checked against brute-force nearest centres); `sample --stable`
keeps the previous selection where it is still valid and changes as little as the budget allows.

Real catalogs of scanned Pillow images; vectors are written through catalog.sets, so the
stages read them as they read a model's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import catalog_rows, ok_output
from vdc_lake.catalog.connection import Catalog
from vdc_lake.catalog.sets import missing_images, register_embedding_set, write_vectors
from vdc_lake.stages import dedup
from vdc_lake.stages.scan import scan

DIM = 16
SET = "s"


def _image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(path)


class Collection:
    """A folder of images scanned into a catalog, with set `s`: near-copy groups of vectors
    (every image is near one of `groups` centres), written for whatever images lack one."""

    def __init__(self, root: Path, seed: int, groups: int = 20, spread: float = 0.35, model: str | None = None,
                 dim: int = DIM):
        self.root, self.catalog_path = root / "images", root / "c.duckdb"
        self.root.mkdir(parents=True)
        self.rng = np.random.default_rng(seed)
        self.model, self.dim = model, dim
        self.centres = self.rng.standard_normal((groups, dim)).astype(np.float32)
        self.spread = spread
        self.next_seed = seed * 100_000

    def add(self, n: int) -> None:
        for _ in range(n):
            self.next_seed += 1
            _image(self.root / f"im{self.next_seed}.png", self.next_seed)

    def remove(self, n: int) -> None:
        for path in sorted(self.root.iterdir())[:n]:
            path.unlink()

    def change(self, n: int) -> None:
        for path in sorted(self.root.iterdir())[-n:]:
            self.next_seed += 1
            _image(path, self.next_seed)

    def update(self, recompute: int = 0) -> None:
        """Scan the folder and write vectors for the images (at their version) that have none,
        and new ones for `recompute` present images that have one (the set computed again)."""
        with Catalog(self.catalog_path) as catalog:
            scan(catalog, [self.root], extensions=[".png"], workers=1, quiet=True)
            run = catalog.begin_run("predict", {"set": SET})
            if not catalog.rows("SELECT 1 FROM embedding_sets WHERE name = ?", [SET]):
                register_embedding_set(catalog, SET, kind="embedding", model=self.model, dim=self.dim,
                                       preprocessing=None, run_id=run)
            todo = missing_images(catalog, "embeddings", SET)
            ids, versions = todo.column("image_id").to_numpy(), todo.column("version").to_numpy()
            if recompute:
                again = np.array(catalog.rows("SELECT image_id, version FROM images WHERE present AND image_id NOT IN "
                                              "(SELECT unnest(?)) ORDER BY image_id LIMIT ?", [ids.tolist(), recompute]))
                ids, versions = np.concatenate([ids, again[:, 0]]), np.concatenate([versions, again[:, 1]])
            n = len(ids)
            near = self.centres[self.rng.integers(0, len(self.centres), n)]
            vectors = (near + self.spread * self.rng.standard_normal((n, self.dim))).astype(np.float32)
            write_vectors(catalog, "embeddings", SET, run, ids, versions, vectors)
            catalog.finish_run(run)

    def report(self, **options) -> dedup.ReportSummary:
        with Catalog(self.catalog_path) as catalog:
            return dedup.report(catalog, SET, threshold=options.pop("threshold", 0.3), method="exact", device="cpu",
                                quiet=True, **options)


def _edges(catalog_path: Path, run_id: int) -> list[tuple]:
    return catalog_rows(catalog_path, "SELECT image_a, image_b, version_a, version_b, distance FROM dup_edges "
                        "WHERE run_id = ? ORDER BY image_a, image_b", [run_id])


@pytest.mark.parametrize("seed, cap, views", [(0, None, 1), (1, None, 1), (2, 3, 1), (3, 2, 1), (4, None, 3),
                                              (5, 3, 3)])
def test_incremental_dedup_equals_a_full_search_after_new_removed_and_changed_images(tmp_path, seed, cap, views):
    from vdc_lake.kernels.descriptor import BUILTIN_MODELS

    model = next((name for name, n in BUILTIN_MODELS.items() if n == views), None) if views > 1 else None
    c = Collection(tmp_path, seed, model=model, dim=DIM * views)
    c.add(60)
    c.update()
    with Catalog(c.catalog_path, read_only=True) as catalog:
        assert dedup.set_views(catalog, SET) == views
    first = c.report(max_pairs_per_image=cap)
    assert first.incremental_from is None and first.pairs > 0
    for step in range(2):  # twice: an incremental run is itself a base for the next
        c.add(15)
        c.remove(4)
        c.change(3)
        c.update(recompute=2)
        incremental = c.report(max_pairs_per_image=cap)
        full = c.report(max_pairs_per_image=cap, full=True)
        assert full.incremental_from is None and full.searched == full.n_vectors
        if views == 1 or not full.truncated_images:  # a truncated multi-view set is searched in full
            assert incremental.incremental_from is not None and incremental.searched < incremental.n_vectors
        assert _edges(c.catalog_path, incremental.run_id) == _edges(c.catalog_path, full.run_id)
        assert incremental.truncated_images == full.truncated_images
        if cap is not None:  # the cap was exercised, and not on every image
            assert 0 < full.truncated_images < full.n_vectors


def test_incremental_dedup_searches_only_new_and_changed_images_and_says_so(tmp_path, run_cli):
    c = Collection(tmp_path, 7)
    c.add(40)
    c.update()
    ok_output(run_cli(["dedup", "report", "--set", SET, "--report-threshold", "0.3", "--exact"], c.catalog_path))
    c.change(2)
    c.remove(1)
    c.add(5)
    c.update()
    out = ok_output(run_cli(["dedup", "report", "--set", SET, "--report-threshold", "0.3", "--exact"],
                            c.catalog_path, quiet=False))
    assert "incremental: 7 new or changed images searched against all 44" in out
    gone = catalog_rows(c.catalog_path, "SELECT count(*) FROM near_duplicate_edges e JOIN images i "
                        "ON i.image_id IN (e.image_a, e.image_b) WHERE NOT i.present")
    assert gone == [(0,)]
    c.update(recompute=3)  # the set computed again for 3 images: their new vectors are searched
    out = ok_output(run_cli(["dedup", "report", "--set", SET, "--report-threshold", "0.3", "--exact"],
                            c.catalog_path, quiet=False))
    assert "incremental: 3 new or changed images searched against all 44" in out
    # nothing new: nothing searched, the same pairs
    out = ok_output(run_cli(["dedup", "report", "--set", SET, "--report-threshold", "0.3", "--exact"],
                            c.catalog_path, quiet=False))
    assert "incremental: 0 new or changed images searched" in out
    out = ok_output(run_cli(["dedup", "report", "--set", SET, "--report-threshold", "0.3", "--exact", "--full"],
                            c.catalog_path, quiet=False))
    assert "incremental" not in out and "--full was asked for" in out
    runs = [r[0] for r in catalog_rows(c.catalog_path, "SELECT run_id FROM runs WHERE stage = 'dedup-report' "
                                       "ORDER BY run_id")]
    assert _edges(c.catalog_path, runs[-1]) == _edges(c.catalog_path, runs[-2]) == _edges(c.catalog_path, runs[-3])
    assert len(runs) == 5


@pytest.mark.parametrize("change, why", [
    ({"threshold": 0.25}, "threshold differ"),
    ({"center": True}, "--center moves every vector"),
    ({"max_pairs_per_image": 5}, "max_pairs_per_image differ"),
    ({"l2_normalize": False}, "l2_normalize differ"),
])
def test_a_changed_threshold_or_preparation_means_a_full_search(tmp_path, change, why):
    c = Collection(tmp_path, 11)
    c.add(30)
    c.update()
    c.report()
    c.add(3)
    c.update()
    summary = c.report(**change)
    assert summary.incremental_from is None and summary.searched == summary.n_vectors
    assert why in summary.reason


# -- cluster --assign-new ---------------------------------------------------------------------------

def _cluster(c: Collection, metric: str = "cosine"):
    from vdc_lake.stages.cluster import cluster

    with Catalog(c.catalog_path) as catalog:
        return cluster(catalog, SET, n_clusters=[6, 2], method="centers", metric=metric, device="cpu", quiet=True)


def _assign(c: Collection, **options):
    from vdc_lake.stages.cluster_assign import assign_new

    with Catalog(c.catalog_path) as catalog:
        return assign_new(catalog, SET, quiet=True, **options)


def _assignments(catalog_path: Path, run_id: int) -> dict[tuple[int, int, int], tuple[int, float]]:
    rows = catalog_rows(catalog_path, "SELECT image_id, version, level, cluster_id, distance FROM assignments "
                        "WHERE run_id = ?", [run_id])
    return {(i, v, level): (cid, d) for i, v, level, cid, d in rows}


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_assign_new_puts_new_images_at_their_nearest_centre_and_keeps_the_others(tmp_path, metric):
    from vdc_lake.catalog.sets import read_vectors

    c = Collection(tmp_path, 21, groups=6)
    c.add(60)
    c.update()
    base = _cluster(c, metric)
    c.remove(3)
    c.change(2)
    c.add(12)
    c.update()
    s = _assign(c)
    assert (s.base_run, s.n_new, s.n_kept, s.n_dropped) == (base.run_id, 14, 55, 5)
    before, after = _assignments(c.catalog_path, base.run_id), _assignments(c.catalog_path, s.run_id)
    with Catalog(c.catalog_path, read_only=True) as catalog:
        vs = read_vectors(catalog, "embeddings", SET)
        centers = {(level, cid): np.array(v, np.float64) for level, cid, v in
                   catalog.rows("SELECT level, cluster_id, center FROM clusters WHERE run_id = ?", [s.run_id])}
        parents = dict(((level, cid), p) for level, cid, p in
                       catalog.rows("SELECT level, cluster_id, parent_id FROM clusters WHERE run_id = ?", [s.run_id]))
        sizes = catalog.rows("SELECT level, sum(size) FROM clusters WHERE run_id = ? GROUP BY level", [s.run_id])
    assert sorted(sizes) == [(0, len(vs)), (1, len(vs))]
    level0 = np.stack([centers[(0, k)] for k in range(6)])
    for image_id, version, x in zip(vs.image_ids, vs.versions, vs.vectors.astype(np.float64)):
        key = (int(image_id), int(version))
        if key + (0,) in before:  # kept: as the clustering assigned it
            assert after[key + (0,)] == before[key + (0,)] and after[key + (1,)] == before[key + (1,)]
            continue
        if metric == "cosine":  # brute force, float64
            d = 1 - (level0 @ x) / (np.linalg.norm(level0, axis=1) * np.linalg.norm(x))
        else:
            d = ((level0 - x) ** 2).sum(1)
        leaf, distance = after[key + (0,)]
        assert leaf == int(np.argmin(d))
        assert distance == pytest.approx(d.min(), rel=1e-4, abs=1e-5)
        assert after[key + (1,)][0] == parents[(0, leaf)]


def test_assign_new_reports_drift_and_advises_clustering_again_when_new_images_do_not_fit(tmp_path, run_cli):
    c = Collection(tmp_path, 5, groups=6)
    c.add(80)
    c.update()
    _cluster(c)
    c.add(20)  # like the old ones
    c.update()
    alike = _assign(c)
    assert alike.drift <= 0.2 and not alike.recluster_advised
    c.centres = np.random.default_rng(99).standard_normal((3, DIM)).astype(np.float32)  # a new kind of image
    c.add(20)
    c.update()
    out = run_cli(["cluster", "--set", SET, "--assign-new"], c.catalog_path)
    assert out.exit_code == 0, out.output
    assert "20 new or changed images assigned to the clusters of run" in out.output
    assert "run `vdc-lake cluster --set s` to cluster again" in out.output
    drift = catalog_rows(c.catalog_path, "SELECT summary->>'drift' FROM runs WHERE stage = 'cluster' "
                         "ORDER BY run_id DESC LIMIT 1")[0][0]
    assert float(drift) > 0.1


# -- sample --stable --------------------------------------------------------------------------------

def test_stable_sample_without_a_previous_selection_is_the_plain_sample():
    from vdc_lake.kernels.sampling import hierarchical_sample, stable_sample

    rng = np.random.default_rng(0)
    leaf = rng.integers(0, 40, 3000)
    tree = np.stack([leaf, leaf // 8], axis=1)
    distances = rng.random(3000)
    for strategy in ("random", "closest"):
        for allocation in ("water-filling", "largest-remainder"):
            plain = hierarchical_sample(tree, 700, allocation=allocation, strategy=strategy, distances=distances,
                                        seed=3)
            stable = stable_sample(tree, 700, np.zeros(3000, bool), allocation=allocation, strategy=strategy,
                                   distances=distances, seed=3)
            assert np.array_equal(plain, stable)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("strategy", ["random", "closest"])
def test_stable_sample_after_ten_percent_new_images_changes_at_most_the_new_share_plus_one_percent(seed, strategy):
    from vdc_lake.kernels.sampling import hierarchical_allocation, hierarchical_sample, stable_sample

    rng = np.random.default_rng(seed)
    n_old, n_new, total = 20_000, 2_000, 5_000
    leaf = np.minimum(rng.zipf(1.6, n_old + n_new) - 1, 299)  # uneven cluster sizes, as real ones are
    tree = np.stack([leaf, leaf // 10], axis=1)
    distances = rng.random(n_old + n_new)
    first = hierarchical_sample(tree[:n_old], total, strategy=strategy, distances=distances[:n_old], seed=seed)
    previous = np.zeros(n_old + n_new, bool)
    previous[first] = True
    gone = rng.choice(first, 50, replace=False)  # removed by a decision since: not selectable
    alive = np.setdiff1d(np.arange(n_old + n_new), gone)
    picked = alive[stable_sample(tree[alive], total, previous[alive], strategy=strategy, distances=distances[alive],
                                 seed=seed)]
    assert len(picked) == total == len(np.unique(picked))
    entered = int((~previous[picked]).sum())
    left = total - (total - entered)  # exact N: as many leave as enter
    assert entered == left
    # minimal: per leaf exactly the quota's shortfall enters (the same balance as a plain sample)
    quotas = hierarchical_allocation(tree[alive], total)[0]
    kept_before = np.bincount(leaf[alive][previous[alive]], minlength=len(quotas))
    assert entered == int(np.maximum(quotas - kept_before, 0).sum())
    assert np.array_equal(np.bincount(leaf[picked], minlength=len(quotas)), quotas)
    assert entered <= n_new / (n_old + n_new) * total + 0.01 * total + len(gone)


@pytest.mark.parametrize("views, cap", [(1, None), (1, 2), (3, None)])
def test_new_rows_against_all_merged_with_the_old_rows_pairs_is_the_full_search(views, cap):
    from vdc_lake.kernels import neighbors

    rng = np.random.default_rng(views * 10 + (cap or 0))
    base = rng.standard_normal((150, 12)).astype(np.float32)
    x = np.concatenate([base, base[:100] + 0.3 * rng.standard_normal((100, 12)).astype(np.float32)])
    x, _ = neighbors.prepare_vectors(x, center=False, l2_normalize=True)
    keys = rng.permutation(5000)[:len(x)].astype(np.int64) * views
    if views > 1:  # rows of images: keys image_id * views + view
        keys = (keys[: len(x) // views, None] + np.arange(views)).reshape(-1)
        x = x[: len(keys)]
    new = np.repeat(rng.random(len(keys) // views) < 0.25, views)
    options = dict(threshold=0.3, max_pairs_per_image=cap, views=views, tile_rows=32)
    full = neighbors.radius_pairs_exact(x, keys, **options)
    old = neighbors.radius_pairs_exact(x[~new], keys[~new], **options)
    merged = neighbors.merge_pair_sets([old, neighbors.radius_pairs_new(x, keys, new, **options)], cap)
    assert len(full) > 0
    for field in ("a", "b", "distance", "truncated"):
        assert np.array_equal(getattr(full, field), getattr(merged, field))
