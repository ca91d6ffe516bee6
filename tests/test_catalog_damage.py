"""Catalogs that are not what they claim (issue 11): files that are no catalog, damaged catalogs,
a folder the user may not write, a full disk, and the temp files an interrupted run leaves.

Every case ends in one `Error:` line naming what is wrong and the fix, never a traceback.
Permission cases run as `nobody` through setpriv (the suite runs as root in CI, and root ignores
permissions); full-disk cases mount a small tmpfs. Each is skipped only where that is impossible.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import pyarrow.compute as pc
import pytest

from tests.conftest import default_config, tree_hashes
from vdc_lake.catalog import connection as catalog_module
from vdc_lake.effects.apply import Plan, apply_plan, make_plan, restore
from vdc_lake.catalog.connection import Catalog
from vdc_lake.fileops.markers import mark_backup_folder
from vdc_lake.review.decisions import decision_query
from vdc_lake.errors import CatalogDamagedError, DiskFullError, NotACatalogError, StageError
from vdc_lake.effects.leftovers import remove_leftovers_of
from vdc_lake.stages.sanitize import sanitize
from vdc_lake.stages.scan import scan

NOBODY = 65534


def _cli_fails(result, start: str) -> str:
    """Exit code 1, one `Error:` line starting with `start`, no traceback; returns the line."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"Error: {start}"), result.output
    return last


