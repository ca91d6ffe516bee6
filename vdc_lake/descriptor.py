"""Built-in, weight-free copy-detection descriptor ("builtin-dct").

Recipe, per image:

1. grayscale (luma; palette, CMYK, 16-bit and float modes handled, alpha ignored);
2. area-average (BOX) resize to a THUMBNAIL_SIZE x THUMBNAIL_SIZE (32 x 32) square,
   ignoring the aspect ratio;
3. orthonormal 2-D DCT-II of the thumbnail, as two small matrix products;
4. keep the low-frequency BLOCK x BLOCK (12 x 12) corner and drop its DC term (which is
   exactly subtracting the thumbnail's mean brightness, i.e. centring);
5. L2-normalise. DESCRIPTOR_DIM = 12 * 12 - 1 = 143 float32 values.

Cosine similarity between two descriptors is their dot product. A constant (flat) image
has no structure to describe and gets the zero vector (similarity 0 to everything).

What it is good for: exact and near-exact copies. The low frequencies survive resizing,
re-encoding (JPEG / WebP quality 40+), format changes and mild colour or brightness
changes, so such copies sit very close to their original. What it is not: it is not
invariant to crops, flips, borders, overlays or rotation (though a 90/180/270 degree
rotation maps to a cheap, exact permutation with sign flips of the coefficients, see
``rotate_descriptors``), and it knows nothing about semantics. It is much weaker than
SSCD (``resnet_v1_50_c1_sscd``); use it as the offline default, not as a substitute.

Speed, beyond decode, on one core: ~0.4 ms for an 800 x 600 RGB image, ~5 ms at
3600 x 1400. Large JPEGs are best decoded at reduced scale first
(``Image.draft("RGB", DRAFT_SIZE)``, ~0.1 ms left after it); the descriptor changes very
little (cosine > 0.98 to the full decode), because both paths average the same pixels
down to 32 x 32.

Dataset-level centring (subtracting the mean descriptor, as VDC does for SSCD) is a
dedup step, not part of this per-image function.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

DESCRIPTOR_NAME = "builtin-dct"
THUMBNAIL_SIZE = 32
BLOCK = 12
DESCRIPTOR_DIM = BLOCK * BLOCK - 1
# Cosine-distance thresholds recorded with every builtin set (embedding_sets.apply_threshold /
# report_threshold); dedup uses them unless the config sets its own. SSCD's 0.25 links
# unrelated photos with this descriptor (~600 false pairs on real photos); 0.08 keeps false
# pairs near zero while resized / recompressed copies stay well below it.
DEDUP_APPLY_THRESHOLD = 0.08
DEDUP_REPORT_THRESHOLD = 0.16
# JPEG draft target: DCT-domain downscaling never goes below this, so 32 x 32 is still
# an average of >= 2 x 2 decoded pixels.
DRAFT_SIZE = (2 * THUMBNAIL_SIZE, 2 * THUMBNAIL_SIZE)

_FLOAT_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix [n, n]: row k is the k-th cosine basis vector."""
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    basis = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis


# Only the first BLOCK basis rows are ever needed: [BLOCK, THUMBNAIL_SIZE].
_LOW_DCT = _dct_matrix(THUMBNAIL_SIZE)[:BLOCK]
# Coefficient (u, v) is kept at flat index u * BLOCK + v; index 0 is the DC term.
_U, _V = np.divmod(np.arange(1, BLOCK * BLOCK), BLOCK)


def _grayscale(img: Image.Image) -> Image.Image:
    """One-band view of ``img``: mode L, or F for 16-bit / integer / float images."""
    if img.mode == "L":
        return img
    if img.mode in _FLOAT_MODES:
        return img.convert("F")  # scale is irrelevant: the descriptor is normalised
    if img.mode in ("P", "PA"):
        # Palette entries carry the colour; transparency is ignored like alpha.
        return img.convert("RGBA").convert("L")
    if img.mode == "LAB":
        return img.getchannel("L")
    try:
        return img.convert("L")
    except ValueError:  # exotic modes Pillow cannot take to L directly
        return img.convert("RGB").convert("L")


