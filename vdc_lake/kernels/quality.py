"""Image-quality values of one small image: brightness, sharpness, information, colour.

Sanitize computes them in its decode pass from the reduced-size image it already decoded
(fileops.probe: a thumbnail of at most QUALITY_SIDE pixels on the long side, composited on
white where transparent), and the catalog keeps them per image version (image_quality); the
`quality_actions()` macro turns them into findings at the [quality] thresholds, so changing a
threshold reads no file. The definitions follow cleanvision's where one exists
(benchmarks/bench_quality_cleanvision.py measures the agreement):

- brightness: the luma (ITU-R BT.601, 0..255, as Pillow's convert("L")) over 255 (0..1);
  `dark` compares its 99th percentile (nearly every pixel is dark), `bright` its 5th (nearly
  every pixel is bright), as cleanvision does with its perceived brightness;
- sharpness: the variance of the Laplacian (8-neighbour, 3 x 3, clipped to +-128 as Pillow's
  filter gives it) of the luma at QUALITY_SIDE..2 x QUALITY_SIDE, divided by the variance of
  that luma: the share of the image's contrast in its finest details, so a dark or faded image
  is not called blurry for its low contrast (the plain variance of the Laplacian, as
  cleanvision uses it, falls with the contrast squared). Low for a blurred image (skimage's
  photos decoded at full size: 0.46 and up, the lowest a motion-blurred clock; 15 of 19 under
  0.3 after a Gaussian blur of radius 1.5% of the width), 0 for a flat one (`quality_actions`
  reports a flat image as low_information, not blurry);
- entropy: Shannon entropy of the same luma histogram (256 bins), in bits (0..8): low for an
  almost uniform image or a few flat colours;
- colour: the largest chroma over the pixels, max |Cb - 128|, |Cr - 128| (YCbCr as JPEG
  defines it, 0..128), computed as 0.5 |B - Y| / 0.886 and 0.5 |R - Y| / 0.701 from the 8-bit
  luma Y (so within 0.36 of the exact value, rounded to a whole level): 0 for a grayscale image
  stored as RGB (three bands of one value), None for one stored as one band.

One function computes them (``quality_values``), on the luma sanitize already made for the
built-in descriptor (fileops.probe): one 256-bin count of the luma and a few integer array
passes for the Laplacian and the chroma, no Pillow filter and no colour conversion, so the
cost per image stays a fraction of its decode (benchmarks/RESULTS.md, "One read per file").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The image is reduced by the integer factor that brings its long side under 2 x QUALITY_SIDE:
# at cleanvision's 64 a blur of 1.5% of the width is mostly gone, at 128 it shows.
QUALITY_SIDE = 128
# The values stored per image version, in this order (sql/schema/012_quality.sql).
QUALITY_COLUMNS = ("brightness_p99", "brightness_p5", "sharpness", "entropy", "colour")
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's convert("L")
# Cb - 128 = 0.5 (B - Y) / (1 - 0.114), Cr - 128 = 0.5 (R - Y) / (1 - 0.299) (JPEG's YCbCr).
_CB_PER_LEVEL, _CR_PER_LEVEL = 0.5 / 0.886, 0.5 / 0.701
_LEVELS = np.arange(256, dtype=np.float64)
_MOMENTS = np.stack([np.ones(256), _LEVELS, _LEVELS ** 2])  # [3, 256]: count, sum, sum of squares


@dataclass(frozen=True)
class QualityValues:
    """The values of one image (units in the module docstring); colour None for one band."""

    brightness_p99: float
    brightness_p5: float
    sharpness: float
    entropy: float
    colour: float | None

    def as_tuple(self) -> tuple[float | None, ...]:
        """The values in QUALITY_COLUMNS order."""
        return (self.brightness_p99, self.brightness_p5, self.sharpness, self.entropy, self.colour)


def quality_values(pixels: np.ndarray, luma: np.ndarray | None = None) -> QualityValues:
    """Quality values of pixels: uint8 [h, w, 3] (RGB) or [h, w] (one band), h, w >= 1.

    luma: uint8 [h, w], the pixels' 8-bit luma when the caller has it (Pillow's convert("L"),
    what sanitize shares with the descriptor); None: computed here (BT.601, rounded).
    """
    pixels = np.asarray(pixels)
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3) or not pixels.size:
        raise ValueError(f"pixels must be [h, w] or [h, w, 3], got shape {pixels.shape}")
    colour = None
    if pixels.ndim == 3:
        if luma is None:
            r, g, b = (pixels[..., i].astype(np.float32) for i in range(3))
            luma = np.floor(r * _LUMA_WEIGHTS[0] + g * _LUMA_WEIGHTS[1] + b * _LUMA_WEIGHTS[2] + 0.5).astype(np.uint8)
        colour = largest_chroma(pixels, luma)
    else:
        luma = pixels
    luma = np.asarray(luma)
    if luma.shape != pixels.shape[:2]:
        raise ValueError(f"luma must have the pixels' shape {pixels.shape[:2]}, got {luma.shape}")
    histogram = np.bincount(luma.ravel(), minlength=256).astype(np.float64)
    p5, p99 = histogram_percentiles(histogram, (5, 99))
    spread, detail = histogram_variance(histogram), laplacian_variance(luma)
    return QualityValues(brightness_p99=p99 / 255, brightness_p5=p5 / 255,
                         sharpness=detail / spread if spread > 1e-6 else 0.0,
                         entropy=histogram_entropy(histogram), colour=colour)


def largest_chroma(rgb: np.ndarray, luma: np.ndarray) -> float:
    """max |Cb - 128|, |Cr - 128| over rgb uint8 [h, w, 3] with its luma uint8 [h, w], rounded."""
    y = luma.astype(np.int16)
    blue, red = rgb[..., 2] - y, rgb[..., 0] - y  # int16: uint8 - int16
    cb = max(-int(blue.min()), int(blue.max())) * _CB_PER_LEVEL
    cr = max(-int(red.min()), int(red.max())) * _CR_PER_LEVEL
    return float(np.floor(max(cb, cr) + 0.5))


def _centred_laplacian(luma: np.ndarray) -> np.ndarray:
    """8 x centre - the 8 neighbours of luma uint8 [h, w] on the valid region, clipped to
    -128..127 as Pillow's 3 x 3 kernel filter (offset 128) gives it: int16 [h - 2, w - 2]."""
    x = np.asarray(luma).astype(np.int16)
    rows = x[:-2] + x[1:-1]
    rows += x[2:]
    box = rows[:, :-2] + rows[:, 1:-1]
    box += rows[:, 2:]
    centre = x[1:-1, 1:-1] * np.int16(9)
    centre -= box
    return np.clip(centre, -128, 127, out=centre)


