"""Image-quality findings: the kernel's values, sanitize storing them per image version, the
`quality` decision (report only by default, deletes past a configured delete_* threshold)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from examples.make_sample_data import photo
from tests.conftest import catalog_rows, ok_output
from vdc_lake.kernels.quality import histogram_entropy, laplacian, quality_values

PLANTED = {  # file -> the issue it must get
    "dark.jpg": "dark", "bright.jpg": "bright", "blurry.jpg": "blurry", "flat.png": "low_information",
    "gray_as_rgb.jpg": "grayscale",
}


def _photo(seed: int, size=(480, 360)) -> Image.Image:
    return photo(np.random.default_rng(seed), *size).convert("RGB")


def _planted_folder(root: Path) -> None:
    """Six normal synthetic photos, and one image per issue made from a seventh."""
    (root / "ok").mkdir(parents=True)
    (root / "bad").mkdir()
    for seed in range(6):
        _photo(seed).save(root / "ok" / f"photo{seed}.jpg", quality=90)
    base = _photo(100)
    Image.eval(base, lambda v: v * 0.12).save(root / "bad" / "dark.jpg", quality=90)
    Image.eval(base, lambda v: 245 + v * 0.04).save(root / "bad" / "bright.jpg", quality=90)
    base.filter(ImageFilter.GaussianBlur(12)).save(root / "bad" / "blurry.jpg", quality=90)
    Image.new("RGB", (400, 300), (120, 140, 90)).save(root / "bad" / "flat.png")
    base.convert("L").convert("RGB").save(root / "bad" / "gray_as_rgb.jpg", quality=90)


def test_kernel_values_on_planted_arrays():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    values = quality_values(sharp)
    assert 0 <= values.brightness_p5 <= values.brightness_p99 <= 1 and values.colour > 100
    assert values.entropy > 7.5 and values.sharpness > 3  # white noise: the clipped Laplacian's variance dwarfs it
    ramp = np.tile(np.linspace(0, 255, 64), (64, 1))
    assert quality_values(ramp.astype(np.uint8)).sharpness < 0.05  # smooth: no fine detail
    dark = quality_values((sharp * 0.1).astype(np.uint8))
    assert dark.brightness_p99 < 0.1
    gray = np.repeat(sharp[..., :1], 3, axis=2)
    assert quality_values(gray).colour == 0 and quality_values(gray[..., 0]).colour is None
    flat = np.full((40, 50), 77, np.uint8)
    assert histogram_entropy(np.bincount(flat.ravel(), minlength=256)) == 0
    assert quality_values(flat).sharpness == 0 and quality_values(flat).entropy == 0
    assert histogram_entropy(np.ones(256)) == 8  # every level once: 8 bits
    with pytest.raises(ValueError, match="shape"):
        quality_values(np.zeros((4, 4, 4), np.uint8))


def test_sanitize_s_shared_luma_path_gives_the_kernel_s_values():
    """Sanitize gives the kernel Pillow's luma (shared with the descriptor); the values are the
    kernel's on the same pixels, and its Laplacian is Pillow's 3 x 3 kernel filter (offset 128,
    borders cropped), its colour JPEG's YCbCr chroma within one level."""
    from vdc_lake.fileops.probe import _quality, _shared_luma

    rng = np.random.default_rng(1)
    luma = rng.integers(0, 256, (50, 70), dtype=np.uint8)
    pillow_filter = ImageFilter.Kernel((3, 3), [-1, -1, -1, -1, 8, -1, -1, -1, -1], scale=1, offset=128)
    assert np.array_equal(laplacian(luma), np.asarray(Image.fromarray(luma).filter(pillow_filter))[1:-1, 1:-1])
    img = _photo(5, size=(120, 90))
    ours = quality_values(np.asarray(img)).as_tuple()
    shared = _quality(img, _shared_luma(img))
    assert shared == _quality(img)  # the same with or without the shared luma
    assert shared == quality_values(np.asarray(img), luma=np.asarray(img.convert("L"))).as_tuple()
    np.testing.assert_allclose(ours[:4], shared[:4], rtol=0.02, atol=1 / 255)
    (_, _), (cb_low, cb_high), (cr_low, cr_high) = img.convert("YCbCr").getextrema()
    assert abs(shared[4] - max(128 - cb_low, cb_high - 128, 128 - cr_low, cr_high - 128)) <= 1


