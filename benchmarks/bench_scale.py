"""Scale-out backends on one machine: per-file stages on local vs Ray, k-means on 1 vs 2 ranks.

    python benchmarks/bench_scale.py [--n 1000] [--workers 2] [--kmeans-n 200000] [--no-ray]

Per-file stages: N small photo-like JPEGs (320x240, quality 90) are generated once into a
temp folder; for each backend a fresh copy and a fresh catalog are timed through
    scan                 read + hash + header of every file
    sanitize full        header rules + reduced-scale decode + built-in descriptor
    predict builtin      the weight-free descriptor (decode + DCT) of every image into a set
                         (the descriptors sanitize full computed are deleted first)
    predict model        a tiny random birder embedding net (the real weights need a
                         download), CPU, batch 32: decode + transform + forward; then
                         "again" into a second set (Ray workers already warm: torch
                         imported, model loaded)
    apply (resize)       every image is wider than the benchmark's max_width = 256, so each
                         gets a journaled, backed-up resize (backup copy + verify + re-encode)
The Ray rows use a local instance with --workers CPUs (started once, its start-up time is
a row of its own); they include Ray's task overhead and the staging parts' write + read.

k-means: float32 blobs [--kmeans-n, 64], k = 256, cosine, seed 0, 20 Lloyd iterations at
most; the single-process `kmeans` (1 thread, and --workers threads) against
`kmeans_distributed` on 1 and 2 gloo processes of 1 thread each, timed on rank 0 between two
barriers (data generation and process start-up excluded). The same for the hierarchical
"resampled" method (levels 256/16, n_samples 10/5, 3 resamples, 20 iterations at most).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.make_sample_data import _rng, photo  # noqa: E402
from tests.tiny_models import PE_CORE, TINY_SPECS, make_tiny_model  # noqa: E402
from vdc_lake.effects.apply import apply_plan, make_plan  # noqa: E402
from vdc_lake.catalog.connection import Catalog  # noqa: E402
from vdc_lake.config.loader import Config  # noqa: E402
from vdc_lake.review.decisions import decision_query  # noqa: E402
from vdc_lake.stages.predict import predict  # noqa: E402
from vdc_lake.stages.sanitize import sanitize  # noqa: E402
from vdc_lake.stages.scan import scan  # noqa: E402

WIDTH, HEIGHT, QUALITY, SEED = 320, 240, 90, 0
KMEANS_D, KMEANS_K, KMEANS_ITERS = 64, 256, 20
HIERARCHY, RESAMPLED = [256, 16], {"method": "resampled", "n_samples": [10, 5], "n_resamples": 3, "tol": 1e-4}


def _write_one(args: tuple[Path, int]) -> None:
    folder, i = args
    path = folder / f"{i // 500:03d}" / f"img_{i:06d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(_rng(SEED, "bench-scale", i), WIDTH, HEIGHT).save(path, "JPEG", quality=QUALITY)


def make_data(folder: Path, n: int, workers: int) -> Path:
    root = folder / "template"
    with get_context("fork").Pool(workers) as pool:
        pool.map(_write_one, [(root, i) for i in range(n)], chunksize=16)
    return root


def bench_stages(template: Path, work: Path, backend: str, workers: int,
                 models_dir: Path) -> list[tuple[str, str, int, float]]:
    """Rows of (stage, backend, files, seconds) on a fresh copy of the data and catalog."""
    root = work / backend / "data"
    shutil.copytree(template, root)
    config = Config.load(search_dir=work)
    config.values["sanitize"]["max_width"] = 256  # every image gets a resize to apply
    rows = []
    with Catalog(work / backend / "catalog.duckdb") as catalog:
        start = time.perf_counter()
        s = scan(catalog, [root], extensions=config.values["scan"]["extensions"], workers=workers, quiet=True,
                 backend=backend)
        rows.append(("scan", backend, s.listed, time.perf_counter() - start))
        start = time.perf_counter()
        f = sanitize(catalog, config.section("sanitize"), workers=workers, quiet=True, backend=backend)
        rows.append(("sanitize full", backend, f.decoded, time.perf_counter() - start))
        catalog.execute("DELETE FROM embeddings WHERE set_name = 'builtin'")
        start = time.perf_counter()
        p = predict(catalog, model="builtin", kind="descriptor", num_workers=workers, quiet=True, backend=backend)
        rows.append(("predict builtin", backend, p.written, time.perf_counter() - start))
        start = time.perf_counter()
        p = predict(catalog, model=PE_CORE, kind="embedding", models_dir=str(models_dir), device="cpu",
                    batch_size=32, num_workers=1, quiet=True, backend=backend)
        rows.append(("predict model (tiny)", backend, p.written, time.perf_counter() - start))
        start = time.perf_counter()  # again into another set: Ray's workers have torch and the model loaded
        p = predict(catalog, model=PE_CORE, kind="embedding", models_dir=str(models_dir), device="cpu",
                    batch_size=32, num_workers=1, quiet=True, backend=backend, set_name="again")
        rows.append(("predict model, again", backend, p.written, time.perf_counter() - start))
        source_sql, params, options = decision_query("sanitize", config)
        plan = make_plan(catalog, "sanitize", source_sql, params, options)
        start = time.perf_counter()
        a = apply_plan(catalog, plan, backup_dir=work / backend / "backup", quiet=True, backend=backend)
        rows.append(("apply (resize)", backend, a.done, time.perf_counter() - start))
    assert s.listed == f.decoded == a.done, (s, f, a)
    return rows


def _kmeans_worker(rank: int, world: int, store: str, n: int, threads: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from vdc_lake.scale.kmeans_distributed import hierarchical_kmeans_distributed, kmeans_distributed

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    x = _kmeans_data(n)
    times = []
    for run in (lambda: kmeans_distributed(x, KMEANS_K, seed=0, max_iters=KMEANS_ITERS, tol=0.0),
                lambda: hierarchical_kmeans_distributed(x, HIERARCHY, seed=0, max_iters=KMEANS_ITERS, **RESAMPLED)):
        dist.barrier()
        start = time.perf_counter()
        run()
        dist.barrier()
        times.append(time.perf_counter() - start)
    if rank == 0:
        Path(out).write_text(" ".join(map(str, times)))
    dist.destroy_process_group()


def _kmeans_data(n: int):
    import numpy as np

    rng = np.random.default_rng(0)
    middles = rng.normal(size=(512, KMEANS_D))
    return (middles[rng.integers(512, size=n)] + 0.5 * rng.normal(size=(n, KMEANS_D))).astype(np.float32)


def bench_kmeans(n: int, cores: int, work: Path) -> list[tuple[str, str, int, float]]:
    import torch
    import torch.multiprocessing as mp

    from vdc_lake.kernels.kmeans import hierarchical_kmeans, kmeans

    x = _kmeans_data(n)
    rows = []
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        start = time.perf_counter()
        kmeans(x, KMEANS_K, seed=0, max_iters=KMEANS_ITERS, tol=0.0)
        rows.append(("k-means (20 iters)", f"kmeans, 1 process x {threads} threads", n, time.perf_counter() - start))
        start = time.perf_counter()
        hierarchical_kmeans(x, HIERARCHY, seed=0, max_iters=KMEANS_ITERS, **RESAMPLED)
        rows.append(("hierarchical resampled", f"1 process x {threads} threads", n, time.perf_counter() - start))
    for world in (1, 2):
        store, out = work / f"store-{world}", work / f"kmeans-{world}.txt"
        threads = 1  # one thread per rank: on a shared 2-core box more threads only contend
        mp.spawn(_kmeans_worker, args=(world, str(store), n, threads, str(out)), nprocs=world, join=True)
        flat, hierarchical = map(float, out.read_text().split())
        rows.append(("k-means (20 iters)", f"distributed, {world} gloo x {threads} threads", n, flat))
        rows.append(("hierarchical resampled", f"distributed, {world} gloo x {threads} threads", n, hierarchical))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="JPEGs for the per-file stages")
    parser.add_argument("--workers", type=int, default=2, help="processes (local) / Ray CPUs")
    parser.add_argument("--kmeans-n", type=int, default=200_000)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    rows: list[tuple[str, str, int, float]] = []
    with tempfile.TemporaryDirectory(prefix="vdc-bench-scale-") as tmp:
        work = Path(tmp)
        template = make_data(work, args.n, args.workers)
        models_dir = work / "models"
        make_tiny_model(models_dir, TINY_SPECS[PE_CORE])
        rows += bench_stages(template, work, "local", args.workers, models_dir)
        if not args.no_ray:
            import ray

            start = time.perf_counter()
            ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
            rows.append(("ray.init (local instance)", "ray", 0, time.perf_counter() - start))
            rows += bench_stages(template, work, "ray", args.workers, models_dir)
            ray.shutdown()
        rows += bench_kmeans(args.kmeans_n, args.workers, work)
    print(f"\n{os.cpu_count()} CPUs visible, workers = {args.workers}\n")
    print(f"| {'stage':<26} | {'backend':<34} | {'items':>7} | {'seconds':>8} | {'items/s':>8} |")
    print(f"|{'-' * 28}|{'-' * 36}|{'-' * 9}|{'-' * 10}|{'-' * 10}|")
    for stage, backend, items, seconds in rows:
        rate = f"{items / seconds:8.0f}" if items else " " * 8
        print(f"| {stage:<26} | {backend:<34} | {items:>7} | {seconds:8.2f} | {rate} |")


if __name__ == "__main__":
    main()
