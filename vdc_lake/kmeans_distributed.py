"""k-means over several processes (GPUs or CPU ranks) with torch.distributed.

Each rank holds one contiguous block of rows (``rank_rows``) and runs the single-process
kernels of ``vdc_lake.kmeans`` on it: scoring, Hamerly bounds and per-cluster float64 sums
stay local; one Lloyd step all-reduces the sums [k, d] and counts [k] (k * (d + 1) numbers,
independent of n), so every rank computes the same next centres. Seeding equals the
single-process one: every rank draws the same sample indices from the same generator, the
sampled rows are assembled with one all-reduce (each row comes from the rank that owns it),
and rank 0's k-means++ centres are broadcast. Empty clusters get the globally farthest rows,
ties by global row index, as in ``kmeans``. So ``kmeans_distributed(x, k, seed=s)`` returns
what ``kmeans(x, k, seed=s)`` returns, up to float rounding (sums add in another order).

``hierarchical_kmeans_distributed`` (method "centers") runs level 0 this way and the upper
levels, which cluster only the level-0 centres, with the single-process code on every rank.

Launch one process per GPU (NCCL) or per CPU share (gloo) with torchrun, e.g. on 2 nodes
with 8 GPUs each, embeddings as a float32 .npy on shared storage (each rank memory-maps it
and reads only its block)::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m vdc_lake.kmeans_distributed --embeddings emb.npy --n-clusters 50000 1000 50 \\
        --seed 0 --output clusters.npz

and on one machine without a GPU: ``torchrun --nproc-per-node 2 -m vdc_lake.kmeans_distributed
--embeddings emb.npy --n-clusters 1000 --device cpu --output clusters.npz``.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

from vdc_lake.kmeans import (
    ArrayLike, HierarchicalKMeansResult, Init, KMeansResult, Metric, _Assignment, _check_data, _check_levels,
    _check_options, _chunk_rows, _fast_matmul, _fit, _hierarchy, _initial_centers, _level_seed, _move_centers,
    _place, _refresh, _Rows, _score_all, _Sums,
)


def rank_rows(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [start, stop) of rank ``rank`` out of ``world``: contiguous, sizes differ by <= 1."""
    return rank * n // world, (rank + 1) * n // world


