"""Write a small synthetic image collection with planted problems, for demos and tests.

    python examples/make_sample_data.py OUT_DIR [--n-base 240] [--seed 0]

or, from Python, ``make_sample_data(root, n_base=240, seed=0)``. The output is
deterministic for a seed (same bytes on the same Pillow build) and takes a few seconds.

Base images ("photo-like": a smooth colour gradient, random shapes, a textured patch and
sensor-like noise) are 320..800 px on the long side with varied aspect ratios, in
``scenes/`` (JPEG) and ``misc/`` (every 8th image: PNG, WebP, GIF, BMP or TIFF). Base
image ``i`` depends only on ``(seed, i)``, so a smaller ``n_base`` is a prefix of a
larger one. Every planted problem is a distinct file; its relative path (POSIX) is listed
in ``OUT/manifest.json`` under its kind:

    truncated_jpeg        broken/cut_off.jpg: a baseline JPEG cut at 60 % of its bytes.
                          ``Image.open(p).verify()`` passes (it reads headers only);
                          ``load()`` raises OSError ("image file is truncated").
    zero_byte             broken/empty.jpg: an empty file.
    non_image             broken/notes.jpg: plain text; broken/page.png: an HTML page.
    decompression_bomb    broken/bomb.png: a valid 1-bit PNG of BOMB_SIDE x BOMB_SIDE
                          (225,000,000) pixels, > 2 x Pillow's default MAX_IMAGE_PIXELS
                          (89,478,485), so ``Image.open`` raises DecompressionBombError
                          with default limits. The file is ~30 KB (all-zero rows).
    tiny                  sizes/tiny_40x60.jpg: below the 80 px minimum side.
    panoramic             sizes/panorama_1600x150.jpg (aspect 10.7 > 6.667) and
                          sizes/tall_100x900.jpg (aspect 0.11 < 0.15); both sides stay
                          inside 80..3200 px, so only the aspect rule fires.
    oversized_pixels      sizes/huge_3600x1400.jpg: a side > 3200 px (sanitize resizes).
    oversized_file        sizes/scan_2000x1800.bmp: 10.8 MB (> 10 MB), within the pixel
                          and aspect limits (sanitize recompresses).
    cmyk                  modes/cmyk.jpg: a CMYK JPEG.
    sixteen_bit           modes/depth16.png: 16-bit grayscale PNG (opens as mode I;16).
    palette_transparency  modes/palette_alpha.png: P-mode PNG with a transparent index.
    animated              modes/anim.gif and modes/anim.webp: 3 frames each.
    exif_rotated          modes/exif_orientation6.jpg: pixels stored sideways with EXIF
                          Orientation = 6 (display = stored pixels rotated 90 deg
                          clockwise; ``ImageOps.exif_transpose`` gives the upright image).
    exact_copy            copies/*: byte-identical copies of base images.
    resized_copy          resized/*: 0.5x or 0.75x (LANCZOS) JPEG copies.
    recompressed_copy     recompressed/*: same pixels re-saved as JPEG quality 40..60 or
                          WebP quality 50.
    rotated_copy          rotated/*: copies rotated 90, 180 or 270 degrees
                          counter-clockwise (PIL ``transpose(ROTATE_90)`` etc.), JPEG.
    clean                 every base image (originals of copies included).

Two more manifest keys describe the copies: ``copy_of`` maps each copy path (all four
copy kinds) to its original's path, and ``rotation_ccw`` maps each rotated copy to the
angle, in degrees counter-clockwise, that was applied to the original to make it
(rotate back by ``-angle`` to undo). The whole set is ~30 MB for the default n_base.
"""

from __future__ import annotations

import argparse
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw

PROBLEM_KINDS = (
    "truncated_jpeg", "zero_byte", "non_image", "decompression_bomb",
    "tiny", "panoramic", "oversized_pixels", "oversized_file",
    "cmyk", "sixteen_bit", "palette_transparency", "animated", "exif_rotated",
    "exact_copy", "resized_copy", "recompressed_copy", "rotated_copy",
)
BOMB_SIDE = 15_000
MISC_FORMATS = ("png", "webp", "gif", "bmp", "tiff")
# How many base images each copy kind duplicates (capped at n_base).
COPY_COUNTS = {"exact_copy": 10, "resized_copy": 12, "recompressed_copy": 12,
               "rotated_copy": 9}
