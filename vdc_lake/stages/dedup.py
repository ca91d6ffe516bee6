"""Dedup stage: usearch index over an embedding set, and near-duplicate edges into `dup_edges`.

Exact copies need no stage (the exact_duplicate_edges view groups equal content hashes).
`report` writes every pair under the report threshold once; `dedup_actions(threshold, keep)`
then groups and picks keepers in SQL, so trying another threshold costs a query, not a search.
An exact report records what it covered (`dedup_coverage`), so the next one searches only the
images new or changed since against all and keeps the stored pairs among the others.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from vdc_lake.catalog.connection import Catalog
from vdc_lake.catalog.side_files import side_folder
from vdc_lake.fileops.confine import check_name, is_inside
from vdc_lake.errors import StageError
from vdc_lake.catalog.sets import VectorSet, count_vectors, read_vectors, set_dim
from vdc_lake.config.loader import bundled_defaults

if TYPE_CHECKING:
    from vdc_lake.kernels.neighbors_pairs import PairSet

SUPPORTED_METRICS = ("cosine",)
# Up to this many vectors an exact all-pairs search on the CPU beats building an HNSW graph
# (100k x 512: ~100 s exact with recall 1.0 vs ~500 CPU-s for usearch at recall 0.99 on 2 cores;
# see benchmarks/RESULTS.md). Beyond it the n^2 cost wins and the ANN index takes over.
EXACT_CPU_MAX_VECTORS = 200_000


@dataclass
class IndexSummary:
    """A built index; run_id None and `skipped` saying why when the report would not use it."""

    run_id: int | None
    set_name: str
    path: str
    n_vectors: int
    dim: int
    seconds: float
    skipped: str | None = None


@dataclass
class ReportSummary:
    """A finished report. reason: why `method` was picked (one line). truncated_images: images
    with more than max_pairs_per_image pairs under the threshold (only their nearest kept).
    approximate: the ANN path, which can miss pairs the HNSW graph does not reach."""

    run_id: int
    set_name: str
    method: str
    n_vectors: int
    pairs: int
    threshold: float
    seconds: float
    reason: str = ""
    backend: str = "local"
    precision: str | None = None
    center: bool = False
    l2_normalize: bool = True
    max_pairs_per_image: int | None = None
    truncated_images: int = 0
    approximate: bool = False
    incremental_from: int | None = None
    searched: int | None = None
    kept_pairs: int = 0


@dataclass
class Increment:
    """What an incremental report reuses from the set's previous exact report (base_run):
    search [n] bool, the images (rows of the VectorSet) to search against all: new, changed
    or truncated then; kept, the base run's stored pairs among the other images."""

    base_run: int
    search: np.ndarray
    kept: PairSet  # of image ids

    @property
    def n_search(self) -> int:
        return int(self.search.sum())


@dataclass
class IndexRecord:
    path: str
    center: bool
    l2_normalize: bool
    mean: np.ndarray | None
    n_vectors: int


def index_dir(catalog: Catalog, *, create: bool = False) -> Path:
    """CATALOG.indexes, the catalog's index folder; never a link (UnsafeCatalogError names it)."""
    return side_folder(catalog.path, ".indexes", create=create)


def _check_metric(metric: str) -> None:
    if metric not in SUPPORTED_METRICS:
        raise StageError(f"metric {metric!r} is not supported for dedup; use cosine (SSCD's metric)")


def _check_count(set_name: str, n: int) -> None:
    if n < 2:
        raise StageError(f"embedding set {set_name!r} has {n} vectors for present images; "
                         "run `vdc-lake predict` (or sanitize for the builtin set) first")


def _vectors(catalog: Catalog, set_name: str) -> VectorSet:
    vs = read_vectors(catalog, "embeddings", set_name)
    _check_count(set_name, len(vs))
    return vs


def set_views(catalog: Catalog, set_name: str) -> int:
    """Views per vector of the set: VIEWS for the multi-view builtin descriptor
    (builtin-dct-ms), else 1 (one vector per image, searched as it is)."""
    from vdc_lake.kernels.descriptor import views_per_vector

    rows = catalog.rows("SELECT model FROM embedding_sets WHERE name = ?", [set_name])
    return views_per_vector(rows[0][0] if rows else None)


