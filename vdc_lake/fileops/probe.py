"""Per-file kernels: header facts + content hash, and the reduced-scale decode check.

Pure functions of a path: no catalog, no printing. They never raise for a bad file; the
problem comes back as `error = "rule: readable detail"`, which sanitize turns into a finding.

Only bytes that were read and do not decode are "corrupt" (or "truncated"); a file that is
missing or cannot be read (permissions, I/O errors) is "missing" / "unreadable": a finding
that never deletes, since the file may be back and intact at the next check.

One read per file (read_file): the hash, the header facts and the decode check come from one
copy of the bytes, read into memory whole when the file is at most sanitize.max_file_size_mb
(one Image.open serves the header and the decode). Memory stays bounded: a bigger file is hashed
streaming, a chunk at a time, and parsed from the open file (Pillow reads what it needs), so a
3 GB file costs a chunk, not 3 GB.

Time is bounded too: Pillow parses a header (and counts an animated file's frames) through
HeaderReader, which allows HEADER_MAX_BYTES in HEADER_MAX_READS reads. Pillow looks for a JPEG or
GIF marker one byte per read, so a file of junk behind an image signature (a sparse 3 GB file
starting FF D8 FF E0) took minutes; now it is a `header_not_found` finding within a second.

The pixel limit (sanitize.max_pixels) counts every frame: an animated file holds
n_frames x width x height pixels, and rewriting it (apply) holds every frame in memory.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, BinaryIO

import numpy as np
import xxhash
from PIL import Image, UnidentifiedImageError

# Modes a training pipeline usually does not expect; recorded, not acted on.
UNUSUAL_MODES = {"CMYK", "I;16", "I;16B", "I;16L", "I;16N", "I", "F", "LA", "PA", "YCbCr", "LAB", "HSV", "1"}
EXIF_ORIENTATION_TAG = 0x0112
HASH_CHUNK = 1 << 20
# Formats whose files keep every frame when rewritten (apply), so every frame counts towards the
# pixel limit. An MPO's extra images (a second view, a depth map) are not frames of one picture.
MULTI_FRAME_FORMATS = frozenset({"GIF", "WEBP", "PNG", "TIFF"})
# What Pillow may read to parse one header, every frame's of an animated file included: bytes (a
# WebP is read whole; real headers with big EXIF/ICC/XMP segments need a few MB) and reads (a
# marker search reads one byte at a time: ~1 s of Python per million reads).
HEADER_MAX_BYTES = 64 << 20
HEADER_MAX_READS = 1 << 20


# Decode-check rules and their actions: only a verdict on bytes that were read deletes.
# changed: the bytes are not those scan recorded (see sanitize), no verdict on either.
# header_not_found: the bytes read (HEADER_MAX_BYTES) hold no usable header; a training loader
# would stall on the file the same way. outside_root: the file was not read (confine.ReadableRoots).
DECODE_ACTIONS = {"corrupt": "delete", "truncated": "delete", "header_not_found": "delete", "missing": "none",
                  "unreadable": "none", "changed": "none", "outside_root": "none"}


class HeaderLimitError(Exception):
    """Pillow needed more than HEADER_MAX_BYTES / HEADER_MAX_READS to parse a header (deliberately
    no OSError: Pillow's format probing must not take it for a plugin's "not my format")."""


class HeaderReader:
    """A binary file as Pillow reads it while parsing a header: at most max_bytes bytes in at most
    max_reads reads (HeaderLimitError beyond, at every later read too); seeking is free, so a
    TIFF directory at the end of a big file is reached. lift() removes the limits for decoding
    the pixels (whose size the pixel limit bounds)."""

    def __init__(self, f: BinaryIO, max_bytes: int = HEADER_MAX_BYTES, max_reads: int = HEADER_MAX_READS):
        self._f = f
        self.max_bytes, self.max_reads = max_bytes, max_reads
        self.bytes_read = self.reads = 0
        self.limited = True

    def lift(self) -> None:
        self.limited = False

    def _allow(self, n: int | None) -> int:
        """How many bytes the next read may ask for (one more than the room left: a read that
        gets it has run past the limit)."""
        self.reads += 1
        if self.reads > self.max_reads:
            raise HeaderLimitError(self.limit_text())
        room = self.max_bytes - self.bytes_read
        return room + 1 if n is None or n < 0 or n > room else n

    def _count(self, data: bytes) -> bytes:
        self.bytes_read += len(data)
        if self.bytes_read > self.max_bytes:
            raise HeaderLimitError(self.limit_text())
        return data

    def read(self, n: int | None = -1) -> bytes:
        if not self.limited:
            return self._f.read(n)
        return self._count(self._f.read(self._allow(n)))

    def readline(self, n: int | None = -1) -> bytes:
        if not self.limited:
            return self._f.readline(n)
        return self._count(self._f.readline(self._allow(n)))

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._f.fileno()

    def limit_text(self) -> str:
        return (f"header_not_found: no complete image header (every frame's, for an animated file) within "
                f"the first {self.max_bytes >> 20} MiB or {self.max_reads:,} reads of the file; not read further")


def content_hash(path: str | os.PathLike) -> str:
    """xxh3-128 of the file's bytes, hex. OSError (EINVAL) for something that is not a regular file:
    a named pipe swapped in for an image must not block the reader forever."""
    with open(path, "rb", opener=_nonblocking) as f:
        if kind := _not_regular(f):
            raise OSError(errno.EINVAL, f"not a regular file ({kind})", os.fsdecode(path))
        return stream_hash(f)[0]


def stream_hash(f: BinaryIO) -> tuple[str, int]:
    """(xxh3-128 hex, bytes read) of an open binary file from its current position, read in
    HASH_CHUNK pieces (memory stays at one chunk whatever the file's size)."""
    h = xxhash.xxh3_128()
    n = 0
    while chunk := f.read(HASH_CHUNK):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def _nonblocking(path: str, flags: int) -> int:
    """open()'s opener: a named pipe put where an image was must not block the reader forever
    (O_NONBLOCK changes nothing for regular files); callers then check the type with fstat."""
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def _not_regular(f: BinaryIO) -> str | None:
    """What the open file is when it is not a regular file (`a named pipe`), else None."""
    mode = os.fstat(f.fileno()).st_mode
    return None if stat.S_ISREG(mode) else _file_kind(mode)


def is_io_error(e: BaseException) -> bool:
    """True for an operating-system error (missing file, permission, EIO), false for a decoder's
    complaint about the bytes (Pillow raises OSError without an errno for those)."""
    return isinstance(e, OSError) and e.errno is not None


def errno_text(e: OSError) -> str:
    """`Permission denied, EACCES`: the error's text and errno name."""
    code = errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else type(e).__name__
    return f"{e.strerror or type(e).__name__}, {code}"


def io_error_text(e: OSError, doing: str = "read") -> str:
    """`missing: ...` or `unreadable: ...` with the errno name, for a finding's rule and detail."""
    if isinstance(e, FileNotFoundError):
        return f"missing: the file is gone ({errno_text(e)}); it is checked again by the next run"
    return f"unreadable: cannot {doing} the file ({errno_text(e)})"


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


def inspect_header(path: str, *, whole_max_bytes: int | None = None) -> dict[str, Any]:
    """Read a file once: size, content hash and Pillow header facts (read_file, no decode: a
    file up to whole_max_bytes is read whole, a bigger one streamed; Pillow parses the header
    only, never more than the header limits allow).

    Returns a dict with keys size_bytes, mtime_ns, content_hash, width, height, format, mode,
    exif_orientation, n_frames, has_transparency, header_error (None when readable).
    """
    return read_file(path, whole_max_bytes=whole_max_bytes).facts


def _header_error_text(e: Exception, source: BinaryIO) -> str:
    """The header_error fact for what Image.open (or counting frames) raised (no I/O error)."""
    if isinstance(e, HeaderLimitError):
        return str(e)
    if isinstance(e, UnidentifiedImageError):
        source.seek(0)
        return f"not_an_image: the bytes are {_describe_bytes(source.read(16))}, not a known image format"
    return f"corrupt: the header cannot be parsed ({type(e).__name__}: {e})"


# What os.link raises on a filesystem without hard links (FAT, exFAT, some network shares).
_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS)


