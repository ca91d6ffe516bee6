"""Image-quality findings: vdc-lake's (sanitize's decode pass, quality_actions()) against
cleanvision's on the same images, and what computing them costs sanitize.

The folder (built in a temp folder): every photo of --photos DIR as it is, and of each photo
planted copies with one known issue: dark (pixel values x 0.12), bright (245 + 0.04 x value),
blurry (a Gaussian blur of radius 1.5% of the width), low_information (one flat colour, and two
flat halves), grayscale (the luma stored as RGB), each a JPEG q90 (the flat ones PNG).

Agreement: cleanvision (pip install cleanvision in its own venv, --cleanvision PYTHON) runs
Imagelab.find_issues on the folder with its default thresholds; vdc-lake runs scan + sanitize
with its bundled [quality] thresholds. Per issue (cleanvision's `light` is vdc-lake's bright):
images both flag, only one flags, and the share of images on which they agree, plus how many
of the planted images each finds. cleanvision's grayscale means "stored as one band (mode L)",
vdc-lake's "stored as RGB without colour": the two are disjoint by definition (a mode-L photo
is cleanvision's grayscale, never vdc-lake's), so that row shows the definitions, not noise.

Cost (--cost N): the first sanitize of a new catalog (scanned before, not timed) with and
without the quality values, on the same files (the sample data of examples/make_sample_data.py,
n_base N, plus the folder above), alternating, warm files; "without" replaces the quality
function of the decode (fileops.probe._quality) by one that returns None, in this process and
its forked workers. Wall and CPU time (this process, all threads: steadier on a shared machine).
--large N does the same on N 12 MP JPEGs (4000 x 3000, q90) upscaled from the photos: the cost
per file is nearly fixed (the decode is reduced to 1/8 first), so its share shrinks as files grow.

The photos used for benchmarks/RESULTS.md (skimage's data, as bench_descriptor_photos.py):

    pip download --no-deps scikit-image -d /tmp/photos_dl
    unzip -q /tmp/photos_dl/scikit_image-*.whl 'skimage/data/*' -d /tmp/photos_raw
    mkdir /tmp/photos && cd /tmp/photos_raw/skimage/data && cp astronaut.png brick.png \\
        camera.png cell.png chelsea.png clock_motion.png coffee.png coins.png grass.png \\
        gravel.png ihc.png moon.png motorcycle_left.png motorcycle_right.png page.png \\
        hubble_deep_field.jpg retina.jpg rocket.jpg /tmp/photos/

Usage:
    python3 -m venv /tmp/cvenv && /tmp/cvenv/bin/pip install cleanvision
    python benchmarks/bench_quality_cleanvision.py --photos /tmp/photos --cleanvision /tmp/cvenv/bin/python \\
        [--cost 120] [--large 40] [--rounds 3] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vdc_lake.catalog.connection import Catalog  # noqa: E402

ISSUES = ("dark", "bright", "blurry", "low_information", "grayscale")
CLEANVISION_NAME = {"bright": "light"}
CLEANVISION_SCRIPT = """
import json, sys
from cleanvision import Imagelab
lab = Imagelab(data_path=sys.argv[1])
lab.find_issues({name: {} for name in sys.argv[2].split(",")})
out = {path: [name for name in sys.argv[2].split(",") if row[f"is_{name}_issue"]]
       for path, row in lab.issues.iterrows()}
