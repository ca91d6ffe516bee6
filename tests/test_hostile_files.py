"""Files and folders that must not stall, swell or mislead the tool (issue 24, defects 6, 7, 8, 9).

6: a (sparse) file of junk behind an image signature is a finding within bounded reads, never a
   stalled scan or sanitize;
7: the pixel limit counts every frame of an animated file, which apply would hold in memory;
8: an apply run's backup folder carries a marker that every scan, of any catalog, honours;
9: `scan ''` (an unset shell variable) is one Error line, never a scan of the current folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vdc_lake
from tests.conftest import catalog_rows, random_image, tree_hashes
from vdc_lake.fileops.markers import BACKUP_MARKER, is_backup_marker
from vdc_lake.fileops.probe import PixelLimitError, decode_check, inspect_header, open_image
from vdc_lake.fileops.imageops import ACTIONS

REPO = str(Path(vdc_lake.__file__).resolve().parents[1])
SPARSE_SIZE = 3 << 30  # 3 GiB: no disk (a sparse file), minutes for a byte-by-byte marker search




def _cli(cwd: Path, catalog: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`vdc-lake --catalog CATALOG -q ARGS` in a subprocess; timeout only guards the suite against a hang."""
    return subprocess.run([sys.executable, "-m", "vdc_lake.cli", "--catalog", str(catalog), "-q", *args],
                          cwd=cwd, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                          timeout=timeout)


# -- 6. a sparse file that starts like a JPEG --------------------------------------------------------------

def _sparse_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(SPARSE_SIZE)
        f.write(b"\xff\xd8\xff\xe0")
    return path


def test_a_sparse_file_that_starts_like_a_jpeg_is_a_finding_not_a_stalled_scan(tmp_path):
    sparse = _sparse_jpeg(tmp_path / "h" / "sparse.jpg")
    random_image(tmp_path / "h" / "ok.jpg")
    catalog = tmp_path / "catalog.duckdb"

    scanned = _cli(tmp_path, catalog, "scan", "--workers", "1", str(tmp_path / "h"))
    assert scanned.returncode == 0, scanned.stdout + scanned.stderr
    sanitized = _cli(tmp_path, catalog, "sanitize", "--workers", "1")
    assert sanitized.returncode == 0, sanitized.stdout + sanitized.stderr

    facts = dict(catalog_rows(catalog, "SELECT rel_path, header_error FROM images"))
    assert facts["ok.jpg"] is None
    assert facts["sparse.jpg"].startswith("header_not_found: no complete image header")
    assert catalog_rows(catalog, """SELECT f.rule, f.action FROM findings f JOIN images i USING (image_id, version)
                             WHERE i.rel_path = 'sparse.jpg' AND f.run_id = (SELECT max(run_id) FROM runs)
                               AND f.rule NOT IN ('file_too_large')""") == [("header_not_found", "delete")]
    assert os.stat(sparse).st_blocks * 512 < 1 << 20  # still sparse: nothing wrote its bytes


