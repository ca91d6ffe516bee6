"""Built-in descriptor on real photos: the one view (builtin-dct) against the multi-view set
(builtin-dct-ms), through the real scan -> sanitize -> dedup report path.

Per photo of --photos DIR the benchmark plants five copies next to the original (in a temp
folder): resized (0.5x, LANCZOS, JPEG q90), JPEG q30, a centre crop cutting 1/12 from each
side (JPEG q90), brightened (x1.3) with a caption drawn (JPEG q90), and a byte copy. It then
builds two catalogs over the same files: one as a new catalog gets it (the multi-view set) and
one whose builtin set was registered as the one-view descriptor first (a catalog from before;
sanitize keeps writing view 0 there). Both run `dedup report --set builtin` at the report
threshold, and the pairs are read back from dup_edges: recall per transform (copy to its
original), recall over every pair of files made from the same photo, and false pairs (files
made from different photos, listed by name at the apply threshold), at several thresholds.
It also times the descriptor per decoded image, as sanitize decodes it (JPEG draft).

The photo folder used for benchmarks/RESULTS.md (21 real photos, no dependency of vdc-lake):

    pip download --no-deps scikit-image scikit-learn -d /tmp/photos_dl
    unzip -q /tmp/photos_dl/scikit_image-*.whl 'skimage/data/*' -d /tmp/photos_raw
    unzip -q /tmp/photos_dl/scikit_learn-*.whl 'sklearn/datasets/images/*' -d /tmp/photos_raw
    mkdir /tmp/photos && cd /tmp/photos_raw/skimage/data && cp astronaut.png brick.png \\
        camera.png cell.png chelsea.png clock_motion.png coffee.png coins.png grass.png \\
        gravel.png ihc.png moon.png motorcycle_left.png motorcycle_right.png page.png \\
        hubble_deep_field.jpg retina.jpg rocket.jpg /tmp/photos/
    cp /tmp/photos_raw/sklearn/datasets/images/*.jpg /tmp/photos/     # china, flower
    cp .venv/lib/python3.11/site-packages/matplotlib/mpl-data/sample_data/grace_hopper.jpg /tmp/photos/

(the non-photos of skimage/data were left out: chessboards, color wheel, horse silhouette,
logo, phantom, text, and the tiny ones). motorcycle_left / motorcycle_right are a stereo pair
of one scene: a pair between them counts as false here, and is named in the output.

The larger folder (48 photos and 12 natural partners) adds 27 real photos of OpenCV's
samples/data (from the opencv-python sdist on PyPI; the logos, drawings, renders and text
scans were left out) and their partners, named BASE__KIND (see NATURAL): edited copies
(ela_modified: re-framed and retouched; lena_tmpl: a patch pasted on the face), frames /
stereo halves (aloe, basketball, rubberwhale, left/right, left01/right01, and skimage's
motorcycle pair), other views of a scene (aero1/aero3, box/box_in_scene, graf1/graf3,
leuvenA/leuvenB):

    curl -sO https://files.pythonhosted.org/.../opencv-python-4.9.0.80.tar.gz   # the sdist
    tar xzf opencv-python-4.9.0.80.tar.gz --wildcards '*/samples/data/*'
    mkdir /tmp/photos2 && cp /tmp/photos/* /tmp/photos2/
    mv /tmp/photos2/motorcycle_right.png /tmp/photos2/motorcycle_left__frame.png
    cd opencv-python-4.9.0.80/opencv/samples/data
    for f in aero1.jpg aloeL.jpg apple.jpg baboon.jpg basketball1.png board.jpg box.png \
        building.jpg butterfly.jpg chicky_512.png ela_original.jpg fruits.jpg graf1.png home.jpg \
        left.jpg left01.jpg lena.jpg leuvenA.jpg licenseplate_motion.jpg messi5.jpg orange.jpg \
        rubberwhale1.png smarties.png squirrel_cls.jpg starry_night.jpg stuff.jpg sudoku.png \
        text_defocus.jpg; do cp $f /tmp/photos2/cv_$f; done
    cp aero3.jpg /tmp/photos2/cv_aero1__scene.jpg; cp aloeR.jpg /tmp/photos2/cv_aloeL__frame.jpg
    cp basketball2.png /tmp/photos2/cv_basketball1__frame.png; cp box_in_scene.png /tmp/photos2/cv_box__scene.png
    cp ela_modified.jpg /tmp/photos2/cv_ela_original__edited.jpg; cp graf3.png /tmp/photos2/cv_graf1__scene.png
    cp right.jpg /tmp/photos2/cv_left__frame.jpg; cp right01.jpg /tmp/photos2/cv_left01__frame.jpg
    cp lena_tmpl.jpg /tmp/photos2/cv_lena__edited.jpg; cp leuvenB.jpg /tmp/photos2/cv_leuvenA__scene.jpg
    cp rubberwhale2.png /tmp/photos2/cv_rubberwhale1__frame.png

--synthetic N adds N synthetic "photo-like" images (examples/make_sample_data.photo: gradient,
shapes, texture, noise), no copies, as unrelated distractors: more pairs for the false-pair
count, but not real photos, so they are reported on their own line.

--search-n N also times the exact CPU dedup search (the report's: view rows, all against all,
folded to image pairs) on N random set vectors, one view against the set, at the report
threshold: what the set costs `dedup report`.

Usage:
    python benchmarks/bench_descriptor_photos.py --photos /tmp/photos [--synthetic 240] [--search-n 20000]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/

from vdc_lake.catalog.connection import Catalog
from vdc_lake.kernels.descriptor import (
    DEDUP_THRESHOLDS,
    DESCRIPTOR_DIM,
    DESCRIPTOR_NAME,
    DRAFT_SIZE,
    MULTI_VIEW_NAME,
    THUMBNAIL_SIZE,
    descriptors_from_thumbnails,
    set_distances,
    view_thumbnails,
    views_per_vector,
)
from vdc_lake.catalog.sets import register_embedding_set

TRANSFORMS = ("resized", "jpeg_q30", "crop", "bright_caption", "byte_copy")
# Real photos of the same thing, named BASE__KIND.ext next to BASE.ext: an edited copy (a must-find
# duplicate), another frame or the other eye of a stereo pair (a near-duplicate a user may or may
# not want removed), or the same scene from another viewpoint or light (not a duplicate). Their
# pairs with BASE are reported per kind; none of them counts as a false pair, and only "edited"
# joins the "all" recall.
NATURAL = ("edited", "frame", "scene")
THRESHOLDS = (0.04, 0.08, 0.10, 0.12, 0.16)
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")


def _jpeg(img: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    img.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def plant(photo: Path) -> dict[str, bytes]:
    """The five planted copies of one photo, as file bytes, by transform name."""
    raw = photo.read_bytes()
    with Image.open(io.BytesIO(raw)) as img:
        rgb = img.convert("RGB")
    w, h = rgb.size
    dx, dy = round(w / 12), round(h / 12)
    bright = ImageEnhance.Brightness(rgb).enhance(1.3)
    ImageDraw.Draw(bright).text((w * 0.05, h * 0.85), "holiday 2024", fill=(255, 255, 255),
                                font_size=max(10, h // 14))
    return {
        "resized": _jpeg(rgb.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS), 90),
        "jpeg_q30": _jpeg(rgb, 30),
        "crop": _jpeg(rgb.crop((dx, dy, w - dx, h - dy)), 90),
        "bright_caption": _jpeg(bright, 90),
        "byte_copy": raw,
    }


def natural_kind(photo: Path) -> tuple[str, str | None]:
    """(base photo stem, natural kind) of BASE__KIND.ext, (stem, None) for a plain photo."""
    base, _, kind = photo.stem.partition("__")
    if kind and kind not in NATURAL:
        raise SystemExit(f"{photo.name}: a second photo of BASE is named BASE__KIND with KIND one of {NATURAL}")
    return base, kind or None


def write_collection(photos: list[Path], root: Path, synthetic: int = 0) -> dict[str, tuple[str, str]]:
    """Originals and their copies under root, natural partners (BASE__KIND) beside their base without
    copies, and `synthetic` distractors without copies; returns {rel_path: (photo stem, transform)}."""
    from examples.make_sample_data import photo as synthetic_photo

    files = {}
    (root / "synthetic").mkdir(parents=True)
    for i in range(synthetic):
        rng = np.random.default_rng([7, i])
        side = int(rng.integers(320, 800))
        rel = f"synthetic/s{i:04d}.jpg"
        synthetic_photo(rng, side, int(side * rng.uniform(0.6, 1.0))).save(root / rel, quality=90)
        files[rel] = (f"synthetic{i}", "original")
    for photo in photos:
        base, kind = natural_kind(photo)
        if kind:
            rel = f"{base}/{kind}{photo.suffix.lower()}"
            if not (root / base).is_dir() or rel in files:
                raise SystemExit(f"{photo.name}: needs {base}.* beside it, and one partner per kind")
            shutil.copyfile(photo, root / rel)
            files[rel] = (base, kind)
            continue
        folder = root / photo.stem
        folder.mkdir(parents=True)
        shutil.copyfile(photo, folder / f"original{photo.suffix.lower()}")
        files[f"{photo.stem}/original{photo.suffix.lower()}"] = (photo.stem, "original")
        for name, data in plant(photo).items():
            suffix = photo.suffix.lower() if name == "byte_copy" else ".jpg"
            (folder / f"{name}{suffix}").write_bytes(data)
            files[f"{photo.stem}/{name}{suffix}"] = (photo.stem, name)
    return files


def _cli(args: list[str], catalog: Path) -> None:
    from vdc_lake.cli import cli

    result = CliRunner().invoke(cli, ["--catalog", str(catalog), "-q", *args], prog_name="vdc-lake")
    if result.exit_code:
        raise SystemExit(f"vdc-lake {' '.join(args)} failed:\n{result.output}")


def report_pairs(root: Path, catalog: Path, *, one_view: bool, threshold: float) -> tuple[dict, dict]:
    """scan, sanitize, dedup report --set builtin at `threshold`: ({frozenset(rel a, rel b): distance},
    {rel_path: the set's vector})."""
    _cli(["scan", str(root)], catalog)
    if one_view:  # the builtin set of a catalog from before the multi-view descriptor
        with Catalog(catalog) as c:
            run_id = c.begin_run("sanitize", {})
            register_embedding_set(c, "builtin", kind="descriptor", model=DESCRIPTOR_NAME, dim=DESCRIPTOR_DIM,
                                   preprocessing={"thumbnail": THUMBNAIL_SIZE, "grayscale": True}, run_id=run_id)
            c.finish_run(run_id)
    _cli(["sanitize", "--workers", "1"], catalog)
    _cli(["dedup", "report", "--set", "builtin", "--report-threshold", str(threshold)], catalog)
    with Catalog(catalog, read_only=True) as c:
        rows = c.rows("SELECT ia.rel_path, ib.rel_path, e.distance FROM dup_edges e "
                      "JOIN images ia ON ia.image_id = e.image_a JOIN images ib ON ib.image_id = e.image_b")
        vectors = dict(c.rows("SELECT i.rel_path, e.vector FROM embeddings e JOIN images i USING (image_id) "
                              "WHERE e.set_name = 'builtin'"))
    return {frozenset((a, b)): d for a, b, d in rows}, vectors


def closest_photo_pairs(vectors: dict, files: dict, views: int, top: int = 3) -> list[tuple[float, str, str]]:
    """The `top` pairs of different photos that are closest (over all their files), by set distance."""
    rels = sorted(vectors)
    dist = set_distances(np.array([vectors[r] for r in rels], np.float32), views=views)
    photo = np.array([files[r][0] for r in rels])
    dist[photo[:, None] == photo[None, :]] = np.inf
    best: dict[tuple[str, str], float] = {}
    for i, j in zip(*np.triu_indices(len(rels), 1)):
        key = tuple(sorted((photo[i], photo[j])))
        if dist[i, j] < best.get(key, np.inf):
            best[key] = float(dist[i, j])
    return sorted((d, a, b) for (a, b), d in best.items())[:top]


def evaluate(pairs: dict[frozenset, float], files: dict[str, tuple[str, str]], threshold: float) -> dict:
    """Recall per transform (copy to original), over all same-photo pairs, and false pairs."""
    by_photo: dict[str, dict[str, str]] = {}
    for rel, (photo, kind) in files.items():
        by_photo.setdefault(photo, {})[kind] = rel
    by_photo = {photo: f for photo, f in by_photo.items() if len(f) > 1}  # not the synthetic distractors
    out = {}
    for kind in TRANSFORMS + NATURAL:
        hits = [pairs.get(frozenset((f[kind], f["original"])), 9.0) < threshold
                for f in by_photo.values() if kind in f]
        out[kind] = float(np.mean(hits)) if hits else float("nan")
        out[f"n_{kind}"] = len(hits)
    required = [[rel for kind, rel in f.items() if kind not in ("frame", "scene")] for f in by_photo.values()]
    same = [frozenset((a, b)) for f in required for i, a in enumerate(f) for b in f[i + 1:]]
    out["all"] = float(np.mean([pairs.get(p, 9.0) < threshold for p in same]))
    false = sorted((d, tuple(sorted(p))) for p, d in pairs.items()
                   if d < threshold and len({files[x][0] for x in p}) == 2)
    out["false"] = len(false)
    out["false_photo_pairs"] = sorted({tuple(sorted(files[x][0] for x in p)) for _, p in false})
    out["false_real"] = sum(1 for _, p in false if not any(files[x][0].startswith("synthetic") for x in p))
    return out


def time_descriptors(root: Path, files: dict, repeat: int) -> tuple[float, float, float]:
    """ms per image: (decode as sanitize does it, one view, the multi-view set), best of repeat."""
    decode_s, images = 0.0, []
    for rel in files:
        start = time.perf_counter()
        with Image.open(root / rel) as img:
            if img.format == "JPEG":
                img.draft(img.mode, (min(img.width, max(DRAFT_SIZE[0], img.width // 8)),
                                     min(img.height, max(DRAFT_SIZE[1], img.height // 8))))
            img.load()
            images.append(img.copy())
        decode_s += time.perf_counter() - start

    def best(scales) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            for img in images:
                descriptors_from_thumbnails(view_thumbnails(img, scales))
            times.append(time.perf_counter() - start)
        return min(times) / len(images) * 1e3

    from vdc_lake.kernels.descriptor import VIEW_SCALES

    return decode_s / len(images) * 1e3, best((1.0,)), best(VIEW_SCALES)


def time_search(n: int, threshold: float) -> tuple[float, float]:
    """Seconds of the exact CPU search over n random images: (one view, the multi-view set)."""
    from vdc_lake.stages.dedup import fold_view_pairs, view_rows
    from vdc_lake.kernels.descriptor import SET_DIM, VIEWS
    from vdc_lake.kernels.neighbors import prepare_vectors, radius_pairs_exact

    vectors = np.random.default_rng(0).standard_normal((n, SET_DIM)).astype(np.float32)
    ids = np.arange(n, dtype=np.int64)
    seconds = []
    for views, x in ((1, vectors[:, :DESCRIPTOR_DIM].copy()), (VIEWS, vectors)):
        rows, keys = view_rows(x, ids, views)
        rows, _ = prepare_vectors(rows, center=False, l2_normalize=True, copy=False)
        start = time.perf_counter()
        fold_view_pairs(radius_pairs_exact(rows, keys, threshold=threshold), views)
        seconds.append(time.perf_counter() - start)
    return seconds[0], seconds[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", required=True, type=Path, help="folder of real photos (see the docstring)")
    parser.add_argument("--repeat", type=int, default=5, help="timing repeats (best of)")
    parser.add_argument("--synthetic", type=int, default=0, help="synthetic unrelated distractors to add")
    parser.add_argument("--search-n", type=int, default=0, help="also time the exact search on this many images")
    args = parser.parse_args()
    # Plain photos first: a BASE__KIND partner goes into its base's folder.
    photos = sorted((p for p in args.photos.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES),
                    key=lambda p: (natural_kind(p)[1] is not None, p.name))
    if len(photos) < 2:
        raise SystemExit(f"{args.photos} holds {len(photos)} photos; give a folder of at least 2")
    report_threshold = max(THRESHOLDS)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        files = write_collection(photos, root, args.synthetic)
        partners = {kind: sum(1 for p in photos if natural_kind(p)[1] == kind) for kind in NATURAL}
        print(f"{len(photos) - sum(partners.values())} photos, {len(TRANSFORMS)} planted copies each, "
              f"natural partners {partners}, {args.synthetic} synthetic distractors: {len(files)} files")
        results, vectors = {}, {}
        for name, one_view in ((DESCRIPTOR_NAME, True), (MULTI_VIEW_NAME, False)):
            results[name], vectors[name] = report_pairs(root, Path(tmp) / f"{name}.duckdb", one_view=one_view,
                                                        threshold=report_threshold)
        decode_ms, one_ms, multi_ms = time_descriptors(
            root, {rel: v for rel, v in files.items() if not rel.startswith("synthetic/")}, args.repeat)
    columns = TRANSFORMS + tuple(k for k in NATURAL if partners[k]) + ("all",)
    print("\n| descriptor | threshold | " + " | ".join(columns) + " | false pairs (real photos only) |")
    print("|---|---|" + "---|" * len(columns) + "---|")
    for name, pairs in results.items():
        for threshold in THRESHOLDS:
            r = evaluate(pairs, files, threshold)
            mark = " (apply)" if threshold == DEDUP_THRESHOLDS[name][0] else (
                " (report)" if threshold == DEDUP_THRESHOLDS[name][1] else "")
            print(f"| {name} | {threshold:.2f}{mark} | " + " | ".join(f"{r[c]:.2f}" for c in columns)
                  + f" | {r['false']} ({r['false_real']}) |")
    for name, pairs in results.items():
        apply = DEDUP_THRESHOLDS[name][0]
        r = evaluate(pairs, files, report_threshold)
        unrelated = [d for p, d in pairs.items() if len({files[x][0] for x in p}) == 2]
        lowest = min(unrelated, default=None)
        real = {rel: v for rel, v in vectors[name].items() if not rel.startswith("synthetic/")}
        closest = ", ".join(f"{a}/{b} {d:.3f}" for d, a, b in closest_photo_pairs(
            real, files, views_per_vector(name)))
        if len(real) < len(vectors[name]):
            closest += "; with the synthetic ones: " + ", ".join(f"{a}/{b} {d:.3f}" for d, a, b in closest_photo_pairs(
                vectors[name], files, views_per_vector(name)))
        print(f"\n{name}: lowest distance between different photos "
              f"{'none under ' + str(report_threshold) if lowest is None else f'{lowest:.3f}'}; "
              f"photo pairs under {report_threshold}: {r['false_photo_pairs'] or 'none'}; "
              f"false pairs at apply {apply}: {evaluate(pairs, files, apply)['false']}; "
              f"closest different real photos: {closest}")
    print(f"\nper image, one core (JPEG draft decode as in sanitize): decode {decode_ms:.2f} ms, "
          f"one view {one_ms:.3f} ms, multi-view set {multi_ms:.3f} ms (+{multi_ms - one_ms:.3f} ms)")
    if args.search_n:
        one_s, multi_s = time_search(args.search_n, report_threshold)
        print(f"exact CPU dedup search, {args.search_n:,} images at {report_threshold}: one view {one_s:.1f} s, "
              f"multi-view set {multi_s:.1f} s ({multi_s / one_s:.1f}x)")


if __name__ == "__main__":
    main()