print(json.dumps(out))
"""


def plant(photos: Path, folder: Path) -> dict[str, str]:
    """Write the photos and their planted copies into folder; returns {file name: planted issue}."""
    planted = {}
    folder.mkdir(parents=True)
    for path in sorted(photos.iterdir()):
        with Image.open(path) as img:
            img.load()
            original = img
        name = path.stem
        original.save(folder / path.name)
        rgb = original.convert("RGB")
        w, h = rgb.size
        copies = {
            "dark": Image.eval(rgb, lambda v: int(v * 0.12)),
            "bright": Image.eval(rgb, lambda v: int(245 + v * 0.04)),
            "blurry": rgb.filter(ImageFilter.GaussianBlur(max(2.0, 0.015 * w))),
            "grayscale": rgb.convert("L").convert("RGB"),
        }
        for issue, img in copies.items():
            img.save(folder / f"{name}__{issue}.jpg", quality=90)
            planted[f"{name}__{issue}.jpg"] = issue
        colour = tuple(int(c) for c in np.asarray(rgb).reshape(-1, 3).mean(axis=0))
        Image.new("RGB", (w, h), colour).save(folder / f"{name}__flat.png")
        halves = Image.new("RGB", (w, h), colour)
        halves.paste((255 - colour[0], 255 - colour[1], 255 - colour[2]), (0, 0, w // 2, h))
        halves.save(folder / f"{name}__halves.png")
        planted[f"{name}__flat.png"] = planted[f"{name}__halves.png"] = "low_information"
    return planted


def cleanvision_flags(python: str, folder: Path) -> dict[str, set[str]]:
    names = ",".join(CLEANVISION_NAME.get(i, i) for i in ISSUES)
    out = subprocess.run([python, "-c", CLEANVISION_SCRIPT, str(folder), names], check=True, capture_output=True,
                         text=True).stdout
    back = {v: k for k, v in CLEANVISION_NAME.items()}
    flags = json.loads(out.splitlines()[-1])
    return {Path(path).name: {back.get(i, i) for i in issues} for path, issues in flags.items()}


def cli(args: list, catalog: Path) -> None:
    from vdc_lake.cli import cli as main

    result = CliRunner().invoke(main, ["--catalog", str(catalog), "-q", *map(str, args)], prog_name="vdc-lake")
    if result.exit_code:
        raise SystemExit(result.output)


def vdc_flags(folder: Path, work: Path) -> dict[str, set[str]]:
    catalog = work / "quality.duckdb"
    cli(["scan", folder], catalog)
    cli(["sanitize"], catalog)
    with Catalog(catalog, read_only=True) as c:
        rows = c.rows("SELECT path, issue FROM quality_actions()")
        files = [Path(p).name for (p,) in c.rows("SELECT path FROM image_files")]
    flags: dict[str, set[str]] = {name: set() for name in files}
    for path, issue in rows:
        flags[Path(path).name].add(issue)
    return flags


def agreement_table(theirs: dict[str, set[str]], ours: dict[str, set[str]], planted: dict[str, str]) -> None:
    names = sorted(set(theirs) & set(ours))
    print(f"{len(names)} images ({len(planted)} planted: one issue each)\n")
    print("| issue | both | cleanvision only | vdc-lake only | neither | agreement | planted | "
          "cleanvision finds | vdc-lake finds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for issue in ISSUES:
        a = np.array([issue in theirs[n] for n in names])
        b = np.array([issue in ours[n] for n in names])
        mine = [n for n in names if planted.get(n) == issue]
        print(f"| {issue} | {int((a & b).sum())} | {int((a & ~b).sum())} | {int((~a & b).sum())} "
              f"| {int((~a & ~b).sum())} | {(a == b).mean():.2f} | {len(mine)} "
              f"| {sum(issue in theirs[n] for n in mine)} | {sum(issue in ours[n] for n in mine)} |")
    print()
    for issue in ISSUES:
        only_theirs = [n for n in names if issue in theirs[n] and issue not in ours[n]]
        only_ours = [n for n in names if issue in ours[n] and issue not in theirs[n]]
        print(f"{issue}: cleanvision only {only_theirs[:8]}{' ...' if len(only_theirs) > 8 else ''}; "
              f"vdc-lake only {only_ours[:8]}{' ...' if len(only_ours) > 8 else ''}")


def large_photos(photos: Path, folder: Path, n: int) -> Path:
    """n 4000 x 3000 JPEGs (q90, ~12 MP as a camera writes them) upscaled from the photos."""
    folder.mkdir(parents=True)
    paths = sorted(photos.iterdir())
    for i in range(n):
        with Image.open(paths[i % len(paths)]) as img:
            big = img.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
        (big if i < len(paths) else big.transpose(Image.Transpose.FLIP_LEFT_RIGHT)).save(
            folder / f"large_{i:03d}.jpg", quality=90)
    return folder


def cost_table(roots: list[Path], what: str, work: Path, rounds: int, workers: int) -> None:
    from vdc_lake.config.loader import Config
    from vdc_lake.fileops import probe
    from vdc_lake.stages.sanitize import sanitize

    rules = Config.load(search_dir=work).section("sanitize")
    with_quality = probe._quality
    times: dict[str, list[float]] = {"with quality": [], "without quality": []}
    cpu: dict[str, list[float]] = {"with quality": [], "without quality": []}
    decoded = 0
    for round_ in range(rounds):
        for label in times:
            catalog_path = work / f"cost-{what[:5]}-{round_}-{label.replace(' ', '-')}.duckdb"
            cli(["scan", *roots], catalog_path)  # a new catalog: the first sanitize, as users run it
            probe._quality = with_quality if label == "with quality" else (lambda img, luma=None: None)
            try:
                with Catalog(catalog_path) as catalog:
                    started, started_cpu = time.perf_counter(), time.process_time()
                    summary = sanitize(catalog, rules, workers=workers, quiet=True)
                    times[label].append(time.perf_counter() - started)
                    cpu[label].append(time.process_time() - started_cpu)
                    decoded = summary.decoded
            finally:
                probe._quality = with_quality
    print(f"\n{what}: sanitize of a new catalog (hash, decode, descriptor, writes) of {decoded} files, "
          f"workers {workers} "
          f"(in this process), "
          f"{rounds} rounds alternating; median and min of the rounds; CPU = this process's CPU time "
          "(all its threads), less sensitive than wall time to other processes on a shared machine\n")
    print("| run | wall median s | wall min s | CPU median s | CPU min s | files/s (wall median) |")
    print("|---|---|---|---|---|---|")
    for label in times:
        print(f"| {label} | {np.median(times[label]):.2f} | {min(times[label]):.2f} | {np.median(cpu[label]):.2f} "
              f"| {min(cpu[label]):.2f} | {decoded / np.median(times[label]):.0f} |")
    for name, values in (("wall", times), ("CPU", cpu)):
        median = np.median(values["with quality"]) / np.median(values["without quality"]) - 1
        fastest = min(values["with quality"]) / min(values["without quality"]) - 1
        print(f"quality cost ({name}): {100 * median:+.1f}% of sanitize's time (median), {100 * fastest:+.1f}% (min)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--cleanvision", default="", help="a python with cleanvision installed ('' = skip)")
    parser.add_argument("--cost", type=int, default=0, help="also time sanitize on the sample data of n_base N")
    parser.add_argument("--large", type=int, default=0, help="also time sanitize on N 12 MP JPEGs made from the photos")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = work / "images"
        planted = plant(args.photos, folder)
        ours = vdc_flags(folder, work)
        if args.cleanvision:
            agreement_table(cleanvision_flags(args.cleanvision, folder), ours, planted)
        if args.cost:
            from examples.make_sample_data import make_sample_data

            make_sample_data(work / "sample", n_base=args.cost, seed=0)
            cost_table([work / "sample", folder], "sample data and the folder above", work, args.rounds, args.workers)
        if args.large:
            cost_table([large_photos(args.photos, work / "large", args.large)], f"{args.large} JPEGs of 12 MP", work,
                       args.rounds, args.workers)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nwall {time.perf_counter() - started:.1f} s, peak RSS {peak:.0f} MiB (this process)")


if __name__ == "__main__":
    main()
