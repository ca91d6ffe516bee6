"""Built-in, weight-free copy-detection descriptor: a set of centre-crop views that sees
transparency ("builtin-dct-msa", the default since issue 23); sets made before it hold the
one view ("builtin-dct") or the views without alpha ("builtin-dct-ms").

Recipe of one view, per image:

1. grayscale (luma; palette, CMYK, 16-bit and float modes handled); an image with
   transparency (alpha band, or a transparent palette index / colour) is composited on a
   fixed white background, BACKGROUND: luma * a + BACKGROUND * (1 - a), a = alpha / 255,
   what a viewer or a document shows. Up to a constant (which step 4 removes) that is the
   luma composited on black minus BACKGROUND times the alpha shape, so the outline of an
   icon shows against the background and the dark strokes inside it still count. An opaque
   image (no alpha, or alpha 255 everywhere) gets exactly the descriptor of before
   (builtin-dct-ms);
2. area-average (BOX) resize of the view's region to a THUMBNAIL_SIZE x THUMBNAIL_SIZE
   (32 x 32) square, ignoring the aspect ratio;
3. orthonormal 2-D DCT-II of the thumbnail, as two small matrix products;
4. keep the low-frequency BLOCK x BLOCK (12 x 12) corner and drop its DC term (which is
   exactly subtracting the thumbnail's mean brightness, i.e. centring);
5. L2-normalise. DESCRIPTOR_DIM = 12 * 12 - 1 = 143 float32 values.

The multi-view set ("builtin-dct-ms") describes VIEWS = 3 centred regions of the image, at
VIEW_SCALES = 1.0, 0.9 and 0.81 of its width and height, each by the recipe above, stored
concatenated and scaled by 1 / sqrt(VIEWS) so the whole vector has unit norm (its plain
cosine, as k-means or `filter examples` use it, is the mean of the views' cosines):
SET_DIM = 3 * 143 = 429 values, view 0 (the whole image) first, so a set vector's first
DESCRIPTOR_DIM values are the one-view "builtin-dct" descriptor times 1 / sqrt(3). Two images
are compared as sets: their distance is the smallest cosine distance between one image's
whole view and any view of the other (``set_distances``; dedup searches the views as rows and
folds the pairs back to images). A centre crop that keeps 80-90% of each side then lies
close to a view of its original (a crop cutting 1/12 from each side keeps 0.833, between the
0.9 and 0.81 views), while resized / recompressed copies still match whole view to whole view.
Measured on real photos (benchmarks/bench_descriptor_photos.py, RESULTS.md): the one view
finds 5% of such crops at the apply threshold 0.08, the set 81% (the misses are stochastic
textures and a star field, whose low frequencies change with scale).

Cosine similarity between two views is their dot product (times VIEWS for the scaled views of
a set vector). A constant (flat) region has no structure to describe and gets the zero vector
(similarity 0 to everything).

What it is good for: exact and near-exact copies, and centre crops. The low frequencies
survive resizing, re-encoding (JPEG / WebP quality 30+), format changes and mild colour or
brightness changes, so such copies sit very close to their original. What it is not: it is
not invariant to off-centre crops, flips, borders, overlays or rotation (though a 90/180/270
degree rotation maps to a cheap, exact permutation with sign flips of each view's
coefficients, see ``rotate_descriptors``), and it knows nothing about semantics. It is much
weaker than SSCD (``resnet_v1_50_c1_sscd``); use it as the offline default, not as a substitute.

Speed, beyond decode, on one core: one view ~0.3 ms for an 800 x 600 JPEG decoded at
reduced scale (``Image.draft("RGB", DRAFT_SIZE)``), ~1.7 ms for a full 800 x 600 decode,
~12 ms at 3600 x 1400. The three views cost ~1.6-2.5x one (the grayscale conversion is
shared, each view is one Pillow resize): on the benchmark's 21 real photos, decoded as
sanitize decodes them (3.9-4.5 ms), one view 0.28-0.41 ms and the set 0.55-0.83 ms, i.e.
+0.23-0.51 ms per image (5 runs on a shared 2-core VM). Sanitize shares the grayscale with
the image-quality values (``luma``), and the views leave Pillow as one buffer: on the 1/8
draft of a 1032 x 774 JPEG (129 x 97) the set costs ~0.2 ms, of which the three Pillow
resizes are ~0.08 ms (benchmarks/RESULTS.md, "One read per file"). The draft changes the descriptor
very little (cosine > 0.98 to the full decode, per view), because both paths average the
same pixels down to 32 x 32.

Transparency (issue 23): without alpha, the descriptor described the colours hidden under
transparent pixels (whatever the encoder left there), so distinct icons paired far under the
apply threshold and a one-colour (symbolic) icon was flat (the zero vector: its copies were
never found). Compositing is one fixed weighting of "the colours" and "the alpha shape";
white was measured against black and a background outside the colour range (heavier shape):
the more weight on the outline, the closer the icons of one theme, which share outlines
(faces, pages, folders). Opaque photos keep their vectors exactly, and the view count and
size (429 values) stay those of builtin-dct-ms, so the search, rotations and thresholds are
unchanged. What it is weak at on graphics (benchmarks/bench_descriptor_graphics.py,
RESULTS.md): icons of one theme that share their outline and differ in small details (a
face's mouth, zoom-in / zoom-out, a document's small emblem) still pair under the apply
threshold (gray 32 x 32 low frequencies hold neither colour nor such details; use SSCD for
graphics collections); a white or very light glyph on transparency is flat on white (the
zero vector: never paired, its copies not found); an icon flattened on another background
is another image to it.

Dataset-level centring (subtracting the mean descriptor, as VDC does for SSCD) is a
dedup step, not part of this per-image function.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageChops

DESCRIPTOR_NAME = "builtin-dct"  # one view, alpha ignored (builtin sets made before issue 15)
MULTI_VIEW_NAME = "builtin-dct-ms"  # VIEW_SCALES views, alpha ignored (builtin sets made before issue 23)
ALPHA_VIEW_NAME = "builtin-dct-msa"  # VIEW_SCALES views composited as above: what new builtin sets hold
# Models of builtin sets made before the descriptor saw alpha: their vectors equal the new ones
# for opaque images only, so transparent images are never added to them (catalog/sets.py).
LEGACY_MODELS = (DESCRIPTOR_NAME, MULTI_VIEW_NAME)
# The luma (0..255) transparent pixels are composited on: white (measured against black and
# against a background below black, bench_descriptor_graphics.py --backgrounds).
BACKGROUND = 255.0
THUMBNAIL_SIZE = 32
BLOCK = 12
DESCRIPTOR_DIM = BLOCK * BLOCK - 1  # values per view
# Centre regions described, as fractions of the width and height; view 0 is the whole image.
# Steps of 0.9: a centre crop keeping 0.78..1.0 of each side is within ~5% of a view's scale.
VIEW_SCALES = (1.0, 0.9, 0.81)
VIEWS = len(VIEW_SCALES)
SET_DIM = VIEWS * DESCRIPTOR_DIM
# Views per stored vector of each builtin model (any other model's vector is one view).
BUILTIN_MODELS = {DESCRIPTOR_NAME: 1, MULTI_VIEW_NAME: VIEWS, ALPHA_VIEW_NAME: VIEWS}
# Cosine-distance thresholds (apply, report) recorded with every builtin set
# (embedding_sets.apply_threshold / report_threshold); dedup uses them unless the config sets
# its own. SSCD's 0.25 links unrelated photos with this descriptor (~600 false pairs on real
# photos); 0.08 keeps false pairs near zero while resized / recompressed copies stay well
# below it. The multi-view set compares 2 * VIEWS - 1 view pairs per image pair, not one, and
# still gives no false pair below 0.2 on the 21 real photos and 240 synthetic images measured
# (benchmarks/bench_descriptor_photos.py); at 0.08 it finds 81% of 1/12-per-side centre crops
# of real photos (95% at 0.12, where false pairs start to cost more on large collections).
DEDUP_THRESHOLDS = {DESCRIPTOR_NAME: (0.08, 0.16), MULTI_VIEW_NAME: (0.08, 0.16), ALPHA_VIEW_NAME: (0.08, 0.16)}
# JPEG draft target: DCT-domain downscaling never goes below this, so a 32 x 32 view is
# still an average of >= 2 x 2 decoded pixels (>= 1.6 x 1.6 for the 0.81 view).
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
    """One-band view of ``img``, alpha ignored: mode L, or F for 16-bit / integer / float images."""
    if img.mode == "L":
        return img
    if img.mode in _FLOAT_MODES:
        return img.convert("F")  # scale is irrelevant: the descriptor is normalised
    if img.mode in ("P", "PA"):
        return img.convert("RGBA").convert("L")
    if img.mode == "LAB":
        return img.getchannel("L")
    try:
        return img.convert("L")
    except ValueError:  # exotic modes Pillow cannot take to L directly
        return img.convert("RGB").convert("L")


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def alpha_band(img: Image.Image) -> Image.Image | None:
    """The alpha of ``img`` as an L image, or None when every pixel is opaque (no alpha band,
    no transparent palette index or colour, or alpha 255 everywhere)."""
    if img.mode in _ALPHA_MODES:
        alpha = img.getchannel("A")
    elif "transparency" in img.info and img.mode in ("P", "L", "RGB"):
        alpha = img.convert("RGBA" if img.mode != "L" else "LA").getchannel("A")
    else:
        return None
    return None if alpha.getextrema()[0] == 255 else alpha


def _bands(img: Image.Image, luma: Image.Image | None = None) -> tuple[Image.Image, Image.Image | None]:
    """(luma premultiplied by alpha, alpha) of an image with transparency; (luma, None) else
    (``luma``, img's grayscale, where the caller made it already). Compositing is linear in
    these two, so each is area-averaged on its own: exact, and two 32 x 32 resizes instead of
    a full-size float image."""
    alpha = alpha_band(img)
    if alpha is None:
        return (luma if luma is not None else _grayscale(img)), None
    rgba = img if img.mode in ("RGBA", "LA") else img.convert("RGBA")
    return ImageChops.multiply(rgba.convert("L"), alpha), alpha


def gray_thumbnail(img: Image.Image) -> np.ndarray:
    """Grayscale, area-averaged thumbnail [THUMBNAIL_SIZE, THUMBNAIL_SIZE] float32, a
    transparent image composited as the module docstring says.

    Any mode and size; the aspect ratio is not kept. Pixel units are those of the
    grayscale image (0..255 for 8-bit); only relative values matter downstream.
    """
    return view_thumbnails(img, (1.0,))[0]


def view_thumbnails(img: Image.Image, scales: tuple[float, ...] = VIEW_SCALES, *,
                    luma: Image.Image | None = None) -> np.ndarray:
    """Thumbnails [len(scales), THUMBNAIL_SIZE, THUMBNAIL_SIZE] float32 of centred regions
    of ``img`` that span ``scales`` (fractions in (0, 1]) of its width and height.

    One grayscale conversion serves every view (``luma``: img.convert("L"), where the caller
    made it already; used for an opaque image only); scale 1.0 is exactly gray_thumbnail. An
    image with transparency is composited on BACKGROUND: luma * a + BACKGROUND * (1 - a), a = alpha / 255.
    """
    gray, alpha = _bands(img, luma)
    thumbs = _stacked(gray, [_view(gray, scale) for scale in scales])
    if alpha is not None:
        covered = _stacked(alpha, [_view(alpha, scale) for scale in scales])
        thumbs += np.float32(BACKGROUND) * (1 - covered / np.float32(255))
    return thumbs


def _stacked(band: Image.Image, views: list[Image.Image]) -> np.ndarray:
    """The views (32 x 32 images of band's mode) as float32 [len(views), 32, 32]: one buffer,
    one conversion (Pillow's array export costs more per call than this whole stack)."""
    dtype = np.uint8 if band.mode == "L" else np.float32  # L or F (_grayscale)
    data = np.frombuffer(b"".join(view.tobytes() for view in views), dtype)
    return data.astype(np.float32).reshape(len(views), THUMBNAIL_SIZE, THUMBNAIL_SIZE)


def _view(band: Image.Image, scale: float) -> Image.Image:
    """The centred region spanning ``scale`` of one band, area-averaged to 32 x 32."""
    if not 0 < scale <= 1:
        raise ValueError(f"view scales are fractions of the image in (0, 1], got {scale}")
    width, height = band.size
    # Float box: the region is exact whatever the size, so a view of a turned image
    # is the turned view (rotate_descriptors works per view). Rounded to 1e-6 px: the
    # reduce step below snaps the box to whole pixels, where 14.999999 and 15 differ.
    box = None if scale == 1 else tuple(round(c, 6) for c in (
        (1 - scale) * width / 2, (1 - scale) * height / 2, (1 + scale) * width / 2, (1 + scale) * height / 2))
    # BOX on a reduced image is an area average, like the DCT-scaled JPEG draft path,
    # so full and draft decodes agree. reducing_gap makes the big step an integer
    # reduce(), which is several times faster on large images.
    size = (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    return band.resize(size, Image.Resampling.BOX, box=box, reducing_gap=2.0)


def descriptors_from_thumbnails(thumbnails: np.ndarray) -> np.ndarray:
    """Descriptors [n, DESCRIPTOR_DIM] float32 from thumbnails [n, 32, 32].

    Each row is L2-normalised, or all zeros for a flat thumbnail.
    """
    thumbs = np.asarray(thumbnails, dtype=np.float64)
    if thumbs.ndim != 3 or thumbs.shape[1:] != (THUMBNAIL_SIZE, THUMBNAIL_SIZE):
        raise ValueError(f"thumbnails must have shape [n, {THUMBNAIL_SIZE}, "
                         f"{THUMBNAIL_SIZE}], got {thumbs.shape}")
    coeffs = (_LOW_DCT @ thumbs @ _LOW_DCT.T).reshape(len(thumbs), -1)  # [n, BLOCK * BLOCK]
    desc = coeffs[:, 1:]  # drop DC: centring
    norms = np.sqrt(np.einsum("ij,ij->i", desc, desc))[:, None]
    # Relative floor: a flat image's AC energy is rounding noise, not structure.
    energy = np.sqrt(np.einsum("ij,ij->i", coeffs, coeffs))[:, None]
    flat = norms <= 1e-6 * np.maximum(energy, 1e-12)
    return np.where(flat, 0.0, desc / np.where(flat, 1.0, norms)).astype(np.float32)


def builtin_descriptor(img: Image.Image, *, luma: Image.Image | None = None) -> np.ndarray:
    """The built-in (multi-view) descriptor of one image: [SET_DIM] float32 of unit norm (or
    zero), VIEWS views of norm 1 / sqrt(VIEWS) concatenated, the whole image first.
    luma: img.convert("L") where the caller made it already (sanitize shares it with the
    image-quality values); None: made here."""
    return _as_set(descriptors_from_thumbnails(view_thumbnails(img, luma=luma)))


def builtin_descriptors(images: Iterable[Image.Image]) -> np.ndarray:
    """Descriptors of many images: [n, SET_DIM] float32 (n may be 0)."""
    thumbs = [view_thumbnails(img) for img in images]
    if not thumbs:
        return np.zeros((0, SET_DIM), dtype=np.float32)
    return _as_set(descriptors_from_thumbnails(np.concatenate(thumbs))).reshape(len(thumbs), SET_DIM)


def _as_set(views: np.ndarray) -> np.ndarray:
    """Unit views [n * VIEWS, DESCRIPTOR_DIM] -> set vectors, flat [n * SET_DIM] float32."""
    return (views * np.float32(1 / np.sqrt(VIEWS))).reshape(-1)


def views_per_vector(model: str | None) -> int:
    """How many views one stored vector of ``model`` holds: VIEWS for the multi-view set,
    1 for the one-view builtin set and for any other model."""
    return BUILTIN_MODELS.get(model or "", 1)


def builtin_vectors_for(dim: int, descriptors: np.ndarray) -> np.ndarray:
    """``descriptors`` [..., SET_DIM] for a builtin set of ``dim`` values: as they are, or
    for a one-view set (DESCRIPTOR_DIM) made before the multi-view descriptor, view 0 (the
    whole image) back at unit norm: the one-view descriptor (to float32 rounding)."""
    if dim not in (DESCRIPTOR_DIM, SET_DIM):
        raise ValueError(f"a builtin set holds {DESCRIPTOR_DIM} (one view) or {SET_DIM} ({VIEWS} views) "
                         f"values per image, not {dim}")
    descriptors = np.asarray(descriptors, np.float32)
    if dim == SET_DIM:
        return descriptors
    return descriptors[..., :DESCRIPTOR_DIM] * np.float32(np.sqrt(VIEWS))


def set_distances(a: np.ndarray, b: np.ndarray | None = None, *, views: int = VIEWS) -> np.ndarray:
    """Image-level cosine distances [n, m] between set vectors a [n, views * DESCRIPTOR_DIM]
    and b [m, ...] (None: a with itself): for each pair, the smallest distance between one
    image's whole view (view 0) and any view of the other. The dedup search gives the same
    distances (its rows are the views; see vdc_lake.stages.dedup.fold_view_pairs)."""
    a = _unit_views(a, views)
    b = a if b is None else _unit_views(b, views)
    best = np.full((len(a), len(b)), np.inf)
    for k in range(views):
        best = np.minimum(best, 1 - a[:, 0] @ b[:, k].T)
        best = np.minimum(best, 1 - a[:, k] @ b[:, 0].T)
    return np.clip(best, 0.0, 2.0)


def _unit_views(vectors: np.ndarray, views: int) -> np.ndarray:
    """[n, views, d] float64 views of set vectors [n, views * d], each at unit norm (or zero)."""
    x = np.asarray(vectors, np.float64).reshape(len(vectors), views, -1)
    norms = np.linalg.norm(x, axis=2, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def rotate_descriptors(descriptors: np.ndarray, degrees_ccw: int) -> np.ndarray:
    """Descriptors of the same images rotated ``degrees_ccw`` (multiple of 90) degrees.

    descriptors: [..., k * DESCRIPTOR_DIM] (k views: 1 for builtin-dct, VIEWS for the set);
    returns the same shape. Exact per view for the thumbnails (a 90 degree turn transposes
    each view's coefficient block and flips the sign of odd rows; a centred view of the
    turned image is the turned view; on images, Pillow's integer reduce grid before the
    crop views' resize leaves cosine > 0.99), so matching rotated copies costs no extra decoding.
    """
    if degrees_ccw % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {degrees_ccw}")
    desc = np.asarray(descriptors, dtype=np.float32)
    if desc.shape[-1] % DESCRIPTOR_DIM:
        raise ValueError(f"descriptors have {desc.shape[-1]} values, not a multiple of {DESCRIPTOR_DIM} (one view)")
    views = desc.reshape(desc.shape[:-1] + (desc.shape[-1] // DESCRIPTOR_DIM, DESCRIPTOR_DIM))
    full = np.zeros(views.shape[:-1] + (BLOCK, BLOCK), dtype=np.float32)
    full[..., _U, _V] = views
    odd_rows = np.where(np.arange(BLOCK) % 2 == 1, -1.0, 1.0).astype(np.float32)[:, None]
    for _ in range((degrees_ccw // 90) % 4):
        # np.rot90 (counter-clockwise): C'[u, v] = (-1)^u * C[v, u].
        full = odd_rows * np.swapaxes(full, -1, -2)
    return full[..., _U, _V].reshape(desc.shape)
