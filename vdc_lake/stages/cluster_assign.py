"""`cluster --assign-new`: images that arrived since a clustering join its hierarchy without
clustering again.

The new run (stage `cluster`, params `assign_new`: the run it extends) keeps the base run's
centres and tree and its assignments of the images still present at the same version; every
other image of the set (new, or changed since) goes to its nearest level-0 centre in the base
run's metric and up the tree by the parents, as k-means assigned the others. Drift: the share
of those images farther from their centre than the 95th percentile of the kept ones'
distances (about 5% when the new images are like the old); above [hierarchical_kmeans]
recluster_drift the summary advises clustering again.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from vdc_lake.catalog.connection import Catalog
from vdc_lake.catalog.sets import read_vectors
from vdc_lake.config.loader import bundled_defaults
from vdc_lake.errors import StageError

DRIFT_PERCENTILE = 95.0  # the old images' distance percentile a new image is compared with
_CARRIED_PARAMS = ("set", "n_clusters", "method", "n_samples", "n_resamples", "metric", "init", "max_iters", "tol",
                   "seed")


@dataclass
class AssignSummary:
    """A finished assign-new run: n_new images assigned now, n_kept carried from base_run,
    n_dropped of base_run's images gone or changed; drift as the module says."""

    run_id: int
    set_name: str
    base_run: int
    n_images: int
    n_new: int
    n_kept: int
    n_dropped: int
    drift: float
    old_p95: float
    recluster_drift: float
    recluster_advised: bool
    seconds: float


@dataclass
class Hierarchy:
    """A cluster run's tree: centers[l] [k_l, d] float32; parents[l] [k_l] ids at level l + 1
    (one array fewer than levels)."""

    centers: list[np.ndarray]
    parents: list[np.ndarray]


def base_cluster_run(catalog: Catalog, set_name: str) -> tuple[int, dict]:
    """(run_id, params) of the set's newest finished cluster run; StageError when there is none."""
    rows = catalog.rows("SELECT run_id, params FROM newest_runs WHERE stage = 'cluster' AND set_name = ?", [set_name])
    if not rows:
        raise StageError(f"set {set_name!r} has no clustering to assign new images to; "
                         f"run `vdc-lake cluster --set {set_name}` first")
    return int(rows[0][0]), json.loads(rows[0][1])


def read_hierarchy(catalog: Catalog, run_id: int) -> Hierarchy:
    """The centres and parents of a cluster run, level 0 first."""
    data = catalog.arrow("SELECT level, cluster_id, parent_id, center FROM clusters WHERE run_id = ? "
                         "ORDER BY level, cluster_id", [run_id])
    levels = data.column("level").to_numpy()
    ids = data.column("cluster_id").to_numpy()
    parent = data.column("parent_id").to_numpy(zero_copy_only=False)
    center = data.column("center").combine_chunks()
    dim = len(center[0]) if len(center) else 0
    flat = center.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    centers, parents = [], []
    for level in range(int(levels.max()) + 1 if len(levels) else 0):
        at = levels == level
        if not np.array_equal(ids[at], np.arange(at.sum())):
            raise StageError(f"cluster run {run_id} has gaps in its level-{level} cluster ids; "
                             "run `vdc-lake cluster` again")
        centers.append(flat[at])
        if level + 1 <= int(levels.max()):
            parents.append(parent[at].astype(np.int64))
    return Hierarchy(centers, parents)


