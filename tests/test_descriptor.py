"""The built-in descriptor finds resized and recompressed copies in the sample data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from examples.make_sample_data import make_sample_data
from vdc_lake.descriptor import (
    DESCRIPTOR_DIM,
    DESCRIPTOR_NAME,
    DRAFT_SIZE,
    THUMBNAIL_SIZE,
    builtin_descriptor,
    builtin_descriptors,
    descriptors_from_thumbnails,
    rotate_descriptors,
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
    assert DESCRIPTOR_NAME == "builtin-dct"
    assert DESCRIPTOR_DIM == 143


def test_shape_dtype_and_unit_norm(sample):
    _, _, paths, desc = sample
    assert desc.shape == (len(paths), DESCRIPTOR_DIM) and desc.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["resized_copy", "recompressed_copy", "exact_copy"])
def test_copy_is_nearer_its_original_than_any_distinct_image(sample, kind):
    _, manifest, paths, desc = sample
    index = {p: i for i, p in enumerate(paths)}
    groups = _same_original(manifest)
    for copy in manifest[kind]:
        sims = desc @ desc[index[copy]]
        to_original = sims[index[manifest["copy_of"][copy]]]
        distinct = [i for i, p in enumerate(paths) if p not in groups[copy]]
        assert to_original > 0.98, copy
        assert to_original > sims[distinct].max() + 0.1, copy


def test_rotated_copies_match_through_rotate_descriptors(sample):
    _, manifest, paths, desc = sample
    index = {p: i for i, p in enumerate(paths)}
    groups = _same_original(manifest)
    for copy, angle in manifest["rotation_ccw"].items():
        query = rotate_descriptors(desc[index[manifest["copy_of"][copy]]], angle)
        sims = desc @ query
        distinct = [i for i, p in enumerate(paths) if p not in groups[copy]]
        assert sims[index[copy]] > sims[distinct].max() + 0.1, copy


def test_rotate_descriptors_is_exact_on_thumbnails():
    thumbs = np.random.default_rng(0).random((5, THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    desc = descriptors_from_thumbnails(thumbs)
    for quarter_turns in range(4):
        rotated = descriptors_from_thumbnails(np.rot90(thumbs, quarter_turns, axes=(1, 2)))
        np.testing.assert_allclose(rotate_descriptors(desc, 90 * quarter_turns), rotated,
                                   atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 90"):
        rotate_descriptors(desc, 45)


def test_deterministic_and_batch_equals_single(sample):
    root, manifest, _, _ = sample
    images = [_decode(root / p) for p in manifest["clean"][:6]]
    batch = builtin_descriptors(images)
    assert np.array_equal(batch, builtin_descriptors(images))
    for img, row in zip(images, batch):
        np.testing.assert_allclose(builtin_descriptor(img), row, atol=1e-6)
    assert builtin_descriptors([]).shape == (0, DESCRIPTOR_DIM)


def test_jpeg_draft_decode_agrees_with_full_decode(sample):
    root, manifest, _, _ = sample
    jpegs = [p for p in manifest["clean"] if p.endswith(".jpg")][:20]
    jpegs += manifest["oversized_pixels"]
    full = builtin_descriptors(_decode(root / p) for p in jpegs)
    draft = builtin_descriptors(_decode(root / p, draft=True) for p in jpegs)
    assert np.min(np.sum(full * draft, axis=1)) > 0.98


def test_every_mode_gives_a_comparable_unit_vector(sample):
    root, manifest, _, _ = sample
    rgb = _decode(root / manifest["clean"][0]).convert("RGB")
    reference = builtin_descriptor(rgb)
    gray16 = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
    variants = [rgb.convert(m) for m in ("L", "LA", "RGBA", "CMYK", "YCbCr", "LAB",
                                         "I", "F", "P")] + [gray16]
    for img in variants:
        sim = float(builtin_descriptor(img) @ reference)
        assert sim > 0.99, img.mode


def test_flat_image_gets_zero_vector():
    desc = builtin_descriptor(Image.new("RGB", (300, 200), (120, 30, 200)))
    assert desc.shape == (DESCRIPTOR_DIM,) and not desc.any()


def test_wrong_thumbnail_shape_is_rejected():
    with pytest.raises(ValueError, match="thumbnails must have shape"):
        descriptors_from_thumbnails(np.zeros((2, 16, 16)))
