"""k-means over several processes (GPUs or CPU ranks) with torch.distributed.

Each rank holds one contiguous block of rows (``rank_rows``) and runs the single-process
kernels of ``vdc_lake.kernels.kmeans`` on it: scoring, Hamerly bounds and per-cluster float64 sums
stay local; one Lloyd step all-reduces the sums [k, d] and counts [k] (k * (d + 1) numbers,
independent of n), so every rank computes the same next centres. Seeding equals the
single-process one: every rank draws the same sample indices from the same generator, the
sampled rows are assembled with one all-reduce (each row comes from the rank that owns it),
and rank 0's k-means++ centres are broadcast. Empty clusters get the globally farthest rows,
ties by global row index, as in ``kmeans``. So ``kmeans_distributed(x, k, seed=s)`` returns
what ``kmeans(x, k, seed=s)`` returns, up to float rounding (sums add in another order).

``hierarchical_kmeans_distributed`` runs level 0 this way, both methods: a "resampled" step
ranks each rank's closest rows per cluster, gathers those candidates (k * n_samples per
rank) to pick the global closest, refits on them identically on every rank and reassigns
each rank's rows locally. The upper levels, which cluster only the level-0 centres, run the
single-process code on every rank.

``vdc-lake cluster --nproc-per-node N`` does all of this from the catalog on one machine
(exports the vectors, launches torchrun, loads the result). By hand, e.g. on 2 nodes with
8 GPUs each, embeddings as a float32 .npy on shared storage (each rank memory-maps it and
reads only its block), run on every node::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m vdc_lake.scale.kmeans_distributed --embeddings emb.npy --n-clusters 50000 1000 50 \\
        --method resampled --n-samples 10 5 3 --n-resamples 10 --seed 0 --output clusters.npz

and on one machine without a GPU: ``torchrun --nproc-per-node 2 -m vdc_lake.scale.kmeans_distributed
--embeddings emb.npy --n-clusters 1000 --device cpu --output clusters.npz``.

Without an exported copy: ``--catalog CATALOG --set NAME`` instead of ``--embeddings``. Every
rank opens the catalog read-only (no writer lock), learns which rows are current and reads only
its block of them from the set's Parquet parts (CATALOG.vectors, on storage every node sees);
rows are in image_id order, as ``read_vectors`` returns them.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

from vdc_lake.config.loader import bundled_defaults
from vdc_lake.kernels.kmeans import closest_per_cluster, level_seed, run_level
from vdc_lake.kernels.kmeans_checks import check_data, check_levels, check_options
from vdc_lake.kernels.kmeans_lloyd import lloyd
from vdc_lake.kernels.kmeans_pass import Assignment, Sums, move_centers, refresh, score_all
from vdc_lake.kernels.kmeans_results import (
    ArrayLike, HierarchicalKMeansResult, Init, KMeansResult, Method, Metric, Progress,
)
from vdc_lake.kernels.kmeans_rows import Rows, chunk_rows, fast_matmul, place, progress_callback, report_progress
from vdc_lake.kernels.kmeans_seeding import initial_centers


def rank_rows(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [start, stop) of rank ``rank`` out of ``world``: contiguous, sizes differ by <= 1."""
    return rank * n // world, (rank + 1) * n // world


def default_device() -> torch.device:
    """cuda:LOCAL_RANK when the process group is NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


class _ShardedRows(Rows):
    """All n rows as seen by one rank that holds rows [offset, offset + local.n).

    ``take`` is collective: every rank must call it with the same indices; each fills the
    rows it owns and one all-reduce (sum with zeros elsewhere: exact) completes the copy.
    """

    def __init__(self, local: Rows, n: int, offset: int):
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


def _all_reduce_sums(local: Sums) -> Sums:
    sums, counts = local.sums.clone(), local.counts.clone()
    dist.all_reduce(sums)
    dist.all_reduce(counts)
    return Sums(sums, counts)


def _all_gather_padded(local: torch.Tensor, size: int, fill) -> list[torch.Tensor]:
    """Every rank's ``local`` (at most ``size`` rows, padded with ``fill`` to exactly that), in rank order."""
    padded = torch.full((size, *local.shape[1:]), fill, dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, padded)
    return parts


def _gather_padded(local: torch.Tensor, size: int, fill) -> torch.Tensor:
    """``_all_gather_padded`` concatenated on the CPU, padding included (callers drop it by ``fill``)."""
    return torch.cat(_all_gather_padded(local, size, fill)).cpu()


def _farthest(rows: _ShardedRows, distances: torch.Tensor, m: int) -> torch.Tensor:
    """Global indices of the m rows farthest from their centre (ties: lower index first)."""
    order = torch.argsort(distances, descending=True, stable=True)[:m]
    values = _gather_padded(distances[order].to(torch.float64), m, -1.0)
    ids = _gather_padded(order + rows.offset, m, -1)
    keep = ids >= 0
    values, ids = values[keep], ids[keep]
    order = torch.argsort(ids, stable=True)  # index ascending, then distance descending (stable)
    order = order[torch.argsort(values[order], descending=True, stable=True)]
    return ids[order[:m]]