def test_the_array_passes_match_their_definitions():
    """laplacian_variance is the variance of the clipped Laplacian; the chroma from B - Y and
    R - Y is JPEG's |Cb - 128|, |Cr - 128| within one level."""
    from vdc_lake.kernels.quality import largest_chroma, laplacian_variance

    rng = np.random.default_rng(4)
    for shape in ((3, 3), (40, 57), (97, 129)):
        luma = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.isclose(laplacian_variance(luma), laplacian(luma).astype(np.float64).var())
    assert laplacian_variance(np.zeros((2, 9), np.uint8)) == 0
    rgb = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    exact = np.abs(np.asarray(img.convert("YCbCr")).astype(int)[..., 1:] - 128).max()
    assert abs(largest_chroma(rgb, np.asarray(img.convert("L"))) - exact) <= 1


def _findings(catalog: Path) -> dict[str, set[str]]:
    rows = catalog_rows(catalog, "SELECT path, issue FROM quality_actions()")
    out: dict[str, set[str]] = {}
    for path, issue in rows:
        out.setdefault(Path(path).name, set()).add(issue)
    return out


@pytest.fixture
def planted(run_cli, tmp_path) -> tuple[Path, Path]:
    root, catalog = tmp_path / "data", tmp_path / "c.duckdb"
    _planted_folder(root)
    ok_output(run_cli(["scan", root], catalog))
    ok_output(run_cli(["sanitize"], catalog))
    return root, catalog


def test_sanitize_finds_planted_issues_and_no_normal_photo(planted):
    root, catalog = planted
    findings = _findings(catalog)
    for name, issue in PLANTED.items():
        assert issue in findings.get(name, set()), (name, findings)
    assert not any(name.startswith("photo") for name in findings), findings
    assert findings["flat.png"] == {"low_information"}  # flat: not also blurry
    # stored per image version, values in their units
    rows = catalog_rows(catalog, "SELECT count(*), count(DISTINCT (image_id, version)) FROM image_quality")
    assert rows == [(11, 11)]
    assert catalog_rows(catalog, "SELECT DISTINCT action FROM quality_actions()") == [("none",)]  # report only


def test_plan_quality_reports_and_a_threshold_deletes_via_apply(planted, run_cli, tmp_path):
    root, catalog = planted
    out = ok_output(run_cli(["plan", "quality"], catalog))
    assert "plan quality: 0 operations" in out, out
    assert "dark 1" in out and "report only" in out and "quality_actions()" in out, out
    status = ok_output(run_cli(["status"], catalog))
    assert "quality" in status, status

    config = tmp_path / "vdc-lake.toml"
    config.write_text("[quality]\ndelete_dark = 0.2\ndelete_low_information = 1.0\n")
    out = ok_output(run_cli(["plan", "quality"], catalog, config=config))
    assert "plan quality: 2 operations" in out, out
    assert catalog_rows(catalog, "SELECT count(*) FROM removals WHERE decision = 'quality'") == [(2,)]
    ok_output(run_cli(["apply", "quality", "--yes", "--backup-dir", tmp_path / "backup"], catalog, config=config))
    assert not (root / "bad" / "dark.jpg").exists() and not (root / "bad" / "flat.png").exists()
    assert (root / "bad" / "blurry.jpg").exists() and all((root / "ok" / f"photo{s}.jpg").exists() for s in range(6))


def test_a_delete_threshold_is_checked_against_its_report_threshold(run_cli, tmp_path):
    config = tmp_path / "vdc-lake.toml"
    config.write_text("[quality]\ndelete_dark = 0.5\n")
    result = run_cli(["plan", "quality"], tmp_path / "c.duckdb", config=config)
    assert result.exit_code != 0 and "delete_dark" in result.output and "Traceback" not in result.output, \
        result.output
