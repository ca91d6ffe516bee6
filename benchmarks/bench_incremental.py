"""Benchmark incremental curation (issue 22): new images arrive in a curated catalog.

dedup:  N existing images with an exact `dedup report`, then N/10 new ones arrive (and 1% of
        the old ones are deleted); the incremental report (new x all) and a full re-run
        (all x all) are timed side by side on the same catalog, and their pairs compared.
        Vectors: bench_dedup's random unit rows with planted near-duplicate pairs (some
        between an old and a new image). Target: incremental <= 0.25 x full, identical pairs.
sample: N images clustered and sampled (`sample --total S`), then +10% new images put into
        the hierarchy (`cluster --assign-new`) and the sample drawn again with --stable;
        counted: images that entered and left the sample. Target: changes <= new share of
        the images + 1% of S. The plain re-sample is shown for comparison.

Every step runs through the stage functions the CLI calls, on a real catalog in a temporary
folder. Run on a shared machine: wall seconds and process CPU seconds are both shown.

Usage:
    python benchmarks/bench_incremental.py                           # dedup 100k + 10k, sample 100k + 10k
    python benchmarks/bench_incremental.py --dedup-n 1000000 --sample-n 1000000   # the issue's size
    python benchmarks/bench_incremental.py --skip-dedup --sample-n 200000
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dedup import Clock, add_vectors, make_dataset, new_catalog  # noqa: E402

from vdc_lake.catalog.connection import Catalog  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def edges(catalog: Catalog, run_id: int) -> pa.Table:
    return catalog.arrow("SELECT image_a, image_b, version_a, version_b, distance FROM dup_edges WHERE run_id = ? "
                         "ORDER BY image_a, image_b", [run_id])


def bench_dedup(args, folder: Path) -> list[str]:
    from vdc_lake.stages import dedup

    n_old, n_new = args.dedup_n, args.dedup_n // 10
    n = n_old + n_new
    x, _ = make_dataset(n, args.dim, n // 20, 0.5, args.seed)
    path = folder / "dedup.duckdb"
    ids = new_catalog(path, n, args.dim)
    add_vectors(path, ids[:n_old], x[:n_old])
    options = dict(threshold=args.threshold, method="exact", device="cpu", quiet=True)
    with Catalog(path) as catalog:
        with Clock() as first:
            base = dedup.report(catalog, "bench", **options)
    add_vectors(path, ids[n_old:], x[n_old:])
    gone = np.random.default_rng(args.seed).choice(ids[:n_old], n_old // 100, replace=False)
    with Catalog(path) as catalog:
        catalog.execute("UPDATE images SET present = false WHERE image_id IN (SELECT unnest(?))", [gone.tolist()])
        with Clock() as incremental:
            inc = dedup.report(catalog, "bench", **options)
        with Clock() as full:
            ref = dedup.report(catalog, "bench", full=True, **options)
        same = edges(catalog, inc.run_id).equals(edges(catalog, ref.run_id))
    assert inc.incremental_from == base.run_id and ref.incremental_from is None
    m, total = inc.searched, inc.n_vectors
    rows = [
        f"{'dedup step':<44} {'images':>9} {'searched':>9} {'pairs':>8} {'wall s':>8} {'cpu s':>8}",
        f"{'first report (exact, all x all)':<44} {base.n_vectors:>9,} {base.searched:>9,} {base.pairs:>8,} "
        f"{first.wall:>8.1f} {first.cpu:>8.1f}",
        f"{'+10% new, -1% deleted: incremental':<44} {total:>9,} {m:>9,} {inc.pairs:>8,} "
        f"{incremental.wall:>8.1f} {incremental.cpu:>8.1f}",
        f"{'+10% new, -1% deleted: full re-run (--full)':<44} {total:>9,} {ref.searched:>9,} {ref.pairs:>8,} "
        f"{full.wall:>8.1f} {full.cpu:>8.1f}",
        f"incremental / full: wall {incremental.wall / full.wall:.3f}, cpu {incremental.cpu / full.cpu:.3f} "
        f"(target <= 0.25); pairs identical: {same}",
        f"arithmetic: new x all = {m:,} x {total:,} = {m * total:.3g} vector pairs scored (pairs of two new rows "
        f"are met from both sides); all x all / 2 = {total * total / 2:.3g}; ratio "
        f"{m * total / (total * total / 2):.3f}",
    ]
    return rows


def mixture(n: int, dim: int, modes: int, seed: int) -> np.ndarray:
    """[n, dim] float32 rows around `modes` random centres of uneven weight (a collection's
    uneven topics), seeded."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((modes, dim)).astype(np.float32)
    weights = rng.pareto(1.5, modes) + 0.05
    which = rng.choice(modes, n, p=weights / weights.sum())
    return centres[which] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)