_ROTATIONS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
              270: Image.Transpose.ROTATE_270}


def _rng(seed: int, stream: str, index: int = 0) -> np.random.Generator:
    """An independent generator per (seed, stream, index), stable across runs."""
    return np.random.default_rng([seed, zlib.crc32(stream.encode()), index])


def _gradient(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour field: a random 2..4 px grid upsampled bicubically to (width, height)."""
    gw, gh = rng.integers(2, 5, size=2)
    grid = rng.integers(0, 256, size=(gh, gw, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)


def _draw_shapes(rng: np.random.Generator, img: Image.Image) -> None:
    """Draw 4..10 random opaque ellipses, rectangles and polygons in place."""
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for _ in range(rng.integers(4, 11)):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x0, x1 = sorted(rng.integers(-w // 4, w + w // 4, size=2))
        y0, y1 = sorted(rng.integers(-h // 4, h + h // 4, size=2))
        box = (int(x0), int(y0), int(x1) + 2, int(y1) + 2)
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            pts = rng.integers(0, [w, h], size=(int(rng.integers(3, 7)), 2))
            draw.polygon([tuple(int(v) for v in p) for p in pts], fill=colour)


def _paste_texture(rng: np.random.Generator, img: Image.Image) -> None:
    """Tile a random 4..12 px pattern around one colour over a random rectangle, in place."""
    w, h = img.size
    tw, th = (int(v) for v in rng.integers(4, 13, size=2))
    colour = rng.integers(40, 216, size=3)
    tile = (colour + rng.integers(-40, 41, size=(th, tw, 3))).astype(np.uint8)
    pw, ph = max(1, w // int(rng.integers(2, 5))), max(1, h // int(rng.integers(2, 5)))
    patch = np.tile(tile, (ph // th + 1, pw // tw + 1, 1))[:ph, :pw]
    x, y = int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))
    img.paste(Image.fromarray(patch), (x, y))


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like RGB image of (width, height) px, fully determined by ``rng``."""
    img = _gradient(rng, width, height)
    _draw_shapes(rng, img)
    _paste_texture(rng, img)
    # Luminance noise in -6..6 (one value per pixel, all in C): it defeats flat-area
    # compression the way sensor noise does.
    noise = Image.frombytes("L", (width, height), rng.bytes(width * height))
    noise = noise.point([v % 13 for v in range(256)])
    return ImageChops.add(img, Image.merge("RGB", (noise,) * 3), offset=-6)


def _base_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height): long side 320..800 px, common photo aspect, 30 % portrait."""
    long_side = int(rng.integers(320, 801))
    aspect = float(rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9, 5 / 4]))
    short_side = round(long_side / aspect)
    if rng.random() < 0.3:
        return short_side, long_side
    return long_side, short_side


def _save(img: Image.Image, path: Path, fmt: str, rng: np.random.Generator) -> None:
    """Save ``img`` as ``fmt`` with settings typical of that format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jpg":
        img.save(path, "JPEG", quality=int(rng.integers(75, 96)))
    elif fmt == "gif":
        img.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, "GIF")
    elif fmt == "tiff":
        img.save(path, "TIFF", compression="tiff_adobe_deflate")
    else:
        img.save(path, {"png": "PNG", "webp": "WEBP", "bmp": "BMP"}[fmt])


