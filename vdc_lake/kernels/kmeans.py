"""k-means on torch: flat and hierarchical, resumable, for millions of embeddings.

Kernels only: tensors or NumPy arrays in, small result dataclasses out; no catalog, no
printing, no defaults of their own (the caller passes max_iters, tol and seed: the stage
reads them from the effective config). Long loops report to an optional ``progress``: a callable taking (stage, step,
total), or a tqdm-like bar (anything with ``set_description``, ``total``, ``n`` and
``refresh``), which then shows the current stage.

Semantics follow VDC (pt-kmeans) and Vo et al. 2024, "Automatic data curation for
self-supervised learning: a clustering-based approach" (facebookresearch/ssl-data-curation):
level 0 clusters the points, every upper level clusters the centres of the level below, and
method "resampled" refines each level with resampling steps (see ``hierarchical_kmeans``).

Where the time goes, and why it stays low (DESIGN.md, "Performance model"):

- a full pass scores each chunk of rows against all centres with one matmul and keeps the
  best two (an N x K matrix never exists), summing the rows into their clusters on the way;
- later passes start from Hamerly's bounds (2010): a row keeps its label while an upper
  bound on the distance to its own centre stays below a lower bound on the distance to
  every other, both moved by how far the centres moved, which reads no data. Rows that
  fail are checked against the centres that moved most, then their own centre, and only
  the rest are scored against all centres; the cluster sums are updated for the rows that
  changed. Late Lloyd iterations, and resampling steps once their centres settle, cost a
  small part of a pass. The labels are still exact: near ties (1e-4) are always rescored;
- k-means++ (greedy, 2 + log k trials per centre) runs in ``INIT_ROUNDS`` rounds of
  batched matmuls on a random sample of ``INIT_SAMPLE_PER_CLUSTER * k`` points, instead of
  k sequential passes over the data;
- resampling picks the closest points of every cluster with one sort, and the refit starts
  from the current centres;
- on CUDA the matmuls run in TF32 (fp32 accumulation, fp32 scores); the data is copied to
  the GPU once when it fits in half the free memory, otherwise chunks are streamed from
  host memory or a NumPy memmap. Cluster sums are float64 and added in a fixed order on
  every device, so a seed gives the same result on every run.

Empty clusters: after an update, each cluster that lost all its points is re-seeded with
one of the points farthest from their current centre (the farthest point goes to the
lowest empty cluster id; ties by row index), so the rule is deterministic. A cluster can
stay empty only when the data has fewer distinct points than clusters, or after the last
reassignment of a resampling step; its centre is then kept, and it owns no points.

Resume: with ``checkpoint_dir``, ``hierarchical_kmeans`` writes its state (arguments, the
finished levels, and the current level after its k-means and after every resampling step)
to one file, atomically (temporary file, fsync, ``os.replace``). Calling it again with the
same arguments and directory continues after the last finished step and returns what an
uninterrupted run returns (on the same device and chunk size); other arguments, or other
data, raise ``ValueError``.

This module holds the entry points (``kmeans``, ``hierarchical_kmeans``) and the level
runner; the pieces live in modules of one idea each, public so that the distributed
k-means (``vdc_lake.scale.kmeans_distributed``) calls the same code:
``kmeans_results`` (result dataclasses, argument types), ``kmeans_rows`` (data access,
chunking, TF32, progress), ``kmeans_pass`` (assignment, Hamerly bounds, cluster sums),
``kmeans_seeding`` (k-means++ in rounds), ``kmeans_lloyd`` (Lloyd, a whole fit),
``kmeans_checks`` (argument checks) and ``kmeans_checkpoint`` (resume state).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch

from vdc_lake.kernels.kmeans_checkpoint import Checkpoint, data_fingerprint, new_state
from vdc_lake.kernels.kmeans_checks import check_data, check_levels, check_options
from vdc_lake.kernels.kmeans_lloyd import fit, lloyd
from vdc_lake.kernels.kmeans_pass import Assignment, move_centers, refresh
from vdc_lake.kernels.kmeans_results import (
    ArrayLike, HierarchicalKMeansResult, HierarchicalLevel, Init, KMeansResult, Method, Metric, Progress,
)
from vdc_lake.kernels.kmeans_rows import (
    Rows, chunk_rows, fast_matmul, place, progress_callback, report_progress, resolve_device,
)

__all__ = ["kmeans", "hierarchical_kmeans", "run_level", "closest_per_cluster", "level_seed", "KMeansResult",
           "HierarchicalLevel", "HierarchicalKMeansResult", "ArrayLike", "Init", "Method", "Metric", "Progress"]


def kmeans(x: ArrayLike, k: int, *, metric: Metric = "cosine", init: Init = "kmeans++",
           max_iters: int, tol: float, seed: int, chunk_size: int | None = None,
           device: str | torch.device | None = None, progress: Progress | None = None) -> KMeansResult:
    """Cluster the rows of ``x`` into ``k`` groups with Lloyd's k-means.

    x: [n, d] tensor, NumPy array or memmap (any float dtype; cosine normalises rows).
    k: 1..n clusters. metric: "cosine" (spherical k-means, unit centres) or "l2".
    init: "kmeans++" (greedy k-means++ in rounds, on a random sample of 10 points per
    cluster) or "random" (k distinct rows). max_iters: most Lloyd iterations; tol: stop once
    ||C_new - C_old||_F / ||C_old||_F < tol. seed: makes the run reproducible.
    chunk_size: rows scored per matmul (default from k and the device). device: where to
    compute (default: x's device, the CPU for NumPy). progress: a callable taking (stage,
    step, total), stages "init" and "lloyd", or a tqdm-like bar.
    Returns a KMeansResult on the CPU; its assignments are exact nearest centres.
    """
    check_data(x)
    check_options(metric, init, max_iters, tol)
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be between 1 and the number of rows ({x.shape[0]}), not {k}")
    compute = resolve_device(x, device)
    progress = progress_callback(progress)
    with torch.no_grad(), fast_matmul(compute):
        rows = place(x, compute, metric)
        chunk = chunk_rows(chunk_size, k, compute)
        centers, assignment, n_iter = fit(
            rows, k, init=init, max_iters=max_iters, tol=tol, seed=seed, chunk=chunk, progress=progress
        )
    return KMeansResult(centers.cpu(), assignment.labels.cpu(), assignment.distances.cpu(), n_iter)


def closest_per_cluster(labels: torch.Tensor, distances: torch.Tensor, per_cluster: int,
                        k: int) -> torch.Tensor:
    """Indices of the ``per_cluster`` rows closest to their centre in every cluster.

    One ordering by (cluster, distance, row) built from two stable sorts; a row's rank in
    its cluster is its position minus the cluster's start. Returns sorted int64 indices.
    """
    order = torch.argsort(distances, stable=True)
    order = order[torch.argsort(labels[order], stable=True)]
    counts = torch.bincount(labels, minlength=k)
    starts = counts.cumsum(dim=0) - counts
    rank = torch.arange(len(order), device=order.device) - starts[labels[order]]
    return order[rank < per_cluster].sort().values


def _resample(rows: Rows, assignment: Assignment, per_cluster: int, *, max_iters: int,
              tol: float, chunk: int) -> Assignment:
    """One resampling step (Vo et al. 2024): refit on the closest points, reassign all.

    The k-means refit on the ``per_cluster`` rows closest to each centre starts from the
    current centres (its first update is the mean of each cluster's selected rows); then
    every row of the level goes to its nearest refitted centre.
    """
    centers = assignment.centers
    chosen = closest_per_cluster(assignment.labels, assignment.distances, per_cluster, len(centers))
    picked = Rows(rows.take(chosen), device=centers.device, metric=rows.metric, unit=True)
    centers, _, _ = lloyd(picked, centers, max_iters=max_iters, tol=tol, chunk=chunk,
                          progress=None, stage="refit", final_assign=False)
    return refresh(rows, move_centers(rows, assignment, centers, chunk, None), chunk)


def level_seed(seed: int, level: int) -> int:
    """The seed of level ``level`` of a hierarchy seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, level]).generate_state(1)[0])


