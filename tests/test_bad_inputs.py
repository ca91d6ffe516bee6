"""Bad inputs (issue 11 items 1, 2, 8, 9, 10, 12; issue 10 item 6): backups and temp files are
never images, a briefly missing or unreadable file is never 'corrupt', odd names and folders are
findings, bombs are never decoded, headers are read with bounded memory, TIFF operations work,
and a changed sanitize limit takes effect without --recheck.

Permission cases run as a non-root user (setpriv to nobody) when the tests run as root, since
root reads any file whatever its mode bits say.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import vdc_lake
from tests.conftest import default_config
from vdc_lake.catalog.connection import Catalog
from vdc_lake.fileops.markers import BACKUP_MARKER
from vdc_lake.errors import StageError
from vdc_lake.fileops.probe import PixelLimitError, check_pixels, content_hash, decode_check
from vdc_lake.fileops.imageops import ACTIONS, ROTATIONS
from vdc_lake.stages.predict import predict
from vdc_lake.stages.sanitize import sanitize
from vdc_lake.stages.scan import NO_IMAGE, scan

NOBODY = 65534
REPO = str(Path(vdc_lake.__file__).resolve().parents[1])


def _image(path: Path, size=(120, 100), seed=0, fmt=None, **save) -> Path:
    """A noise image (distinct per seed) written by Pillow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, fmt, **save)
    return path


def _config(tmp_path):
    return default_config(tmp_path)


def _scan(catalog_path, *roots):
    extensions = _config(catalog_path.parent).values["scan"]["extensions"]
    with Catalog(catalog_path) as catalog:
        return scan(catalog, list(roots), extensions=extensions, workers=1, quiet=True)


def _sanitize(catalog_path, **rules):
    effective = _config(catalog_path.parent).section("sanitize", **rules)
    with Catalog(catalog_path) as catalog:
        return sanitize(catalog, effective, workers=1, quiet=True)


def _rows(catalog_path, sql, params=None):
    with Catalog(catalog_path, read_only=True) as catalog:
        return catalog.rows(sql, params)


def _actions(catalog_path) -> dict[str, str]:
    return dict(_rows(catalog_path, "SELECT i.rel_path, a.action FROM sanitize_actions a JOIN images i USING (image_id)"))


def _latest_findings(catalog_path, rel_path) -> dict[str, tuple[str, str]]:
    """{rule: (action, detail)} of the latest sanitize check of rel_path's current version."""
    return {rule: (action, detail) for rule, action, detail in _rows(catalog_path, """
        SELECT f.rule, f.action, f.detail FROM findings f JOIN images i USING (image_id, version)
        WHERE i.rel_path = ? AND f.run_id = (SELECT max(run_id) FROM sanitize_checks c
                                             WHERE c.image_id = i.image_id AND c.version = i.version)""",
                                                                   [rel_path])}


def _decoded(catalog_path, rel_path) -> bool:
    return _rows(catalog_path, """
        SELECT c.decoded FROM sanitize_checks c JOIN images i USING (image_id, version)
        WHERE i.rel_path = ? ORDER BY c.run_id DESC LIMIT 1""", [rel_path])[0][0]


# -- running as a user the file modes apply to ----------------------------------------------------

@pytest.fixture
def nobody_dir():
    """A folder outside pytest's private tmp (nobody cannot enter that), owned by the user the
    permission checks run as."""
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot check permissions as another user")
    folder = Path(tempfile.mkdtemp(prefix="vdc-hostile-"))
    folder.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(folder, NOBODY, NOBODY)
    yield folder
    for path, dirs, _ in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(path, d), 0o755)
    shutil.rmtree(folder)


