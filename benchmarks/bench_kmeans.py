"""Benchmark: hierarchical k-means of vdc-lake against pt-kmeans (the library VDC uses).

Data: n unit vectors in d dimensions from an imbalanced, hierarchical mixture (20 topics,
2 x n_clusters[0] components around them with log-normal weights, noise of the same norm
as the signal), generated from --seed on the compute device. Both implementations get the
same tensor and the same configuration (VDC's: cosine, k-means++, 50 iterations, tol 1e-4,
data pre-normalised, chunks of 200,000 rows); the table shows the wall time and the mean
cosine distance of every point to its level-0 centre, computed the same way for both.

    python benchmarks/bench_kmeans.py                      # 100,000 x 768, 1000/50/5 on the CPU
    python benchmarks/bench_kmeans.py --device cuda --n 4100000 --n-clusters 45000 900 90

pt-kmeans is optional (``pip install pt-kmeans``); without it only vdc-lake runs. On a
shared machine the load changes between runs: time the two back to back, or alternate
them with --only and compare runs made under the same load.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F

from vdc_lake.kernels.kmeans import hierarchical_kmeans


def make_mixture(n: int, dim: int, n_components: int, *, seed: int, device: torch.device) -> torch.Tensor:
    """[n, dim] float32 unit vectors: topics -> components -> points, imbalanced."""
    generator = torch.Generator(device=device).manual_seed(seed)
    topics = F.normalize(torch.randn(20, dim, generator=generator, device=device), dim=1)
    parents = torch.randint(20, (n_components,), generator=generator, device=device)
    spread = 0.8 * torch.randn(n_components, dim, generator=generator, device=device) / math.sqrt(dim)
    means = F.normalize(topics[parents] + spread, dim=1)
    weights = torch.exp(1.5 * torch.randn(n_components, generator=generator, device=device))
    cumulative = torch.cumsum(weights / weights.sum(), dim=0)
    x = torch.empty((n, dim), device=device)
    for start in range(0, n, 2**18):
        stop = min(n, start + 2**18)
        uniform = torch.rand(stop - start, generator=generator, device=device)
        component = torch.searchsorted(cumulative, uniform).clamp_(max=n_components - 1)
        noise = torch.randn(stop - start, dim, generator=generator, device=device) / math.sqrt(dim)
        x[start:stop] = F.normalize(means[component] + noise, dim=1)
    return x


def mean_cosine_distance(x: torch.Tensor, centers: torch.Tensor, assignments: torch.Tensor) -> float:
    """Mean of 1 - cos(x_i, centre of x_i), in float64, chunked."""
    centers = F.normalize(centers.to(x.device, torch.float32), dim=1)
    assignments = assignments.to(x.device)
    total = 0.0
    for start in range(0, len(x), 2**18):
        block = x[start : start + 2**18]
        cos = (block * centers[assignments[start : start + 2**18]]).sum(dim=1)
        total += float((1.0 - cos).double().sum())
    return total / len(x)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress_printer(quiet: bool):
    if quiet:
        return None
    last = {"stage": None, "time": 0.0}

    def report(stage: str, step: int, total: int) -> None:
        now = time.perf_counter()
        if stage != last["stage"] or now - last["time"] > 10 or step == total:
            print(f"  [{stage}] {step}/{total}", file=sys.stderr, flush=True)
            last.update(stage=stage, time=now)

    return report


def run_ours(x: torch.Tensor, args) -> dict:
    _synchronize(x.device)
    start = time.perf_counter()
    result = hierarchical_kmeans(
        x, args.n_clusters, method=args.method, n_samples=args.n_samples, n_resamples=args.n_resamples,
        metric="cosine", init="kmeans++", max_iters=args.max_iters, tol=args.tol, seed=args.seed,
        device=x.device, progress=_progress_printer(args.quiet),
    )
    _synchronize(x.device)
    seconds = time.perf_counter() - start
    level0 = result[0]
    return {"name": "vdc-lake", "seconds": seconds,
            "distance": mean_cosine_distance(x, level0.centers, level0.assignments),
            "note": f"level-0 Lloyd iterations: {level0.n_iter}"}


def run_pt_kmeans(x: torch.Tensor, args) -> dict | None:
    try:
        import pt_kmeans
    except ImportError:
        print("pt-kmeans is not installed (pip install pt-kmeans): skipping it", file=sys.stderr)
        return None
    _synchronize(x.device)
    start = time.perf_counter()
    levels = pt_kmeans.hierarchical_kmeans(
        x, n_clusters=list(args.n_clusters), max_iters=args.max_iters, tol=args.tol,
        distance_metric="cosine", init_method="kmeans++", chunk_size=200_000, random_seed=args.seed,
        device=x.device, method=args.method, n_samples=list(args.n_samples), n_resamples=args.n_resamples,
        x_pre_normalized=True, show_progress=not args.quiet,
    )
    _synchronize(x.device)
    seconds = time.perf_counter() - start
    return {"name": f"pt-kmeans {pt_kmeans.__version__}", "seconds": seconds,
            "distance": mean_cosine_distance(x, levels[0]["centers"], levels[0]["assignment"]), "note": ""}


def print_table(rows: list[dict], args, device: torch.device) -> None:
    threads = torch.get_num_threads() if device.type == "cpu" else None
    where = f"{device.type}, {threads} threads" if threads else torch.cuda.get_device_name(device)
    print(f"\nhierarchical k-means, {args.n:,} x {args.dim}, clusters {args.n_clusters}, method "
          f"{args.method}, n_samples {args.n_samples}, {args.n_resamples} resamples ({where})")
    print(f"{'implementation':<18} {'wall s':>9} {'mean cos dist':>14}  note")
    for row in rows:
        print(f"{row['name']:<18} {row['seconds']:>9.1f} {row['distance']:>14.5f}  {row['note']}")
    if len(rows) == 2:
        ours, theirs = rows
        print(f"vdc-lake is {theirs['seconds'] / ours['seconds']:.1f}x faster; its mean distance is "
              f"{100 * (ours['distance'] / theirs['distance'] - 1):+.2f}% relative to pt-kmeans")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="points")
    parser.add_argument("--dim", type=int, default=768, help="dimensions")
    parser.add_argument("--n-clusters", type=int, nargs="+", default=[1000, 50, 5], help="clusters per level")
    parser.add_argument("--method", choices=["centers", "resampled"], default="resampled", help="hierarchy method")
    parser.add_argument("--n-samples", type=int, nargs="+", default=[10, 5, 3], help="resampled points per cluster")
    parser.add_argument("--n-resamples", type=int, default=10, help="resampling steps per level")
    parser.add_argument("--max-iters", type=int, default=50, help="Lloyd iterations at most")
    parser.add_argument("--tol", type=float, default=1e-4, help="relative centre shift that stops Lloyd")
    parser.add_argument("--components", type=int, default=None, help="mixture components; None: 2 x n_clusters[0]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of both runs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--only", choices=["vdc-lake", "pt-kmeans"], default=None,
                        help="time one implementation (default: both, vdc-lake first)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args()
    device = torch.device(args.device)
    start = time.perf_counter()
    x = make_mixture(args.n, args.dim, args.components or 2 * args.n_clusters[0], seed=args.seed, device=device)
    _synchronize(device)
    print(f"data: {args.n:,} x {args.dim} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    rows = [run_ours(x, args)] if args.only != "pt-kmeans" else []
    if args.only != "vdc-lake":
        theirs = run_pt_kmeans(x, args)
        if theirs is not None:
            rows.append(theirs)
    if rows:
        print_table(rows, args, device)


if __name__ == "__main__":
    main()
