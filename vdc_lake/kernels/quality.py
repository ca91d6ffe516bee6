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
- colour: the largest chroma over the pixels, max |Cb - 128|, |Cr - 128| (YCbCr as JPEG and
  Pillow define it, 0..128): 0 for a grayscale image stored as RGB (three bands of one value),
  None for one stored as one band.

Everything comes from two 256-bin histograms (the luma's and its Laplacian's) and the colour
value: sanitize has Pillow make them in C (an integer reduce, convert("L"), a 3 x 3 kernel
filter, histogram()), which keeps the cost per image to a few Pillow calls and no pass in
Python over the pixels (the cost to sanitize is in benchmarks/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The image is reduced by the integer factor that brings its long side under 2 x QUALITY_SIDE:
# at cleanvision's 64 a blur of 1.5% of the width is mostly gone, at 128 it shows.
QUALITY_SIDE = 128
# The values stored per image version, in this order (sql/schema/012_quality.sql).
QUALITY_COLUMNS = ("brightness_p99", "brightness_p5", "sharpness", "entropy", "colour")
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as Pillow's convert("L")
_CHROMA_WEIGHTS = np.array([[-0.168736, 0.5], [-0.331264, -0.418688], [0.5, -0.081312]], np.float32)  # JPEG's Cb, Cr


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


def quality_values(pixels: np.ndarray) -> QualityValues:
    """Quality values of pixels: uint8 [h, w, 3] (RGB) or [h, w] (one band), h, w >= 1.
    (Sanitize gets the same histograms from Pillow's C loops: fileops.probe._quality.)"""
    pixels = np.asarray(pixels)
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3) or not pixels.size:
        raise ValueError(f"pixels must be [h, w] or [h, w, 3], got shape {pixels.shape}")
    colour = None
    if pixels.ndim == 3:
        rgb = pixels.astype(np.float32)
        chroma = rgb @ _CHROMA_WEIGHTS  # [h, w, 2]: Cb - 128, Cr - 128
        colour = float(np.floor(np.abs(chroma) + np.float32(0.5)).max())
        pixels = np.floor(rgb @ _LUMA_WEIGHTS + np.float32(0.5)).astype(np.uint8)
    return quality_from_histograms(np.bincount(pixels.ravel(), minlength=256),
                                   np.bincount(laplacian(pixels).ravel(), minlength=256), colour)


def laplacian(luma: np.ndarray) -> np.ndarray:
    """The 8-neighbour Laplacian of luma uint8 [h, w] as Pillow's 3 x 3 kernel filter gives it,
    on the valid region: 8 x centre - the 8 neighbours, + 128, clipped to 0..255 (uint8
    [h - 2, w - 2]; empty under 3 x 3)."""
    x = np.asarray(luma).astype(np.int32)
    if x.shape[0] < 3 or x.shape[1] < 3:
        return np.zeros((0, 0), np.uint8)
    rows = x[:-2] + x[1:-1] + x[2:]
    box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    return np.clip(9 * x[1:-1, 1:-1] - box + 128, 0, 255).astype(np.uint8)


def quality_from_histograms(luma_histogram: np.ndarray, laplacian_histogram: np.ndarray,
                            colour: float | None) -> QualityValues:
    """Quality values from the 256-bin histograms of the luma [256] and of its Laplacian (+128,
    clipped to 0..255: laplacian) [256], and the colour value (the largest chroma; None for one
    band)."""
    luma_histogram = np.asarray(luma_histogram, np.float64)
    p5, p99 = histogram_percentiles(luma_histogram, (5, 99))
    spread = histogram_variance(luma_histogram)
    detail = histogram_variance(np.asarray(laplacian_histogram, np.float64))
    return QualityValues(brightness_p99=p99 / 255, brightness_p5=p5 / 255,
                         sharpness=detail / spread if spread > 1e-6 else 0.0,
                         entropy=histogram_entropy(luma_histogram), colour=colour)


def histogram_percentiles(histogram: np.ndarray, qs: tuple[float, ...]) -> list[int]:
    """The qs-th percentiles (0..100), nearest rank, of the values counted by histogram [bins]:
    the bin of each rank."""
    cumulative = np.cumsum(histogram)
    n = int(cumulative[-1])
    ranks = [min(n - 1, max(0, round(q / 100 * (n - 1)))) for q in qs]
    return [int(i) for i in np.searchsorted(cumulative, ranks, side="right")]


def histogram_entropy(histogram: np.ndarray) -> float:
    """Shannon entropy in bits of the distribution counted by histogram [bins]."""
    histogram = np.asarray(histogram, np.float64)
    p = histogram[histogram > 0] / histogram.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # never -0.0


_LEVELS = np.arange(256, dtype=np.float64)


def histogram_variance(histogram: np.ndarray) -> float:
    """Variance of the values 0..255 counted by histogram [256] (0 when it counts nothing)."""
    n = histogram.sum()
    if not n:
        return 0.0
    mean = histogram @ _LEVELS / n
    return float(histogram @ (_LEVELS - mean) ** 2 / n)
