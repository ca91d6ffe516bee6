"""File operations the apply engine can carry out, each writing through a temp file that must
decode completely before it takes the file's place (os.replace), or a new name (recompress: a
name no other file has, never replaced).

Encoders keep what they can of the original: JPEG quantisation tables and chroma subsampling
(what Pillow's quality="keep" does, made explicit so it also works on resized pixels), the
ICC profile and EXIF. Rotation writes EXIF orientation 1, since the pixels are now upright.

TIFF keeps its metadata in the same tag directory as its layout (size, strips, compression),
so its tags are never passed back as EXIF (they would describe the old pixels: libtiff fails
with "encoder error -8", or writes the old size): only descriptive tags travel, with the
original's compression. Pillow applies a TIFF's orientation tag when it loads the pixels, so a
written TIFF is upright and carries no orientation tag.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

from PIL import Image, ImageSequence, JpegImagePlugin, TiffImagePlugin

from vdc_lake.fileops.probe import MULTI_FRAME_FORMATS, content_hash, decode_check, default_max_pixels, open_image, place_new

TMP_SUFFIX = ".vdc-tmp"       # apply's temp files (and backups being copied) end with this
RESTORE_SUFFIX = ".vdc-restore"  # restore's temp files
LEFTOVER_SUFFIXES = (TMP_SUFFIX, RESTORE_SUFFIX)  # never images: scan skips them
# TIFF tags that describe the picture, not its layout: the only ones a rewritten TIFF keeps.
TIFF_DESCRIPTIVE_TAGS = (
    270,    # ImageDescription
    271,    # Make
    272,    # Model
    282,    # XResolution
    283,    # YResolution
    296,    # ResolutionUnit
    305,    # Software
    306,    # DateTime
    315,    # Artist
    33432,  # Copyright
)
# Compressions Pillow writes, and the modes each accepts; any other is written as LZW (lossless).
TIFF_COMPRESSIONS = {
    "raw": None, "tiff_lzw": None, "tiff_adobe_deflate": None, "packbits": None,
    "jpeg": ("RGB", "L", "CMYK", "YCbCr"), "group3": ("1",), "group4": ("1",),
}
# Rotation decisions name the clockwise correction, applied with Pillow's transpose.
ROTATIONS = {
    "rotate_90": Image.Transpose.ROTATE_270,   # Pillow's ROTATE_n turns counter-clockwise
    "rotate_180": Image.Transpose.ROTATE_180,
    "rotate_270": Image.Transpose.ROTATE_90,
}


def _tmp_for(path: Path) -> Path:
    return path.with_name("." + path.name + TMP_SUFFIX)


def _descriptive_exif(original: Image.Image) -> Image.Exif:
    """A TIFF's descriptive tags as EXIF, for writing it in another format."""
    exif = Image.Exif()
    tags = original.getexif()
    for tag in TIFF_DESCRIPTIVE_TAGS:
        if tag in tags:
            exif[tag] = tags[tag]
    return exif


def _tiff_options(original: Image.Image, mode: str) -> dict[str, Any]:
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    for tag in TIFF_DESCRIPTIVE_TAGS:
        if tag in original.tag_v2:
            tags[tag] = original.tag_v2[tag]
            tags.tagtype[tag] = original.tag_v2.tagtype[tag]
    compression = original.info.get("compression") if original.format == "TIFF" else "tiff_lzw"
    compression = {"tiff_jpeg": "jpeg", "tiff_deflate": "tiff_adobe_deflate"}.get(compression, compression)
    if compression not in TIFF_COMPRESSIONS or mode not in (TIFF_COMPRESSIONS[compression] or (mode,)):
        compression = "tiff_lzw"
    options: dict[str, Any] = {"tiffinfo": tags, "compression": compression}
    if compression == "jpeg":
        options["quality"] = 95
    return options


def _encoder_options(original: Image.Image, fmt: str, mode: str | None = None) -> dict[str, Any]:
    """Save options for pixels of `original` (in `mode`, default its own) written as `fmt`."""
    options: dict[str, Any] = {}
    icc = original.info.get("icc_profile")
    if icc:
        options["icc_profile"] = icc
    if fmt == "JPEG" and original.format == "JPEG":
        options["qtables"] = original.quantization
        sampling = JpegImagePlugin.get_sampling(original)
        if sampling != -1:
            options["subsampling"] = sampling
    elif fmt == "JPEG":
        options["quality"] = 95
    if fmt == "TIFF":
        options.update(_tiff_options(original, mode or original.mode))
    elif fmt in ("JPEG", "WEBP", "PNG"):
        exif = _descriptive_exif(original) if original.format == "TIFF" else original.getexif()
        if len(exif):
            options["exif"] = exif.tobytes()
    return options