_ASSIGNMENT_FIELDS = ("centers", "labels", "upper", "lower", "distances", "fresh")


def run_level(inputs: Rows, level: int, state: dict, save: Callable[[dict], None], *, k: int,
              per_cluster: int, n_resamples: int, init: str, max_iters: int, tol: float,
              seed: int, chunk_size: int | None, progress: Progress | None) -> None:
    """Cluster one level (k-means, then resampling steps), saving after each step.

    ``state["current"]`` holds the level's assignment on the CPU (with its bounds, so a
    resumed run takes exactly the steps an uninterrupted one takes).
    """
    device = inputs.device
    chunk = chunk_rows(chunk_size, k, device)
    current = state["current"]
    if current is None or current["level"] != level:
        _, assignment, n_iter = fit(
            inputs, k, init=init, max_iters=max_iters, tol=tol, seed=level_seed(seed, level),
            chunk=chunk, progress=progress, stage_prefix=f"level {level} ",
        )
        current = {"level": level, "resamples_done": 0, "n_iter": n_iter}
        current.update({key: getattr(assignment, key).cpu() for key in _ASSIGNMENT_FIELDS})
        state["current"] = current
        save(state)
    assignment = Assignment(*(current[key].to(device) for key in _ASSIGNMENT_FIELDS))
    for step in range(current["resamples_done"], n_resamples):
        assignment = _resample(inputs, assignment, per_cluster, max_iters=max_iters, tol=tol, chunk=chunk)
        current.update({key: getattr(assignment, key).cpu() for key in _ASSIGNMENT_FIELDS})
        current["resamples_done"] = step + 1
        save(state)
        report_progress(progress, f"level {level} resample", step + 1, n_resamples)
    state["levels"].append({"centers": current["centers"], "input_assignments": current["labels"],
                            "input_distances": current["distances"], "n_iter": current["n_iter"]})
    state["current"] = None
    save(state)