def _cli_as_user(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """`vdc-lake --catalog FOLDER/catalog.duckdb ARGS` as nobody (when root) in a subprocess."""
    cmd = [sys.executable, "-m", "vdc_lake.cli", "--catalog", str(folder / "catalog.duckdb"), "-q", *args]
    if os.geteuid() == 0:
        cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
    env = dict(os.environ, PYTHONPATH=REPO, HOME=str(folder), PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


# -- item 1: backup folders and temp files are never images --------------------------------------

def test_backup_folder_and_temp_files_are_never_registered(tmp_path, run_cli):
    data = tmp_path / "data"
    for i in range(3):
        _image(data / "images" / f"photo_{i}.jpg", seed=i)
    _image(data / "images" / "tiny.jpg", size=(40, 40), seed=9)  # width_too_small: apply deletes it
    catalog = tmp_path / "catalog.duckdb"
    assert run_cli(["scan", data / "images"], catalog).exit_code == 0
    assert run_cli(["sanitize"], catalog).exit_code == 0
    applied = run_cli(["apply", "sanitize", "--backup-dir", data / "backup", "--apply"], catalog)
    assert applied.exit_code == 0, applied.output
    backups = [p for p in (data / "backup").rglob("*") if p.is_file() and p.name != BACKUP_MARKER]
    assert backups  # the deleted tiny.jpg is kept there
    (data / "images" / ".photo_0.jpg.vdc-tmp").write_bytes((data / "images" / "photo_0.jpg").read_bytes())
    (data / "images" / "photo_1.jpg.vdc-restore").write_bytes((data / "images" / "photo_1.jpg").read_bytes())

    result = run_cli(["scan", data], catalog)  # the parent: holds images/ and backup/

    assert result.exit_code == 0, result.output
    root = str(data.resolve())
    paths = [p for (p,) in _rows(catalog, "SELECT rel_path FROM images WHERE root = ? AND present", [root])]
    assert sorted(paths) == [f"images/photo_{i}.jpg" for i in range(3)]
    apply_run = _rows(catalog, "SELECT max(run_id) FROM runs WHERE stage LIKE 'apply%'")[0][0]
    summary = json.loads(_rows(catalog, "SELECT summary FROM runs WHERE stage = 'scan' ORDER BY run_id DESC")[0][0])
    assert f"skipped {data.resolve() / 'backup'}: the backup folder of apply run {apply_run}, not images" in summary[
        "notes"]
    assert any("skipped 2 temp file(s) of an interrupted apply or restore" in n for n in summary["notes"])

    with Catalog(catalog) as cat, pytest.raises(StageError) as err:
        scan(cat, [data / "backup"], extensions=[".jpg"], quiet=True)
    assert f"the backup folder of apply run {apply_run}" in str(err.value)
    assert "scan the folders that hold your images" in str(err.value)

    # The backup folder now lies inside the scanned root `data`, which left it out: restore still
    # reads it (it was refused as "inside the scanned root", with apply's advice to move it).
    restored = run_cli(["restore"], catalog)
    assert restored.exit_code == 0, restored.output
    assert (data / "images" / "tiny.jpg").read_bytes() == backups[0].read_bytes()


# -- item 2: missing or unreadable during sanitize is never corrupt -------------------------------

def test_file_moved_away_during_sanitize_is_missing_not_corrupt(tmp_path):
    root = tmp_path / "images"
    for i in range(3):
        _image(root / f"photo_{i}.jpg", seed=i)
    catalog = tmp_path / "catalog.duckdb"
    _scan(catalog, root)
    stash = tmp_path / "stash.jpg"
    os.rename(root / "photo_1.jpg", stash)  # moved away between scan and sanitize

    _sanitize(catalog)

    found = _latest_findings(catalog, "photo_1.jpg")
    assert set(found) == {"missing"}
    action, detail = found["missing"]
    assert action == "none"
    assert "No such file or directory, ENOENT" in detail
    assert _actions(catalog) == {}  # nothing to delete
    assert _decoded(catalog, "photo_1.jpg") is False  # no verdict: decoded again next time

    os.rename(stash, root / "photo_1.jpg")  # back, intact
    again = _sanitize(catalog)
    assert again.decoded == 1  # only the file that had no verdict
    assert _latest_findings(catalog, "photo_1.jpg") == {}
    assert _decoded(catalog, "photo_1.jpg") is True


def test_a_missing_file_an_older_version_called_corrupt_is_decoded_again(tmp_path):
    root = tmp_path / "images"
    for i in range(2):
        _image(root / f"photo_{i}.jpg", seed=i)
    catalog = tmp_path / "catalog.duckdb"
    _scan(catalog, root)
    first = _sanitize(catalog)
    with Catalog(catalog) as cat:  # what vdc-lake before this fix recorded for a file moved away
        cat.execute("""INSERT INTO findings SELECT ?, image_id, version, 'corrupt',
                       'decoding failed ([Errno 2] No such file or directory: ''x'')', 'delete'
                       FROM images WHERE rel_path = 'photo_1.jpg'""", [first.run_id])
    assert _actions(catalog) == {"photo_1.jpg": "delete"}

    again = _sanitize(catalog)

    assert (again.decoded, again.cached) == (1, 1)
    assert _latest_findings(catalog, "photo_1.jpg") == {}
    assert _actions(catalog) == {}


def test_unreadable_file_and_folder_as_a_user(nobody_dir):
    images = nobody_dir / "images"
    for i in range(3):
        _image(images / f"photo_{i}.jpg", seed=i)
    _image(images / "locked_at_scan.jpg", seed=7)
    _image(images / "private" / "hidden.jpg", seed=8)
    (images / "locked_at_scan.jpg").chmod(0)
    (images / "private").chmod(0)
    catalog = nobody_dir / "catalog.duckdb"

    _cli_as_user(nobody_dir, "scan", str(images))

    rows = {r[0]: r[1:] for r in _rows(catalog, "SELECT rel_path, width, header_error FROM images")}
    assert sorted(rows) == ["locked_at_scan.jpg", "photo_0.jpg", "photo_1.jpg", "photo_2.jpg"]
    assert rows["locked_at_scan.jpg"] == (None, "unreadable: cannot read the file (Permission denied)")
    problems = _rows(catalog, "SELECT rule, detail, action, image_id, version FROM findings")
    assert problems == [("unreadable_folder", f"{images / 'private'}: cannot list the folder "
                         "(Permission denied, EACCES); its files are not listed", "none", NO_IMAGE, NO_IMAGE)]

    (images / "locked_at_scan.jpg").chmod(0o644)
    (images / "photo_2.jpg").chmod(0)  # unreadable while sanitize decodes it
    _cli_as_user(nobody_dir, "scan", str(images))  # the unreadable header is read again
    assert _rows(catalog, "SELECT width, header_error FROM images WHERE rel_path = 'locked_at_scan.jpg'") == [
        (120, None)]
    _cli_as_user(nobody_dir, "sanitize")

    found = _latest_findings(catalog, "photo_2.jpg")
    assert set(found) == {"unreadable"}
    assert found["unreadable"] == ("none", "cannot open the file (Permission denied, EACCES)")
    assert _actions(catalog) == {}
    (images / "photo_2.jpg").chmod(0o644)
    _cli_as_user(nobody_dir, "sanitize")
    assert _latest_findings(catalog, "photo_2.jpg") == {}
    assert _decoded(catalog, "photo_2.jpg") is True


def test_only_bytes_that_do_not_decode_are_corrupt(tmp_path):
    good = _image(tmp_path / "good.png", seed=1)
    data = good.read_bytes()
    broken = tmp_path / "broken.png"
    broken.write_bytes(data[:60] + bytes(len(data) - 60))  # header intact, pixel data zeroed
    assert decode_check(str(broken), max_pixels=10**8, with_descriptor=False).error.startswith("corrupt: ")
    gone = decode_check(str(tmp_path / "nowhere.png"), max_pixels=10**8, with_descriptor=False)
    assert gone.error.startswith("missing: the file is gone (No such file or directory, ENOENT)")
    folder = decode_check(str(tmp_path), max_pixels=10**8, with_descriptor=False)
    assert folder.error.startswith("unreadable: ")  # EISDIR: an I/O error, not a verdict on bytes
    os.mkfifo(tmp_path / "pipe.png")  # swapped in after scan: must not block the decoder forever
    pipe = decode_check(str(tmp_path / "pipe.png"), max_pixels=10**8, with_descriptor=False)
    assert pipe.error == "unreadable: not a regular file (a named pipe)"
    with pytest.raises(OSError, match="not a regular file"):
        check_pixels(tmp_path / "pipe.png", 10**8)


# -- issue 10 item 6: a changed limit takes effect without --recheck ------------------------------

def test_changed_sanitize_limit_takes_effect_without_recheck(tmp_path, run_cli):
    root = tmp_path / "images"
    _image(root / "wide.jpg", size=(300, 100), seed=1)  # aspect 3: fine at 6.667, too wide at 2
    _image(root / "square.jpg", size=(100, 100), seed=2)
    catalog = tmp_path / "catalog.duckdb"
    assert run_cli(["scan", root], catalog).exit_code == 0
    assert run_cli(["sanitize"], catalog).exit_code == 0
    assert _actions(catalog) == {}

    result = run_cli(["sanitize", "--max-aspect-ratio", "2"], catalog, quiet=False)

    assert result.exit_code == 0, result.output
    assert "2 images checked (0 decoded)" in result.output  # header rules again; decodes cached
    assert _actions(catalog) == {"wide.jpg": "delete"}
    assert _latest_findings(catalog, "wide.jpg") == {"aspect_too_large": ("delete", "aspect ratio 3.000 > 2.0")}
    plan = run_cli(["plan", "sanitize"], catalog, quiet=False)
    assert plan.exit_code == 0 and "wide.jpg" in plan.output

    assert run_cli(["sanitize"], catalog).exit_code == 0  # back to the configured 6.667
    assert _actions(catalog) == {}


# -- item 8: decompression bombs are never decoded; predict skips blocked images -----------------

def _bomb(path: Path) -> Path:
    Image.new("1", (12000, 12000)).save(path)  # 144 Mpx > 89,478,485; 18 MB if decoded as bits
    return path


def test_predict_skips_bombs_and_images_sanitize_deletes(tmp_path):
    root = tmp_path / "images"
    _image(root / "ok.jpg", seed=1)
    _image(root / "tiny.jpg", size=(40, 40), seed=2)
    cut = _image(root / "cut.jpg", seed=3)
    cut.write_bytes(cut.read_bytes()[:-2000])
    _bomb(root / "bomb.png")
    catalog = tmp_path / "catalog.duckdb"
    _scan(catalog, root)

    with Catalog(catalog) as cat:  # not sanitized yet: the pixel limit alone blocks the bomb
        first = predict(cat, model="builtin", kind="descriptor", set_name="before", quiet=True, num_workers=1)
    assert (first.skipped, first.skipped_reasons, first.todo) == (1, {"decompression_bomb": 1}, 3)
    assert first.skipped_examples == [
        f"{root.resolve() / 'bomb.png'}: skipped, decompression_bomb "
        "(144,000,000 pixels (12000x12000) exceed the limit of 89,478,485)"]

    _sanitize(catalog)
    with Catalog(catalog) as cat:
        second = predict(cat, model="builtin", kind="descriptor", set_name="after", quiet=True, num_workers=1)

    assert (second.skipped, second.todo, second.written) == (3, 1, 1)
    assert second.skipped_reasons == {"decompression_bomb": 1, "sanitize delete: truncated": 1,
                                      "sanitize delete: height_too_small, width_too_small": 1}
    assert _rows(catalog, """SELECT i.rel_path FROM embeddings e JOIN images i USING (image_id)
                             WHERE e.set_name = 'after'""") == [("ok.jpg",)]
    recorded = json.loads(_rows(catalog, "SELECT summary FROM runs WHERE run_id = ?", [second.run_id])[0][0])
    assert recorded["skipped"] == 3 and recorded["skipped_reasons"] == second.skipped_reasons


def test_every_decode_honours_the_pixel_limit(tmp_path):
    from torchvision.transforms import v2

    from vdc_lake.models.datasets import ImageFileDataset
    from vdc_lake.models.decoding import decode_rgb

    ok = _image(tmp_path / "ok.jpg", seed=1)
    bomb = _bomb(tmp_path / "bomb.png")
    with pytest.raises(PixelLimitError, match="144,000,000 pixels exceed the limit of 89,478,485"):
        decode_rgb(str(bomb), 89_478_485)
    assert decode_rgb(str(ok), 89_478_485).shape == (3, 100, 120)
    # The dataset every model's DataLoader reads (run_inference passes max_pixels to it).
    dataset = ImageFileDataset([ok, bomb], v2.Resize((8, 8)), max_pixels=89_478_485)
    assert dataset[0][2] == ""
    index, pixels, error = dataset[1]
    assert index == 1 and pixels.shape == (3, 8, 8)
    assert "exceed the limit of 89,478,485" in error
    # The builtin descriptor's decode (predict --model builtin, sanitize, filter examples).
    assert decode_check(str(bomb), max_pixels=89_478_485, with_descriptor=True).descriptor is None
    # apply's file operations (default: the bundled sanitize.max_pixels); the file is left as it was.
    before = content_hash(bomb)
    for operation in ("resize", "rotate_90", "recompress"):
        with pytest.raises(PixelLimitError):
            ACTIONS[operation].run(bomb, bomb.with_suffix(".webp") if operation == "recompress" else bomb,
                                   {"max_width": 3200, "max_height": 3200})
    assert content_hash(bomb) == before and not bomb.with_suffix(".webp").exists()
    with pytest.raises(PixelLimitError):  # the configured limit (the plan's options) wins
        ACTIONS["resize"].run(ok, ok, {"max_width": 60, "max_height": 60, "max_pixels": 10_000})
    ACTIONS["resize"].run(ok, ok, {"max_width": 60, "max_height": 60, "max_pixels": 12_000})
    with Image.open(ok) as small:
        assert small.size == (60, 50)


# -- item 9: headers with bounded memory ----------------------------------------------------------

def test_scan_of_a_huge_file_reads_it_with_bounded_memory(tmp_path):
    root = tmp_path / "images"
    big = _image(root / "padded.png", size=(64, 48), seed=1)
    size = 1 << 30
    with open(big, "r+b") as f:  # a valid PNG followed by 1 GiB of (sparse) zeros
        f.truncate(size)
    catalog = tmp_path / "catalog.duckdb"
    # A wrapper process reports its children's peak RSS (ours may hold more from other tests).
    measure = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    scan_cmd = [sys.executable, "-m", "vdc_lake.cli", "--catalog", str(catalog), "-q", "scan", "--workers", "1",
                str(root)]
    out = subprocess.run([sys.executable, "-c", measure, *scan_cmd], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=REPO), cwd=tmp_path, timeout=300)
    peak_kib = int(out.stdout.split()[-1])

    assert peak_kib * 1024 < size / 2  # the whole file in memory would be > 1 GiB
    assert _rows(catalog, "SELECT width, height, format, size_bytes, content_hash FROM images") == [
        (64, 48, "PNG", size, content_hash(big))]


# -- item 10: odd names and folders are findings, the scan goes on --------------------------------

def test_bad_names_and_symlink_loops_are_findings(tmp_path):
    root = tmp_path / "images"
    _image(root / "a" / "good.jpg", seed=1)
    _image(root / "b" / "other.jpg", seed=2)
    raw = os.fsencode(root)
    with open(raw + b"/caf\xe9.jpg", "wb") as f:  # Latin-1 name: not valid UTF-8
        f.write((root / "a" / "good.jpg").read_bytes())
    os.mkdir(raw + b"/d\xfcr")
    with open(raw + b"/d\xfcr/inner.jpg", "wb") as f:
        f.write((root / "a" / "good.jpg").read_bytes())
    os.symlink("self.jpg", root / "self.jpg")  # resolves to itself
    os.symlink("..", root / "a" / "up")  # back to an ancestor
    os.symlink(root / "b", root / "b_again")  # a second way into b/
    catalog = tmp_path / "catalog.duckdb"

    summary = _scan(catalog, root)

    assert sorted(p for (p,) in _rows(catalog, "SELECT rel_path FROM images")) == ["a/good.jpg", "b/other.jpg"]
    findings = _rows(catalog, "SELECT run_id, image_id, version, rule, detail, action FROM findings ORDER BY detail")
    r = str(root.resolve())
    assert findings == [
        (summary.run_id, NO_IMAGE, NO_IMAGE, "symlink_loop", f"{r}/a/up: the same folder as {r}, listed there only",
         "none"),
        (summary.run_id, NO_IMAGE, NO_IMAGE, "duplicate_folder",
         f"{r}/b_again: the same folder as {r}/b, listed there only", "none"),
        (summary.run_id, NO_IMAGE, NO_IMAGE, "bad_filename", f"{r}/caf\\xe9.jpg: the name is not valid UTF-8; "
         "rename it (e.g. convmv -f latin1 -t utf8) to have it scanned", "none"),
        (summary.run_id, NO_IMAGE, NO_IMAGE, "bad_filename", f"{r}/d\\xfcr: the name is not valid UTF-8; "
         "rename it (e.g. convmv -f latin1 -t utf8) to have it scanned", "none"),
        (summary.run_id, NO_IMAGE, NO_IMAGE, "symlink_loop", f"{r}/self.jpg: the link resolves to itself "
         "(too many levels of symbolic links); not followed", "none"),
    ]
    assert summary.problems == 5
    _sanitize(catalog)  # scan findings name no image: no decision sees them
    assert _actions(catalog) == {}


# -- item 12: TIFF rotate / resize / recompress ---------------------------------------------------

def _tiff_variants(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:80, 0:120]
    pixels = np.stack([x * 2, y * 3, np.full_like(x, 60)], axis=-1).astype(np.uint8)
    pixels[:20, :30] = 255  # a white block in one corner: a wrong turn moves it
    base = Image.fromarray(pixels)  # smooth, so lossy codecs stay close to it
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: displayed 80x120
    exif[0x010E] = "a described picture"
    variants = {
        "rgb": (base, {}),
        "rgba": (base.convert("RGBA"), {}),
        "l": (base.convert("L"), {}),
        "lzw": (base, {"compression": "tiff_lzw"}),
        "jpeg": (base, {"compression": "jpeg"}),
        "exif_orientation": (base, {"exif": exif, "compression": "tiff_lzw"}),
    }
    out = {}
    for name, (img, options) in variants.items():
        out[name] = folder / f"{name}.tif"
        img.save(out[name], "TIFF", **options)
    return out


@pytest.fixture(scope="module")
def tiff_variants(tmp_path_factory) -> dict[str, Path]:
    return _tiff_variants(tmp_path_factory.mktemp("tiff"))


@pytest.mark.parametrize("operation", ["rotate_90", "rotate_180", "rotate_270", "resize", "recompress"])
@pytest.mark.parametrize("variant", ["rgb", "rgba", "l", "lzw", "jpeg", "exif_orientation"])
def test_tiff_operations_succeed_and_decode_at_the_expected_size(tmp_path, tiff_variants, variant, operation):
    src = tmp_path / "photo.tif"
    shutil.copy(tiff_variants[variant], src)
    with Image.open(src) as original:
        shown = ImageOps.exif_transpose(original.convert("RGB"))  # what a viewer shows
    options = {"max_width": 60, "max_height": 60, "recompress_format": "WEBP", "recompress_quality": 90}
    action = ACTIONS[operation]
    dst = Path(action.destination(str(src), options))

    action.run(src, dst, options)

    if operation in ROTATIONS:
        expected = shown.transpose(ROTATIONS[operation])
    elif operation == "resize":
        w, h = shown.size
        scale = min(60 / w, 60 / h)
        expected = shown.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
    else:
        expected = shown
    with Image.open(dst) as result:
        assert result.format == ("WEBP" if operation == "recompress" else "TIFF")
        assert result.getexif().get(0x0112, 1) == 1  # upright as stored: no viewer turns it again
        if variant == "exif_orientation":
            assert result.getexif().get(0x010E) == "a described picture"
        assert result.size == expected.size
        pixels = np.asarray(ImageOps.exif_transpose(result).convert("RGB"), dtype=np.int16)
    tolerance = 8 if operation in ("resize", "recompress") or variant == "jpeg" else 0
    assert np.abs(pixels - np.asarray(expected, dtype=np.int16)).mean() <= tolerance
    if dst != src:
        assert not src.exists()


# -- catalog paths: a missing folder is never made, a failed open leaves nothing behind ------------

def _one_error(result, fragment: str) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0], result.output
    return errors[0]


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_catalog_in_a_missing_folder_is_refused_and_nothing_is_made(tmp_path, run_cli):
    images = tmp_path / "images"
    _image(images / "a.png")
    missing = tmp_path / "no" / "such" / "x.duckdb"
    before = _listing(tmp_path)
    line = _one_error(run_cli(["scan", images], missing), f"the folder {missing.parent} does not exist")
    assert line.endswith(f"create it (`mkdir -p {missing.parent}`) or fix the --catalog path")
    a_file = tmp_path / "images" / "a.png" / "x.duckdb"  # its "folder" is an image file
    _one_error(run_cli(["scan", images], a_file), f"{a_file.parent} is not a folder; fix the --catalog path")
    readers = [["status"], ["sql", "SELECT 1"], ["plan", "sanitize"], ["export", "--to", tmp_path / "out"],
               ["report", "--out", tmp_path / "report"], ["sanitize"], ["restore"]]
    for args in readers:  # a folder that does not exist, and a file that does not exist in a real one
        _one_error(run_cli(args, missing), f"no catalog at {missing} (the folder {missing.parent} does not exist)")
        _one_error(run_cli(args, tmp_path / "none.duckdb"), f"no catalog at {tmp_path / 'none.duckdb'}; run ")
    for args in (["scan", images], ["status"]):  # a folder given as the catalog (or "": the working folder)
        _one_error(run_cli(args, images), f"{images} is a folder, not a catalog file; pass --catalog {images}/")
    assert _listing(tmp_path) == before  # no folder, catalog or lock file was made