def laplacian(luma: np.ndarray) -> np.ndarray:
    """The 8-neighbour Laplacian of luma uint8 [h, w] as Pillow's 3 x 3 kernel filter gives it,
    on the valid region: 8 x centre - the 8 neighbours, + 128, clipped to 0..255 (uint8
    [h - 2, w - 2]; empty under 3 x 3)."""
    luma = np.asarray(luma)
    if luma.shape[0] < 3 or luma.shape[1] < 3:
        return np.zeros((0, 0), np.uint8)
    return (_centred_laplacian(luma) + 128).astype(np.uint8)


def laplacian_variance(luma: np.ndarray) -> float:
    """Variance of ``laplacian(luma)`` (0 under 3 x 3 pixels)."""
    luma = np.asarray(luma)
    if luma.shape[0] < 3 or luma.shape[1] < 3:
        return 0.0
    detail = _centred_laplacian(luma).ravel().astype(np.float64)
    mean = detail.sum() / detail.size
    # einsum, not a BLAS dot: OpenBLAS threads a dot this long, which costs milliseconds on a busy box
    return float(np.einsum("i,i->", detail, detail) / detail.size - mean * mean)


def histogram_percentiles(histogram: np.ndarray, qs: tuple[float, ...]) -> list[int]:
    """The qs-th percentiles (0..100), nearest rank, of the values counted by histogram [bins]:
    the bin of each rank."""
    cumulative = np.cumsum(histogram)
    n = int(cumulative[-1])
    ranks = [min(n - 1, max(0, round(q / 100 * (n - 1)))) for q in qs]
    return np.searchsorted(cumulative, ranks, side="right").tolist()


def histogram_entropy(histogram: np.ndarray) -> float:
    """Shannon entropy in bits of the distribution counted by histogram [bins]."""
    histogram = np.asarray(histogram, np.float64)
    p = histogram[histogram > 0] / histogram.sum()
    return -float(np.einsum("i,i->", p, np.log2(p))) + 0.0  # never -0.0


def histogram_variance(histogram: np.ndarray) -> float:
    """Variance of the values 0..255 counted by histogram [256] (0 when it counts nothing)."""
    histogram = np.asarray(histogram, np.float64)
    n, total, squares = np.einsum("i,ji->j", histogram, _MOMENTS).tolist()
    if not n:
        return 0.0
    mean = total / n
    return max(squares / n - mean * mean, 0.0)