def gray_thumbnail(img: Image.Image) -> np.ndarray:
    """Grayscale, area-averaged thumbnail [THUMBNAIL_SIZE, THUMBNAIL_SIZE] float32.

    Any mode and size; the aspect ratio is not kept. Pixel units are those of the
    grayscale image (0..255 for 8-bit); only relative values matter downstream.
    """
    size = (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    # BOX on a reduced image is an area average, like the DCT-scaled JPEG draft path,
    # so full and draft decodes agree. reducing_gap makes the big step an integer
    # reduce(), which is several times faster on large images.
    thumb = _grayscale(img).resize(size, Image.Resampling.BOX, reducing_gap=2.0)
    return np.asarray(thumb, dtype=np.float32)


def descriptors_from_thumbnails(thumbnails: np.ndarray) -> np.ndarray:
    """Descriptors [n, DESCRIPTOR_DIM] float32 from thumbnails [n, 32, 32].

    Each row is L2-normalised, or all zeros for a flat thumbnail.
    """
    thumbs = np.asarray(thumbnails, dtype=np.float64)
    if thumbs.ndim != 3 or thumbs.shape[1:] != (THUMBNAIL_SIZE, THUMBNAIL_SIZE):
        raise ValueError(f"thumbnails must have shape [n, {THUMBNAIL_SIZE}, "
                         f"{THUMBNAIL_SIZE}], got {thumbs.shape}")
    coeffs = _LOW_DCT @ thumbs @ _LOW_DCT.T  # [n, BLOCK, BLOCK]
    desc = coeffs.reshape(len(thumbs), -1)[:, 1:]  # drop DC: centring
    norms = np.linalg.norm(desc, axis=1, keepdims=True)
    # Relative floor: a flat image's AC energy is rounding noise, not structure.
    energy = np.linalg.norm(coeffs.reshape(len(thumbs), -1), axis=1, keepdims=True)
    flat = norms <= 1e-6 * np.maximum(energy, 1e-12)
    return np.where(flat, 0.0, desc / np.where(flat, 1.0, norms)).astype(np.float32)


def builtin_descriptor(img: Image.Image) -> np.ndarray:
    """The built-in descriptor of one image: [DESCRIPTOR_DIM] float32, unit L2 norm."""
    return descriptors_from_thumbnails(gray_thumbnail(img)[None])[0]


def builtin_descriptors(images: Iterable[Image.Image]) -> np.ndarray:
    """Descriptors of many images: [n, DESCRIPTOR_DIM] float32 (n may be 0)."""
    thumbs = [gray_thumbnail(img) for img in images]
    if not thumbs:
        return np.zeros((0, DESCRIPTOR_DIM), dtype=np.float32)
    return descriptors_from_thumbnails(np.stack(thumbs))


def rotate_descriptors(descriptors: np.ndarray, degrees_ccw: int) -> np.ndarray:
    """Descriptors of the same images rotated ``degrees_ccw`` (multiple of 90) degrees.

    descriptors: [n, DESCRIPTOR_DIM] or [DESCRIPTOR_DIM]; returns the same shape. Exact
    for the thumbnail (a 90 degree turn transposes the coefficient block and flips the
    sign of odd rows), so matching rotated copies costs no extra decoding.
    """
    if degrees_ccw % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {degrees_ccw}")
    desc = np.asarray(descriptors, dtype=np.float32)
    full = np.zeros(desc.shape[:-1] + (BLOCK, BLOCK), dtype=np.float32)
    full[..., _U, _V] = desc
    odd_rows = np.where(np.arange(BLOCK) % 2 == 1, -1.0, 1.0).astype(np.float32)[:, None]
    for _ in range((degrees_ccw // 90) % 4):
        # np.rot90 (counter-clockwise): C'[u, v] = (-1)^u * C[v, u].
        full = odd_rows * np.swapaxes(full, -1, -2)
    return full[..., _U, _V]
