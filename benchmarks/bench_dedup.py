"""Benchmark near-duplicate pair finding (vdc_lake.kernels.neighbors) on synthetic descriptors.

The data: n random unit vectors in d dims (pairwise cosine distance ~1 +- 0.05 at d=512)
plus planted near-duplicate pairs on disjoint rows, their cosine distances spread evenly
over [0, max-distance]: partner b = cos * a + sin * u, with u a unit vector orthogonal to a.
The report threshold (0.5) is the GLDv2 walkthrough's; recall is also shown at tighter
thresholds, computed from the same report by filtering (no second search).

Random data is the hard case for a graph index: there is no low-dimensional structure to
navigate, so this is a lower bound on the recall of real descriptors.

Measured on a shared 2-vCPU VM (load average 4-8 from other jobs, so cpu s is the fairer
number; defaults of vdc_lake.kernels.neighbors, threads = os.cpu_count() = 2):
    method                        n  build s search s total s  cpu s  r<.04  r<.1  r<.25  r<.5
    usearch i8 M=32 ef=128/64  100k    385.9   188.3   574.2  492.4  1.000 1.000 1.000 0.987
    exact torch cpu k=16       100k      0.0   110.8   110.8   99.6  1.000 1.000 1.000 1.000
    precision 1.000 and no non-planted pair under 0.5 for both. (The exact row is the former
    top-k kernel; the range search and --walkthrough figures are in benchmarks/RESULTS.md.)

Usage:
    python benchmarks/bench_dedup.py --walkthrough --n 104000 # dedup index + report --method auto
                                                              # --center --l2-normalize on a catalog
    python benchmarks/bench_dedup.py                          # 100k x 512, usearch + exact CPU
    python benchmarks/bench_dedup.py --dtype i8 --expansion-search 128
    python benchmarks/bench_dedup.py --n 4000000 --device cuda --no-ann   # exact on a GPU (bf16)
    python benchmarks/bench_dedup.py --n 4000000 --device cuda --no-ann --precision fp32
"""

import argparse
import os
import time

import numpy as np

from vdc_lake.kernels import neighbors
RECALL_THRESHOLDS = (0.04, 0.1, 0.25, 0.5)