def selection(catalog: Catalog, run_id: int) -> np.ndarray:
    return catalog.arrow("SELECT image_id FROM samples WHERE run_id = ?", [run_id]).column("image_id").to_numpy()


def bench_sample(args, folder: Path) -> list[str]:
    from vdc_lake.config.loader import bundled_defaults
    from vdc_lake.stages.cluster import cluster, sample
    from vdc_lake.stages.cluster_assign import assign_new

    n_old, n_new = args.sample_n, args.sample_n // 10
    total = args.sample_n // 5
    levels = [max(20, n_old // 100), max(10, n_old // 2000), 5]
    x = mixture(n_old + n_new, args.sample_dim, 300, args.seed)
    path = folder / "sample.duckdb"
    ids = new_catalog(path, n_old + n_new, args.sample_dim)
    add_vectors(path, ids[:n_old], x[:n_old])
    defaults = bundled_defaults()["hierarchical_sampling"]
    options = dict(allocation=defaults["allocation"], strategy=defaults["strategy"], seed=args.seed)
    timings = []
    with Catalog(path) as catalog:
        catalog.execute("UPDATE images SET present = false WHERE image_id > ?", [n_old])
        with Clock() as clock:
            clustered = cluster(catalog, "bench", n_clusters=levels, method="centers", device="cpu", quiet=True)
        timings.append((f"cluster {n_old:,} images into {'/'.join(map(str, levels))}", clock))
        with Clock() as clock:
            first = sample(catalog, total, **options)
        timings.append((f"sample --total {total:,}", clock))
    add_vectors(path, ids[n_old:], x[n_old:])
    with Catalog(path) as catalog:
        catalog.execute("UPDATE images SET present = true WHERE image_id > ?", [n_old])
        with Clock() as clock:
            assigned = assign_new(catalog, "bench", quiet=True)
        timings.append((f"+{n_new:,} images: cluster --assign-new", clock))
        with Clock() as clock:
            stable = sample(catalog, total, stable=True, **options)
        timings.append((f"sample --total {total:,} --stable", clock))
        with Clock() as clock:
            plain = sample(catalog, total, **options)
        timings.append((f"sample --total {total:,} (plain, for comparison)", clock))
        before = selection(catalog, first.run_id)
        plain_entered = int((~np.isin(selection(catalog, plain.run_id), before)).sum())
    assert clustered.n_images == n_old and stable.stable_from == first.run_id
    share = n_new / (n_old + n_new)
    bound = share * total + 0.01 * total
    rows = [f"{'sample step':<52} {'wall s':>8} {'cpu s':>8}"]
    rows += [f"{name:<52} {c.wall:>8.1f} {c.cpu:>8.1f}" for name, c in timings]
    rows += [
        f"assign-new: {assigned.n_new:,} new, drift {assigned.drift:.3f} (old 95th percentile {assigned.old_p95:.4f}), "
        f"re-clustering advised: {assigned.recluster_advised}",
        f"--stable: {stable.entered:,} entered, {stable.left:,} left of {total:,} "
        f"({stable.entered / total:.2%}); target <= new share {share:.2%} + 1% = {bound:,.0f} "
        f"({'met' if stable.entered <= bound else 'NOT met'})",
        f"plain re-sample: {plain_entered:,} entered ({plain_entered / total:.2%})",
    ]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dedup-n", type=int, default=100_000, help="existing images of the dedup part (+10%% new)")
    p.add_argument("--sample-n", type=int, default=100_000, help="existing images of the sample part (+10%% new)")
    p.add_argument("--dim", type=int, default=512, help="dims of the dedup part's vectors")
    p.add_argument("--sample-dim", type=int, default=64, help="dims of the sample part's vectors")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-dedup", action="store_true")
    p.add_argument("--skip-sample", action="store_true")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-incremental-"))
    lines = [f"bench_incremental: {args.dim}-d, seed {args.seed}, folder {folder}"]
    if not args.skip_dedup:
        lines += bench_dedup(args, folder)
        lines.append(f"peak RSS after dedup: {peak_rss_gb():.2f} GB")
        print("\n".join(lines), flush=True)
        lines = []
    if not args.skip_sample:
        lines += bench_sample(args, folder)
        lines.append(f"peak RSS: {peak_rss_gb():.2f} GB")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
