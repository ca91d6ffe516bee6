"""Per-file kernels: header facts + content hash, and the reduced-scale decode check.

Pure functions of a path: no catalog, no printing. They never raise for a bad file; the
problem comes back as `error = "rule: readable detail"`, which sanitize turns into a finding.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash
from PIL import Image, UnidentifiedImageError

# Modes a training pipeline usually does not expect; recorded, not acted on.
UNUSUAL_MODES = {"CMYK", "I;16", "I;16B", "I;16L", "I;16N", "I", "F", "LA", "PA", "YCbCr", "LAB", "HSV", "1"}
EXIF_ORIENTATION_TAG = 0x0112
HASH_CHUNK = 1 << 20


def content_hash(path: str | os.PathLike) -> str:
    """xxh3-128 of the file's bytes, hex."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _header_facts(img: Image.Image) -> dict[str, Any]:
    exif_orientation = None
    try:
        # Pillow's PNG getexif() decodes every pixel to look for an eXIf chunk after the image
        # data (seconds for a bomb); an eXIf chunk before the pixels is already in info.
        if img.format != "PNG" or "exif" in img.info:
            exif_orientation = img.getexif().get(EXIF_ORIENTATION_TAG)
    except Exception:  # noqa: BLE001 - malformed EXIF is common and harmless here
        pass
    return {
        "width": img.width,
        "height": img.height,
        "format": img.format,
        "mode": img.mode,
        "exif_orientation": int(exif_orientation) if exif_orientation is not None else None,
        "n_frames": int(getattr(img, "n_frames", 1)),
        "has_transparency": bool(img.info.get("transparency") is not None or img.mode in ("RGBA", "LA", "PA")),
    }


def _describe_bytes(data: bytes) -> str:
    head = data[:16]
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml")):
        return "an HTML/XML document"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "text"
    return f"unknown bytes {head[:8].hex(' ')}"


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a directory" if stat.S_ISDIR(mode) else "a special file"


def inspect_header(path: str) -> dict[str, Any]:
    """Read a file once: size, content hash and Pillow header facts.

    Returns a dict with keys size_bytes, mtime_ns, content_hash, width, height, format, mode,
    exif_orientation, n_frames, has_transparency, header_error (None when readable).
    """
    facts: dict[str, Any] = {"content_hash": None, "header_error": None, "width": None, "height": None}
    try:
        st = os.stat(path)
        facts.update(size_bytes=st.st_size, mtime_ns=st.st_mtime_ns)
        if not stat.S_ISREG(st.st_mode):
            # Reading a named pipe would block forever; devices and sockets are no images either.
            facts["header_error"] = f"unreadable: not a regular file ({_file_kind(st.st_mode)})"
            return facts
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        facts.update(size_bytes=None, mtime_ns=None, header_error="broken_symlink: the link's target does not exist")
        return facts
    except OSError as e:
        facts.setdefault("size_bytes", None)
        facts.setdefault("mtime_ns", None)
        facts["header_error"] = f"unreadable: cannot read the file ({e.strerror or type(e).__name__})"
        return facts
    facts["content_hash"] = xxhash.xxh3_128_hexdigest(data)
    if not data:
        facts["header_error"] = "zero_byte: the file is empty (0 bytes)"
        return facts
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # bombs are judged by sanitize's limit
            try:
                with Image.open(io.BytesIO(data)) as img:
                    facts.update(_header_facts(img))
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except UnidentifiedImageError:
        facts["header_error"] = f"not_an_image: the bytes are {_describe_bytes(data)}, not a known image format"
    except Exception as e:  # noqa: BLE001 - any decoder failure is a finding, never a crash
        facts["header_error"] = f"corrupt: the header cannot be parsed ({type(e).__name__}: {e})"
    return facts


@dataclass
class DecodeResult:
    """Outcome of the decode check: error is None when the image decodes completely."""

    error: str | None
    descriptor: np.ndarray | None


def decode_check(path: str, *, max_pixels: int, with_descriptor: bool) -> DecodeResult:
    """Fully decode the image at reduced scale (JPEG DCT scaling via `draft`) to catch truncation.

    A header-only `verify()` passes truncated JPEGs; decoding every scan does not. Images over
    `max_pixels` are not decoded (they are already a decompression-bomb finding).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as img:
                    if img.width * img.height > max_pixels:
                        return DecodeResult(None, None)
                    if img.format == "JPEG":
                        img.draft(img.mode, _draft_size(img.width, img.height, with_descriptor))
                    img.load()
                    descriptor = _descriptor(img) if with_descriptor else None
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except OSError as e:
        text = str(e)
        rule = "truncated" if "truncated" in text else "corrupt"
        return DecodeResult(f"{rule}: decoding failed ({text})", None)
    except Exception as e:  # noqa: BLE001
        return DecodeResult(f"corrupt: decoding failed ({type(e).__name__}: {e})", None)
    return DecodeResult(None, descriptor)


def _draft_size(width: int, height: int, with_descriptor: bool) -> tuple[int, int]:
    """The smallest size to decode a JPEG at: 1/8 scale, but never below what the descriptor needs."""
    from vdc_lake.descriptor import DRAFT_SIZE

    floor = DRAFT_SIZE if with_descriptor else (1, 1)
    return min(width, max(floor[0], width // 8)), min(height, max(floor[1], height // 8))


def _descriptor(img: Image.Image) -> np.ndarray | None:
    from vdc_lake.descriptor import builtin_descriptor

    try:
        return builtin_descriptor(img)
    except Exception:  # noqa: BLE001 - a descriptor failure must not fail validation
        return None