def _new_centers(rows: _ShardedRows, sums: Sums, assignment: Assignment, chunk: int):
    """The single-process centre update (``kmeans_lloyd``) on the global sums, with the global
    farthest rows for empty clusters."""
    counts = sums.counts
    centers = (sums.sums / counts.clamp(min=1).unsqueeze(1).to(torch.float64)).to(torch.float32)
    empty = (counts == 0).nonzero().squeeze(1)
    if len(empty):
        assignment = refresh(rows.local, assignment, chunk)
        farthest = _farthest(rows, assignment.distances, len(empty))
        centers[empty[: len(farthest)]] = rows.take(farthest)
    if rows.metric == "cosine":
        centers = torch.nn.functional.normalize(centers, dim=1)
    return centers, assignment


def _lloyd(rows: _ShardedRows, centers: torch.Tensor, *, max_iters: int, tol: float, chunk: int):
    """``kmeans_lloyd.lloyd`` with all-reduced sums: (centers, local assignment, n_iter)."""
    assignment, local_sums = score_all(rows.local, centers, chunk)
    n_iter = 0
    for n_iter in range(1, max_iters + 1):
        updated, assignment = _new_centers(rows, _all_reduce_sums(local_sums), assignment, chunk)
        shift = torch.linalg.norm(updated - centers) / torch.linalg.norm(centers).clamp(min=1e-12)
        centers = updated
        done = shift.item() < tol or n_iter == max_iters
        assignment = move_centers(rows.local, assignment, centers, chunk, None if done else local_sums)
        if done:
            break
    return centers, refresh(rows.local, assignment, chunk), n_iter


def _gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's block (rank order) into the [n, ...] whole, on the CPU."""
    world = dist.get_world_size()
    blocks = [rank_rows(n, r, world) for r in range(world)]
    parts = _all_gather_padded(local, max(stop - start for start, stop in blocks), 0)
    return torch.cat([part[: stop - start].cpu() for part, (start, stop) in zip(parts, blocks)])


def _sharded_rows(x: ArrayLike, metric: str, device: torch.device, total_rows: int | None = None) -> _ShardedRows:
    """This rank's block of x, placed on ``device``, seen as all n rows. total_rows: x is
    already this rank's block (rank_rows of total_rows), e.g. read from a catalog's set."""
    n = x.shape[0] if total_rows is None else int(total_rows)
    start, stop = rank_rows(n, dist.get_rank(), dist.get_world_size())
    if total_rows is None:
        return _ShardedRows(place(x[start:stop], device, metric), n, start)
    if x.shape[0] != stop - start:
        raise ValueError(f"rank {dist.get_rank()} holds rows [{start}, {stop}) of {n}, not {x.shape[0]} rows")
    return _ShardedRows(place(x, device, metric), n, start)


def _fit_sharded(rows: _ShardedRows, k: int, *, init: str, max_iters: int, tol: float, seed: int, chunk: int):
    """Seed (as ``kmeans`` does) and run the distributed Lloyd: (centers, local assignment, n_iter)."""
    generator = torch.Generator().manual_seed(seed)
    centers = initial_centers(rows, k, init, generator, None).contiguous()
    dist.broadcast(centers, src=0)  # the same on every rank already; rank 0's copy rules
    return _lloyd(rows, centers, max_iters=max_iters, tol=tol, chunk=chunk)


