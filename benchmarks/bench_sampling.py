"""Benchmark: balanced sampling down a cluster tree at the GLDv2 walkthrough's scale.

Builds a 3-level tree like the walkthrough's hierarchical k-means (4,100,000 images in
45000 / 900 / 90 clusters, log-normal cluster sizes, every parent with at least one
child), samples it to exactly 2,000,000 images with each allocation and strategy, checks
the result (exact size, distinct, per-cluster quotas met) and prints the wall times.

    python benchmarks/bench_sampling.py
    python benchmarks/bench_sampling.py --n 41000000 --total 20000000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vdc_lake.sampling import hierarchical_allocation, hierarchical_sample


def make_tree(n: int, sizes: list[int], seed: int) -> np.ndarray:
    """[n, L] int64 assignments: imbalanced leaves, each level-l cluster under one parent."""
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 1.5, sizes[0])
    leaf = np.minimum(np.searchsorted(np.cumsum(weights / weights.sum()), rng.random(n)), sizes[0] - 1)
    columns = [leaf]
    for children, parents in zip(sizes, sizes[1:]):
        # a permutation first, so that every parent gets a child, then random parents
        parent_of = np.concatenate([rng.permutation(parents), rng.integers(0, parents, children - parents)])
        columns.append(parent_of[rng.permutation(children)][columns[-1]])
    return np.stack(columns, axis=1).astype(np.int64)


def check(assignments: np.ndarray, picked: np.ndarray, total: int, allocation: str) -> str:
    quotas = hierarchical_allocation(assignments, total, allocation=allocation)[0]
    counts = np.bincount(assignments[picked, 0], minlength=len(quotas))
    capacities = np.bincount(assignments[:, 0], minlength=len(quotas))
    exact = (len(picked) == total and len(np.unique(picked)) == total
             and (counts == quotas).all() and (counts <= capacities).all())
    return "yes" if exact else "NO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n", type=int, default=4_100_000, help="images")
    parser.add_argument("--n-clusters", type=int, nargs="+", default=[45000, 900, 90])
    parser.add_argument("--total", type=int, default=2_000_000, help="images to sample")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (best shown)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    assignments = make_tree(args.n, args.n_clusters, args.seed)
    distances = np.random.default_rng(args.seed + 1).random(args.n).astype(np.float32)
    sizes = np.bincount(assignments[:, 0])
    print(f"tree: {args.n:,} images, clusters {args.n_clusters}, leaf sizes "
          f"{sizes.min()}..{sizes.max()} (median {int(np.median(sizes))}), built in "
          f"{time.perf_counter() - start:.1f} s")
    print(f"\nsample to exactly {args.total:,}")
    print(f"{'allocation':<18} {'strategy':<8} {'best s':>7} {'all runs s':<22} exact")
    for allocation in ("water-filling", "largest-remainder"):
        for strategy in ("random", "closest"):
            times = []
            for _ in range(args.repeats):
                tick = time.perf_counter()
                picked = hierarchical_sample(assignments, args.total, allocation=allocation, strategy=strategy,
                                             distances=distances, seed=args.seed)
                times.append(time.perf_counter() - tick)
            runs = " ".join(f"{t:.2f}" for t in times)
            verdict = check(assignments, picked, args.total, allocation)
            print(f"{allocation:<18} {strategy:<8} {min(times):>7.2f} {runs:<22} {verdict}")


if __name__ == "__main__":
    main()