def _images_catalog(path: Path, n: int = 299) -> None:
    """A real catalog with n image rows, checkpointed a few times so the file spans many blocks."""
    chunk = max(100, n // 5)
    with Catalog(path) as catalog:
        for start in range(0, n, chunk):
            catalog.execute(
                "INSERT INTO images (image_id, root, rel_path, version, present) "
                "SELECT range, '/data', 'img_' || range || '.jpg', 1, true FROM range(?, ?)",
                [start, min(n, start + chunk)])
            catalog.execute("CHECKPOINT")


# -- files that are not catalogs -------------------------------------------------------------------

def _write_not_a_catalog(path: Path, kind: str) -> None:
    if kind == "garbage":
        path.write_bytes(os.urandom(64 * 1024))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("image,label\n" * 500)
    else:  # someone's DuckDB database
        con = duckdb.connect(str(path))
        con.execute("CREATE TABLE measurements AS SELECT range AS x FROM range(10)")
        con.close()


@pytest.mark.parametrize("kind, why", [
    ("garbage", "not a DuckDB database file"),
    ("empty", "an empty file"),
    ("text", "not a DuckDB database file"),
    ("duckdb", "a DuckDB database with other tables: measurements"),
])
def test_a_file_that_is_not_a_catalog_is_named_so_and_left_unchanged(tmp_path, run_cli, kind, why):
    path = tmp_path / f"{kind}.duckdb"
    _write_not_a_catalog(path, kind)
    before = path.read_bytes()
    fix = ("pass the right --catalog" if kind == "duckdb"
           else "pass the right --catalog, or move this file away to start a new catalog there")
    message = f"{path} is not a vdc-lake catalog ({why}); {fix}"
    for read_only in (True, False):
        with pytest.raises(NotACatalogError) as err:
            with Catalog(path, read_only=read_only) as catalog:
                catalog.scalar("SELECT count(*) FROM images")
        assert str(err.value) == message
    for args in (["status"], ["sanitize"]):  # a reader and a writer command
        assert _cli_fails(run_cli(args, path), "") == f"Error: {message}"
    assert path.read_bytes() == before  # no migration was written into someone else's file
    assert not Path(f"{path}.wal").exists()


# -- damaged catalogs ------------------------------------------------------------------------------

def test_a_truncated_catalog_is_damaged(tmp_path, run_cli):
    path = tmp_path / "catalog.duckdb"
    _images_catalog(path, n=5000)
    os.truncate(path, path.stat().st_size // 2)
    for read_only in (True, False):
        with pytest.raises(CatalogDamagedError) as err:
            with Catalog(path, read_only=read_only) as catalog:
                catalog.scalar("SELECT count(*) FROM images")
        assert str(err.value).startswith(f"catalog {path} is damaged: ")
        assert str(err.value).endswith(" (restore it from a copy)")
    _cli_fails(run_cli(["status"], path), f"catalog {path} is damaged: ")


@pytest.mark.parametrize("exact_check_rows", [catalog_module.EXACT_CHECK_ROWS, 10])
def test_duplicate_image_rows_are_damaged(tmp_path, run_cli, monkeypatch, exact_check_rows):
    """598 image rows for 299 paths (what a half-truncated catalog replayed into) is refused by
    the exact check and, on a large catalog, by the approximate one that triggers it."""
    monkeypatch.setattr(catalog_module, "EXACT_CHECK_ROWS", exact_check_rows)
    path = tmp_path / "catalog.duckdb"
    _images_catalog(path)
    clean = tmp_path / "clean.duckdb"
    shutil.copyfile(path, clean)
    with Catalog(clean, read_only=True) as catalog:  # a sound catalog opens, also on the approximate path
        assert catalog.scalar("SELECT count(*) FROM images") == 299
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO images SELECT * FROM images")
    con.close()
    message = f"catalog {path} is damaged: 598 image rows for 299 image ids (restore it from a copy)"
    for read_only in (True, False):
        with pytest.raises(CatalogDamagedError) as err:
            Catalog(path, read_only=read_only).scalar("SELECT 1")
        assert str(err.value) == message
    assert _cli_fails(run_cli(["status"], path), "") == f"Error: {message}"


def test_two_present_images_at_one_path_are_damaged(tmp_path):
    path = tmp_path / "catalog.duckdb"
    _images_catalog(path, n=3)
    con = duckdb.connect(str(path))
    con.execute("UPDATE images SET rel_path = 'img_0.jpg' WHERE image_id = 1")
    con.close()
    with pytest.raises(CatalogDamagedError) as err:
        Catalog(path, read_only=True).scalar("SELECT 1")
    assert str(err.value) == f"catalog {path} is damaged: 3 present images for 2 distinct paths (restore it from a copy)"


# -- a folder the user may not write ---------------------------------------------------------------

def _as_nobody(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = "import sys; from vdc_lake.cli import cli; cli(sys.argv[1:], prog_name='vdc-lake')"
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HOME": str(cwd)}, timeout=120)


@contextlib.contextmanager
def _world_readable_dir():
    """A temp folder `nobody` can enter (pytest's tmp_path lies under a root-only folder)."""
    folder = Path(tempfile.mkdtemp(prefix="vdc-hostile-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_read_only_folder_gives_one_error_line_and_reading_still_works(tmp_path):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as another user")
    with _world_readable_dir() as folder:
        path = folder / "catalog.duckdb"
        _images_catalog(path, n=3)
        probe = _as_nobody(["--catalog", str(path), "-q", "sql", "SELECT 1 AS one"], folder)
        if probe.returncode != 0 and "No module named" in probe.stderr:
            pytest.skip("the virtual environment is not readable by nobody")
        assert probe.returncode == 0, probe.stderr  # reading works in a folder we may not write
        before = path.read_bytes()
        result = _as_nobody(["--catalog", str(path), "-q", "sanitize"], folder)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            f"Error: cannot write to the catalog's folder {folder} (Permission denied): make it writable for "
            "this user or copy the catalog to a writable folder; commands that only read (status, sql, "
            "export) work as they are")
        assert path.read_bytes() == before
        # A config that differs from the catalog's settings cannot be recorded here: a note, not an error.
        (folder / "vdc-lake.toml").write_text("[sanitize]\nmax_aspect_ratio = 1.2\n")
        result = _as_nobody(["--catalog", str(path), "-q", "status"], folder)
        assert result.returncode == 0, result.stderr
        assert "the catalog is busy or read-only, so this command uses the catalog's settings" in result.stderr
        assert path.read_bytes() == before


# -- a full disk -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _small_tmpfs(size: str):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount = Path(tempfile.mkdtemp(prefix="vdc-full-", dir="/tmp"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)


def _fill(folder: Path) -> Path:
    """Write a file until the device is full; returns it (delete it to free the space)."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing is left to fail at close
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def test_a_full_disk_under_the_catalog_gives_one_error_line_and_the_rerun_works(tmp_path, run_cli):
    with _small_tmpfs("16m") as mount:
        path = mount / "catalog.duckdb"
        config = default_config(tmp_path)
        with Catalog(path) as catalog:
            scan(catalog, [_small_images(tmp_path / "images", 4)], extensions=config.values["scan"]["extensions"],
                 workers=1, quiet=True)
        filler = _fill(mount)
        line = _cli_fails(run_cli(["sanitize", "--workers", "2"], path), f"no space left on {mount} (writing {mount}/")
        assert line.endswith("): free space there and re-run the command")
        with pytest.raises(DiskFullError, match=f"^no space left on {mount} "):
            with Catalog(path) as catalog:
                catalog.execute("INSERT INTO runs SELECT * FROM runs")
                catalog.execute("CHECKPOINT")
        filler.unlink()
        result = run_cli(["sanitize", "--workers", "2"], path)
        assert result.exit_code == 0, result.output
        with Catalog(path, read_only=True) as catalog:  # not damaged, and the rerun did the work
            assert catalog.scalar("SELECT count(*) FROM sanitize_checks") > 0


def _sanitized(tmp_path: Path, catalog_path: Path) -> Path:
    """Six small images, four under the default minimum size (sanitize deletes them), scanned and
    sanitized with the defaults; returns the image root."""
    from PIL import Image

    root = tmp_path / "data"
    (root / "small").mkdir(parents=True)
    for i in range(6):
        size = (40 + i, 50) if i < 4 else (120 + i, 100)
        Image.new("RGB", size, (30 * i, 200 - 30 * i, 60)).save(root / ("small" if i < 4 else "") / f"im{i}.png")
    config = default_config(catalog_path.parent)
    with Catalog(catalog_path) as catalog:
        scan(catalog, [root], extensions=config.values["scan"]["extensions"], workers=1, quiet=True)
        sanitize(catalog, config.section("sanitize"), workers=1, quiet=True)
    return root


def _delete_plan(catalog: Catalog, catalog_path: Path) -> Plan:
    source_sql, params, options = decision_query("sanitize", default_config(catalog_path.parent))
    plan = make_plan(catalog, "sanitize", source_sql, params, options)
    return Plan(plan.decision, plan.ops.filter(pc.equal(plan.ops["action"], "delete")), plan.options)


def _leftovers(*folders: Path) -> list[str]:
    return sorted(str(p) for folder in folders for p in folder.rglob("*")
                  if p.name.endswith((".vdc-tmp", ".vdc-restore")))


def test_a_full_backup_disk_fails_cleanly_and_the_next_apply_removes_its_temp_files(tmp_path):
    catalog_path = tmp_path / "catalog.duckdb"
    root = _sanitized(tmp_path, catalog_path)
    original = tree_hashes(root)
    with _small_tmpfs("1m") as backup:
        mark_backup_folder(backup)  # a folder apply used before (a new one is marked first: one DiskFullError)
        filler = _fill(backup)
        with Catalog(catalog_path) as catalog:
            summary = apply_plan(catalog, _delete_plan(catalog, catalog_path), backup_dir=backup, quiet=True)
        assert summary.failed > 0  # (an empty file's backup needs no space and may succeed)
        assert any("No space left on device" in e for e in summary.errors)
        now = tree_hashes(root)  # no backup, no delete: only done operations removed files
        assert len(set(original) - set(now)) == summary.done and all(now[p] == original[p] for p in now)
        filler.unlink()
        with Catalog(catalog_path) as catalog:  # the next apply (nothing new planned) cleans up
            apply_plan(catalog, Plan("sanitize", _delete_plan(catalog, catalog_path).ops.slice(0, 0), {}),
                       backup_dir=backup, quiet=True)
        assert _leftovers(backup, root) == []


# -- leftovers of a killed restore ----------------------------------------------------------------

def test_restore_removes_what_a_killed_restore_left_and_nothing_else(tmp_path):
    catalog_path = tmp_path / "catalog.duckdb"
    root = _sanitized(tmp_path, catalog_path)
    original = tree_hashes(root)
    backup = tmp_path / "backup"
    with Catalog(catalog_path) as catalog:
        summary = apply_plan(catalog, _delete_plan(catalog, catalog_path), backup_dir=backup, quiet=True)
        ops = catalog.arrow("SELECT src, backup FROM journal WHERE state = 'done' ORDER BY op_id").to_pylist()
    assert summary.done == len(ops) > 1
    # What a restore killed between its copy and its rename leaves, and an apply killed mid-backup.
    planted = [Path(ops[0]["src"] + ".vdc-restore"), Path(ops[1]["backup"] + ".vdc-tmp")]
    for path in planted:
        path.write_bytes(b"half a file")
    unrelated = root / "notes.txt.vdc-tmp"  # not named by the journal: not ours to remove
    unrelated.write_bytes(b"someone else's")
    with Catalog(catalog_path) as catalog:
        restore(catalog, quiet=True)
    assert not any(p.exists() for p in planted)
    assert unrelated.read_bytes() == b"someone else's"
    unrelated.unlink()
    assert tree_hashes(root) == original


def test_leftovers_are_removed_only_inside_the_operation_s_root_and_backup_folder(tmp_path):
    root, backup, outside = tmp_path / "root", tmp_path / "backup", tmp_path / "outside"
    for folder in (root, backup, outside):
        folder.mkdir()
    inside = [root / "a.jpg.vdc-restore", root / ".a.jpg.vdc-tmp", backup / "a.jpg.vdc-tmp"]
    escaped = [outside / "x.jpg.vdc-restore", outside / "x.jpg.vdc-tmp"]
    for path in inside + escaped:
        path.write_bytes(b"x")
    (root / "link.jpg.vdc-tmp").symlink_to(outside / "x.jpg.vdc-tmp")  # a link is never followed
    ops = [{"src": str(root / "a.jpg"), "dst": None, "backup": str(backup / "a.jpg"),
            "root": str(root), "backup_root": str(backup)},
           # an edited journal row: paths outside its root and backup folder
           {"src": str(outside / "x.jpg"), "dst": str(root / "link.jpg"), "backup": str(outside / "x.jpg"),
            "root": str(root), "backup_root": str(backup)}]
    removed = remove_leftovers_of(ops)
    assert sorted(removed) == sorted(str(p) for p in inside)
    assert all(p.exists() for p in escaped) and (root / "link.jpg.vdc-tmp").is_symlink()


# -- set names and index files -----------------------------------------------------------------------

RULE = "use 1-64 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit (e.g. builtin, sscd_v2)"


def _small_images(root: Path, n: int) -> Path:
    from PIL import Image

    root.mkdir()
    for i in range(n):
        Image.new("RGB", (96 + 8 * i, 96), (40 * i, 255 - 40 * i, 90)).save(root / f"im{i}.png")
    return root


@pytest.fixture(scope="module")
def scanned_once(tmp_path_factory) -> Path:
    """A catalog of two small images, scanned; shared by tests that must not change it."""
    folder = tmp_path_factory.mktemp("scanned_once")
    path = folder / "catalog.duckdb"
    with Catalog(path) as catalog:
        scan(catalog, [_small_images(folder / "images", 2)], extensions=[".png"], workers=1, quiet=True)
    return path


@pytest.fixture
def predicted(tmp_path, run_cli) -> Path:
    """A catalog of a few small images with builtin descriptors (set 'builtin')."""
    root = _small_images(tmp_path / "images", 6)
    path = tmp_path / "catalog.duckdb"
    for args in (["scan", root], ["predict", "--model", "builtin", "--kind", "descriptor"]):
        result = run_cli(args, path)
        assert result.exit_code == 0, result.output
    return path


@pytest.mark.parametrize("args, what", [
    (["predict", "--model", "builtin", "--kind", "descriptor", "--set", "../../x"], "set name '../../x'"),
    (["dedup", "index", "--set", "../../x"], "set name '../../x'"),
    (["dedup", "report", "--set", "a/b"], "set name 'a/b'"),
    (["score", "--set", "builtin", "--head", "head.pt", "--name", "../evil"], "score name '../evil'"),
])
def test_a_set_or_score_name_that_could_name_a_path_is_refused(scanned_once, run_cli, args, what):
    top = scanned_once.parent.parent  # the session's temp folder: '../../x' would land under it
    before = sorted(str(p) for p in top.rglob("*"))
    assert _cli_fails(run_cli(args, scanned_once), "") == f"Error: {what} is not allowed: {RULE}"
    assert sorted(str(p) for p in top.rglob("*")) == before  # not a file written anywhere


def test_index_files_stay_in_the_catalog_folder_whatever_ann_indexes_says(predicted, tmp_path):
    from vdc_lake.stages.dedup import build_index, index_dir, latest_index, report

    with Catalog(predicted) as catalog:
        built = build_index(catalog, "builtin", center=False, l2_normalize=True, dtype="f32", force=True, quiet=True)
        assert Path(built.path).parent == index_dir(catalog)
        planted = tmp_path / "elsewhere" / "evil.usearch"  # what an edited row points at: never read
        planted.parent.mkdir()
        planted.write_bytes(b"not an index")
        catalog.execute("UPDATE ann_indexes SET path = ?", [str(planted)])
        assert latest_index(catalog, "builtin").path == str(index_dir(catalog) / "evil.usearch")
        summary = report(catalog, "builtin", threshold=0.5, method="ann", device="cpu", quiet=True)
        assert summary.method == "ann"  # a fresh index was built in the index folder and used
        assert planted.read_bytes() == b"not an index"
        assert all(p.parent == index_dir(catalog) for p in tmp_path.rglob("*.usearch") if p != planted)
        catalog.execute("UPDATE ann_indexes SET path = '/'")
        with pytest.raises(StageError, match="names no file in the catalog's index folder"):
            latest_index(catalog, "builtin")


def test_a_lock_file_that_is_a_dangling_link_is_one_error_and_nothing_is_made(tmp_path, run_cli):
    """A writer meeting CATALOG.lock -> a missing file says so (it once spun forever)."""
    data = tmp_path / "data"
    data.mkdir()
    lock = tmp_path / "c.duckdb.lock"
    lock.symlink_to(tmp_path / "no" / "such" / "file")
    result = run_cli(["scan", data], tmp_path / "c.duckdb")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: {lock} is a symbolic link (to {tmp_path / 'no' / 'such' / 'file'}); vdc-lake never writes "
        f"through links beside a catalog: remove it (rm {lock}) and run the command again")
    assert not (tmp_path / "c.duckdb").exists() and lock.is_symlink()
