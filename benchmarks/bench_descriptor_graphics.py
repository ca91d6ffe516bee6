"""Built-in descriptor on graphics with transparency: the descriptor that ignores alpha
(builtin-dct-ms, sets made before issue 23) against the alpha-aware one (builtin-dct-msa).

Three groups of images, each described both ways (as sanitize decodes them: JPEG draft):

- icons: the full-colour PNGs (alpha) of an icon theme (--icons, Adwaita by default) present
  both at 48 x 48 and 512 x 512. Copies: the 512 px file of the 48 px icon (drawn separately
  by the theme, so not a pixel copy), and of the 512 px file a 0.25x LANCZOS resize (PNG,
  alpha kept) and a lossy WebP (q80, alpha kept). Distinct: every pair of different icons at 48 px
  (icons whose pixels are identical, a theme's aliases such as folder / inode-directory, count once).
- symbolic: the theme's symbolic icons at 96 px (one grey on transparency); copies: the same
  icon at 48 px; distinct: every pair of different icons at 96 px.
- screenshots: --screens synthetic screenshots (window chrome, text lines, a picture, an icon
  pasted) in RGB PNG; copies: a 0.5x JPEG q85, a JPEG q40 and an RGBA PNG with opaque alpha.
  Distinct: every pair of different screenshots, and every screenshot against every icon.
- sample: examples/make_sample_data.py (opaque photos but one palette PNG with a transparent
  index): resized, recompressed and rotated copies (a rotated copy counts as found when one
  of its 4 turns, descriptor.rotate_descriptors, is under the threshold, as dedup does).

For each group and descriptor: the share of copies found (distance < the apply threshold
0.08), the number of distinct pairs under the apply threshold (and under the report
threshold 0.16), the images that have a distinct partner under the apply threshold (what a
dedup plan could delete), with the closest distinct pairs named. Distances are descriptor.set_distances
(image level: the smallest of the 2 * VIEWS - 1 view pairs), what dedup's search gives.

Usage:
    python benchmarks/bench_descriptor_graphics.py [--icons /usr/share/icons/Adwaita] [--screens 40]
        [--backgrounds 0,-255]   # also the alpha-aware descriptor on other backgrounds (luma;
                                 # -255: composited on a background as far below black as white is above)
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.make_sample_data import make_sample_data, photo  # noqa: E402
from vdc_lake.kernels import descriptor  # noqa: E402
from vdc_lake.kernels.descriptor import (ALPHA_VIEW_NAME, DEDUP_THRESHOLDS, MULTI_VIEW_NAME,  # noqa: E402
                                         builtin_descriptor, rotate_descriptors, set_distances)

APPLY, REPORT = DEDUP_THRESHOLDS[ALPHA_VIEW_NAME]


def decoded(data: bytes | Path) -> Image.Image:
    """The image as sanitize decodes it (JPEG at reduced scale)."""
    img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    if img.format == "JPEG":
        img.draft(img.mode, (max(64, img.width // 8), max(64, img.height // 8)))
    img.load()
    return img


def without_alpha(img: Image.Image) -> Image.Image:
    """What the descriptor of sets before issue 23 saw: the colours, alpha dropped."""
    if "A" in img.mode or "transparency" in img.info:
        return img.convert("RGB")
    return img


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def icon_group(theme: Path) -> tuple[dict[str, Image.Image], dict[str, str]]:
    """(images by name, copy -> original) of the full-colour icons at 48 and 512 px."""
    small = {p.stem: p for p in sorted(theme.glob("48x48/*/*.png")) if "symbolic" not in p.name}
    large = {p.stem: p for p in sorted(theme.glob("512x512/*/*.png")) if "symbolic" not in p.name}
    images, copy_of = {}, {}
    for name, path in small.items():
        images[name] = decoded(path)
        if name in large:
            big = decoded(large[name])
            images[f"{name}@512"] = big
            images[f"{name}@128.png"] = decoded(encoded(big.resize((128, 128), Image.Resampling.LANCZOS), "PNG"))
            images[f"{name}@512.webp"] = decoded(encoded(big, "WEBP", quality=80))
            copy_of[f"{name}@512"] = name
            copy_of[f"{name}@128.png"] = copy_of[f"{name}@512.webp"] = f"{name}@512"
    return images, copy_of


def symbolic_group(theme: Path) -> tuple[dict[str, Image.Image], dict[str, str]]:
    large = {p.name: p for p in sorted(theme.glob("96x96/*/*.symbolic.png"))}
    small = {p.name: p for p in sorted(theme.glob("48x48/*/*.symbolic.png"))}
    images, copy_of = {}, {}
    for name, path in large.items():
        images[name] = decoded(path)
        if name in small:
            images[f"{name}@48"] = decoded(small[name])
            copy_of[f"{name}@48"] = name
    return images, copy_of


def screenshot(rng: np.random.Generator, icons: list[Image.Image]) -> Image.Image:
    """A synthetic screenshot: title bar, sidebar, text lines, a picture and an icon."""
    w, h = int(rng.choice([800, 1024, 1280])), int(rng.choice([600, 768, 720]))
    shade = int(rng.integers(200, 256))
    img = Image.new("RGB", (w, h), (shade, shade, shade))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, w, 32), fill=tuple(int(c) for c in rng.integers(30, 90, 3)))
    side = int(rng.integers(0, w // 4))
    draw.rectangle((0, 32, side, h), fill=tuple(int(c) for c in rng.integers(150, 230, 3)))
    y = 50
    while y < h - 20:
        x0 = side + 20 + int(rng.integers(0, 40))
        draw.rectangle((x0, y, x0 + int(rng.integers(80, w - x0 - 10)), y + 8), fill=(40, 40, 40))
        y += int(rng.integers(14, 40))
    pic = photo(rng, int(rng.integers(120, 300)), int(rng.integers(90, 220)))
    img.paste(pic, (int(rng.integers(side, w - pic.width)), int(rng.integers(40, h - pic.height))))
    icon = icons[int(rng.integers(len(icons)))].convert("RGBA")
    img.paste(icon, (int(rng.integers(0, w - icon.width)), int(rng.integers(40, h - icon.height))), icon)
    return img


def screenshot_group(n: int, icons: list[Image.Image]) -> tuple[dict[str, Image.Image], dict[str, str]]:
    rng = np.random.default_rng(0)
    images, copy_of = {}, {}
    for i in range(n):
        shot = screenshot(rng, icons)
        name = f"screen{i:02d}"
        images[name] = decoded(encoded(shot, "PNG"))
        half = shot.resize((shot.width // 2, shot.height // 2), Image.Resampling.LANCZOS)
        images[f"{name}@half.jpg"] = decoded(encoded(half, "JPEG", quality=85))
        images[f"{name}@q40.jpg"] = decoded(encoded(shot, "JPEG", quality=40))
        images[f"{name}@rgba.png"] = decoded(encoded(shot.convert("RGBA"), "PNG"))
        for copy in (f"{name}@half.jpg", f"{name}@q40.jpg", f"{name}@rgba.png"):
            copy_of[copy] = name
    return images, copy_of


def sample_group(folder: Path) -> tuple[dict[str, Image.Image], dict[str, str], dict[str, int]]:
    manifest = make_sample_data(folder, n_base=60, seed=0)
    keep = set(manifest["clean"]) | set(manifest["copy_of"]) | set(manifest["palette_transparency"])
    images = {rel: decoded(folder / rel) for rel in sorted(keep)}
    return images, dict(manifest["copy_of"]), dict(manifest.get("rotation_ccw", {}))


def table(group: str, images: dict[str, Image.Image], copy_of: dict[str, str], rotation: dict[str, int],
          describe, label: str, extra: dict[str, Image.Image] | None = None) -> tuple[str, list[str]]:
    names = list(images)
    vectors = np.stack([describe(images[n]) for n in names])
    index = {n: i for i, n in enumerate(names)}
    found = 0
    for copy, original in copy_of.items():
        v = vectors[index[copy]][None]
        turns = [rotate_descriptors(v, -rotation[copy])] if copy in rotation else [v]
        d = min(set_distances(t, vectors[index[original]][None])[0, 0] for t in turns)
        found += d < APPLY
    originals, seen = [], set()
    for i, n in enumerate(names):  # one of each set of pixel-identical files (a theme's aliases)
        key = (images[n].mode, images[n].size, images[n].tobytes())
        if n not in copy_of and key not in seen:
            seen.add(key)
            originals.append(i)
    dist = set_distances(vectors[originals])
    iu, ju = np.triu_indices(len(originals), 1)
    distinct = dist[iu, ju]
    order = np.argsort(distinct)[:6]
    closest = [f"{names[originals[iu[k]]]} / {names[originals[ju[k]]]} {distinct[k]:.3f}" for k in order]
    under_apply, under_report = int((distinct < APPLY).sum()), int((distinct < REPORT).sum())
    paired = int(((dist < APPLY) & ~np.eye(len(originals), dtype=bool)).any(axis=1).sum())
    if extra:  # every screenshot against every icon
        cross = set_distances(vectors[originals], np.stack([describe(img) for img in extra.values()]))
        under_apply += int((cross < APPLY).sum())
        under_report += int((cross < REPORT).sum())
    row = (f"| {group} | {label} | {len(originals)} | {found}/{len(copy_of)} ({found / max(len(copy_of), 1):.2f}) "
           f"| {len(distinct) + (cross.size if extra else 0):,} | {under_apply} | {under_report} | {paired} "
           f"| {min(distinct):.3f} |")
    return row, closest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--icons", type=Path, default=Path("/usr/share/icons/Adwaita"))
    parser.add_argument("--screens", type=int, default=40)
    parser.add_argument("--backgrounds", default="", help="extra BACKGROUND values to measure, comma-separated")
    args = parser.parse_args()
    started = time.perf_counter()
    icons, icon_copies = icon_group(args.icons)
    symbolic, symbolic_copies = symbolic_group(args.icons)
    screens, screen_copies = screenshot_group(args.screens, [img for n, img in icons.items() if "@" not in n])
    with tempfile.TemporaryDirectory() as tmp:
        sample, sample_copies, rotation = sample_group(Path(tmp))
        groups = [("icons", icons, icon_copies, {}, None), ("symbolic", symbolic, symbolic_copies, {}, None),
                  ("screenshots", screens, screen_copies, {}, {n: i for n, i in icons.items() if "@" not in n}),
                  ("sample data", sample, sample_copies, rotation, None)]
        describers = [(f"{MULTI_VIEW_NAME} (alpha ignored)", lambda img: builtin_descriptor(without_alpha(img))),
                      (f"{ALPHA_VIEW_NAME} (background {descriptor.BACKGROUND:g})", builtin_descriptor)]
        backgrounds = [float(x) for x in args.backgrounds.split(",") if x]
        print(f"apply threshold {APPLY}, report threshold {REPORT}\n")
        print("| group | descriptor | images | copies found < apply | distinct pairs | < apply | < report "
              "| images paired < apply | closest distinct |")
        print("|---|---|---|---|---|---|---|---|---|")
        notes = []
        for group, images, copies, rot, extra in groups:
            for label, describe in describers:
                row, closest = table(group, images, copies, rot, describe, label, extra)
                print(row)
                notes.append(f"{group}, {label}: closest distinct {'; '.join(closest)}")
            default = descriptor.BACKGROUND
            for background in backgrounds:
                descriptor.BACKGROUND = background
                print(table(group, images, copies, rot, builtin_descriptor, f"{ALPHA_VIEW_NAME} (background {background:g})",
                            extra)[0])
            descriptor.BACKGROUND = default
    print()
    for note in notes:
        print(note)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nwall {time.perf_counter() - started:.1f} s, peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
