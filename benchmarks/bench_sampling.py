"""Benchmark: balanced sampling down a cluster tree at the GLDv2 walkthrough's scale.

Builds a 3-level tree like the walkthrough's hierarchical k-means (4,100,000 images in
45000 / 900 / 90 clusters, log-normal cluster sizes, every parent with at least one
child), samples it to exactly 2,000,000 images with each allocation and strategy, checks
the result (exact size, distinct, per-cluster quotas met) and prints the wall times.

Then, end to end: the same tree as a clustering run in a real DuckDB catalog (images,
assignments at every level) and `vdc_lake.stages.cluster.sample`, which is what `vdc-lake sample`
runs: reading the assignments out of the catalog, sampling, writing `samples`.

    python benchmarks/bench_sampling.py
    python benchmarks/bench_sampling.py --n 41000000 --total 20000000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

from vdc_lake.catalog.connection import Catalog  # noqa: E402
from vdc_lake.stages.cluster import sample  # noqa: E402
from vdc_lake.kernels.sampling import hierarchical_allocation, hierarchical_sample  # noqa: E402


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
    parser.add_argument("--no-catalog", action="store_true", help="skip the end-to-end catalog measurement")
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
    if not args.no_catalog:
        bench_catalog(assignments, distances, args.total, args.seed)


def bench_catalog(assignments: np.ndarray, distances: np.ndarray, total: int, seed: int) -> None:
    """Time cluster.sample on a catalog holding the tree as a clustering run."""
    n, depth = assignments.shape
    with tempfile.TemporaryDirectory(prefix="vdc-bench-sampling-") as tmp, Catalog(Path(tmp) / "c.duckdb") as c:
        tick = time.perf_counter()
        ids = np.arange(1, n + 1, dtype=np.int64)
        with c.transaction():
            c.insert_arrow("images", pa.table({
                "image_id": ids, "root": pa.array(["/data"] * n), "rel_path": pa.array([f"{i}.jpg" for i in ids]),
                "version": np.ones(n, np.int32), "present": np.ones(n, bool)}))
            run = c.begin_run("cluster", {"benchmark": True})
            for level in range(depth):
                c.insert_arrow("assignments", pa.table({
                    "run_id": np.full(n, run, np.int64), "image_id": ids, "version": np.ones(n, np.int32),
                    "level": np.full(n, level, np.int32), "cluster_id": assignments[:, level].astype(np.int32),
                    "distance": distances}))
            c.finish_run(run)
        print(f"\ncatalog with {n:,} images x {depth} levels built in {time.perf_counter() - tick:.1f} s")
        tick = time.perf_counter()
        summary = sample(c, total, cluster_run=run, allocation="water-filling", strategy="random", seed=seed)
        seconds = time.perf_counter() - tick
        written = c.scalar("SELECT count(DISTINCT image_id) FROM samples WHERE run_id = ?", [summary.run_id])
        print(f"vdc_lake.stages.cluster.sample (vdc-lake sample) to {total:,}: {seconds:.2f} s; "
              f"{written:,} distinct images written {'(exact)' if written == total else '(WRONG)'}")


if __name__ == "__main__":
    main()
