"""Lloyd's iterations from given centres, and a whole fit (seeding, then Lloyd)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vdc_lake.kernels.kmeans_pass import Assignment, Sums, move_centers, refresh, score_all
from vdc_lake.kernels.kmeans_results import Progress
from vdc_lake.kernels.kmeans_rows import Rows, report_progress
from vdc_lake.kernels.kmeans_seeding import initial_centers


def _new_centers(rows: Rows, sums: Sums, assignment: Assignment, chunk: int):
    """Cluster means (normalised for cosine); empty clusters get the farthest rows.

    Returns (centers [k, d], assignment, with exact distances if they were needed).
    """
    counts = sums.counts
    centers = (sums.sums / counts.clamp(min=1).unsqueeze(1).to(torch.float64)).to(torch.float32)
    empty = (counts == 0).nonzero().squeeze(1)
    if len(empty):
        assignment = refresh(rows, assignment, chunk)
        farthest = torch.argsort(assignment.distances, descending=True, stable=True)[: len(empty)]
        centers[empty[: len(farthest)]] = rows.take(farthest)
    if rows.metric == "cosine":
        centers = F.normalize(centers, dim=1)
    return centers, assignment


def lloyd(rows: Rows, centers: torch.Tensor, *, max_iters: int, tol: float, chunk: int,
          progress: Progress | None, stage: str, final_assign: bool = True):
    """Lloyd iterations from ``centers`` until the relative centre shift is below ``tol``.

    Returns (centers [k, d], the assignment to them with exact distances, or None without
    ``final_assign``, n_iter).
    """
    assignment, sums = score_all(rows, centers, chunk)
    n_iter = 0
    for n_iter in range(1, max_iters + 1):
        updated, assignment = _new_centers(rows, sums, assignment, chunk)
        shift = torch.linalg.norm(updated - centers) / torch.linalg.norm(centers).clamp(min=1e-12)
        centers = updated
        report_progress(progress, stage, n_iter, max_iters)
        done = shift.item() < tol or n_iter == max_iters
        if done and not final_assign:
            return centers, None, n_iter
        assignment = move_centers(rows, assignment, centers, chunk, None if done else sums)
        if done:
            break
    return centers, refresh(rows, assignment, chunk), n_iter


def fit(rows: Rows, k: int, *, init: str, max_iters: int, tol: float, seed: int,
        chunk: int, progress: Progress | None, stage_prefix: str = ""):
    """Seed and run Lloyd: (centers [k, d], assignment, n_iter) on the compute device."""
    generator = torch.Generator().manual_seed(seed)
    prefixed = None
    if progress is not None:
        prefixed = lambda stage, step, total: progress(stage_prefix + stage, step, total)  # noqa: E731
    centers = initial_centers(rows, k, init, generator, prefixed)
    return lloyd(rows, centers, max_iters=max_iters, tol=tol, chunk=chunk, progress=prefixed, stage="lloyd")
