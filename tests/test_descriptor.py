"""The built-in descriptor finds resized and recompressed copies in the sample data (view 0, the
whole image, is the one-view builtin-dct descriptor; the set is compared with set_distances)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from examples.make_sample_data import make_sample_data
from vdc_lake.kernels.descriptor import (
    DESCRIPTOR_DIM,
    DESCRIPTOR_NAME,
    DRAFT_SIZE,
    MULTI_VIEW_NAME,
    SET_DIM,
    THUMBNAIL_SIZE,
    VIEW_SCALES,
    VIEWS,
    builtin_descriptor,
    builtin_descriptors,
    builtin_vectors_for,
    descriptors_from_thumbnails,
    gray_thumbnail,
    rotate_descriptors,
    set_distances,
    view_thumbnails,
)

UNREADABLE = ("truncated_jpeg", "zero_byte", "non_image", "decompression_bomb")


def _decode(path: Path, *, draft: bool = False) -> Image.Image:
    with Image.open(path) as img:
        if draft and img.format == "JPEG":
            img.draft("RGB", DRAFT_SIZE)
        img.load()
        return img.copy()


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """(root, manifest, paths of every decodable file, their descriptors [n, D])."""
    root = tmp_path_factory.mktemp("sample")
    manifest = make_sample_data(root, seed=0)
    unreadable = {p for kind in UNREADABLE for p in manifest[kind]}
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.name != "manifest.json")
    paths = [p for p in paths if p not in unreadable]
    return root, manifest, paths, builtin_descriptors(_decode(root / p) for p in paths)


def _same_original(manifest: dict) -> dict[str, set[str]]:
    """Path -> the set of files that are copies of the same original (itself included)."""
    groups: dict[str, set[str]] = {}
    for copy, original in manifest["copy_of"].items():
        groups.setdefault(original, {original}).add(copy)
    return {p: g for g in groups.values() for p in g}


def test_constants():
    assert DESCRIPTOR_NAME == "builtin-dct" and MULTI_VIEW_NAME == "builtin-dct-ms"
    assert DESCRIPTOR_DIM == 143
    assert VIEW_SCALES[0] == 1.0 and SET_DIM == VIEWS * DESCRIPTOR_DIM


def test_shape_dtype_and_unit_norm_with_equal_views(sample):
    _, _, paths, desc = sample
    assert desc.shape == (len(paths), SET_DIM) and desc.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(desc.reshape(len(paths), VIEWS, -1), axis=2), VIEWS ** -0.5,
                               atol=1e-5)


def test_view_zero_is_the_one_view_descriptor(sample):
    root, manifest, _, _ = sample
    img = _decode(root / manifest["clean"][0])
    one_view = descriptors_from_thumbnails(gray_thumbnail(img)[None])[0]
    np.testing.assert_allclose(builtin_descriptor(img)[:DESCRIPTOR_DIM] * VIEWS ** 0.5, one_view, atol=1e-6)
    np.testing.assert_allclose(builtin_vectors_for(DESCRIPTOR_DIM, builtin_descriptor(img)), one_view, atol=1e-6)
    assert np.array_equal(builtin_vectors_for(SET_DIM, builtin_descriptor(img)), builtin_descriptor(img))
    with pytest.raises(ValueError, match="143"):
        builtin_vectors_for(512, builtin_descriptor(img))


def test_views_are_centre_crops():
    rng = np.random.default_rng(1)
    img = Image.fromarray((rng.random((200, 300)) * 255).astype(np.uint8))
    for scale, thumb in zip(VIEW_SCALES, view_thumbnails(img)):
        box = tuple(round(c, 6) for c in (150 * (1 - scale), 100 * (1 - scale), 150 * (1 + scale), 100 * (1 + scale)))
        crop = img.resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BOX, box=box, reducing_gap=2.0)
        np.testing.assert_array_equal(thumb, np.asarray(crop, np.float32))
    with pytest.raises(ValueError, match="0, 1"):
        view_thumbnails(img, (1.0, 1.2))


@pytest.mark.parametrize("kind", ["resized_copy", "recompressed_copy", "exact_copy"])
def test_copy_is_nearer_its_original_than_any_distinct_image(sample, kind):
    _, manifest, paths, desc = sample
    index = {p: i for i, p in enumerate(paths)}
    groups = _same_original(manifest)
    dist = set_distances(desc)
    for copy in manifest[kind]:
        to_original = dist[index[copy], index[manifest["copy_of"][copy]]]
        distinct = [i for i, p in enumerate(paths) if p not in groups[copy]]
        assert to_original < 0.02, copy
        assert to_original < dist[index[copy], distinct].min() - 0.1, copy


def test_set_distance_is_the_best_pair_with_a_whole_view():
    rng = np.random.default_rng(2)
    a, b = (descriptors_from_thumbnails(rng.random((VIEWS, THUMBNAIL_SIZE, THUMBNAIL_SIZE))) for _ in range(2))
    pairs = [(0, k) for k in range(VIEWS)] + [(k, 0) for k in range(VIEWS)]
    expected = min(1 - float(a[i] @ b[j]) for i, j in pairs)
    got = set_distances(a.reshape(1, -1), b.reshape(1, -1))
    np.testing.assert_allclose(got, [[expected]], atol=1e-6)
    b[1] = a[2]  # two crop views that agree do not make a pair: neither is a whole view
    assert set_distances(a.reshape(1, -1), b.reshape(1, -1))[0, 0] > 1e-3


def test_rotated_copies_match_through_rotate_descriptors(sample):
    _, manifest, paths, desc = sample
    index = {p: i for i, p in enumerate(paths)}
    groups = _same_original(manifest)
    for copy, angle in manifest["rotation_ccw"].items():
        query = rotate_descriptors(desc[index[manifest["copy_of"][copy]]], angle)
        dist = set_distances(query[None], desc)[0]
        distinct = [i for i, p in enumerate(paths) if p not in groups[copy]]
        assert dist[index[copy]] < dist[distinct].min() - 0.1, copy
        # every view, not only the whole image, turns with it
        views = (query * desc[index[copy]]).reshape(VIEWS, -1).sum(axis=1) * VIEWS
        assert views.min() > 0.95, (copy, views)


def test_rotate_descriptors_is_exact_on_thumbnails():
    thumbs = np.random.default_rng(0).random((5, THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    desc = descriptors_from_thumbnails(thumbs)
    for quarter_turns in range(4):
        rotated = descriptors_from_thumbnails(np.rot90(thumbs, quarter_turns, axes=(1, 2)))
        np.testing.assert_allclose(rotate_descriptors(desc, 90 * quarter_turns), rotated,
                                   atol=1e-5)
        # a multi-view vector turns view by view
        sets = rotate_descriptors(desc[:3].reshape(-1), 90 * quarter_turns)
        np.testing.assert_allclose(sets, rotated[:3].reshape(-1), atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 90"):
        rotate_descriptors(desc, 45)
    with pytest.raises(ValueError, match="multiple of 143"):
        rotate_descriptors(np.zeros(200, np.float32), 90)


def test_deterministic_and_batch_equals_single(sample):
    root, manifest, _, _ = sample
    images = [_decode(root / p) for p in manifest["clean"][:6]]
    batch = builtin_descriptors(images)
    assert np.array_equal(batch, builtin_descriptors(images))
    for img, row in zip(images, batch):
        np.testing.assert_allclose(builtin_descriptor(img), row, atol=1e-6)
    assert builtin_descriptors([]).shape == (0, SET_DIM)


def test_jpeg_draft_decode_agrees_with_full_decode(sample):
    root, manifest, _, _ = sample
    jpegs = [p for p in manifest["clean"] if p.endswith(".jpg")][:20]
    jpegs += manifest["oversized_pixels"]
    full = builtin_descriptors(_decode(root / p) for p in jpegs).reshape(-1, DESCRIPTOR_DIM)
    draft = builtin_descriptors(_decode(root / p, draft=True) for p in jpegs).reshape(-1, DESCRIPTOR_DIM)
    assert np.min(np.sum(full * draft, axis=1)) * VIEWS > 0.98  # every view


def test_every_mode_gives_a_comparable_unit_vector(sample):
    root, manifest, _, _ = sample
    rgb = _decode(root / manifest["clean"][0]).convert("RGB")
    reference = builtin_descriptor(rgb)
    gray16 = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
    variants = [rgb.convert(m) for m in ("L", "LA", "RGBA", "CMYK", "YCbCr", "LAB",
                                         "I", "F", "P")] + [gray16]
    for img in variants:
        sims = (builtin_descriptor(img) * reference).reshape(VIEWS, -1).sum(axis=1) * VIEWS
        assert sims.min() > 0.99, img.mode


def test_flat_image_gets_zero_vector():
    desc = builtin_descriptor(Image.new("RGB", (300, 200), (120, 30, 200)))
    assert desc.shape == (SET_DIM,) and not desc.any()


def test_wrong_thumbnail_shape_is_rejected():
    with pytest.raises(ValueError, match="thumbnails must have shape"):
        descriptors_from_thumbnails(np.zeros((2, 16, 16)))


def test_a_shared_luma_gives_the_same_descriptor_and_sanitize_shares_one():
    """Sanitize converts an opaque image to its luma once for the descriptor and the quality
    values (fileops.probe._shared_luma); the vector is the one the image gives on its own, and
    a transparent image composites as always (the shared luma is not used for it)."""
    from vdc_lake.fileops.probe import _decoded, _shared_luma

    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).resize((258, 194))
    for img in (rgb, rgb.convert("L")):
        luma = _shared_luma(img)
        assert luma is not None and luma.mode == "L"
        assert np.array_equal(builtin_descriptor(img, luma=luma), builtin_descriptor(img))
        decoded = _decoded(img, True)
        assert np.array_equal(decoded.descriptor, builtin_descriptor(img)) and decoded.quality is not None
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.new("L", rgb.size, 0).resize(rgb.size))
    rgba.paste((0, 0, 0, 255), (60, 40, 200, 150))
    assert _shared_luma(rgba) is None
    assert np.array_equal(_decoded(rgba, True).descriptor, builtin_descriptor(rgba))
    assert not np.allclose(builtin_descriptor(rgba), builtin_descriptor(rgb))