def hierarchical_kmeans(
    x: ArrayLike, n_clusters: Sequence[int], *, method: Method,
    n_samples: Sequence[int] | None = None, n_resamples: int | None = None, metric: Metric = "cosine",
    init: Init = "kmeans++", max_iters: int, tol: float, seed: int,
    chunk_size: int | None = None, device: str | torch.device | None = None,
    checkpoint_dir: str | os.PathLike | None = None, progress: Progress | None = None,
) -> HierarchicalKMeansResult:
    """Bottom-up hierarchical k-means (VDC, Vo et al. 2024).

    x: [n, d] tensor, NumPy array or memmap. n_clusters: clusters per level, strictly
    shrinking (e.g. [45000, 900, 90]); level 0 clusters the points, level l clusters the
    centres of level l-1. method "resampled": after a level's k-means, repeat n_resamples
    times: take the n_samples[l] inputs closest to each centre, refit k-means on them from
    the current centres, reassign all of the level's inputs (n_samples[l] = 0 skips the
    level). metric, init, max_iters, tol, seed, chunk_size, device: as in ``kmeans`` (level
    l seeds from (seed, l)). checkpoint_dir: resume point, see the module docstring.
    progress: a callable taking (stage, step, total), stages "level L init", "level L
    lloyd" and "level L resample", or a tqdm-like bar. Returns a HierarchicalKMeansResult
    on the CPU.
    """
    check_data(x)
    check_options(metric, init, max_iters, tol)
    resampled = method == "resampled"
    check_levels(x.shape[0], n_clusters, method, n_samples, n_resamples)
    compute = resolve_device(x, device)
    progress = progress_callback(progress)
    with torch.no_grad(), fast_matmul(compute):
        rows = place(x, compute, metric)
        arguments = {
            "n_clusters": [int(k) for k in n_clusters], "method": method,
            "n_samples": [int(s) for s in n_samples] if resampled else None,
            "n_resamples": int(n_resamples) if resampled else 0, "metric": metric, "init": init,
            "max_iters": int(max_iters), "tol": float(tol), "seed": int(seed),
            "shape": [rows.n, rows.d], "data": data_fingerprint(rows),
        }
        checkpoint = Checkpoint(checkpoint_dir, arguments) if checkpoint_dir is not None else None
        state = checkpoint.load() if checkpoint is not None else None
        if state is None:
            state = new_state(arguments)
        save = checkpoint.save if checkpoint is not None else (lambda _state: None)
        for level in range(len(state["levels"]), len(n_clusters)):
            inputs = rows if level == 0 else Rows(
                state["levels"][-1]["centers"].to(compute), device=compute, metric=metric, unit=True
            )
            run_level(
                inputs, level, state, save, k=int(n_clusters[level]),
                per_cluster=int(n_samples[level]) if resampled else 0,
                n_resamples=int(n_resamples) if resampled and n_samples[level] > 0 else 0,
                init=init, max_iters=max_iters, tol=tol, seed=seed, chunk_size=chunk_size,
                progress=progress,
            )
    return HierarchicalKMeansResult.from_levels(state["levels"])