def default_device() -> torch.device:
    """cuda:LOCAL_RANK when the process group is NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


class _ShardedRows(_Rows):
    """All n rows as seen by one rank that holds rows [offset, offset + local.n).

    ``take`` is collective: every rank must call it with the same indices; each fills the
    rows it owns and one all-reduce (sum with zeros elsewhere: exact) completes the copy.
    """

    def __init__(self, local: _Rows, n: int, offset: int):
        super().__init__(local.data, device=local.device, metric=local.metric, unit=local.unit)
        self.local, self.n, self.offset = local, n, offset

    def take(self, index: torch.Tensor) -> torch.Tensor:
        index = index.to(torch.int64).cpu()
        out = torch.zeros((len(index), self.d), dtype=torch.float32, device=self.device)
        mine = ((index >= self.offset) & (index < self.offset + self.local.n)).nonzero().squeeze(1)
        if len(mine):
            out[mine.to(self.device)] = self.local.take(index[mine] - self.offset)
        dist.all_reduce(out)
        return out


def _all_reduce_sums(local: _Sums) -> _Sums:
    sums, counts = local.sums.clone(), local.counts.clone()
    dist.all_reduce(sums)
    dist.all_reduce(counts)
    return _Sums(sums, counts)


def _farthest(rows: _ShardedRows, distances: torch.Tensor, m: int) -> torch.Tensor:
    """Global indices of the m rows farthest from their centre (ties: lower index first)."""
    local_m = min(m, len(distances))
    order = torch.argsort(distances, descending=True, stable=True)[:local_m]
    pad = m - local_m
    values = torch.cat([distances[order].to(torch.float64), torch.full((pad,), -1.0, dtype=torch.float64,
                                                                        device=distances.device)])
    ids = torch.cat([order + rows.offset, torch.full((pad,), -1, dtype=torch.int64, device=distances.device)])
    all_values = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    all_ids = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(all_values, values)
    dist.all_gather(all_ids, ids)
    values, ids = torch.cat(all_values).cpu(), torch.cat(all_ids).cpu()
    keep = ids >= 0
    values, ids = values[keep], ids[keep]
    order = torch.argsort(ids, stable=True)  # index ascending, then distance descending (stable)
    order = order[torch.argsort(values[order], descending=True, stable=True)]
    return ids[order[:m]]


def _new_centers(rows: _ShardedRows, sums: _Sums, assignment: _Assignment, chunk: int):
    """``kmeans._new_centers`` on the global sums, with the global farthest rows for empties."""
    counts = sums.counts
    centers = (sums.sums / counts.clamp(min=1).unsqueeze(1).to(torch.float64)).to(torch.float32)
    empty = (counts == 0).nonzero().squeeze(1)
    if len(empty):
        assignment = _refresh(rows.local, assignment, chunk)
        farthest = _farthest(rows, assignment.distances, len(empty))
        centers[empty[: len(farthest)]] = rows.take(farthest)
    if rows.metric == "cosine":
        centers = torch.nn.functional.normalize(centers, dim=1)
    return centers, assignment


def _lloyd(rows: _ShardedRows, centers: torch.Tensor, *, max_iters: int, tol: float, chunk: int):
    """``kmeans._lloyd`` with all-reduced sums: (centers, local assignment, n_iter)."""
    assignment, local_sums = _score_all(rows.local, centers, chunk)
    n_iter = 0
    for n_iter in range(1, max_iters + 1):
        updated, assignment = _new_centers(rows, _all_reduce_sums(local_sums), assignment, chunk)
        shift = torch.linalg.norm(updated - centers) / torch.linalg.norm(centers).clamp(min=1e-12)
        centers = updated
        done = shift.item() < tol or n_iter == max_iters
        assignment = _move_centers(rows.local, assignment, centers, chunk, None if done else local_sums)
        if done:
            break
    return centers, _refresh(rows.local, assignment, chunk), n_iter


def _gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's block (rank order) into the [n, ...] whole, on the CPU."""
    world = dist.get_world_size()
    size = max(stop - start for start, stop in (rank_rows(n, r, world) for r in range(world)))
    padded = torch.zeros((size, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: stop - start].cpu() for part, (start, stop)
                      in zip(parts, (rank_rows(n, r, world) for r in range(world)))])


def _fit_sharded(x: ArrayLike, k: int, *, metric: str, init: str, max_iters: int, tol: float, seed: int,
                 chunk_size: int | None, device: torch.device):
    """Seed (as ``kmeans`` does) and run the distributed Lloyd on this rank's block."""
    n = x.shape[0]
    start, stop = rank_rows(n, dist.get_rank(), dist.get_world_size())
    local = _place(x[start:stop], device, metric)
    rows = _ShardedRows(local, n, start)
    chunk = _chunk_rows(chunk_size, k, device)
    generator = torch.Generator().manual_seed(seed)
    centers = _initial_centers(rows, k, init, generator, None).contiguous()
    dist.broadcast(centers, src=0)  # the same on every rank already; rank 0's copy rules
    return _lloyd(rows, centers, max_iters=max_iters, tol=tol, chunk=chunk)