def view_rows(vectors: np.ndarray, image_ids: np.ndarray, views: int) -> tuple[np.ndarray, np.ndarray]:
    """The search rows of a set: vectors [n, views * d] as rows [n * views, d] (a reshape, no
    copy, so prepare_vectors(copy=False) works in place) and their keys [n * views]
    image_id * views + view. views 1: the vectors and image ids as they are."""
    if views == 1:
        return vectors, image_ids
    n, dim = vectors.shape
    if dim % views:
        raise StageError(f"the set's {dim}-d vectors do not split into {views} views; compute it again "
                         "(`vdc-lake predict --model builtin --kind descriptor --set NEW_NAME`)")
    if n and int(image_ids.max()) > np.iinfo(np.int64).max // views - 1:
        raise StageError(f"image ids up to {int(image_ids.max())} are too large to key {views} views each")
    keys = (np.asarray(image_ids, np.int64)[:, None] * views + np.arange(views)).reshape(-1)
    return vectors.reshape(n * views, dim // views), keys


def fold_view_pairs(pairs, views: int, max_pairs_per_image: int | None = None):
    """Image pairs from the pairs of view rows (keys from view_rows): the pairs where at least
    one side is an image's whole view (view 0), not within one image, each image pair once with
    its smallest distance (descriptor.set_distances' rule); capped per image
    (neighbors.cap_pairs_per_image). Images with truncated view rows stay truncated."""
    from vdc_lake.kernels.neighbors import PairSet, cap_pairs_per_image

    if views == 1:
        return pairs
    a, b = pairs.a // views, pairs.b // views
    keep = (a != b) & ((pairs.a % views == 0) | (pairs.b % views == 0))
    a, b, dist = np.minimum(a, b)[keep], np.maximum(a, b)[keep], pairs.distance[keep]
    order = np.lexsort((dist, b, a))  # by image pair, nearest first
    a, b, dist = a[order], b[order], dist[order]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    folded = PairSet(a[first], b[first], dist[first], np.unique(pairs.truncated // views))
    return cap_pairs_per_image(folded, max_pairs_per_image)


def build_index(catalog: Catalog, set_name: str, *, center: bool, l2_normalize: bool, dtype: str,
                threads: int = 0, quiet: bool = False, device: str = "auto", force: bool = False) -> IndexSummary:
    """Build and save a usearch (HNSW, cosine) index over the set's current vectors; register it.

    Only when `dedup report --method auto` would use it (choose_method on this device): else
    nothing is built and the summary's `skipped` says why, unless force (for --method ann).
    """
    from vdc_lake.kernels import neighbors
    check_name(set_name)  # it becomes part of the index's file name
    views = set_views(catalog, set_name)
    if not force:
        n_vectors = count_vectors(catalog, "embeddings", set_name)
        _check_count(set_name, n_vectors)
        method, reason = choose_method("auto", n_vectors * views, _resolve_device(device))
        if method != "ann":
            return IndexSummary(None, set_name, "", n_vectors * views,
                                set_dim(catalog, "embeddings", set_name) // views, 0.0, skipped=reason)
    params = {"set": set_name, "center": center, "l2_normalize": l2_normalize, "dtype": dtype}
    with catalog.run("dedup-index", params) as run_id:
        started = dt.datetime.now()
        vs = _vectors(catalog, set_name)
        catalog.release()
        rows, keys = view_rows(vs.vectors, vs.image_ids, views)
        prepared, mean = neighbors.prepare_vectors(rows, center=center, l2_normalize=l2_normalize, copy=False)
        index = neighbors.build_index(prepared, keys, metric="cos", dtype=dtype, threads=threads)
        folder = index_dir(catalog, create=True)
        path = folder / f"{set_name}-run{run_id}.usearch"
        if not is_inside(path, folder):
            raise StageError(f"refusing to write the index {path}: it resolves outside the catalog's index "
                             f"folder {folder}; remove the link there and run again")
        neighbors.save_index(index, path)
        catalog.execute(
            "INSERT INTO ann_indexes VALUES (?, ?, ?, ?, ?, 'cosine', ?, ?, ?, ?, ?)",
            [set_name, run_id, str(path), len(vs), prepared.shape[1], dtype, center, l2_normalize,
             None if mean is None else mean.astype(np.float32).tolist(), dt.datetime.now()],
        )
        seconds = (dt.datetime.now() - started).total_seconds()
        summary = IndexSummary(run_id, set_name, str(path), len(prepared), prepared.shape[1], seconds)
        catalog.finish_run(run_id, summary=asdict(summary))
    return summary


def latest_index(catalog: Catalog, set_name: str) -> IndexRecord | None:
    rows = catalog.rows(
        "SELECT path, center, l2_normalize, mean, n_vectors FROM ann_indexes WHERE set_name = ? "
        "ORDER BY run_id DESC LIMIT 1",
        [set_name],
    )
    if not rows:
        return None
    recorded, center, l2, mean, n = rows[0]
    return IndexRecord(str(_index_path(catalog, recorded)), center, l2,
                       None if mean is None else np.asarray(mean, np.float32), n)


def _index_path(catalog: Catalog, recorded: str) -> Path:
    """Where a recorded index file is: always by its name inside the catalog's index folder, so
    an edited ann_indexes row cannot make us read elsewhere (and a moved catalog folder still works)."""
    folder = index_dir(catalog)
    path = folder / Path(recorded).name
    if not is_inside(path, folder) or path.resolve() == folder.resolve():
        raise StageError(f"the index path {recorded!r} recorded in ann_indexes names no file in the catalog's "
                         f"index folder {folder}; the catalog was edited: run `vdc-lake dedup index` to build a new index")
    return path


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise StageError("--device cuda was asked for but torch sees no GPU; use --device cpu")
    return device


def choose_method(method: str, n_vectors: int, device: str, backend: str = "local") -> tuple[str, str]:
    """(method, why in one line): auto -> exact on a GPU, on a Ray cluster or for small sets on
    the CPU, else the usearch ANN index."""
    if method not in ("auto", "ann", "exact"):
        raise StageError(f"unknown search method {method!r}: use auto, ann or exact")
    if backend == "ray":
        if method == "ann":
            raise StageError("--backend ray runs the exact search only (tiles over the cluster); "
                             "use --method exact or auto, or --backend local for the ANN index")
        return "exact", "--backend ray splits the exact search into tiles over the cluster"
    if method != "auto":
        return method, f"--method {method} was asked for"
    if device == "cuda":
        return "exact", "a GPU is available: the exact tiled search finds every pair faster than an index"
    if n_vectors <= EXACT_CPU_MAX_VECTORS:
        return "exact", (f"{n_vectors:,} vectors <= {EXACT_CPU_MAX_VECTORS:,} on the CPU: the exact search "
                         "costs less than building an HNSW index, and finds every pair")
    return "ann", (f"{n_vectors:,} vectors > {EXACT_CPU_MAX_VECTORS:,} on the CPU: usearch HNSW index "
                   "(approximate; --method exact or a GPU finds every pair)")


def _check_search_options(max_pairs_per_image: int | None, precision: str, ray_tile_rows: int | None) -> None:
    from vdc_lake.kernels.neighbors import PRECISIONS

    if max_pairs_per_image is not None and (isinstance(max_pairs_per_image, bool) or int(max_pairs_per_image) < 1):
        raise StageError(f"max_pairs_per_image must be a whole number >= 1, not {max_pairs_per_image}")
    if precision not in ("auto",) + PRECISIONS:
        raise StageError(f"precision must be auto, {', '.join(PRECISIONS)}, not {precision!r}")
    if ray_tile_rows is not None and int(ray_tile_rows) < 1:
        raise StageError(f"ray_tile_rows must be a whole number >= 1, not {ray_tile_rows}")


def _usable_index(record: IndexRecord | None, n_vectors: int, center: bool, l2_normalize: bool) -> bool:
    return (record is not None and record.n_vectors == n_vectors and Path(record.path).exists()
            and bool(record.center) == center and bool(record.l2_normalize) == l2_normalize)


def report(catalog: Catalog, set_name: str, *, threshold: float, metric: str | None = None, method: str = "auto",
           device: str = "auto", neighbors_k: int | None = None, center: bool | None = None,
           l2_normalize: bool | None = None, dtype: str | None = None, max_pairs_per_image: int | None = None,
           precision: str | None = None, backend: str = "local", ray_tile_rows: int | None = None,
           full: bool = False, quiet: bool = False) -> ReportSummary:
    """Find every pair of the set under `threshold` and write them to dup_edges under a new run.

    A range search: exact (tiled matmul in torch: every pair; bf16/tf32 scores re-checked in
    fp32 near the threshold) or ann (the set's newest usearch index with the same centring and
    L2 normalisation, built now if none matches; each image's search widens from neighbors_k
    until its farthest neighbour is beyond the threshold), or auto (choose_method: the summary
    says which and why). center / l2_normalize prepare the vectors for either method.
    max_pairs_per_image (None: no cap) keeps each image's nearest pairs only; the summary
    counts the images cut. backend "ray": the exact search as tiles of ray_tile_rows rows over
    the Ray cluster joined by the caller (vdc_lake.scale.ray_backend.range_search), resumable per tile.
    A multi-view set (the builtin-dct-ms descriptor) is searched as one row per view, centred
    and normalised per view, and its pairs folded back to image pairs (fold_view_pairs).
    Incremental: when the set's newest report was an exact search with the same threshold,
    metric, L2 normalisation and cap, and no centring (the mean moves with every new image),
    only the images it did not cover at their current version (new or changed, and those it
    truncated) are searched against all (neighbors.radius_pairs_new); its stored pairs among
    the others are kept, pairs of images gone or changed dropped: the same pairs as a full
    exact search (the summary's incremental_from names the run). full forces a full search.
    metric, neighbors_k, center, l2_normalize, dtype, precision: None takes the bundled default
    of [dedup] (the CLI passes the effective config).
    """
    from vdc_lake.kernels import neighbors
    defaults = bundled_defaults()["dedup"]
    metric = defaults["metric"] if metric is None else metric
    neighbors_k = defaults["neighbors"] if neighbors_k is None else neighbors_k
    center = defaults["center"] if center is None else center
    l2_normalize = defaults["l2_normalize"] if l2_normalize is None else l2_normalize
    dtype = defaults["index_dtype"] if dtype is None else dtype
    precision = defaults["precision"] if precision is None else precision
    check_name(set_name)
    _check_metric(metric)
    _check_search_options(max_pairs_per_image, precision, ray_tile_rows)
    resolved = _resolve_device(device) if backend != "ray" else device
    n_vectors = count_vectors(catalog, "embeddings", set_name)
    _check_count(set_name, n_vectors)
    views = set_views(catalog, set_name)
    base, why_full = (None, "--full was asked for") if full else _incremental_base(
        catalog, set_name, threshold=threshold, metric=metric, method=method, backend=backend, center=center,
        l2_normalize=l2_normalize, max_pairs_per_image=max_pairs_per_image)
    if base is not None:
        method, reason = "exact", (f"run {base} searched this set exactly with the same options: only the images "
                                   "it did not cover are searched against all")
    else:
        method, reason = choose_method(method, n_vectors * views, resolved, backend)
        reason += f" (a full search: {why_full})" if why_full else ""
    record = latest_index(catalog, set_name) if method == "ann" else None
    if method == "ann" and not _usable_index(record, n_vectors, center, l2_normalize):
        # before this stage reads the set: build_index holds its own copy while it runs
        build_index(catalog, set_name, center=center, l2_normalize=l2_normalize, dtype=dtype, quiet=quiet,
                    force=True)
        record = latest_index(catalog, set_name)
        reason += "; built an index with this centring / L2 normalisation"
    vs = _vectors(catalog, set_name)
    center_arg = (record.mean if record is not None and record.mean is not None else True) if center else False
    if method == "ann" or (backend == "ray" and precision == "auto"):
        resolved_precision = None  # ray: each task's device decides (bf16 on a GPU, fp32 on a CPU)
    else:
        resolved_precision = precision if precision != "auto" else neighbors.default_precision(resolved)
    params = {"set": set_name, "threshold": threshold, "metric": metric, "method": method, "reason": reason,
              "device": resolved, "backend": backend, "precision": resolved_precision, "neighbors": neighbors_k,
              "center": center, "l2_normalize": l2_normalize, "max_pairs_per_image": max_pairs_per_image,
              "index": record.path if record else None}
    with catalog.run("dedup-report", params) as run_id:
        started = dt.datetime.now()
        vector_runs = _vector_runs(catalog, set_name, vs) if method == "exact" else None
        increment = _increment(catalog, base, set_name, vs, vector_runs) if base is not None else None
        catalog.release()
        # A multi-view set is searched as rows of views, every row against every row, by each
        # method and backend alike (so ray equals local, cap included); searching only the
        # whole views against all rows would do 3 n^2 instead of 4.5 n^2 products (1.4x faster
        # measured) but cap differently. Pairs that cannot decide an image pair (an image's own
        # views, two partial views) are dropped where they are found (views=), so they neither
        # pile up nor count against a cap. A whole view may pair with every view of another
        # image, so the per-row cap is views times the per-image one; fold_view_pairs caps per image.
        rows, keys = view_rows(vs.vectors, vs.image_ids, views)
        row_cap = None if max_pairs_per_image is None else max_pairs_per_image * views
        prepared, _ = neighbors.prepare_vectors(rows, center=center_arg, l2_normalize=l2_normalize, copy=False)
        pairs = None
        if increment is not None:
            pairs = _incremental_pairs(prepared, keys, increment, threshold=threshold, device=resolved,
                                       precision=resolved_precision, max_pairs_per_image=max_pairs_per_image,
                                       views=views, quiet=quiet)
            if pairs is None:
                increment, reason = None, reason + "; images of this multi-view set were truncated: searched in full"
        if pairs is None:
            found = _all_pairs(catalog, prepared, keys, method=method, backend=backend, threshold=threshold,
                               device=resolved, precision=precision, resolved_precision=resolved_precision,
                               row_cap=row_cap, views=views, ray_tile_rows=ray_tile_rows, record=record,
                               neighbors_k=neighbors_k, quiet=quiet)
            pairs = fold_view_pairs(found, views, max_pairs_per_image)
        _write_edges(catalog, run_id, set_name, vs, pairs)
        if method == "exact":
            _write_coverage(catalog, run_id, set_name, vs, vector_runs, pairs.truncated)
        seconds = (dt.datetime.now() - started).total_seconds()
        summary = ReportSummary(run_id, set_name, method, len(vs), len(pairs), threshold, seconds, reason=reason,
                                backend=backend, precision=resolved_precision, center=center,
                                l2_normalize=l2_normalize, max_pairs_per_image=max_pairs_per_image,
                                truncated_images=len(pairs.truncated), approximate=method == "ann",
                                incremental_from=increment.base_run if increment else None,
                                searched=increment.n_search if increment else len(vs),
                                kept_pairs=len(increment.kept) if increment else 0)
        catalog.finish_run(run_id, summary=asdict(summary))
    return summary


def _all_pairs(catalog: Catalog, prepared: np.ndarray, keys: np.ndarray, *, method: str, backend: str,
               threshold: float, device: str, precision: str, resolved_precision: str | None, row_cap: int | None,
               views: int, ray_tile_rows: int | None, record: IndexRecord | None, neighbors_k: int, quiet: bool):
    """Every pair of view rows under the threshold by the chosen method and backend (a full search)."""
    from vdc_lake.kernels import neighbors

    if method == "exact" and backend == "ray":
        from vdc_lake.scale import ray_backend
        return ray_backend.range_search(
            prepared, keys, threshold=threshold, staging_dir=ray_backend.staging_root(catalog.path),
            tile_rows=ray_tile_rows or len(keys), precision=None if precision == "auto" else precision,
            max_pairs_per_image=row_cap, views=views, quiet=quiet)
    if method == "exact":
        with _progress("dedup exact", "block", quiet) as progress:
            return neighbors.radius_pairs_exact(prepared, keys, threshold=threshold, device=device,
                                                precision=resolved_precision, max_pairs_per_image=row_cap,
                                                views=views, progress=progress)
    index = neighbors.open_index(record.path, view=True)
    with _progress("dedup ann", "image", quiet) as progress:
        return neighbors.radius_pairs_ann(index, prepared, keys, threshold=threshold, k=neighbors_k,
                                          max_pairs_per_image=row_cap, views=views, progress=progress)


def _incremental_base(catalog: Catalog, set_name: str, *, threshold: float, metric: str, method: str, backend: str,
                      center: bool, l2_normalize: bool, max_pairs_per_image: int | None) -> tuple[int | None, str]:
    """(the set's newest report run when an incremental search can extend it, else None; why
    not in a few words, "" when the set has no report yet)."""
    rows = catalog.rows("SELECT run_id, params FROM newest_runs WHERE stage = 'dedup-report' AND set_name = ?",
                        [set_name])
    if not rows:
        return None, ""
    run_id, params = rows[0][0], json.loads(rows[0][1])
    if method == "ann" or backend == "ray":
        return None, f"--{'method ann' if method == 'ann' else 'backend ray'} searches the whole set"
    if center or params.get("center"):
        return None, "--center moves every vector with the set's mean"
    asked = {"threshold": float(threshold), "metric": metric, "l2_normalize": bool(l2_normalize),
             "max_pairs_per_image": max_pairs_per_image}
    changed = [k for k, v in asked.items() if params.get(k) != v]
    if params.get("method") != "exact":
        return None, f"run {run_id} was an approximate (ann) search"
    if changed:
        return None, f"{', '.join(changed)} differ from run {run_id}'s"
    if not catalog.scalar("SELECT count(*) > 0 FROM dedup_coverage WHERE run_id = ?", [run_id]):
        return None, f"run {run_id} recorded no coverage (an older vdc-lake made it)"
    return run_id, ""


def _increment(catalog: Catalog, base_run: int, set_name: str, vs: VectorSet, vector_runs: np.ndarray) -> Increment:
    """Which images of vs the base run covered (same version and vector run (vector_runs [n],
    _vector_runs), not truncated) and its stored pairs among them; every other image is searched again."""
    from vdc_lake.kernels.lookup import lookup_sorted
    from vdc_lake.kernels.neighbors import PairSet

    covered = catalog.arrow("SELECT image_id, version, vector_run FROM dedup_coverage WHERE run_id = ? "
                            "AND NOT truncated ORDER BY image_id", [base_run])
    ids, versions = covered.column("image_id").to_numpy(), covered.column("version").to_numpy()
    at, old = lookup_sorted(ids, vs.image_ids)
    if len(ids):
        old &= (versions[at] == vs.versions) & (covered.column("vector_run").to_numpy()[at] == vector_runs)
    edges = catalog.arrow("SELECT image_a, image_b, distance FROM dup_edges WHERE run_id = ? AND set_name = ? "
                          "ORDER BY image_a, image_b", [base_run, set_name])
    a, b = edges.column("image_a").to_numpy(), edges.column("image_b").to_numpy()
    old_ids = vs.image_ids[old]  # sorted: vs is in image_id order
    both = np.isin(a, old_ids, assume_unique=False) & np.isin(b, old_ids, assume_unique=False)
    kept = PairSet(a[both], b[both], edges.column("distance").to_numpy()[both])
    return Increment(base_run, ~old, kept)


def _incremental_pairs(prepared: np.ndarray, keys: np.ndarray, increment: Increment, *, threshold: float, device: str,
                       precision: str | None, max_pairs_per_image: int | None, views: int, quiet: bool):
    """The increment's new images against all rows, merged with its kept pairs: a full exact
    search's image pairs. None for a multi-view set whose result truncates an image (its
    full search caps view rows first, which only a full search reproduces)."""
    from vdc_lake.kernels import neighbors

    row_cap = None if max_pairs_per_image is None else max_pairs_per_image * views
    with _progress("dedup new x all", "block", quiet) as progress:
        found = neighbors.radius_pairs_new(prepared, keys, np.repeat(increment.search, views), threshold=threshold,
                                           device=device, precision=precision, max_pairs_per_image=row_cap,
                                           views=views, progress=progress)
    pairs = neighbors.merge_pair_sets([increment.kept, fold_view_pairs(found, views, max_pairs_per_image)],
                                      max_pairs_per_image)
    return None if views > 1 and len(pairs.truncated) else pairs


def _vector_runs(catalog: Catalog, set_name: str, vs: VectorSet) -> np.ndarray:
    """[n] the run that wrote each vector of vs (the newest of the image's version, as read_vectors
    picks it; only the key columns are read); -1 where none is found."""
    keys = pa.table({"image_id": pa.array(np.asarray(vs.image_ids, np.int64)),
                     "version": pa.array(np.asarray(vs.versions, np.int32))})
    with catalog.registered("_dedup_current_images", keys) as name:
        runs = catalog.arrow(f"SELECT c.image_id, max(e.run_id) AS run_id FROM {name} c JOIN embeddings e "
                             "ON e.set_name = ? AND e.image_id = c.image_id AND e.version = c.version "
                             "GROUP BY c.image_id ORDER BY c.image_id", [set_name])
    out = np.full(len(vs), -1, np.int64)
    found = runs.column("image_id").to_numpy()
    out[np.searchsorted(vs.image_ids, found)] = runs.column("run_id").to_numpy()
    return out


def _write_coverage(catalog: Catalog, run_id: int, set_name: str, vs: VectorSet, vector_runs: np.ndarray,
                    truncated: np.ndarray) -> None:
    """dedup_coverage: every image the run searched, its version, its vector's run (vector_runs
    [n]) and whether it was truncated."""
    with catalog.transaction():
        catalog.insert_arrow("dedup_coverage", pa.table({
            "run_id": pa.array(np.full(len(vs), run_id, np.int64)),
            "set_name": pa.repeat(pa.scalar(set_name, pa.string()), len(vs)),
            "image_id": pa.array(np.asarray(vs.image_ids, np.int64)),
            "version": pa.array(np.asarray(vs.versions, np.int32)),
            "vector_run": pa.array(vector_runs),
            "truncated": pa.array(np.isin(vs.image_ids, truncated)),
        }))


@contextlib.contextmanager
def _progress(desc: str, unit: str, quiet: bool):
    """A progress(done, total) callback drawing one bar (silent with quiet)."""
    from vdc_lake.progress import progress_bar

    state = {"bar": None, "done": 0}

    def progress(done: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = progress_bar(total, desc, unit=unit, quiet=quiet)
        state["bar"].update(done - state["done"])
        state["done"] = done

    try:
        yield progress
    finally:
        if state["bar"] is not None:
            state["bar"].close()


def _write_edges(catalog: Catalog, run_id: int, set_name: str, vs: VectorSet, pairs) -> None:
    order = np.argsort(vs.image_ids)
    ids, versions = vs.image_ids[order], vs.versions[order]
    a, b = np.asarray(pairs.a, np.int64), np.asarray(pairs.b, np.int64)
    with catalog.transaction():
        catalog.insert_arrow("dup_edges", pa.table({
            "run_id": pa.array(np.full(len(a), run_id, np.int64)),
            "set_name": pa.repeat(pa.scalar(set_name, pa.string()), len(a)),
            "image_a": pa.array(a),
            "image_b": pa.array(b),
            "version_a": pa.array(versions[np.searchsorted(ids, a)].astype(np.int32)),
            "version_b": pa.array(versions[np.searchsorted(ids, b)].astype(np.int32)),
            "distance": pa.array(np.asarray(pairs.distance, np.float32)),
        }))