def write_atomic(img: Image.Image, dst: Path, fmt: str, options: dict[str, Any], *, overwrite: bool = True) -> None:
    """Encode into a temp file next to dst, fsync, check that it decodes completely, and move it
    to dst: os.replace when `overwrite` (dst is the file being rewritten), else a hard link that
    never replaces an existing file (a new name: an existing dst is refused, FileExistsError,
    unless it holds exactly these bytes, i.e. an earlier, interrupted run of the same operation)."""
    tmp = _tmp_for(dst)
    try:
        with open(tmp, "wb") as f:
            img.save(f, format=fmt, **options)
            f.flush()
            os.fsync(f.fileno())
        _check_decodes(tmp, img.width * img.height * (1 + len(options.get("append_images", ()))))
        if overwrite:
            os.replace(tmp, dst)
        else:
            _link_new(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def _check_decodes(path: Path, pixels: int) -> None:
    """OSError when the file just written does not decode completely (an encoder failure must
    never replace a good image)."""
    result = decode_check(str(path), max_pixels=max(pixels, 1), with_descriptor=False)
    if result.error is not None:
        raise OSError(f"the written file does not decode ({result.error}); the original is unchanged")


def _link_new(tmp: Path, dst: Path) -> None:
    """Give tmp the name dst without replacing anything already there (see write_atomic): an
    existing dst is accepted only when it holds exactly tmp's bytes (an interrupted run's output)."""
    try:
        place_new(tmp, dst)
    except FileExistsError:
        if os.path.islink(dst) or not os.path.isfile(dst) or content_hash(dst) != content_hash(tmp):
            raise FileExistsError(errno.EEXIST, "another file already has the output's name; move it away and run "
                                  "apply again", str(dst)) from None


def _every_frame(img: Image.Image, fmt: str, transform: Callable[[Image.Image], Image.Image]
                 ) -> tuple[Image.Image, dict[str, Any]]:
    """transform(img), and the save options that write the rest of an animated image's frames,
    each transformed the same way, with their durations and loop count (an animated GIF or WebP
    lost every frame but the first). A single-frame image, or an output format without frames
    (not in MULTI_FRAME_FORMATS: an MPO is written as a JPEG of its first image): transform(img),
    no options. Every frame is held in memory: open_image's pixel limit counts them all."""
    if getattr(img, "n_frames", 1) <= 1 or fmt not in MULTI_FRAME_FORMATS:
        return transform(img), {}
    frames, durations = [], []
    for frame in ImageSequence.Iterator(img):
        frame.load()  # a WebP frame's duration is known once it is loaded
        durations.append(frame.info.get("duration", 100))
        frames.append(transform(frame.copy()))
    img.seek(0)  # the encoder options (ICC profile, EXIF) are the first frame's
    options: dict[str, Any] = {"save_all": True, "append_images": frames[1:], "duration": durations}
    if "loop" in img.info:
        options["loop"] = img.info["loop"]
    return frames[0], options


def _output_format(original: Image.Image) -> str:
    return "JPEG" if original.format in ("JPEG", "MPO") else (original.format or "PNG")


def _fit_within(width: int, height: int, max_width: int, max_height: int) -> tuple[int, int]:
    scale = min(max_width / width, max_height / height, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _open(src: Path, options: dict[str, Any]):
    """Open src for decoding within the pixel limit (options' max_pixels, else sanitize's default):
    a decompression bomb fails the operation (journaled) instead of filling memory."""
    return open_image(src, int(options.get("max_pixels") or default_max_pixels()))


def resize_file(src: Path, dst: Path, options: dict[str, Any]) -> None:
    """Shrink to fit max_width x max_height, keeping aspect ratio, format and encoder quality."""
    with _open(src, options) as img:
        img.load()  # a TIFF's size can change on load (Pillow applies its orientation tag)
        size = _fit_within(img.width, img.height, int(options["max_width"]), int(options["max_height"]))
        fmt = _output_format(img)
        encoder = _encoder_options(img, fmt)
        resized, frames = _every_frame(img, fmt, lambda frame: frame.resize(size, Image.Resampling.LANCZOS))
    write_atomic(resized, dst, fmt, {**encoder, **frames})


def recompress_file(src: Path, dst: Path, options: dict[str, Any]) -> None:
    """Re-encode as WebP (VDC's choice for oversized files); dst is the new path, src is removed."""
    fmt = str(options.get("recompress_format", "WEBP")).upper()
    def convert(frame: Image.Image) -> Image.Image:
        return frame if frame.mode in ("RGB", "RGBA", "L", "LA") else frame.convert(
            "RGBA" if "A" in frame.mode or "transparency" in frame.info else "RGB")

    with _open(src, options) as img:
        img.load()
        image, frames = _every_frame(img, fmt, convert)
        encoder = _encoder_options(img, fmt, image.mode)
    if fmt == "WEBP":
        encoder.update(quality=int(options.get("recompress_quality", 80)), method=6)
    write_atomic(image, dst, fmt, {**encoder, **frames}, overwrite=dst == src)
    if dst != src:
        src.unlink()


def rotate_file(src: Path, dst: Path, options: dict[str, Any]) -> None:
    """Turn the stored pixels clockwise by the action's angle; EXIF orientation becomes 1."""
    with _open(src, options) as img:
        fmt = _output_format(img)
        encoder = _encoder_options(img, fmt)
        rotated, frames = _every_frame(img, fmt, lambda frame: frame.transpose(ROTATIONS[options["action"]]))
        encoder.update(frames)
    if "exif" in encoder:  # JPEG, PNG, WebP (a TIFF carries no orientation tag once written)
        exif = Image.Exif()
        exif.load(encoder["exif"])
        exif[0x0112] = 1
        encoder["exif"] = exif.tobytes()
    write_atomic(rotated, dst, fmt, encoder)


def delete_file(src: Path, dst: Path, options: dict[str, Any]) -> None:
    src.unlink(missing_ok=True)


def recompress_destination(src: str, options: dict[str, Any], taken: Collection[str] = ()) -> str:
    """Where a recompressed src goes: NAME.webp (the format's extension), or NAME.recompressed.webp,
    NAME.recompressed-2.webp, ... when that name is in use: an entry on disk (a dangling link
    too) or in `taken` (paths other operations write, or images the catalog holds)."""
    fmt = str(options.get("recompress_format", "WEBP")).lower()
    path = Path(src)
    target = path.with_suffix("." + fmt)
    if target == path:
        return str(target)  # rewritten in place
    n = 1
    while os.path.lexists(target) or str(target) in taken:
        target = path.with_name(f"{path.stem}.recompressed{'' if n == 1 else f'-{n}'}.{fmt}")
        n += 1
    return str(target)


def is_recompress_destination(src: str, dst: str, options: dict[str, Any]) -> bool:
    """Whether dst is a name recompress_destination gives src's output (any numbered one): the
    check of a journal row's dst, which an edited catalog could point at another image."""
    fmt = str(options.get("recompress_format", "WEBP")).lower()
    path, out = Path(src), Path(dst)
    if out.parent != path.parent:
        return False
    numbered = re.fullmatch(rf"{re.escape(path.stem)}\.recompressed(-[1-9][0-9]*)?\.{re.escape(fmt)}", out.name)
    return out == path.with_suffix("." + fmt) or numbered is not None


@dataclass(frozen=True)
class Action:
    """One kind of file operation: where its output goes and how to produce it."""

    name: str
    run_fn: Callable[[Path, Path, dict[str, Any]], None]
    destination_fn: Callable[..., str] = lambda src, options, taken=(): src

    def run(self, src: Path, dst: Path, options: dict[str, Any]) -> None:
        self.run_fn(src, dst, dict(options, action=self.name))

    def destination(self, src: str, options: dict[str, Any], taken: Collection[str] = ()) -> str:
        """The output path; `taken`: paths that are not free though nothing may be there yet."""
        return self.destination_fn(src, options, taken)


ACTIONS: dict[str, Action] = {
    "delete": Action("delete", delete_file),
    "resize": Action("resize", resize_file),
    "recompress": Action("recompress", recompress_file, recompress_destination),
    **{name: Action(name, rotate_file) for name in ROTATIONS},
}
