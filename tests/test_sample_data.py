"""The sample-data generator plants every problem kind it promises, deterministically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, UnidentifiedImageError

from examples.make_sample_data import BOMB_SIDE, PROBLEM_KINDS, make_sample_data

PILLOW_DEFAULT_MAX_PIXELS = 89_478_485
N_BASE = 40


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict]:
    """(root, manifest) for one small generated collection."""
    root = tmp_path_factory.mktemp("sample")
    return root, make_sample_data(root, n_base=N_BASE, seed=0)


def test_every_kind_is_planted_and_every_file_listed_once(sample):
    root, manifest = sample
    assert json.loads((root / "manifest.json").read_text()) == manifest
    listed = manifest["clean"] + [p for kind in PROBLEM_KINDS for p in manifest[kind]]
    for kind in PROBLEM_KINDS:
        assert manifest[kind], f"no {kind} planted"
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert sorted(listed) == sorted(on_disk - {"manifest.json"})
    assert len(manifest["clean"]) == N_BASE
    copies = [p for k in ("exact_copy", "resized_copy", "recompressed_copy",
                          "rotated_copy") for p in manifest[k]]
    assert sorted(manifest["copy_of"]) == sorted(copies)
    assert set(manifest["copy_of"].values()) <= set(manifest["clean"])


def test_base_images_are_varied_photos(sample):
    root, manifest = sample
    formats, sides = set(), []
    for rel in manifest["clean"]:
        with Image.open(root / rel) as img:
            img.load()
            formats.add(img.format)
            sides.append(img.size)
    assert formats == {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"}
    assert all(80 <= min(s) and max(s) <= 800 for s in sides)
    assert len({round(w / h, 2) for w, h in sides}) > 4


def test_truncated_jpeg_verifies_but_does_not_load(sample):
    root, manifest = sample
    path = root / manifest["truncated_jpeg"][0]
    with Image.open(path) as img:
        assert img.format == "JPEG"
        img.verify()  # headers only: passes
    with Image.open(path) as img, pytest.raises(OSError, match="truncated"):
        img.load()


def test_unreadable_files_are_not_identified(sample):
    root, manifest = sample
    assert (root / manifest["zero_byte"][0]).stat().st_size == 0
    for rel in manifest["zero_byte"] + manifest["non_image"]:
        with pytest.raises(UnidentifiedImageError):
            Image.open(root / rel)
    assert {Path(p).suffix for p in manifest["non_image"]} == {".jpg", ".png"}


def test_bomb_is_small_and_refused_with_default_limits(sample, monkeypatch):
    root, manifest = sample
    path = root / manifest["decompression_bomb"][0]
    assert path.stat().st_size < 100_000
    assert BOMB_SIDE**2 > 2 * PILLOW_DEFAULT_MAX_PIXELS
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PILLOW_DEFAULT_MAX_PIXELS)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.load()
        return img.size


def test_size_problems_break_only_their_rule(sample):
    root, manifest = sample
    (w, h), = [_size(root / p) for p in manifest["tiny"]]
    assert min(w, h) < 80
    for rel in manifest["panoramic"]:
        w, h = _size(root / rel)
        assert not 0.15 <= w / h <= 6.667 and 80 <= min(w, h) and max(w, h) <= 3200
    (w, h), = [_size(root / p) for p in manifest["oversized_pixels"]]
    assert max(w, h) > 3200 and 0.15 <= w / h <= 6.667
    big = root / manifest["oversized_file"][0]
    w, h = _size(big)
    assert big.stat().st_size > 10 * 1024 * 1024 and max(w, h) <= 3200


def test_unusual_modes(sample):
    root, manifest = sample
    with Image.open(root / manifest["cmyk"][0]) as img:
        assert (img.format, img.mode) == ("JPEG", "CMYK")
    with Image.open(root / manifest["sixteen_bit"][0]) as img:
        assert (img.format, img.mode) == ("PNG", "I;16")
    with Image.open(root / manifest["palette_transparency"][0]) as img:
        assert img.mode == "P" and "transparency" in img.info
    for rel in manifest["animated"]:
        with Image.open(root / rel) as img:
            assert img.is_animated and img.n_frames == 3
    with Image.open(root / manifest["exif_rotated"][0]) as img:
        assert img.getexif()[0x0112] == 6
        upright = ImageOps.exif_transpose(img)
        assert upright.size == img.size[::-1]


def test_exact_copies_are_byte_identical(sample):
    root, manifest = sample
    for rel in manifest["exact_copy"]:
        original = manifest["copy_of"][rel]
        assert rel != original
        assert (root / rel).read_bytes() == (root / original).read_bytes()


def _rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def test_resized_copies_are_scaled(sample):
    root, manifest = sample
    for rel in manifest["resized_copy"]:
        w, h = _size(root / rel)
        ow, oh = _size(root / manifest["copy_of"][rel])
        assert round(w / ow, 2) in (0.5, 0.75) and abs(h / oh - w / ow) < 0.01


def test_rotated_copies_undo_with_recorded_angle(sample):
    root, manifest = sample
    assert sorted(set(manifest["rotation_ccw"].values())) == [90, 180, 270]
    for rel, angle in manifest["rotation_ccw"].items():
        copy = _rgb(root / rel)
        original = np.asarray(_rgb(root / manifest["copy_of"][rel]), np.float32)
        errors = {}
        for undo in (0, 90, 180, 270):
            back = np.asarray(copy.rotate(-undo, expand=True), np.float32)
            if back.shape == original.shape:
                errors[undo] = float(np.abs(back - original).mean())
        # Only JPEG re-encoding noise is left at the recorded angle.
        assert errors[angle] < 10.0
        assert all(errors[angle] * 3 < e for a, e in errors.items() if a != angle)


def test_same_seed_same_bytes_other_seed_other_bytes(sample, tmp_path):
    root, manifest = sample
    again = make_sample_data(tmp_path / "again", n_base=8, seed=0)
    assert again["clean"] == manifest["clean"][:8]  # base images are a prefix
    for rel in again["clean"] + ["broken/cut_off.jpg", "modes/anim.gif",
                                 "modes/depth16.png", "sizes/tiny_40x60.jpg"]:
        assert (tmp_path / "again" / rel).read_bytes() == (root / rel).read_bytes(), rel
    make_sample_data(tmp_path / "other", n_base=2, seed=1)
    for rel in ["scenes/scene_0000.jpg", "broken/cut_off.jpg"]:
        assert (tmp_path / "other" / rel).read_bytes() != (root / rel).read_bytes()