def kmeans_distributed(x: ArrayLike, k: int, *, metric: Metric = "cosine", init: Init = "kmeans++",
                       max_iters: int = 50, tol: float = 1e-4, seed: int = 0, chunk_size: int | None = None,
                       device: str | torch.device | None = None) -> KMeansResult:
    """``kmeans`` over the ranks of the default process group; call it on every rank.

    x: the whole [n, d] array (a NumPy memmap is best: each rank reads only its block
    ``rank_rows(n, rank, world)``, plus the rows of the seeding sample it owns). Other
    arguments as in ``kmeans``; device defaults to ``default_device()``. Returns the full
    KMeansResult (assignments and distances of all n rows, on the CPU) on every rank.
    """
    if not dist.is_initialized():
        raise RuntimeError("kmeans_distributed needs torch.distributed: launch with torchrun "
                           "(see this module's docstring) or call init_process_group first")
    _check_data(x)
    _check_options(metric, init, max_iters, tol)
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be between 1 and the number of rows ({x.shape[0]}), not {k}")
    compute = torch.device(device) if device is not None else default_device()
    with torch.no_grad(), _fast_matmul(compute):
        centers, assignment, n_iter = _fit_sharded(x, k, metric=metric, init=init, max_iters=max_iters, tol=tol,
                                                   seed=seed, chunk_size=chunk_size, device=compute)
        labels = _gather_rows(assignment.labels, x.shape[0])
        distances = _gather_rows(assignment.distances, x.shape[0])
    return KMeansResult(centers.cpu(), labels, distances, n_iter)


def hierarchical_kmeans_distributed(
    x: ArrayLike, n_clusters: Sequence[int], *, metric: Metric = "cosine", init: Init = "kmeans++",
    max_iters: int = 50, tol: float = 1e-4, seed: int = 0, chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> HierarchicalKMeansResult:
    """``hierarchical_kmeans(..., method="centers")`` over the ranks; call it on every rank.

    Level 0 runs distributed (seed from (seed, 0), as the single-process version); the upper
    levels cluster the small level-0 centres with the single-process code on every rank
    (identical inputs and seeds, so identical results). Returns the result on every rank.
    """
    _check_data(x)
    _check_options(metric, init, max_iters, tol)
    _check_levels(x.shape[0], n_clusters, "centers", None, 0)
    compute = torch.device(device) if device is not None else default_device()
    first = kmeans_distributed(x, int(n_clusters[0]), metric=metric, init=init, max_iters=max_iters, tol=tol,
                               seed=_level_seed(seed, 0), chunk_size=chunk_size, device=compute)
    levels = [{"centers": first.centers, "input_assignments": first.assignments,
               "input_distances": first.distances, "n_iter": first.n_iter}]
    with torch.no_grad(), _fast_matmul(compute):
        for level, k in enumerate(n_clusters[1:], start=1):
            inputs = _Rows(levels[-1]["centers"].to(compute), device=compute, metric=metric, unit=True)
            _, assignment, n_iter = _fit(inputs, int(k), init=init, max_iters=max_iters, tol=tol,
                                         seed=_level_seed(seed, level), chunk=_chunk_rows(chunk_size, int(k), compute),
                                         progress=None)
            levels.append({"centers": assignment.centers.cpu(), "input_assignments": assignment.labels.cpu(),
                           "input_distances": assignment.distances.cpu(), "n_iter": n_iter})
    return _hierarchy(levels)


def main(argv: Sequence[str] | None = None) -> None:
    """torchrun entry point: cluster a .npy of embeddings; rank 0 writes an .npz."""
    parser = argparse.ArgumentParser(prog="python -m vdc_lake.kmeans_distributed", description=__doc__.split("\n")[0])
    parser.add_argument("--embeddings", required=True, help="float [n, d] .npy (memory-mapped by every rank)")
    parser.add_argument("--n-clusters", type=int, nargs="+", required=True, help="clusters per level, finest first")
    parser.add_argument("--metric", choices=["cosine", "l2"], default="cosine")
    parser.add_argument("--init", choices=["kmeans++", "random"], default="kmeans++")
    parser.add_argument("--max-iters", type=int, default=50)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--output", required=True, help=".npz with centers_L, assignments_L per level")
    args = parser.parse_args(argv)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        x = np.load(args.embeddings, mmap_mode="r")
        result = hierarchical_kmeans_distributed(x, args.n_clusters, metric=args.metric, init=args.init,
                                                 max_iters=args.max_iters, tol=args.tol, seed=args.seed)
        if dist.get_rank() == 0:
            arrays = {}
            for i, level in enumerate(result.levels):
                arrays[f"centers_{i}"] = level.centers.numpy()
                arrays[f"assignments_{i}"] = level.assignments.numpy()
            np.savez(args.output, **arrays)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