def assign_new(catalog: Catalog, set_name: str, *, recluster_drift: float | None = None,
               quiet: bool = False) -> AssignSummary:
    """Put the set's images that its newest clustering does not hold (at their current version)
    into that clustering's hierarchy; write a new cluster run holding every present image.

    recluster_drift: None takes [hierarchical_kmeans] recluster_drift (the CLI passes the
    effective config)."""
    from vdc_lake.kernels.lookup import lookup_sorted
    from vdc_lake.kernels.nearest_centers import assign_levels, center_distances, drift_share

    if recluster_drift is None:
        recluster_drift = bundled_defaults()["hierarchical_kmeans"]["recluster_drift"]
    started = time.monotonic()
    base_run, base_params = base_cluster_run(catalog, set_name)
    metric = base_params.get("metric", "cosine")
    tree = read_hierarchy(catalog, base_run)
    vs = read_vectors(catalog, "embeddings", set_name)
    old = catalog.arrow("SELECT image_id, version, distance FROM assignments WHERE run_id = ? AND level = 0 "
                        "ORDER BY image_id", [base_run])
    old_ids, old_versions = old.column("image_id").to_numpy(), old.column("version").to_numpy()
    at, kept = lookup_sorted(old_ids, vs.image_ids)
    if len(old_ids):
        kept &= old_versions[at] == vs.versions
    fresh = np.flatnonzero(~kept)
    x = np.asarray(vs.vectors[fresh], np.float32)
    if len(tree.centers) == 0 or (len(x) and x.shape[1] != tree.centers[0].shape[1]):
        raise StageError(f"cluster run {base_run}'s centres do not fit set {set_name!r}'s vectors (computed again "
                         f"with another model?); run `vdc-lake cluster --set {set_name}`")
    labels = assign_levels(x, tree.centers[0], tree.parents, metric)
    distances = [center_distances(x, tree.centers[level], labels[:, level], metric) for level in range(labels.shape[1])]
    old_distances = old.column("distance").to_numpy(zero_copy_only=False)[at[kept]]
    drift, p95 = drift_share(old_distances, distances[0], DRIFT_PERCENTILE)
    params = {k: base_params[k] for k in _CARRIED_PARAMS if k in base_params}
    params.update(assign_new=base_run, recluster_drift=recluster_drift)
    with catalog.run("cluster", params) as run_id:
        with catalog.transaction():
            _carry_assignments(catalog, run_id, base_run, vs.image_ids[kept], vs.versions[kept])
            for level, level_distances in enumerate(distances):
                catalog.insert_arrow("assignments", pa.table({
                    "run_id": pa.array(np.full(len(fresh), run_id, np.int64)),
                    "image_id": pa.array(np.asarray(vs.image_ids[fresh], np.int64)),
                    "version": pa.array(np.asarray(vs.versions[fresh], np.int32)),
                    "level": pa.array(np.full(len(fresh), level, np.int32)),
                    "cluster_id": pa.array(labels[:, level].astype(np.int32)),
                    "distance": pa.array(level_distances),
                }))
            _copy_clusters(catalog, run_id, base_run)
        summary = AssignSummary(run_id, set_name, base_run, len(vs), len(fresh), int(kept.sum()),
                                len(old_ids) - int(kept.sum()), round(drift, 6), round(p95, 6), recluster_drift,
                                drift > recluster_drift, round(time.monotonic() - started, 2))
        catalog.finish_run(run_id, summary=asdict(summary))
    return summary


def _carry_assignments(catalog: Catalog, run_id: int, base_run: int, ids: np.ndarray, versions: np.ndarray) -> None:
    """The base run's assignments (every level) of the kept images, under run_id."""
    kept = pa.table({"image_id": pa.array(np.asarray(ids, np.int64)),
                     "version": pa.array(np.asarray(versions, np.int32))})
    with catalog.registered("_assign_kept", kept) as name:
        catalog.execute(
            f"INSERT INTO assignments SELECT ?, a.image_id, a.version, a.level, a.cluster_id, a.distance "
            f"FROM assignments a JOIN {name} k ON k.image_id = a.image_id AND k.version = a.version "
            f"WHERE a.run_id = ?", [run_id, base_run])


def _copy_clusters(catalog: Catalog, run_id: int, base_run: int) -> None:
    """The base run's clusters under run_id, their sizes counted again over run_id's assignments."""
    catalog.execute(
        """
        INSERT INTO clusters
        SELECT ?, c.level, c.cluster_id, c.parent_id, coalesce(s.n, 0), c.center
        FROM clusters c
        LEFT JOIN (SELECT level, cluster_id, count(*) AS n FROM assignments WHERE run_id = ? GROUP BY ALL) s
               ON s.level = c.level AND s.cluster_id = c.cluster_id
        WHERE c.run_id = ?
        """, [run_id, run_id, base_run])