def test_a_failed_open_removes_the_lock_file_it_made_and_nothing_else(tmp_path, run_cli):
    garbage = tmp_path / "garbage.duckdb"
    garbage.write_bytes(np.random.default_rng(0).bytes(64 * 1024))
    truncated = tmp_path / "truncated.duckdb"
    with Catalog(truncated) as catalog:  # a real catalog (a writer removes its lock file when it closes)
        catalog.execute("INSERT INTO images (image_id, root, rel_path, version, present) "
                        "SELECT range, '/data', 'i' || range || '.jpg', 1, true FROM range(3000)")
        catalog.execute("CHECKPOINT")
    os.truncate(truncated, truncated.stat().st_size // 2)
    assert not Path(f"{truncated}.lock").exists()
    images = tmp_path / "images"
    _image(images / "a.png")
    before = {p: p.read_bytes() for p in (garbage, truncated)}
    for path, fragment in ((garbage, "is not a vdc-lake catalog"), (truncated, "is damaged")):
        for args in (["status"], ["sanitize"], ["scan", images]):
            _one_error(run_cli(args, path), fragment)
            assert not Path(f"{path}.lock").exists(), args
            assert not Path(f"{path}.wal").exists(), args
        assert path.read_bytes() == before[path]
    # A lock file that was there before the failed open is not the open's to remove.
    Path(f"{garbage}.lock").write_text("{}")
    _one_error(run_cli(["scan", images], garbage), "is not a vdc-lake catalog")
    assert Path(f"{garbage}.lock").exists()


def test_a_refused_second_writer_leaves_the_holder_s_lock(tmp_path):
    from vdc_lake.errors import CatalogLockedError

    path = tmp_path / "c.duckdb"
    with Catalog(path):
        lock = Path(f"{path}.lock")
        holder = lock.read_text()
        with pytest.raises(CatalogLockedError, match=f"is in use by PID {os.getpid()}"):
            Catalog(path)
        assert lock.read_text() == holder
    with Catalog(path) as catalog:  # and the next writer gets in
        assert catalog.scalar("SELECT count(*) FROM images") == 0


def test_a_new_catalog_that_fails_to_open_is_removed_with_its_lock(tmp_path):
    """A first scan onto a full disk: the half-made catalog, its WAL and lock file go again."""
    from vdc_lake.errors import DiskFullError

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mount = Path(tempfile.mkdtemp(prefix="vdc-full-", dir="/tmp"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        (mount / "notes.txt").write_text("not ours")
        with pytest.raises(DiskFullError, match=f"^no space left on {mount} "):
            Catalog(mount / "c.duckdb")  # DuckDB's first blocks do not fit
        assert _listing(mount) == ["notes.txt"]
        with open(mount / "filler.bin", "wb", buffering=0) as filler:  # now not even the lock file's content fits
            with contextlib.suppress(OSError):
                while True:
                    filler.write(b"\0" * 4096)
        with pytest.raises(DiskFullError, match=f"^no space left on {mount} "):
            Catalog(mount / "c.duckdb")
        assert _listing(mount) == ["filler.bin", "notes.txt"]
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)
