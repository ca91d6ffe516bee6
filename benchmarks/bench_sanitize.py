"""Throughput of scan + sanitize on a folder of photo-like JPEGs, in-process and through the CLI.

    python benchmarks/bench_sanitize.py [--n 2000] [--data DIR] [--workers 2] [--no-cli] [--phases 300]

Generates N JPEGs of 1032x774 px (0.8 Mpx, quality 90, photo-like content from
examples/make_sample_data.py), cached in --data (default: a folder in the system temp dir,
reused across runs), then times with a fresh catalog in a temp dir each time:

    scan (new files)          list + read + hash + header of every file
    sanitize full             header rules + reduced-scale decode + built-in descriptor
    sanitize --quick          header rules only (SQL over the scanned facts)
    re-scan (unchanged)       stat-only listing + one SQL join; no file is read
    scan --sanitize           scan + sanitize in one read per file (sanitize.scan_and_sanitize)
    bare decode               the decode limit: open + JPEG draft (sanitize's size) + load of every
                              file, nothing else, in the same number of worker processes
    CLI scan / sanitize       wall time of `vdc-lake ...` subprocesses, startup included

Files are read from a warm page cache (they were just written or read). Prints a table, the
ratios to the bare decode measured in the same run (issue 23: scan + sanitize >= 0.85x), and
where one file's time goes (--phases files, one core, in-process), with peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

from examples.make_sample_data import _rng, photo  # noqa: E402
from vdc_lake.catalog.connection import Catalog  # noqa: E402
from vdc_lake.config.loader import Config  # noqa: E402
from vdc_lake.scale.parallel import map_ordered, worker_count  # noqa: E402
from vdc_lake.stages.sanitize import sanitize, scan_and_sanitize  # noqa: E402
from vdc_lake.stages.scan import scan  # noqa: E402

WIDTH, HEIGHT, QUALITY, SEED = 1032, 774, 90, 0
TARGETS = {  # files/s on 2 cores
    "scan + sanitize full": 800,
    "scan --sanitize (one read)": 800,
    "scan + sanitize --quick": 5000,
    "re-scan (unchanged)": 20000,
}


def _write_one(args: tuple[Path, int]) -> None:
    folder, i = args
    path = folder / f"{i // 500:03d}" / f"img_{i:06d}.jpg"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        photo(_rng(SEED, "bench", i), WIDTH, HEIGHT).save(tmp, "JPEG", quality=QUALITY)
        os.replace(tmp, path)


def ensure_data(folder: Path, n: int, workers: int) -> Path:
    """Write (or reuse) n JPEGs under folder; returns the image root."""
    root = folder / f"jpeg_{WIDTH}x{HEIGHT}_q{QUALITY}"
    stamp = root / f".complete-{n}"
    if stamp.exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with get_context("fork").Pool(workers) as pool:
        pool.map(_write_one, [(root, i) for i in range(n)], chunksize=16)
    extra = sorted(root.glob("*/img_*.jpg"))[n:]
    for path in extra:  # an earlier, larger --n left more files
        path.unlink()
    stamp.write_text("")
    print(f"generated {n} images in {time.perf_counter() - start:.1f} s under {root}", file=sys.stderr)
    return root


def _cpu_seconds() -> float:
    """CPU time of this process plus its reaped children (the pool workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Timing(NamedTuple):
    wall: float
    cpu: float

    def __add__(self, other):  # type: ignore[override]
        return Timing(self.wall + other.wall, self.cpu + other.cpu)


def _timed(fn, *args, **kwargs) -> tuple[Timing, object]:
    cpu, start = _cpu_seconds(), time.perf_counter()
    result = fn(*args, **kwargs)
    return Timing(time.perf_counter() - start, _cpu_seconds() - cpu), result


def _bare_decode(path: str) -> int:
    """The decode limit for one file: open, JPEG DCT scaling to sanitize's size (1/8, never below
    the descriptor's DRAFT_SIZE), load the pixels. Nothing is hashed, checked or computed."""
    from vdc_lake.kernels.descriptor import DRAFT_SIZE

    with Image.open(path) as img:
        img.draft(img.mode, (max(DRAFT_SIZE[0], img.width // 8), max(DRAFT_SIZE[1], img.height // 8)))
        img.load()
        return img.width


def bench_bare_decode(root: Path, workers: int) -> tuple[int, Timing]:
    files = sorted(str(p) for p in root.glob("*/img_*.jpg"))
    timing, _ = _timed(lambda: sum(map_ordered(_bare_decode, files, workers=workers, quiet=True)))
    return len(files), timing


def bench_fused(root: Path, work: Path, workers: int, config: Config, *, descriptor: bool = True,
                name: str = "fused") -> tuple[int, Timing]:
    """scan --sanitize on a fresh catalog (work/NAME-DESCRIPTOR.duckdb): every file read once."""
    path = work / f"{name}-{descriptor}.duckdb"
    rules = dict(config.section("sanitize"), builtin_descriptor=descriptor)
    with Catalog(path) as catalog:
        timing, (s, f) = _timed(scan_and_sanitize, catalog, [root], extensions=config.values["scan"]["extensions"],
                                rules=rules, workers=workers, quiet=True)
    assert f.decoded == s.listed and f.findings == 0, f
    return s.listed, timing


def bench_decode_check_only(root: Path, work: Path, workers: int, config: Config) -> tuple[int, Timing]:
    """scan --sanitize with the descriptor off and the image-quality values (issue 23.6) skipped:
    what the one read costs over the bare decode, without the analyses of the decoded pixels.
    (The values are skipped by replacing probe's function in this process before the workers
    fork: a measurement only; vdc-lake itself always computes them.)"""
    from vdc_lake.fileops import probe

    saved = getattr(probe, "_quality", None)
    if saved is not None:
        probe._quality = lambda img, luma=None: None
    try:
        return bench_fused(root, work, workers, config, descriptor=False, name="check-only")
    finally:
        if saved is not None:
            probe._quality = saved


def phase_table(root: Path, n: int, rules: dict) -> list[tuple[str, float]]:
    """Mean ms per file of each step of one file's read, in this process (one core): where the
    time of scan + sanitize goes, beyond the decode itself."""
    import io

    import xxhash

    from vdc_lake.fileops import probe
    from vdc_lake.fileops.probe import HeaderReader, read_file
    from vdc_lake.kernels.descriptor import builtin_descriptor

    files = sorted(str(p) for p in root.glob("*/img_*.jpg"))[:n]
    totals = dict.fromkeys(["read whole (page cache)", "xxh3-128", "open + header facts", "draft + load (decode)",
                            "luma (shared by the two below)", "built-in descriptor", "quality values",
                            "read_file (all of it)"], 0.0)
    for path in files:
        t0 = time.process_time()
        with open(path, "rb") as f:
            data = f.read()
        t1 = time.process_time()
        xxhash.xxh3_128_hexdigest(data)
        t2 = time.process_time()
        reader = HeaderReader(io.BytesIO(data))
        with Image.open(reader) as img:
            probe._header_facts(img)
            t3 = time.process_time()
            reader.lift()
            img.draft(img.mode, probe._draft_size(img.width, img.height, True))
            img.load()
            t4 = time.process_time()
            luma = probe._shared_luma(img)
            t5 = time.process_time()
            builtin_descriptor(img, luma=luma)
            t6 = time.process_time()
            probe._quality(img, luma)
            t7 = time.process_time()
        read_file(path, decode=True, max_pixels=int(rules["max_pixels"]), with_descriptor=True)
        t8 = time.process_time()
        steps = [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5), (t5, t6), (t6, t7), (t7, t8)]
        for key, (a, b) in zip(totals, steps):
            totals[key] += b - a
    return [(key, 1000 * value / max(len(files), 1)) for key, value in totals.items()]


def bench_library(root: Path, work: Path, workers: int, config: Config) -> list[tuple[str, int, Timing]]:
    """Rows of (measurement, files, seconds), each on a fresh catalog unless it says re-scan."""
    extensions = config.values["scan"]["extensions"]
    rules = config.section("sanitize")
    rows = []

    def fresh(name: str) -> Catalog:
        path = work / f"{name}.duckdb"
        for suffix in ("", ".wal", ".lock"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        return Catalog(path)

    with fresh("full") as catalog:
        t_scan, s = _timed(scan, catalog, [root], extensions=extensions, workers=workers, quiet=True)
        n = s.listed
        t_full, f = _timed(sanitize, catalog, rules, workers=workers, quiet=True)
        assert f.decoded == n and f.findings == 0, f
        t_rescan, r = _timed(scan, catalog, [root], extensions=extensions, workers=workers, quiet=True)
        assert r.unchanged == n, r
    rows += [("scan (new files)", n, t_scan), ("sanitize full (decode + descriptor)", n, t_full),
             ("scan + sanitize full", n, t_scan + t_full)]

    with fresh("quick") as catalog:
        t_scan2, s = _timed(scan, catalog, [root], extensions=extensions, workers=workers, quiet=True)
        t_quick, q = _timed(sanitize, catalog, rules, quick=True, workers=workers, quiet=True)
        assert q.checked == n and q.decoded == 0, q
    rows += [("scan (new files, again)", n, t_scan2), ("sanitize --quick", n, t_quick),
             ("scan + sanitize --quick", n, t_scan2 + t_quick), ("re-scan (unchanged)", n, t_rescan)]
    return rows


def bench_cli(root: Path, work: Path, workers: int, n: int) -> list[tuple[str, int, Timing]]:
    catalog = work / "cli.duckdb"
    base = [sys.executable, "-m", "vdc_lake.cli", "--catalog", str(catalog), "-q"]
    rows = []
    for name, args in [("CLI scan (new files)", ["scan", str(root), "--workers", str(workers)]),
                       ("CLI sanitize full", ["sanitize", "--workers", str(workers)]),
                       ("CLI re-scan (unchanged)", ["scan", str(root), "--workers", str(workers)]),
                       ("CLI status", ["status"])]:
        timing, _ = _timed(subprocess.run, base + args, check=True, cwd=work, stdout=subprocess.DEVNULL)
        rows.append((name, n, timing))
    timing, _ = _timed(subprocess.run, [sys.executable, "-m", "vdc_lake.cli", "--help"], check=True,
                       stdout=subprocess.DEVNULL)
    rows.append(("CLI startup (--help)", 0, timing))
    return rows


def print_ratios(rows: list[tuple[str, int, Timing]], bare: Timing, n: int) -> None:
    """files/s of each full-decode measurement over the bare decode's, wall and CPU."""
    print(f"\n{'ratio to the bare decode (same run)':<36} {'wall':>6} {'cpu':>6}")
    for name, files, t in rows:
        if files and ("sanitize full" in name or "--sanitize" in name or "bare" in name):
            print(f"{name:<36} {bare.wall / t.wall * files / n:>6.2f} {bare.cpu / t.cpu * files / n:>6.2f}")


def print_table(rows: list[tuple[str, int, Timing]], cores: int) -> None:
    """files/s is measured wall time; 'cpu-bound' is files per CPU-second x cores, what the same
    work would reach on idle cores with perfect parallelism (a ceiling, for loaded machines)."""
    print(f"{'measurement':<36} {'files':>5} {'wall s':>7} {'files/s':>8} {'cpu s':>7} {'cpu-bound':>9} "
          f"{'target':>6}  met")
    print("-" * 94)
    for name, n, t in rows:
        rate = n / t.wall if n and t.wall > 0 else float("nan")
        ceiling = n * cores / t.cpu if n and t.cpu > 0 else float("nan")
        target = TARGETS.get(name)
        verdict = "" if target is None else ("yes" if rate >= target else "no")
        print(f"{name:<36} {n:>5} {t.wall:>7.3f} {rate:>8,.0f} {t.cpu:>7.2f} {ceiling:>9,.0f} "
              f"{target or '':>6}  {verdict}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="number of JPEGs (2000)")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "vdc-lake-bench",
                        help="cache folder for the generated images (kept between runs)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI wall-time measurements")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--phases", type=int, default=300, help="files for the per-step table (0: none)")
    parser.add_argument("--ratio-only", action="store_true",
                        help="only the bare decode and scan --sanitize rows (with and without the analyses)")
    args = parser.parse_args(argv)

    root = ensure_data(args.data, args.n, worker_count(args.workers))
    work = Path(tempfile.mkdtemp(prefix="vdc-bench-"))
    try:
        config = Config.load(search_dir=work)
        # side by side, bare decode first and last: the machine's load drifts over a run
        n_bare, bare_1 = bench_bare_decode(root, args.workers)
        n_fused, fused = bench_fused(root, work, args.workers, config)
        _, fused_plain = bench_fused(root, work, args.workers, config, descriptor=False)
        _, fused_check = bench_decode_check_only(root, work, args.workers, config)
        rows = [] if args.ratio_only else bench_library(root, work, args.workers, config)
        _, bare_2 = bench_bare_decode(root, args.workers)
        bare = Timing((bare_1.wall + bare_2.wall) / 2, (bare_1.cpu + bare_2.cpu) / 2)
        rows = [("bare decode (the limit)", n_bare, bare), ("scan --sanitize (one read)", n_fused, fused),
                ("scan --sanitize, no descriptor", n_fused, fused_plain),
                ("scan --sanitize, decode check only", n_fused, fused_check)] + rows
        if not args.no_cli and not args.ratio_only:
            rows += bench_cli(root, work, args.workers, args.n)
        phases = phase_table(root, args.phases, config.section("sanitize")) if args.phases else []
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"{args.n} JPEGs {WIDTH}x{HEIGHT} q{QUALITY}, workers={args.workers}, "
          f"cpus={os.cpu_count()}, load average {load:.1f}, warm page cache")
    print_table(rows, cores=min(args.workers, os.cpu_count() or 1))
    print(f"bare decode, first and last of the run: {n_bare / bare_1.wall:,.0f} and {n_bare / bare_2.wall:,.0f} "
          "files/s")
    print_ratios(rows, bare, n_bare)
    if phases:
        print(f"\n{'one file, one core (ms, mean of ' + str(args.phases) + ')':<36} {'ms':>6}")
        for name, ms in phases:
            print(f"{name:<36} {ms:>6.3f}")
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\npeak RSS: this process {me.ru_maxrss / 1024:,.0f} MiB, largest worker {kids.ru_maxrss / 1024:,.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(
            [dict(name=r[0], files=r[1], wall_s=r[2].wall, cpu_s=r[2].cpu) for r in rows], indent=1))


if __name__ == "__main__":
    main()