def kmeans_distributed(x: ArrayLike, k: int, *, metric: Metric = "cosine", init: Init = "kmeans++",
                       max_iters: int, tol: float, seed: int, chunk_size: int | None = None,
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
    check_data(x)
    check_options(metric, init, max_iters, tol)
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be between 1 and the number of rows ({x.shape[0]}), not {k}")
    compute = torch.device(device) if device is not None else default_device()
    with torch.no_grad(), fast_matmul(compute):
        centers, assignment, n_iter = _fit_sharded(_sharded_rows(x, metric, compute), k, init=init,
                                                   max_iters=max_iters, tol=tol, seed=seed,
                                                   chunk=chunk_rows(chunk_size, k, compute))
        labels = _gather_rows(assignment.labels, x.shape[0])
        distances = _gather_rows(assignment.distances, x.shape[0])
    return KMeansResult(centers.cpu(), labels, distances, n_iter)


def _closest_per_cluster_global(rows: _ShardedRows, assignment: Assignment, per_cluster: int,
                                k: int) -> torch.Tensor:
    """``kmeans.closest_per_cluster`` over all ranks: global indices, sorted.

    A cluster's closest ``per_cluster`` rows are among the union of every rank's own closest
    ``per_cluster``; those candidates are gathered in rank order (so in global row order,
    which breaks distance ties as the single-process sort does) and ranked again.
    """
    mine = closest_per_cluster(assignment.labels, assignment.distances, per_cluster, k)
    size = k * per_cluster
    ids = _gather_padded(mine + rows.offset, size, -1)
    labels = _gather_padded(assignment.labels[mine], size, -1)
    distances = _gather_padded(assignment.distances[mine].to(torch.float32), size, float("inf"))
    keep = ids >= 0
    ids, labels, distances = ids[keep], labels[keep], distances[keep]
    return ids[closest_per_cluster(labels, distances, per_cluster, k)]


def _resample(rows: _ShardedRows, assignment: Assignment, per_cluster: int, *, max_iters: int, tol: float,
              chunk: int) -> Assignment:
    """A resampling step of ``kmeans`` over the ranks: the chosen rows are gathered on every rank, the
    refit (small: k * per_cluster rows) runs identically on each, the reassignment is local."""
    centers = assignment.centers
    chosen = _closest_per_cluster_global(rows, assignment, per_cluster, len(centers))
    picked = Rows(rows.take(chosen), device=centers.device, metric=rows.metric, unit=True)
    centers, _, _ = lloyd(picked, centers, max_iters=max_iters, tol=tol, chunk=chunk,
                          progress=None, stage="refit", final_assign=False)
    return refresh(rows.local, move_centers(rows.local, assignment, centers, chunk, None), chunk)


def hierarchical_kmeans_distributed(
    x: ArrayLike, n_clusters: Sequence[int], *, method: Method, n_samples: Sequence[int] | None = None,
    n_resamples: int | None = None, metric: Metric = "cosine", init: Init = "kmeans++", max_iters: int,
    tol: float, seed: int, chunk_size: int | None = None, device: str | torch.device | None = None,
    progress: Progress | None = None, total_rows: int | None = None,
) -> HierarchicalKMeansResult:
    """``hierarchical_kmeans`` over the ranks (both methods); call it on every rank.

    x: all n rows (each rank takes its block), or, with total_rows = n, only this rank's block
    (rows rank_rows(n, rank, world)), read by the rank itself (``read_rank_block``).

    Level 0 runs distributed: k-means seeded from (seed, 0) as in the single-process version,
    then, for "resampled", each step picks the globally closest n_samples[0] rows of every
    cluster, refits on them (the same on every rank) and reassigns each rank's rows. The
    upper levels cluster the small level-0 centres with the single-process code on every
    rank (identical inputs and seeds, so identical results). Returns the result on every
    rank. No checkpoints: a killed job starts over (level 0 dominates the cost anyway).
    """
    if not dist.is_initialized():
        raise RuntimeError("hierarchical_kmeans_distributed needs torch.distributed: launch with torchrun "
                           "(see this module's docstring) or call init_process_group first")
    check_data(x)
    check_options(metric, init, max_iters, tol)
    n = x.shape[0] if total_rows is None else int(total_rows)
    check_levels(n, n_clusters, method, n_samples, n_resamples)
    resampled = method == "resampled"
    per_cluster = [int(n_samples[level]) if resampled else 0 for level in range(len(n_clusters))]
    steps = [int(n_resamples) if p > 0 else 0 for p in per_cluster]
    compute = torch.device(device) if device is not None else default_device()
    progress = progress_callback(progress)
    k0 = int(n_clusters[0])
    with torch.no_grad(), fast_matmul(compute):
        rows = _sharded_rows(x, metric, compute, total_rows)
        chunk = chunk_rows(chunk_size, k0, compute)
        _, assignment, n_iter = _fit_sharded(rows, k0, init=init, max_iters=max_iters, tol=tol,
                                             seed=level_seed(seed, 0), chunk=chunk)
        report_progress(progress, "level 0 lloyd", n_iter, n_iter)
        for step in range(steps[0]):
            assignment = _resample(rows, assignment, per_cluster[0], max_iters=max_iters, tol=tol, chunk=chunk)
            report_progress(progress, "level 0 resample", step + 1, steps[0])
        state = {"levels": [{"centers": assignment.centers.cpu(),
                             "input_assignments": _gather_rows(assignment.labels, n),
                             "input_distances": _gather_rows(assignment.distances, n), "n_iter": n_iter}],
                 "current": None}
        for level in range(1, len(n_clusters)):
            inputs = Rows(state["levels"][-1]["centers"].to(compute), device=compute, metric=metric, unit=True)
            run_level(inputs, level, state, lambda _state: None, k=int(n_clusters[level]),
                       per_cluster=per_cluster[level], n_resamples=steps[level], init=init, max_iters=max_iters,
                       tol=tol, seed=seed, chunk_size=chunk_size, progress=progress)
    return HierarchicalKMeansResult.from_levels(state["levels"])


def read_rank_block(catalog_path: str | os.PathLike, set_name: str, rank: int, world: int) -> tuple[np.ndarray, int]:
    """(this rank's block of the set's current vectors [stop - start, d], n): rows
    rank_rows(n, rank, world) in image_id order, read from the catalog's Parquet parts, the
    catalog opened read-only."""
    from vdc_lake.catalog.connection import Catalog
    from vdc_lake.catalog.sets import count_vectors, read_vector_range

    with Catalog(catalog_path, read_only=True) as catalog:
        n = count_vectors(catalog, "embeddings", set_name)
        start, stop = rank_rows(n, rank, world)
        return read_vector_range(catalog, "embeddings", set_name, start, stop).vectors, n


def save_result(result: HierarchicalKMeansResult, path: str | os.PathLike) -> None:
    """Write a hierarchy as .npz: per level L, centers_L, input_assignments_L, input_distances_L, n_iter_L."""
    arrays = {}
    for i, level in enumerate(result.levels):
        arrays[f"centers_{i}"] = level.centers.numpy()
        arrays[f"input_assignments_{i}"] = level.input_assignments.numpy()
        arrays[f"input_distances_{i}"] = level.input_distances.numpy()
        arrays[f"n_iter_{i}"] = np.array(level.n_iter)
    temporary = f"{path}.tmp.npz"
    np.savez(temporary, **arrays)
    os.replace(temporary, path)


def load_result(path: str | os.PathLike) -> HierarchicalKMeansResult:
    """The hierarchy ``save_result`` wrote (e.g. rank 0 of a torchrun job)."""
    with np.load(path) as data:
        levels = []
        while f"centers_{len(levels)}" in data:
            i = len(levels)
            levels.append({"centers": torch.from_numpy(data[f"centers_{i}"]),
                           "input_assignments": torch.from_numpy(data[f"input_assignments_{i}"]),
                           "input_distances": torch.from_numpy(data[f"input_distances_{i}"]),
                           "n_iter": int(data[f"n_iter_{i}"])})
    if not levels:
        raise ValueError(f"{path} holds no clustering levels")
    return HierarchicalKMeansResult.from_levels(levels)


def _print_progress(stage: str, step: int, total: int) -> None:
    print(f"k-means {stage}: {step}/{total}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """torchrun entry point: cluster a .npy of embeddings; rank 0 writes an .npz (``load_result``).

    Options left out take the bundled defaults of [hierarchical_kmeans] (defaults.toml).
    """
    defaults = bundled_defaults()["hierarchical_kmeans"]
    parser = argparse.ArgumentParser(prog="python -m vdc_lake.scale.kmeans_distributed", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--embeddings", help="float [n, d] .npy (memory-mapped by every rank)")
    source.add_argument("--catalog", help="a vdc-lake catalog: each rank reads its block of --set from its vector files")
    parser.add_argument("--set", dest="set_name", help="the embedding set (with --catalog)")
    parser.add_argument("--n-clusters", type=int, nargs="+", required=True, help="clusters per level, finest first")
    parser.add_argument("--method", choices=["centers", "resampled"], required=True)
    parser.add_argument("--n-samples", type=int, nargs="+", default=None,
                        help="points per centre kept by resampling, per level (method resampled)")
    parser.add_argument("--n-resamples", type=int, default=defaults["n_resamples"])
    parser.add_argument("--metric", choices=["cosine", "l2"], default=defaults["metric"])
    parser.add_argument("--init", choices=["kmeans++", "random"], default=defaults["init"])
    parser.add_argument("--max-iters", type=int, default=defaults["max_iters"])
    parser.add_argument("--tol", type=float, default=defaults["tol"])
    parser.add_argument("--seed", type=int, default=defaults["seed"])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--quiet", action="store_true", help="no progress display on rank 0")
    parser.add_argument("--output", required=True, help=".npz written by rank 0 (see load_result)")
    args = parser.parse_args(argv)
    if args.catalog and not args.set_name:
        parser.error("--catalog needs --set NAME")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        total = None
        if args.catalog:
            x, total = read_rank_block(args.catalog, args.set_name, dist.get_rank(), dist.get_world_size())
        else:
            x = np.load(args.embeddings, mmap_mode="r")
        show = dist.get_rank() == 0 and not args.quiet
        result = hierarchical_kmeans_distributed(
            x, args.n_clusters, method=args.method, n_samples=args.n_samples, n_resamples=args.n_resamples,
            metric=args.metric, init=args.init, max_iters=args.max_iters, tol=args.tol, seed=args.seed,
            progress=_print_progress if show else None, total_rows=total)  # device: cuda:LOCAL_RANK under NCCL, else the CPU
        if dist.get_rank() == 0:
            save_result(result, args.output)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