def make_dataset(n: int, d: int, n_pairs: int, max_distance: float, seed: int):
    """Return (x [n, d] float32 unit rows, rows [p, 2] planted pair rows, seeded)."""
    if 2 * n_pairs > n:
        raise ValueError(f"{n_pairs} disjoint pairs need at least {2 * n_pairs} rows")
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 65_536):  # chunks: no float64 copy of a multi-GB matrix
        part = rng.standard_normal((min(65_536, n - s), d), dtype=np.float32)
        x[s : s + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    rows = rng.permutation(n)[: 2 * n_pairs].reshape(n_pairs, 2)
    target = rng.permutation(np.linspace(0.0, max_distance, n_pairs))
    for s in range(0, n_pairs, 65_536):
        a = x[rows[s : s + 65_536, 0]].astype(np.float64)
        u = rng.standard_normal(a.shape)
        u -= (u * a).sum(1, keepdims=True) * a
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        cos = 1.0 - target[s : s + 65_536, None]
        x[rows[s : s + 65_536, 1]] = cos * a + np.sqrt(1.0 - cos**2) * u
    return x, rows


def score(pairs: neighbors.PairSet, x: np.ndarray, rows: np.ndarray, report: float) -> dict:
    """Recall per threshold, precision at ``report``, count of non-planted pairs."""
    n = len(x)
    # truth from the exact float32 distance, not the target: a pair planted at 0.1 - 1e-9
    # may round to 0.1 and then correctly fall outside "< 0.1"
    planted_dist = neighbors.cosine_distances(x, rows[:, 0], rows[:, 1])
    lo, hi = rows.min(1).astype(np.int64), rows.max(1).astype(np.int64)
    planted_code = lo * n + hi
    found = pairs.below(report)
    found_is_planted = np.isin(found.a * n + found.b, planted_code)
    out = {
        "precision": found_is_planted.mean() if len(found) else 1.0,
        "non-planted": int((~found_is_planted).sum()),
        "found": len(found),
    }
    for t in RECALL_THRESHOLDS:
        truth = planted_code[planted_dist < t]
        got = pairs.below(t)
        out[f"r<{t}"] = np.isin(truth, got.a * n + got.b).mean() if len(truth) else float("nan")
    return out


class Clock:
    """Wall and process CPU seconds (CPU counts every thread: robust to a busy machine)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def run_ann(args, x, keys):
    with Clock() as build:
        index = neighbors.build_index(
            x, keys, dtype=args.dtype, connectivity=args.connectivity,
            expansion_add=args.expansion_add, expansion_search=args.expansion_search,
            threads=args.threads,
        )
    with Clock() as search:
        pairs = neighbors.radius_pairs_ann(
            index, x, keys, threshold=args.report, k=args.k, threads=args.threads
        )
    return pairs, build, search


def run_exact(args, x, keys):
    import torch

    with Clock() as search:
        pairs = neighbors.radius_pairs_exact(
            x, keys, threshold=args.report, device=args.device, precision=args.precision
        )
        if torch.device(args.device).type == "cuda":
            torch.cuda.synchronize()
    return pairs, None, search


def row(name, n, build, search, s):
    b_wall = build.wall if build else 0.0
    b_cpu = build.cpu if build else 0.0
    recalls = " ".join(f"{s[f'r<{t}']:>7.4f}" for t in RECALL_THRESHOLDS)
    return (
        f"{name:<34} {n:>9,} {b_wall:>7.1f} {search.wall:>7.1f} {b_wall + search.wall:>7.1f} "
        f"{b_cpu + search.cpu:>7.1f}  {recalls} {s['precision']:>7.4f} {s['non-planted']:>6}"
    )


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="vectors (default 100000)")
    p.add_argument("--d", type=int, default=512, help="dimensions (default 512)")
    p.add_argument("--pair-fraction", type=float, default=0.15,
                   help="planted pairs per vector (default 0.15: 15000 pairs at n=100k)")
    p.add_argument("--max-distance", type=float, default=0.6, help="planted distances 0..this")
    p.add_argument("--report", type=float, default=0.5, help="report threshold (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="usearch threads")
    p.add_argument("--dtype", default=neighbors.DEFAULT_DTYPE, choices=["f16", "f32", "bf16", "i8"])
    p.add_argument("--connectivity", type=int, default=neighbors.DEFAULT_CONNECTIVITY)
    p.add_argument("--expansion-add", type=int, default=neighbors.DEFAULT_EXPANSION_ADD)
    p.add_argument("--expansion-search", type=int, default=neighbors.DEFAULT_EXPANSION_SEARCH)
    p.add_argument("--k", type=int, default=neighbors.DEFAULT_K, help="neighbours per vector")
    p.add_argument("--ann", action=argparse.BooleanOptionalAction, default=True,
                   help="run the usearch path (default on; --no-ann for GPU-only runs)")
    p.add_argument("--exact", action=argparse.BooleanOptionalAction, default=True,
                   help="run the exact torch path (default on)")
    p.add_argument("--exact-n", type=int, default=None,
                   help="rows for the exact path (default: all on cuda, min(n, 20000) on cpu)")
    p.add_argument("--device", default="cpu", help="exact path device: cpu or cuda")
    p.add_argument("--precision", default=None, choices=list(neighbors.PRECISIONS),
                   help="exact path scores (default: bf16 on cuda, fp32 on cpu; re-checked exactly)")
    p.add_argument("--walkthrough", action="store_true",
                   help="the walkthrough's order through the dedup stage on a real catalog: `dedup index` "
                        "(built only if the report will use it), then `dedup report --method auto --center "
                        "--l2-normalize`; recall of the planted pairs at each threshold")
    return p.parse_args()


def new_catalog(path, n: int, dim: int) -> np.ndarray:
    """A catalog of n present images (no files: the dedup stages read only the catalog) and an
    empty embedding set "bench" of dim dimensions; returns the image ids 1..n."""
    import pyarrow as pa

    from vdc_lake.catalog.connection import Catalog
    from vdc_lake.catalog.sets import register_embedding_set

    ids = np.arange(1, n + 1, dtype=np.int64)
    with Catalog(path, create=True) as catalog:
        run_id = catalog.begin_run("bench", {})
        catalog.insert_arrow("images", pa.table({
            "image_id": ids, "root": pa.repeat(pa.scalar("/bench"), n),
            "rel_path": pa.array([f"{i:08d}.jpg" for i in ids]), "version": np.ones(n, np.int32),
            "present": np.ones(n, bool)}))
        register_embedding_set(catalog, "bench", kind="descriptor", model=None, dim=dim, preprocessing=None,
                               run_id=run_id)
        catalog.finish_run(run_id)
    return ids


def add_vectors(path, ids: np.ndarray, x: np.ndarray) -> None:
    """Vectors x [m, d] of set "bench" for the images ids [m], in one run (what predict writes)."""
    from vdc_lake.catalog.connection import Catalog
    from vdc_lake.catalog.sets import write_vectors

    with Catalog(path) as catalog:
        run_id = catalog.begin_run("predict", {"set": "bench"})
        for s in range(0, len(ids), 65_536):
            write_vectors(catalog, "embeddings", "bench", run_id, ids[s:s + 65_536],
                          np.ones(len(ids[s:s + 65_536]), np.int32), x[s:s + 65_536])
        catalog.finish_run(run_id)


def make_catalog(path, x: np.ndarray) -> np.ndarray:
    """A catalog holding one present image per row of x and the set "bench" ([n, d] vectors);
    returns the image ids (row i is image ids[i])."""
    ids = new_catalog(path, len(x), x.shape[1])
    add_vectors(path, ids, x)
    return ids


def run_walkthrough(args, x, rows):
    """`dedup index` then `dedup report --method auto --center --l2-normalize` through the stage
    functions the CLI calls; prints one row per step and the recall of the planted pairs."""
    import tempfile
    from pathlib import Path

    from vdc_lake.stages import dedup
    from vdc_lake.catalog.connection import Catalog
    from vdc_lake.config.loader import Config

    cfg = Config.load().section("dedup")
    folder = Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    ids = make_catalog(folder / "c.duckdb", x)
    with Catalog(folder / "c.duckdb") as catalog:
        with Clock() as index_clock:
            built = dedup.build_index(catalog, "bench", center=True, l2_normalize=True, dtype=cfg["index_dtype"],
                                      device=args.device, quiet=True)
        with Clock() as report_clock:
            summary = dedup.report(catalog, "bench", threshold=args.report, method="auto", device=args.device,
                                   center=True, l2_normalize=True, dtype=cfg["index_dtype"],
                                   max_pairs_per_image=cfg["max_pairs_per_image"], precision=cfg["precision"],
                                   neighbors_k=cfg["neighbors"], quiet=True)
        edges = catalog.arrow("SELECT image_a, image_b, distance FROM dup_edges WHERE run_id = ?", [summary.run_id])
    # truth: the planted pairs' exact distances after the same centring + L2 normalisation
    prepared, _ = neighbors.prepare_vectors(x, center=True, l2_normalize=True)
    found = neighbors.PairSet(edges.column("image_a").to_numpy() - 1, edges.column("image_b").to_numpy() - 1,
                              edges.column("distance").to_numpy())
    s = score(found, prepared, rows, args.report)
    step = "index: " + (f"skipped ({built.skipped.split(':')[0]})" if built.skipped else f"built {built.path}")
    print(f"{step:<60} {index_clock.wall:>7.1f} s wall {index_clock.cpu:>7.1f} cpu-s")
    print(f"report: {summary.method} ({summary.reason})")
    print(f"{'report: ' + summary.method + ', ' + str(summary.pairs) + ' pairs':<60} {report_clock.wall:>7.1f} s wall "
          f"{report_clock.cpu:>7.1f} cpu-s")
    total = index_clock.wall + report_clock.wall
    recalls = "  ".join(f"r<{t} {s[f'r<{t}']:.4f}" for t in RECALL_THRESHOLDS)
    print(f"walkthrough total {total:.1f} s wall, {index_clock.cpu + report_clock.cpu:.1f} cpu-s; {recalls}; "
          f"precision {s['precision']:.4f}, other {s['non-planted']}, truncated images {summary.truncated_images}")
    return ids


def gemm_floor(n: int, d: int, tile: int = 4096, repeats: int = 5) -> None:
    """The exact search's arithmetic floor on this CPU: the best of `repeats` fp32 products of two
    tile x d blocks (torch, every core), and the seconds n^2 d / 2 multiply-adds (the upper triangle
    the search computes) take at that rate, before thresholding or re-checks."""
    import torch

    rng = torch.Generator().manual_seed(0)
    a, b = torch.randn(tile, d, generator=rng), torch.randn(tile, d, generator=rng)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b.T
        best = min(best, time.perf_counter() - started)
    rate = 2 * tile * tile * d / best
    print(f"fp32 GEMM on this CPU: {rate / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads); "
          f"{n:,} x {d} upper triangle = {n * n * d / 1e12:.2f} TFLOP -> floor {n * n * d / rate:.1f} s")


def main():
    args = parse_args()
    n_pairs = int(round(args.pair_fraction * args.n))
    print(f"data: {args.n:,} x {args.d}, {n_pairs:,} planted pairs at 0..{args.max_distance}, "
          f"report < {args.report}, seed {args.seed}; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    x, rows = make_dataset(args.n, args.d, n_pairs, args.max_distance, args.seed)
    if args.walkthrough:
        run_walkthrough(args, x, rows)
        if args.device == "cpu":
            gemm_floor(args.n, args.d)
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        return
    keys = np.arange(args.n, dtype=np.int64)
    header = (f"{'method':<34} {'n':>9} {'build s':>7} {'search s':>7} {'total s':>7} "
              f"{'cpu s':>7}  " + " ".join(f"{'r<' + str(t):>7}" for t in RECALL_THRESHOLDS)
              + f" {'prec.':>7} {'other':>6}")
    lines = []
    if args.ann:
        pairs, build, search = run_ann(args, x, keys)
        name = (f"usearch {args.dtype} M={args.connectivity} "
                f"ef={args.expansion_add}/{args.expansion_search} k={args.k}")
        lines.append(row(name, args.n, build, search, score(pairs, x, rows, args.report)))
        print(lines[-1], flush=True)
    if args.exact:
        exact_n = args.exact_n or (args.n if args.device.startswith("cuda") else min(args.n, 20_000))
        if exact_n != args.n:  # its own data set, same density of planted pairs
            x, rows = make_dataset(exact_n, args.d, int(round(args.pair_fraction * exact_n)),
                                   args.max_distance, args.seed)
            keys = np.arange(exact_n, dtype=np.int64)
        pairs, build, search = run_exact(args, x, keys)
        name = f"exact torch {args.device} {args.precision or neighbors.default_precision(args.device)}"
        lines.append(row(name, exact_n, build, search, score(pairs, x, rows, args.report)))
        print(lines[-1], flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}  (cpu s = process CPU time, all threads;"
          f" prec. and other at < {args.report}; other = found pairs that were not planted)")
    print(header)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