def _write_base_images(root: Path, seed: int, n_base: int) -> list[str]:
    """Write the clean base images; returns their relative paths, index order."""
    paths = []
    for i in range(n_base):
        rng = _rng(seed, "base", i)
        if i % 8 == 7:
            fmt = MISC_FORMATS[(i // 8) % len(MISC_FORMATS)]
            # Smaller, so the uncompressed BMP/TIFF files keep the set small.
            w, h = (max(160, v * 3 // 5) for v in _base_size(rng))
            rel = f"misc/misc_{i:04d}.{fmt}"
        else:
            fmt, (w, h) = "jpg", _base_size(rng)
            rel = f"scenes/scene_{i:04d}.jpg"
        _save(photo(rng, w, h), root / rel, fmt, rng)
        paths.append(rel)
    return paths


def _copy_target(root: Path, rel: str, folder: str, suffix: str, ext: str) -> tuple[str, Path]:
    """Relative and absolute path of a copy of ``rel`` in ``folder``."""
    new_rel = f"{folder}/{Path(rel).stem}{suffix}.{ext}"
    (root / folder).mkdir(parents=True, exist_ok=True)
    return new_rel, root / new_rel


def _write_copies(root: Path, seed: int, originals: list[str], manifest: dict) -> None:
    """Write the four copy kinds of randomly chosen base images; fill the manifest."""
    for kind, count in COPY_COUNTS.items():
        rng = _rng(seed, kind)
        picks = rng.choice(len(originals), size=min(count, len(originals)), replace=False)
        for j, index in enumerate(sorted(picks)):
            rel = originals[index]
            if kind == "exact_copy":
                new_rel, dst = _copy_target(root, rel, "copies", "", rel.rsplit(".", 1)[1])
                dst.write_bytes((root / rel).read_bytes())
            else:
                with Image.open(root / rel) as src:
                    img = src.convert("RGB")
                new_rel = _write_modified_copy(root, rel, img, kind, j, manifest)
            manifest[kind].append(new_rel)
            manifest["copy_of"][new_rel] = rel


def _write_modified_copy(root: Path, rel: str, img: Image.Image, kind: str, j: int,
                         manifest: dict) -> str:
    """Write the j-th resized / recompressed / rotated copy of ``img``; returns its path."""
    if kind == "resized_copy":
        scale = (0.5, 0.75)[j % 2]
        size = (round(img.width * scale), round(img.height * scale))
        new_rel, dst = _copy_target(root, rel, "resized", f"_x{scale:g}", "jpg")
        img.resize(size, Image.Resampling.LANCZOS).save(dst, "JPEG", quality=85)
    elif kind == "recompressed_copy" and j % 3 == 2:
        new_rel, dst = _copy_target(root, rel, "recompressed", "", "webp")
        img.save(dst, "WEBP", quality=50)
    elif kind == "recompressed_copy":
        new_rel, dst = _copy_target(root, rel, "recompressed", "_q", "jpg")
        img.save(dst, "JPEG", quality=40 + 10 * (j % 3))
    else:
        angle = (90, 180, 270)[j % 3]
        new_rel, dst = _copy_target(root, rel, "rotated", f"_r{angle}", "jpg")
        img.transpose(_ROTATIONS[angle]).save(dst, "JPEG", quality=90)
        manifest["rotation_ccw"][new_rel] = angle
    return new_rel


def _write_size_problems(root: Path, seed: int, manifest: dict) -> None:
    """Images that break the size, aspect and file-size rules, nothing else."""
    specs = [("tiny", "sizes/tiny_40x60.jpg", 40, 60),
             ("panoramic", "sizes/panorama_1600x150.jpg", 1600, 150),
             ("panoramic", "sizes/tall_100x900.jpg", 100, 900),
             ("oversized_pixels", "sizes/huge_3600x1400.jpg", 3600, 1400),
             ("oversized_file", "sizes/scan_2000x1800.bmp", 2000, 1800)]
    for i, (kind, rel, w, h) in enumerate(specs):
        rng = _rng(seed, "sizes", i)
        _save(photo(rng, w, h), root / rel, rel.rsplit(".", 1)[1], rng)
        manifest[kind].append(rel)


def _bomb_png(side: int) -> bytes:
    """A valid all-black 1-bit grayscale PNG of side x side px, compressed to a few KB."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data)))

    row = bytes(1 + (side + 7) // 8)  # filter byte 0 + packed zero bits
    z = zlib.compressobj(9, strategy=zlib.Z_RLE)  # as small as the default, 3x faster
    rows_per_call = 1000
    parts = [z.compress(row * min(rows_per_call, side - r))
             for r in range(0, side, rows_per_call)]
    idat = b"".join(parts) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def _write_broken_files(root: Path, seed: int, manifest: dict) -> None:
    """Files that cannot be (fully) decoded: truncated, empty, not images, a bomb."""
    folder = root / "broken"
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed, "broken")
    whole = folder / "cut_off.jpg"
    photo(rng, 640, 480).save(whole, "JPEG", quality=90)  # baseline, not progressive
    data = whole.read_bytes()
    whole.write_bytes(data[: len(data) * 6 // 10])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_bytes(b"TODO: sort the holiday photos\n" * 20)
    (folder / "page.png").write_bytes(
        b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
        b"<body><h1>Not Found</h1></body></html>\n")
    (folder / "bomb.png").write_bytes(_bomb_png(BOMB_SIDE))
    manifest["truncated_jpeg"].append("broken/cut_off.jpg")
    manifest["zero_byte"].append("broken/empty.jpg")
    manifest["non_image"] += ["broken/notes.jpg", "broken/page.png"]
    manifest["decompression_bomb"].append("broken/bomb.png")


def _write_unusual_modes(root: Path, seed: int, manifest: dict) -> None:
    """Valid images in modes and encodings that a loader must convert explicitly."""
    folder = root / "modes"
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed, "modes")
    photo(rng, 500, 375).convert("CMYK").save(folder / "cmyk.jpg", "JPEG", quality=90)
    gray = np.asarray(photo(rng, 480, 360).convert("L"), np.uint16) * 257
    Image.fromarray(gray).save(folder / "depth16.png")  # mode I;16
    pal = photo(rng, 400, 300).quantize(colors=64, method=Image.Quantize.FASTOCTREE)
    pal.save(folder / "palette_alpha.png", transparency=0)
    frames = [photo(rng, 360, 270) for _ in range(3)]
    gif_frames = [f.quantize(colors=128, method=Image.Quantize.FASTOCTREE) for f in frames]
    gif_frames[0].save(folder / "anim.gif", save_all=True, append_images=gif_frames[1:],
                       duration=200, loop=0)
    frames[0].save(folder / "anim.webp", save_all=True, append_images=frames[1:],
                   duration=200, loop=0, quality=70)
    upright = photo(rng, 560, 420)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 deg clockwise to display
    upright.transpose(Image.Transpose.ROTATE_90).save(
        folder / "exif_orientation6.jpg", "JPEG", quality=90, exif=exif.tobytes())
    manifest["cmyk"].append("modes/cmyk.jpg")
    manifest["sixteen_bit"].append("modes/depth16.png")
    manifest["palette_transparency"].append("modes/palette_alpha.png")
    manifest["animated"] += ["modes/anim.gif", "modes/anim.webp"]
    manifest["exif_rotated"].append("modes/exif_orientation6.jpg")


def make_sample_data(root: Path, *, n_base: int = 240, seed: int = 0) -> dict:
    """Write the sample collection under ``root``; return (and write) its manifest.

    Returns a dict: each kind in PROBLEM_KINDS and ``clean`` -> list of relative POSIX
    paths; ``copy_of`` -> {copy path: original path}; ``rotation_ccw`` -> {rotated copy
    path: degrees counter-clockwise}. The same dict is written to ``root/manifest.json``.
    """
    if n_base < 1:
        raise ValueError(f"n_base must be at least 1, got {n_base}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest: dict = {kind: [] for kind in PROBLEM_KINDS}
    manifest.update(clean=[], copy_of={}, rotation_ccw={})
    manifest["clean"] = _write_base_images(root, seed, n_base)
    _write_copies(root, seed, manifest["clean"], manifest)
    _write_size_problems(root, seed, manifest)
    _write_broken_files(root, seed, manifest)
    _write_unusual_modes(root, seed, manifest)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: parse OUT_DIR, --n-base, --seed and write the set."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--n-base", type=int, default=240, help="clean base images (240)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    manifest = make_sample_data(args.out_dir, n_base=args.n_base, seed=args.seed)
    n_files = len(manifest["clean"]) + sum(len(manifest[k]) for k in PROBLEM_KINDS)
    print(f"wrote {n_files} files to {args.out_dir} in {time.perf_counter() - start:.1f} s"
          f" (manifest: {args.out_dir / 'manifest.json'})")


if __name__ == "__main__":
    main()