def place_new(tmp: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Give the complete file `tmp` the name `dst`, atomically and never over an existing entry
    (FileExistsError then, `tmp` left in place): a hard link, then `tmp` removed; where the
    filesystem has no hard links, a rename once the name is found free."""
    try:
        os.link(tmp, dst, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "File exists", str(dst)) from e
        os.rename(tmp, dst)
        return
    os.unlink(tmp)


@dataclass
class DecodeResult:
    """Outcome of the decode check: error is None when the image decodes completely."""

    error: str | None
    descriptor: np.ndarray | None
    # kernels.quality.QualityValues.as_tuple() of the decoded pixels (None: not decoded, or no values)
    quality: tuple[float | None, ...] | None = None


def decode_check(path: str, *, max_pixels: int, with_descriptor: bool) -> DecodeResult:
    """Fully decode the image at reduced scale (JPEG DCT scaling via `draft`) to catch truncation.

    A header-only `verify()` passes truncated JPEGs; decoding every scan does not. Images over
    `max_pixels` (every frame counted: frame_pixels) are not decoded (they are already a
    decompression-bomb finding). A file that cannot be opened or read gives a `missing` /
    `unreadable` error, never `corrupt`; one whose header Pillow does not find within the header
    limits (HeaderReader) gives `header_not_found`. One read of the file (read_file).
    """
    result = read_file(path, decode=True, max_pixels=max_pixels, with_descriptor=with_descriptor).decode
    return result if result is not None else DecodeResult(None, None)  # decode=True: never None


@dataclass
class FileRead:
    """What one read of a file gave (read_file): its header facts (inspect_header's keys) and,
    when a decode was asked, the decode check's result.

    decode is None when no decode was asked or decode_if declined the bytes. over_limit: the
    header gives more pixels than max_pixels, nothing was decoded (decode is DecodeResult(None,
    None), as decode_check gives it). changed: the file's (inode, size, mtime) after the read
    differ from before it, so the bytes read may mix two versions of the file: no verdict on them.
    """

    facts: dict[str, Any]
    decode: DecodeResult | None = None
    over_limit: bool = False
    changed: bool = False


@lru_cache(maxsize=1)
def default_read_whole_bytes() -> int:
    """The bundled sanitize.max_file_size_mb in bytes: files up to it are read into memory whole."""
    from vdc_lake.config.loader import bundled_defaults

    return int(float(bundled_defaults()["sanitize"]["max_file_size_mb"]) * 1024 * 1024)


def read_file(path: str | os.PathLike, *, decode: bool = False, max_pixels: int | None = None,
              with_descriptor: bool = False, decode_if: Callable[[str], bool] | None = None,
              whole_max_bytes: int | None = None) -> FileRead:
    """Read the file at `path` once for its content hash (xxh3-128), header facts and, with
    `decode`, the reduced-scale decode check (decode_check's rules; the built-in descriptor when
    `with_descriptor`). Never raises for a bad file: its problem is facts["header_error"] and
    decode.error, worded as inspect_header and decode_check word them.

    Memory stays bounded: a file of at most `whole_max_bytes` (None: the bundled
    sanitize.max_file_size_mb, default_read_whole_bytes) is read into memory in one piece,
    hashed, parsed and decoded from that copy; a bigger one (a 3 GB sparse file) is hashed
    streaming, a chunk at a time, and parsed from the open file. The header is parsed through
    HeaderReader (HEADER_MAX_BYTES / HEADER_MAX_READS) either way; the pixel limit (`max_pixels`,
    None: the bundled one) counts every frame. The file is opened O_NONBLOCK and must be a
    regular file (a FIFO or device is refused, never read). `decode_if(content_hash)` decides,
    once the hash is known, whether to decode these bytes (e.g. only the bytes scan recorded).
    The path is stat'ed before and after: a difference is `changed` (see FileRead).
    """
    out = FileRead({"content_hash": None, "header_error": None, "width": None, "height": None})
    facts, doing = out.facts, "open"
    try:
        before = os.stat(path)
        facts.update(size_bytes=before.st_size, mtime_ns=before.st_mtime_ns)
        if not stat.S_ISREG(before.st_mode):  # reading a named pipe would block forever
            return _not_regular_read(out, _file_kind(before.st_mode), decode)
        with open(path, "rb", opener=_nonblocking) as f:
            if kind := _not_regular(f):  # replaced since the stat above
                return _not_regular_read(out, kind, decode)
            doing = "read"
            whole_max = default_read_whole_bytes() if whole_max_bytes is None else int(whole_max_bytes)
            data, facts["content_hash"], n_bytes = _hashed_contents(f, before.st_size, whole_max)
            wanted = decode and (decode_if is None or bool(decode_if(facts["content_hash"])))
            _parse(out, f if data is None else io.BytesIO(data), decode=wanted,
                   max_pixels=default_max_pixels() if wanted and max_pixels is None else int(max_pixels or 0),
                   with_descriptor=with_descriptor)
            if not n_bytes:
                facts["header_error"] = "zero_byte: the file is empty (0 bytes)"
    except FileNotFoundError as e:
        facts.update(size_bytes=None, mtime_ns=None, content_hash=None,
                     header_error="broken_symlink: the link's target does not exist" if os.path.islink(path)
                     else io_error_text(e))
        out.decode = DecodeResult(io_error_text(e, doing), None) if decode else None
        return out
    except OSError as e:
        facts.setdefault("size_bytes", None)
        facts.setdefault("mtime_ns", None)
        facts["content_hash"] = None
        facts["header_error"] = f"unreadable: cannot read the file ({e.strerror or type(e).__name__})"
        out.decode = DecodeResult(io_error_text(e, doing), None) if decode else None
        return out
    try:
        out.changed = _stat_key(os.stat(path)) != _stat_key(before)
    except OSError:
        out.changed = True  # gone or replaced right after the read
    return out


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_size, st.st_mtime_ns


def _not_regular_read(out: FileRead, kind: str, decode: bool) -> FileRead:
    text = f"unreadable: not a regular file ({kind})"
    out.facts["header_error"] = text
    out.decode = DecodeResult(text, None) if decode else None
    return out


def _hashed_contents(f: BinaryIO, size: int, whole_max: int) -> tuple[bytes | None, str, int]:
    """(the file's bytes or None, xxh3-128 hex, bytes read) of the open file: read whole when
    it holds at most whole_max bytes (grown past it since the stat: streamed), else streamed in
    HASH_CHUNK pieces and left at offset 0."""
    if size <= whole_max:
        data = f.read(size + 1)
        if len(data) > size:  # it grew since the stat: read on, up to the limit
            data += f.read(whole_max + 1 - len(data))
        if len(data) <= whole_max:
            return data, xxhash.xxh3_128_hexdigest(data), len(data)
        f.seek(0)
    digest, n_bytes = stream_hash(f)
    f.seek(0)
    return None, digest, n_bytes


def _parse(out: FileRead, source: BinaryIO, *, decode: bool, max_pixels: int, with_descriptor: bool) -> None:
    """Header facts of `source` into out.facts and, with `decode`, the decode check into
    out.decode: one Image.open serves both. An I/O error while parsing the header propagates
    (it says nothing about the bytes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # bombs are judged by sanitize's limit
        try:
            reader = HeaderReader(source)
            try:
                img = Image.open(reader)
            except Exception as e:  # noqa: BLE001 - any decoder failure is a finding, never a crash
                _header_failed(out, e, source, decode)
                return
            with img:
                try:
                    out.facts.update(_header_facts(img))
                except Exception as e:  # noqa: BLE001 - e.g. counting a broken GIF's frames
                    _header_failed(out, e, source, decode)
                    return
                if decode:
                    out.decode, out.over_limit = _decode_pixels(img, reader, max_pixels, with_descriptor)
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _header_failed(out: FileRead, e: Exception, source: BinaryIO, decode: bool) -> None:
    if is_io_error(e):
        raise e
    out.facts["header_error"] = _header_error_text(e, source)
    if decode:
        out.decode = DecodeResult(_decode_error_text(e), None)


def _decode_pixels(img: Image.Image, reader: HeaderReader, max_pixels: int, with_descriptor: bool
                   ) -> tuple[DecodeResult, bool]:
    """(decode check of the opened image, whether it is over the pixel limit and not decoded)."""
    try:
        if frame_pixels(img) > max_pixels:
            return DecodeResult(None, None), True
        reader.lift()  # the pixels: as many as the limit allows
        if img.format == "JPEG":
            img.draft(img.mode, _draft_size(img.width, img.height, with_descriptor))
        img.load()
        return _decoded(img, with_descriptor), False
    except Exception as e:  # noqa: BLE001 - any decoder failure is a finding, never a crash
        return DecodeResult(_decode_error_text(e), None), False


def _decoded(img: Image.Image, with_descriptor: bool) -> DecodeResult:
    """The result for an image whose pixels decoded completely (what is computed from them).
    The descriptor and the quality values share one grayscale conversion (an opaque 8-bit image's)."""
    luma = _shared_luma(img)
    return DecodeResult(None, _descriptor(img, luma) if with_descriptor else None, _quality(img, luma))


def _shared_luma(img: Image.Image) -> Image.Image | None:
    """img.convert("L") for an opaque RGB or L image (what both the descriptor and the quality
    values start from), else None (each makes what it needs)."""
    if img.mode not in ("RGB", "L") or "transparency" in img.info:
        return None
    return img if img.mode == "L" else img.convert("L")


def _decode_error_text(e: Exception) -> str:
    """decode.error for what opening or decoding raised: I/O errors are missing/unreadable,
    never corrupt; Pillow's complaints about the bytes are truncated or corrupt."""
    if isinstance(e, HeaderLimitError):
        return str(e)
    if isinstance(e, OSError):
        if is_io_error(e):
            return io_error_text(e)
        text = str(e)
        rule = "truncated" if "truncated" in text else "corrupt"
        return f"{rule}: decoding failed ({text})"
    return f"corrupt: decoding failed ({type(e).__name__}: {e})"


class PixelLimitError(ValueError):
    """An image has more pixels than the decompression-bomb limit allows to decode."""


def default_max_pixels() -> int:
    """The bundled decompression-bomb limit (sanitize.max_pixels), for callers given none."""
    from vdc_lake.config.loader import bundled_defaults

    return int(bundled_defaults()["sanitize"]["max_pixels"])


def frame_pixels(img: Image.Image) -> int:
    """The pixels the file holds: width x height x frames for an animated GIF, PNG, WebP or a
    multi-page TIFF (MULTI_FRAME_FORMATS: rewriting one holds every frame), else width x height
    (an MPO's second view is not decoded). Counting a GIF's frames reads the whole file: open it
    through a HeaderReader."""
    frames = int(getattr(img, "n_frames", 1) or 1) if img.format in MULTI_FRAME_FORMATS else 1
    return img.width * img.height * max(frames, 1)


def _pixels_text(img: Image.Image, pixels: int) -> str:
    frames = pixels // max(img.width * img.height, 1)
    return f"{pixels:,} pixels" + (f" ({frames} frames of {img.width}x{img.height})" if frames > 1 else "")


@contextmanager
def open_image(path: str | os.PathLike, max_pixels: int) -> Iterator[Image.Image]:
    """Image.open for decoding, refusing (PixelLimitError) an image whose header gives more
    than max_pixels pixels, every frame counted (frame_pixels), before any pixel is read; inside,
    this limit replaces Pillow's own (which would warn, or refuse at twice its value, whatever the
    configured limit). The header is read within the header limits (HeaderLimitError beyond)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with open(path, "rb", opener=_nonblocking) as f:
                if kind := _not_regular(f):
                    raise OSError(errno.EINVAL, f"not a regular file ({kind})", str(path))
                reader = HeaderReader(f)
                with Image.open(reader) as img:
                    pixels = frame_pixels(img)
                    if pixels > max_pixels:
                        raise PixelLimitError(f"{_pixels_text(img, pixels)} exceed the limit of {max_pixels:,} "
                                              "(sanitize.max_pixels); not decoded")
                    reader.lift()
                    yield img
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def check_pixels(path: str | os.PathLike, max_pixels: int) -> None:
    """Raise PixelLimitError when the image's header gives more than max_pixels pixels (every
    frame counted). Reads the header only; an unreadable header raises what Pillow raises
    (HeaderLimitError for one not found within the header limits)."""
    with open_image(path, max_pixels):
        pass


def _draft_size(width: int, height: int, with_descriptor: bool) -> tuple[int, int]:
    """The smallest size to decode a JPEG at: 1/8 scale, but never below what the descriptor needs."""
    from vdc_lake.kernels.descriptor import DRAFT_SIZE

    floor = DRAFT_SIZE if with_descriptor else (1, 1)
    return min(width, max(floor[0], width // 8)), min(height, max(floor[1], height // 8))


def _descriptor(img: Image.Image, luma: Image.Image | None = None) -> np.ndarray | None:
    from vdc_lake.kernels.descriptor import builtin_descriptor

    try:
        return builtin_descriptor(img, luma=luma)
    except Exception:  # noqa: BLE001 - a descriptor failure must not fail validation
        return None


_ONE_BAND_MODES = ("1", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N")


def _quality(img: Image.Image, luma: Image.Image | None = None) -> tuple[float | None, ...] | None:
    """kernels.quality values of the decoded image, as a tuple (None for 32-bit integer and
    float images, whose range is unknown, or when they cannot be computed). luma: img.convert("L")
    of an opaque RGB or L image, where the caller made it already (_shared_luma)."""
    from vdc_lake.kernels.quality import QUALITY_SIDE, quality_values

    try:
        if luma is None or max(img.width, img.height) // QUALITY_SIDE > 1:
            img = _quality_image(img, QUALITY_SIDE)
            if img is None:
                return None
            luma = img if img.mode == "L" else img.convert("L")
        gray = np.asarray(luma)
        return quality_values(gray if img.mode == "L" else np.asarray(img), luma=gray).as_tuple()
    except Exception:  # noqa: BLE001 - a quality failure must not fail validation
        return None


def _quality_image(img: Image.Image, side: int) -> Image.Image | None:
    """img as an L or RGB image reduced by the integer factor that brings its long side under
    2 x side (an area average: Pillow's fastest reduction), transparent pixels composited on
    white (what a viewer shows); None for 32-bit integer and float images."""
    if img.mode in ("I", "F"):
        return None
    if img.mode.startswith("I;16"):
        img = Image.fromarray((np.asarray(img, np.uint16) >> 8).astype(np.uint8))
    one_band = img.mode in _ONE_BAND_MODES
    has_alpha = "A" in img.mode or "a" in img.mode or "transparency" in img.info
    target = "RGBA" if has_alpha else ("L" if one_band else "RGB")
    if img.mode != target:
        img = img.convert(target)
    factor = max(img.width, img.height) // side
    if factor > 1:
        img = img.reduce(factor)
    if has_alpha:
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img).convert("L" if one_band else "RGB")
    return img
