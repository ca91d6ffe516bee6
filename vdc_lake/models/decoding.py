"""Decode image files to uint8 RGB pixels as birder's loader does, on the CPU or with nvJPEG.

Images decode like birder's default "tv" loader (torchvision `decode_image`, RGB, EXIF
orientation NOT applied); formats torchvision cannot decode (TIFF, BMP) fall back to Pillow, as
birder's "pil" loader would read them. JPEGs far larger than every model decode at reduced DCT
scale only when asked (draft_size), and on CUDA they can decode on the GPU (nvJPEG).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from vdc_lake.models.checkpoints import ModelError

if TYPE_CHECKING:
    from vdc_lake.models.loading import LoadedModel

DECODE_MODES: tuple[str, ...] = ("auto", "cpu", "gpu")
GPU_JPEG_MODES = ("RGB", "L")  # JPEG colour modes nvJPEG decodes like libjpeg; CMYK/YCCK go to the CPU
JPEG_MAGIC = b"\xff\xd8\xff"


def decode_rgb(path: str, max_pixels: int | None = None) -> torch.Tensor:
    """uint8 [3, h, w] RGB pixels of an image file, decoded like birder's default loader.

    torchvision's decoder first (JPEG/PNG/WebP/GIF, EXIF orientation not applied, as birder),
    Pillow for what it cannot read (TIFF, BMP). An animated GIF gives its first frame (birder
    would fail to batch its [frames, 3, h, w] tensor). 16-bit PNGs stay uint16, as in birder.
    With max_pixels, the header is read first and an image over the limit is never decoded
    (PixelLimitError): a decompression bomb costs a header read, not gigabytes.
    Raises on an undecodable file.
    """
    from torchvision.io import ImageReadMode, decode_image

    if max_pixels is not None:
        from vdc_lake.fileops.probe import check_pixels

        check_pixels(path, max_pixels)
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders (for TorchCodec) with a warning on every
            # call; birder decodes with them, and matching birder's pixels is what matters here.
            warnings.simplefilter("ignore", DeprecationWarning)
            pixels = decode_image(path, mode=ImageReadMode.RGB)
    except RuntimeError:
        return _pil_decode_rgb(path)
    return pixels[0] if pixels.ndim == 4 else pixels


def _pil_decode_rgb(path: str) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        array = np.array(image.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1)


def draft_size_for(models: Sequence[LoadedModel], min_size: int) -> int | None:
    """Side (px) a JPEG may be reduced to by DCT scaling in a pass: the largest model input, and
    at least min_size (0: never reduce). Keeping min_size above every model's input makes a
    model's inputs independent of the other models of its pass."""
    if min_size <= 0:
        return None
    return max([min_size] + [max(m.size) for m in models])


def decode_for_pass(path: str, *, max_pixels: int | None = None, draft_size: int | None = None) -> torch.Tensor:
    """uint8 [3, h, w] RGB pixels as decode_rgb gives them, but a JPEG whose sides are both at
    least twice draft_size is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both
    sides >= draft_size (Pillow's draft). Other files decode exactly like birder's loader."""
    if max_pixels is not None:
        from vdc_lake.fileops.probe import check_pixels

        check_pixels(path, max_pixels)
    if draft_size:
        drafted = _draft_decode(path, draft_size)
        if drafted is not None:
            return drafted
    pixels = decode_rgb(path)
    if pixels.dtype != torch.uint8:  # a 16-bit PNG: every model takes 8-bit pixels
        from torchvision.transforms.v2.functional import to_dtype

        pixels = to_dtype(pixels, torch.uint8, scale=True)
    return pixels


def _draft_decode(path: str, draft_size: int) -> torch.Tensor | None:
    from PIL import Image

    with Image.open(path) as image:
        if image.format != "JPEG" or min(image.size) < 2 * draft_size:
            return None
        full = image.size
        image.draft("RGB", (draft_size, draft_size))
        if image.size == full:
            return None
        array = np.array(image.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1)


def gpu_jpeg_bytes(path: str, max_pixels: int | None) -> bytes | None:
    """The file's bytes when nvJPEG should decode it (a baseline or progressive JPEG in RGB or
    greyscale, within max_pixels), else None (decode it on the CPU). Plain bytes, so the
    DataLoader does not pin them (nvJPEG reads them from pageable memory)."""
    from vdc_lake.fileops.probe import open_image

    with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as f:
        if f.read(len(JPEG_MAGIC)) != JPEG_MAGIC:
            return None
    try:  # the header first, within the header limits: a file of junk is never read whole
        with open_image(path, max_pixels if max_pixels is not None else 1 << 62) as image:
            ok = image.format == "JPEG" and image.mode in GPU_JPEG_MODES
    except Exception:  # the CPU path reports why it does not decode
        return None
    if not ok:
        return None
    with open(path, "rb") as f:
        return f.read()


def resolve_decode(decode: str, device: torch.device) -> str:
    """"cpu" or "gpu" for a --decode choice. auto: gpu when the device is CUDA and torchvision's
    nvJPEG decoder works there (JPEG files then decode on the GPU, every other file on the CPU),
    else cpu. gpu without CUDA is an error."""
    if decode not in DECODE_MODES:
        raise ModelError(f"unknown decode mode {decode!r}: use {', '.join(DECODE_MODES)}")
    if decode == "cpu":
        return "cpu"
    if device.type != "cuda":
        if decode == "gpu":
            raise ModelError("--decode gpu needs a CUDA device (nvJPEG): use --device cuda, or --decode cpu")
        return "cpu"
    if decode == "gpu" or _nvjpeg_works(device):
        return "gpu"
    return "cpu"


@functools.cache
def _nvjpeg_works(device: torch.device) -> bool:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="JPEG")
    try:
        return decode_jpegs_on_device([buffer.getvalue()], device)[0] is not None
    except Exception:
        return False


def decode_jpegs_on_device(datas: Sequence[bytes | torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """uint8 [3, h, w] RGB on `device` for each JPEG's bytes (or uint8 [n] on the CPU), decoded by
    nvJPEG in one batched call; EXIF orientation is not applied (as on the CPU, like birder).
    A file nvJPEG cannot decode gives None (the caller decodes it on the CPU): the batch is
    retried one file at a time when the batched call fails."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    datas = [torch.frombuffer(bytearray(d), dtype=torch.uint8) if isinstance(d, bytes) else d for d in datas]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return list(decode_jpeg(list(datas), mode=ImageReadMode.RGB, device=device))
        except Exception:
            pass
        decoded: list[torch.Tensor | None] = []
        for data in datas:
            try:
                decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except Exception:
                decoded.append(None)
    return decoded


def rotate_clockwise(image: torch.Tensor, angle: int) -> torch.Tensor:
    """image [..., h, w] turned `angle` degrees clockwise (a multiple of 90), like the apply
    engine's rotate_<angle> turns the stored pixels."""
    return torch.rot90(image, -(int(angle) // 90) % 4, dims=(-2, -1)) if angle % 360 else image