def test_every_decode_of_a_sparse_jpeg_fails_fast_as_a_finding(tmp_path):
    """The full decode (sanitize's, apply's re-check) and every other open go through the same
    bounded header read; a guard process keeps a regression from hanging the suite."""
    sparse = _sparse_jpeg(tmp_path / "sparse.jpg")
    script = (
        "import sys, json\n"
        "from vdc_lake.fileops.probe import decode_check, open_image, HeaderLimitError\n"
        "result = decode_check(sys.argv[1], max_pixels=89_478_485, with_descriptor=True)\n"
        "try:\n"
        "    with open_image(sys.argv[1], 89_478_485):\n"
        "        opened = 'opened'\n"
        "except HeaderLimitError as e:\n"
        "    opened = str(e)\n"
        "print(json.dumps([result.error, opened]))\n")
    done = subprocess.run([sys.executable, "-c", script, str(sparse)], env=dict(os.environ, PYTHONPATH=REPO),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    error, opened = json.loads(done.stdout)
    assert error.startswith("header_not_found: ") and opened.startswith("header_not_found: ")


def test_real_headers_with_big_segments_and_many_frames_are_within_the_limits(tmp_path):
    """The bound is on junk, not on images: a JPEG with a 3 MB ICC profile and EXIF, a TIFF whose
    directory follows 12 MB of pixels and a 200-frame GIF read as before."""
    rng = np.random.default_rng(1)
    jpeg = tmp_path / "icc.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        jpeg, icc_profile=os.urandom(3 << 20), exif=Image.Exif().tobytes())
    tiff = tmp_path / "big.tif"  # libtiff writes the directory after the strips
    Image.fromarray(rng.integers(0, 256, (2000, 2000, 3), dtype=np.uint8)).save(tiff, compression="tiff_adobe_deflate")
    assert int.from_bytes(tiff.read_bytes()[4:8], "little") > 12_000_000
    gif = tmp_path / "many.gif"
    frames = [Image.new("RGB", (32, 32), (i, 255 - i, i * 7 % 256)) for i in range(200)]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    for path, expected in ((jpeg, (64, 64, "JPEG", 1)), (tiff, (2000, 2000, "TIFF", 1)), (gif, (32, 32, "GIF", 200))):
        facts = inspect_header(str(path))
        assert facts["header_error"] is None, (path, facts["header_error"])
        assert (facts["width"], facts["height"], facts["format"], facts["n_frames"]) == expected
        assert decode_check(str(path), max_pixels=89_478_485, with_descriptor=False).error is None


# -- 7. animated images and the pixel limit ---------------------------------------------------------------

def _animated(path: Path, frames: int, size=(100, 100)) -> Path:
    """An animated PNG or GIF of `frames` distinct frames (each well within the limits below)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=50)
    return path


@pytest.mark.parametrize("name", ["anim.png", "anim.gif"])
def test_the_pixel_limit_counts_every_frame_of_an_animated_file(tmp_path, run_cli, name):
    """10 frames of 100x100: 10,000 pixels a frame, 100,000 in all, over a limit of 50,000. apply
    would hold every frame (a recompress of a 120-frame 2000x2000 APNG peaked at 2.1 GB)."""
    root = tmp_path / "images"
    anim = _animated(root / name, 10)
    random_image(root / "still.jpg")
    catalog = tmp_path / "catalog.duckdb"
    assert run_cli(["scan", root], catalog).exit_code == 0

    result = run_cli(["sanitize", "--max-pixels", "50000", "--min-width", "10", "--min-height", "10"], catalog)

    assert result.exit_code == 0, result.output
    findings = catalog_rows(catalog, """SELECT i.rel_path, f.rule, f.action, f.detail FROM findings f
                                 JOIN images i USING (image_id, version) WHERE f.rule = 'decompression_bomb'""")
    assert findings == [(name, "decompression_bomb", "delete",
                         "100,000 pixels (100x100, 10 frames) exceed the limit of 50,000")]
    assert catalog_rows(catalog, "SELECT i.rel_path FROM embeddings e JOIN images i USING (image_id)") == [("still.jpg",)]
    # Every decode honours it: the decode check, the operations apply runs, Pillow opens of it.
    assert decode_check(str(anim), max_pixels=50_000, with_descriptor=True).descriptor is None
    before = anim.read_bytes()
    refused = r"100,000 pixels \(10 frames of 100x100\) exceed the limit of 50,000"
    for operation in ("recompress", "resize", "rotate_90"):
        with pytest.raises(PixelLimitError, match=refused):
            ACTIONS[operation].run(anim, anim.with_suffix(".webp") if operation == "recompress" else anim,
                                   {"max_width": 50, "max_height": 50, "max_pixels": 50_000})
    assert anim.read_bytes() == before and not anim.with_suffix(".webp").exists()
    with open_image(anim, 100_000) as img:  # at the limit: opened
        assert img.n_frames == 10
    ACTIONS["resize"].run(anim, anim, {"max_width": 50, "max_height": 50, "max_pixels": 100_000})
    with Image.open(anim) as img:
        assert (img.size, img.n_frames) == ((50, 50), 10)


# -- 8. a backup folder is never another catalog's images ---------------------------------------------------

def test_a_second_catalog_never_scans_or_changes_a_first_catalog_s_backups(tmp_path, run_cli):
    x = tmp_path / "x"
    for i in range(4):
        random_image(x / "img" / f"photo_{i}.jpg", seed=i)
    for i in range(3):
        random_image(x / "img" / f"tiny_{i}.jpg", size=(40, 40), seed=10 + i)  # width_too_small: A deletes them
    random_image(x / "other" / "tiny_b.jpg", size=(40, 40), seed=20)  # in B's root only: B deletes it
    a, b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    assert run_cli(["scan", x / "img"], a).exit_code == 0
    assert run_cli(["sanitize"], a).exit_code == 0
    applied = run_cli(["apply", "sanitize", "--backup-dir", x / "bkA", "--apply"], a)
    assert applied.exit_code == 0, applied.output
    marker = x / "bkA" / BACKUP_MARKER
    assert is_backup_marker(marker)  # written when apply first used the folder
    assert json.loads(marker.read_text())["kind"] == "vdc-lake backup folder"
    saved = tree_hashes(x / "bkA")
    assert len([p for p in saved if p.endswith(".jpg")]) == 3

    scanned = run_cli(["scan", x], b)

    assert scanned.exit_code == 0, scanned.output
    assert catalog_rows(b, "SELECT count(*) FROM images WHERE rel_path LIKE 'bkA/%'") == [(0,)]
    notes = [line for line in scanned.output.splitlines() if "bkA" in line]
    assert notes == [f"  note: skipped {(x / 'bkA').resolve()}: it holds a vdc-lake apply run's backups "
                     f"({BACKUP_MARKER}; this catalog's or another's): copies of originals that restore needs, "
                     "not images"]
    assert run_cli(["sanitize"], b).exit_code == 0
    shared = tmp_path / "shared-backups"
    assert run_cli(["apply", "sanitize", "--backup-dir", shared, "--apply"], b).exit_code == 0
    assert not (x / "other" / "tiny_b.jpg").exists() and is_backup_marker(shared / BACKUP_MARKER)
    assert tree_hashes(x / "bkA") == saved

    restored = run_cli(["restore"], a)
    assert restored.exit_code == 0, restored.output
    assert sorted(p.name for p in (x / "img").glob("tiny_*.jpg")) == [f"tiny_{i}.jpg" for i in range(3)]

    # A folder that holds another catalog's marker (B's) may take this catalog's backups too.
    marked = (shared / BACKUP_MARKER).read_bytes()
    random_image(x / "img" / "tiny_9.jpg", size=(30, 30), seed=19)
    assert run_cli(["scan", x / "img"], a).exit_code == 0
    assert run_cli(["sanitize"], a).exit_code == 0
    again = run_cli(["apply", "sanitize", "--backup-dir", shared, "--apply"], a)
    assert again.exit_code == 0, again.output
    assert not (x / "img" / "tiny_9.jpg").exists() and list(shared.rglob("tiny_9.jpg"))
    assert (shared / BACKUP_MARKER).read_bytes() == marked


@pytest.mark.parametrize("where", ["at", "inside"])
def test_a_scan_root_at_or_inside_any_catalog_s_backup_folder_is_refused(tmp_path, run_cli, where):
    root = tmp_path / "img"
    random_image(root / "tiny.jpg", size=(40, 40))
    random_image(root / "ok.jpg", seed=1)
    assert run_cli(["scan", root], tmp_path / "a.duckdb").exit_code == 0
    assert run_cli(["sanitize"], tmp_path / "a.duckdb").exit_code == 0
    backups = tmp_path / "bk"
    assert run_cli(["apply", "sanitize", "--backup-dir", backups, "--apply"], tmp_path / "a.duckdb").exit_code == 0
    target = backups if where == "at" else next(p.parent for p in backups.rglob("tiny.jpg"))

    result = run_cli(["scan", target], tmp_path / "b.duckdb")

    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    inside = "is" if where == "at" else f"is inside {backups.resolve()},"
    assert result.output.strip().splitlines()[-1] == (
        f"Error: scan root {target.resolve()} {inside} a backup folder of an apply run (it holds {BACKUP_MARKER}; "
        "of this catalog or another): backups are never images; scan the folders that hold your images")


def test_something_else_at_the_marker_s_name_is_one_error_before_any_change(tmp_path, run_cli):
    root = tmp_path / "img"
    tiny = random_image(root / "tiny.jpg", size=(40, 40))
    catalog = tmp_path / "c.duckdb"
    assert run_cli(["scan", root], catalog).exit_code == 0
    assert run_cli(["sanitize"], catalog).exit_code == 0
    backups = tmp_path / "bk"
    backups.mkdir()
    (backups / BACKUP_MARKER).symlink_to(tmp_path / "elsewhere.json")

    result = run_cli(["apply", "sanitize", "--backup-dir", backups, "--apply"], catalog)

    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: cannot mark {backups.resolve()} as a backup folder: {backups.resolve() / BACKUP_MARKER} exists and "
        "is not a vdc-lake backup marker; move it away")
    assert tiny.exists() and not (tmp_path / "elsewhere.json").exists()


# -- 9. an empty root ------------------------------------------------------------------------------------

def test_an_empty_scan_root_is_one_error_line_never_the_current_folder(tmp_path, run_cli, in_tmp_cwd):
    random_image(in_tmp_cwd / "here.jpg")
    catalog = tmp_path / "c.duckdb"

    result = run_cli(["scan", ""], catalog)

    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output == ("Error: scan root is empty (''); give the folder that holds the images "
                             "(e.g. vdc-lake scan ~/Datasets/GLDv2)\n")
    if catalog.exists():
        assert catalog_rows(catalog, "SELECT count(*) FROM images") == [(0,)]
