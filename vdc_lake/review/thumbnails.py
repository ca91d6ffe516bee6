"""Thumbnails for the report: one small JPEG per shown image (or a placeholder saying why not),
made in a process pool."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np
from PIL import Image, ImageDraw

from vdc_lake.fileops.probe import PixelLimitError, open_image
from vdc_lake.fileops.imageops import ROTATIONS
from vdc_lake.scale.parallel import map_ordered


THUMB_SIZE = 160
PLACEHOLDERS = {"missing": "file missing", "undecodable": "cannot decode", "too_large": "too large",
                "outside": "not read (outside)"}


# -- thumbnails ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Thumb:
    """One picture to show: the file to read, and the thumbnail's name under OUT/thumbs/.

    turn: a rotation action (rotate_90 ...) applied to the thumbnail (the "after" of a rotation).
    in_root: path names a file in a scanned root (a catalog image; build_report reads it only
    where confine.ReadableRoots allows), else a file its caller checked (a backup, an example).
    """

    key: str
    path: str | None
    turn: str | None = None
    in_root: bool = True

    @property
    def name(self) -> str:
        return f"thumbs/{self.key}.jpg"


def image_thumb(image_id: int, version: int, path: str | None, turn: str | None = None) -> Thumb:
    """The thumbnail of a catalog image (at a version), optionally turned as a rotation would."""
    return Thumb(f"{int(image_id)}-{int(version)}" + (f"-{turn}" if turn else ""), path, turn)


def make_thumbnail(item: tuple[str | None, str, str | None], *, size: int = THUMB_SIZE,
                   max_pixels: int | None = None) -> str:
    """Write a `size` px JPEG thumbnail of item = (image path, thumbnail path, rotation action or
    None); an image of more than max_pixels pixels, every frame counted (None: Pillow's
    decompression-bomb limit), is not decoded, nor one whose header is not within the header
    limits (files.HeaderReader). The thumbnail is written under a temp name and renamed (a link
    planted at its name is replaced, never followed).

    Returns "ok", or the placeholder kind ("missing", "undecodable", "too_large"; "outside" for no
    path: a file the catalog names outside the folders it may be read from) when none was written.
    """
    src, dst, turn = item
    if not src:
        return "outside"
    if not os.path.isfile(src):
        return "missing"
    try:
        with open_image(src, int(max_pixels or Image.MAX_IMAGE_PIXELS or 1 << 62)) as img:
            img.draft("RGB", (size, size))
            img.thumbnail((size, size))
            rgb = _to_rgb(img)
        if turn:
            rgb = rgb.transpose(ROTATIONS[turn])
        write_new_file(Path(dst), lambda f: rgb.save(f, "JPEG", quality=85))
    except PixelLimitError:
        return "too_large"
    except Exception:  # noqa: BLE001 - any undecodable file (HeaderLimitError too) gets the placeholder
        return "undecodable"
    return "ok"


def write_new_file(dst: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file of the report: write(f) into a new temp file beside dst (O_EXCL: never an
    existing entry, never through a link), then os.replace it to dst (which replaces a link at
    dst rather than following it)."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".vdc-report-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        span = max(float(arr.max() - arr.min()), 1e-9)
        img = Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA", "P"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def placeholder_picture(kind: str, size: int = THUMB_SIZE) -> Image.Image:
    """The grey picture that stands for a thumbnail of a kind (PLACEHOLDERS) that could not be made."""
    img = Image.new("RGB", (size, size * 3 // 4), (220, 220, 220))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, img.width - 1, img.height - 1), outline=(150, 150, 150))
    draw.text((10, img.height // 2 - 6), PLACEHOLDERS[kind], fill=(90, 90, 90))
    return img


def _placeholder(out_dir: Path, kind: str, size: int, made: set[str]) -> str:
    """The placeholder picture of a kind (PLACEHOLDERS), written once per report (`made`)."""
    name = f"thumbs/_{kind}.jpg"
    if name not in made:
        img = placeholder_picture(kind, size)
        write_new_file(out_dir / name, lambda f: img.save(f, "JPEG", quality=85))
        made.add(name)
    return name


def write_thumbnails(out_dir: Path, thumbs: Iterable[Thumb], *, size: int, workers: int | None,
                     quiet: bool, max_pixels: int | None = None) -> dict[str, str]:
    """Thumbnail every distinct picture once; returns {key: src relative to out_dir} (a placeholder
    for a file that is missing, cannot be decoded or is too large)."""
    unique = {t.key: t for t in thumbs}
    keys = sorted(unique)
    items = [(unique[k].path, str(out_dir / unique[k].name), unique[k].turn) for k in keys]
    results = map_ordered(partial(make_thumbnail, size=size, max_pixels=max_pixels), items, workers=workers,
                          desc="thumbnails", quiet=quiet)
    made: set[str] = set()
    return {k: (unique[k].name if status == "ok" else _placeholder(out_dir, status, size, made))
            for k, status in zip(keys, results)}
