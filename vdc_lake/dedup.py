"""Dedup stage: usearch index over an embedding set, and near-duplicate edges into `dup_edges`.

Exact copies need no stage (the exact_duplicate_edges view groups equal content hashes).
`report` writes every pair under the report threshold once; `dedup_actions(threshold, keep)`
then groups and picks keepers in SQL, so trying another threshold costs a query, not a search.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from vdc_lake.catalog import Catalog
from vdc_lake.confine import check_name, is_inside
from vdc_lake.errors import StageError
from vdc_lake.sets import VectorSet, count_vectors, read_vectors

SUPPORTED_METRICS = ("cosine",)
# Up to this many vectors an exact all-pairs search on the CPU beats building an HNSW graph
# (100k x 512: ~100 s exact with recall 1.0 vs ~500 CPU-s for usearch at recall 0.99 on 2 cores;
# see benchmarks/RESULTS.md). Beyond it the n^2 cost wins and the ANN index takes over.
EXACT_CPU_MAX_VECTORS = 200_000


@dataclass
class IndexSummary:
    run_id: int
    set_name: str
    path: str
    n_vectors: int
    dim: int
    seconds: float


@dataclass
class ReportSummary:
    run_id: int
    set_name: str
    method: str
    n_vectors: int
    pairs: int
    threshold: float
    seconds: float


@dataclass
class IndexRecord:
    path: str
    center: bool
    l2_normalize: bool
    mean: np.ndarray | None
    n_vectors: int


def index_dir(catalog: Catalog) -> Path:
    return catalog.path.with_name(catalog.path.name + ".indexes")


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


def build_index(catalog: Catalog, set_name: str, *, center: bool, l2_normalize: bool, dtype: str,
                threads: int = 0, quiet: bool = False) -> IndexSummary:
    """Build and save a usearch (HNSW, cosine) index over the set's current vectors; register it."""
    from vdc_lake import neighbors

    check_name(set_name)  # it becomes part of the index's file name
    params = {"set": set_name, "center": center, "l2_normalize": l2_normalize, "dtype": dtype}
    with catalog.run("dedup-index", params) as run_id:
        started = dt.datetime.now()
        vs = _vectors(catalog, set_name)
        catalog.release()
        prepared, mean = neighbors.prepare_vectors(vs.vectors, center=center, l2_normalize=l2_normalize, copy=False)
        index = neighbors.build_index(prepared, vs.image_ids, metric="cos", dtype=dtype, threads=threads)
        folder = index_dir(catalog)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{set_name}-run{run_id}.usearch"
        if not is_inside(path, folder):
            raise StageError(f"refusing to write the index {path}: it resolves outside the catalog's index "
                             f"folder {folder}; remove the link there and run again")
        neighbors.save_index(index, path)
        catalog.execute(
            "INSERT INTO ann_indexes VALUES (?, ?, ?, ?, ?, 'cosine', ?, ?, ?, ?, ?)",
            [set_name, run_id, str(path), len(vs), vs.vectors.shape[1], dtype, center, l2_normalize,
             None if mean is None else mean.astype(np.float32).tolist(), dt.datetime.now()],
        )
        seconds = (dt.datetime.now() - started).total_seconds()
        summary = IndexSummary(run_id, set_name, str(path), len(vs), vs.vectors.shape[1], seconds)
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


def choose_method(method: str, n_vectors: int, device: str) -> str:
    """auto -> exact on a GPU or for small sets on the CPU, else the usearch ANN index."""
    if method not in ("auto", "ann", "exact"):
        raise StageError(f"unknown search method {method!r}: use auto, ann or exact")
    if method != "auto":
        return method
    return "exact" if device == "cuda" or n_vectors <= EXACT_CPU_MAX_VECTORS else "ann"


def report(catalog: Catalog, set_name: str, *, threshold: float, metric: str = "cosine", method: str = "auto",
           device: str = "auto", neighbors_k: int = 16, center: bool = False, l2_normalize: bool = True,
           dtype: str = "f16", quiet: bool = False) -> ReportSummary:
    """Find every pair of the set under `threshold` and write them to dup_edges under a new run.

    method: exact (tiled matmul + top-k in torch), ann (the set's newest usearch index, built
    now if none matches the current vectors) or auto (see choose_method). With an index, its
    preprocessing (centering, L2) is used, so distances agree with what was indexed.
    """
    from vdc_lake import neighbors

    check_name(set_name)
    _check_metric(metric)
    resolved = _resolve_device(device)
    record = latest_index(catalog, set_name)
    n_vectors = count_vectors(catalog, "embeddings", set_name)
    _check_count(set_name, n_vectors)
    method = choose_method(method, n_vectors, resolved)
    if method == "ann" and (record is None or record.n_vectors != n_vectors or not Path(record.path).exists()):
        # before this stage reads the set: build_index holds its own copy while it runs
        build_index(catalog, set_name, center=center, l2_normalize=l2_normalize, dtype=dtype, quiet=quiet)
        record = latest_index(catalog, set_name)
    vs = _vectors(catalog, set_name)
    if record is not None:
        center_arg = record.mean if record.center else False
        l2_normalize = record.l2_normalize
    else:
        center_arg = center
    params = {"set": set_name, "threshold": threshold, "metric": metric, "method": method, "device": resolved,
              "neighbors": neighbors_k, "center": bool(record.center if record else center),
              "l2_normalize": l2_normalize, "index": record.path if record else None}
    with catalog.run("dedup-report", params) as run_id:
        started = dt.datetime.now()
        catalog.release()
        prepared, _ = neighbors.prepare_vectors(vs.vectors, center=center_arg, l2_normalize=l2_normalize, copy=False)
        if method == "exact":
            pairs = neighbors.radius_pairs_exact(prepared, vs.image_ids, threshold=threshold, k=neighbors_k,
                                                 device=resolved)
        else:
            index = neighbors.open_index(record.path, view=True)
            pairs = neighbors.radius_pairs_ann(index, prepared, vs.image_ids, threshold=threshold, k=neighbors_k)
        _write_edges(catalog, run_id, set_name, vs, pairs)
        seconds = (dt.datetime.now() - started).total_seconds()
        summary = ReportSummary(run_id, set_name, method, len(vs), len(pairs), threshold, seconds)
        catalog.finish_run(run_id, summary=asdict(summary))
    return summary


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
