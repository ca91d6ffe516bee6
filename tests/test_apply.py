"""Apply + restore: journaled, backed-up file operations and their exact undo."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from tests.conftest import copy_catalog, default_config, file_hash, image_rows, tree_hashes
from vdc_lake.effects.apply import Plan, apply_plan, make_plan, restore
from vdc_lake.catalog.connection import Catalog
from vdc_lake.review.decisions import decision_query
from vdc_lake.errors import PlanError
from vdc_lake.stages.sanitize import sanitize
from vdc_lake.stages.scan import scan

DELETED = ["broken/bomb.png", "broken/cut_off.jpg", "broken/empty.jpg", "broken/notes.jpg", "broken/page.png",
           "sizes/panorama_1600x150.jpg", "sizes/tall_100x900.jpg", "sizes/tiny_40x60.jpg"]
RESIZED = "sizes/huge_3600x1400.jpg"
RECOMPRESSED = "sizes/scan_2000x1800.bmp"


@pytest.fixture
def sanitized(sample_tree, catalog_path):
    """The sample tree, scanned and sanitized with the default rules; returns (tree, original hashes)."""
    config = default_config(catalog_path.parent)
    with Catalog(catalog_path) as catalog:
        scan(catalog, [sample_tree.root], extensions=config.values["scan"]["extensions"], workers=2, quiet=True)
        sanitize(catalog, config.section("sanitize"), workers=2, quiet=True)
    return sample_tree, tree_hashes(sample_tree.root)


def _plan(catalog, catalog_path, *, without_recompress=False):
    source_sql, params, options = decision_query("sanitize", default_config(catalog_path.parent))
    plan = make_plan(catalog, "sanitize", source_sql, params, options)
    if without_recompress:  # WebP method 6 on 3.6 Mpx costs ~2 s; tests about other things skip it
        plan = Plan(plan.decision, plan.ops.filter(pc.not_equal(plan.ops["action"], "recompress")), plan.options)
    return plan


def _journal(catalog_path) -> list[dict]:
    with Catalog(catalog_path, read_only=True) as catalog:
        return catalog.arrow("SELECT * FROM journal ORDER BY op_id").to_pylist()


def test_plan_counts_and_examples(sanitized, catalog_path):
    tree, _ = sanitized
    with Catalog(catalog_path) as catalog:
        plan = _plan(catalog, catalog_path)
    assert plan.counts() == {"delete": 8, "recompress": 1, "resize": 1}
    assert len(plan) == 10
    by_src = {ex["src"]: ex for ex in plan.ops.to_pylist()}
    assert sorted(by_src) == sorted(str(tree.root / p) for p in DELETED + [RESIZED, RECOMPRESSED])
    assert by_src[str(tree.root / RESIZED)]["reason"] == "width_too_large: width 3600px > 3200px"
    assert plan.examples(3)[0].keys() == {"action", "src", "reason"}


def test_apply_without_backup_dir_is_refused_and_changes_nothing(sanitized, catalog_path):
    tree, original = sanitized
    with Catalog(catalog_path) as catalog:
        plan = _plan(catalog, catalog_path)
        with pytest.raises(PlanError) as err:
            apply_plan(catalog, plan, backup_dir=None, quiet=True)
    assert str(err.value) == (
        "apply needs --backup-dir DIR (or an explicit --no-backup to change files without a copy)")
    assert tree_hashes(tree.root) == original
    assert _journal(catalog_path) == []


def test_apply_with_backup_then_restore_is_byte_identical(sanitized, catalog_path, tmp_path):
    tree, original = sanitized
    backup_dir = tmp_path / "backup"
    rows_before = image_rows(catalog_path)
    with Catalog(catalog_path) as catalog:
        summary = apply_plan(catalog, _plan(catalog, catalog_path), backup_dir=backup_dir, quiet=True)
        run_id = summary.run_id
        assert len(_plan(catalog, catalog_path)) == 0  # nothing left to do
    assert (summary.planned, summary.done, summary.skipped, summary.failed, summary.errors) == (10, 10, 0, 0, [])

    root_in_backup = backup_dir / f"run-{run_id}" / str(tree.root.resolve()).lstrip("/")
    for rel in DELETED + [RESIZED, RECOMPRESSED]:
        assert file_hash(root_in_backup / rel) == original[rel], rel  # verified copy of the original
    for rel in DELETED:
        assert not tree.path(rel).exists(), rel

    with Image.open(tree.path(RESIZED)) as img, Image.open(root_in_backup / RESIZED) as old:
        assert max(img.size) <= 3200 and img.format == "JPEG"
        assert img.size == (3200, 1244)  # 3600x1400 scaled by 8/9, aspect kept
        assert img.quantization == old.quantization  # the encoder's quality is kept
    webp = RECOMPRESSED.replace(".bmp", ".webp")
    assert not tree.path(RECOMPRESSED).exists()
    with Image.open(tree.path(webp)) as img:
        assert (img.format, img.size) == ("WEBP", (2000, 1800))

    rows = image_rows(catalog_path)
    for rel in DELETED:
        assert (rows[rel]["present"], rows[rel]["updated_run"]) == (False, run_id)
    assert rows[RESIZED]["version"] == rows_before[RESIZED]["version"] + 1
    assert (rows[RESIZED]["width"], rows[RESIZED]["height"]) == (3200, 1244)
    assert rows[RESIZED]["content_hash"] == file_hash(tree.path(RESIZED))
    assert RECOMPRESSED not in rows
    assert rows[webp]["image_id"] == rows_before[RECOMPRESSED]["image_id"]
    assert (rows[webp]["format"], rows[webp]["version"], rows[webp]["present"]) == ("WEBP", 2, True)
    assert rows[webp]["content_hash"] == file_hash(tree.path(webp))

    journal = _journal(catalog_path)
    assert {j["state"] for j in journal} == {"done"}
    for j in journal:
        rel = j["src"][len(str(tree.root.resolve())) + 1:]
        assert j["checksum_before"] == original[rel]
        assert j["backup"] == str(root_in_backup / rel)
        after = None if j["action"] == "delete" else file_hash(j["dst"])
        assert j["checksum_after"] == after
    with Catalog(catalog_path, read_only=True) as catalog:
        assert catalog.scalar("SELECT status FROM runs WHERE run_id = ?", [run_id]) == "done"

    with Catalog(catalog_path) as catalog:
        dry = restore(catalog, dry_run=True, quiet=True)
        assert dry.restored == 10
        assert tree.path(RECOMPRESSED).exists() is False  # a dry run touches nothing
        back = restore(catalog, quiet=True)
    assert (back.restored, back.already_original, back.failed) == (10, 0, 0)
    assert tree_hashes(tree.root) == original
    rows = image_rows(catalog_path)
    assert sorted(rows) == sorted(rows_before)
    for rel, before in rows_before.items():
        assert rows[rel]["present"] is True, rel
        assert rows[rel]["content_hash"] == before["content_hash"], rel
        assert rows[rel]["image_id"] == before["image_id"], rel
        assert rows[rel]["version"] == before["version"], rel  # the same bytes: the same version again
    assert {j["state"] for j in _journal(catalog_path)} == {"restored"}


def test_restore_refuses_a_backup_path_outside_the_backup_root(sanitized, catalog_path, tmp_path, run_cli):
    tree, _ = sanitized
    with Catalog(catalog_path) as catalog:
        apply_plan(catalog, _plan(catalog, catalog_path, without_recompress=True), backup_dir=tmp_path / "backup",
                   quiet=True)
    after_apply = tree_hashes(tree.root)
    outside = tmp_path / "backup" / ".." / "elsewhere" / "x.jpg"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.jpg").write_bytes(b"not the original")
    op_id = _journal(catalog_path)[0]["op_id"]
    result = run_cli(["sql", "--write", f"UPDATE journal SET backup = '{outside}' WHERE op_id = {op_id}"],
                     catalog_path)
    assert result.exit_code == 0, result.output

    result = run_cli(["restore"], catalog_path)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: refusing to restore op {op_id}: backup path {outside} escapes the backup root "
        f"{(tmp_path / 'backup').resolve()}\n")
    assert tree_hashes(tree.root) == after_apply  # refused before touching anything
    assert {j["state"] for j in _journal(catalog_path)} == {"done"}


def test_no_backup_must_be_explicit_and_cannot_be_restored(sanitized, catalog_path):
    tree, original = sanitized
    with Catalog(catalog_path) as catalog:
        plan = _plan(catalog, catalog_path, without_recompress=True)
        summary = apply_plan(catalog, plan, backup_dir=None, no_backup=True, quiet=True)
        assert summary.done == 9
        assert catalog.scalar("SELECT count(*) FROM journal WHERE backup IS NOT NULL") == 0
        dry = restore(catalog, dry_run=True, quiet=True)
        back = restore(catalog, quiet=True)
    assert (dry.restored, dry.no_backup, dry.failed) == (0, 9, 0)  # the dry run tells the truth
    assert (back.restored, back.no_backup, back.failed) == (0, 9, 0)
    assert back.errors[0].endswith(": changed with --no-backup; nothing to restore from")
    assert not tree.path(DELETED[0]).exists()


def test_a_file_changed_after_scanning_is_skipped(sanitized, catalog_path, tmp_path):
    tree, original = sanitized
    victim = tree.path("sizes/tiny_40x60.jpg")
    victim.write_bytes(victim.read_bytes() + b"\0")  # changed behind the catalog's back
    with Catalog(catalog_path) as catalog:
        plan = _plan(catalog, catalog_path, without_recompress=True)
        summary = apply_plan(catalog, plan, backup_dir=tmp_path / "backup", quiet=True)
    assert (summary.done, summary.skipped) == (8, 1)
    assert summary.errors == [f"{victim} changed since it was scanned; run `vdc-lake scan` and plan again"]
    assert victim.exists()
    states = {j["src"]: j["state"] for j in _journal(catalog_path)}
    assert states[str(victim)] == "skipped"


# Apply and restore under hostile use: output names that are taken, kills at chosen
# points of an operation (a real SIGKILL of a subprocess, at a patched step), operations that fail
# half-way (immutable files), a resumed operation meeting a symlink, a journal row whose output
# path names another image, an unwritable backup folder, and a file that turned into a named pipe.
# test_file_safety, test_crash and the tests above cover the rest; nothing below repeats them.


RULES_TOML = "[sanitize]\nmax_width = 200\nmax_height = 200\nmax_file_size_mb = 0.03\nbuiltin_descriptor = false\n"


def _image(path: Path, size: tuple[int, int], seed: int, fmt: str = "JPEG") -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, fmt)
    return path


def _scanned(tmp_path: Path, run_cli, files: dict[str, tuple]) -> tuple[Path, Path, Path]:
    """data/ with `files` ({rel: (size, seed, format)}), scanned and sanitized with tight limits
    (BMP/TIFF of 160x120 are over 0.03 MB: recompress; 40x40: delete; 300x250: resize)."""
    root, config, catalog = tmp_path / "data", tmp_path / "rules.toml", tmp_path / "c.duckdb"
    for rel, (size, seed, fmt) in files.items():
        _image(root / rel, size, seed, fmt)
    config.write_text(RULES_TOML)
    for args in (["scan", root], ["sanitize"]):
        result = run_cli(args, catalog, config=config)
        assert result.exit_code == 0, result.output
    return root, catalog, config


def _journal_by_name(catalog: Path) -> dict[str, dict]:
    with Catalog(catalog, read_only=True) as c:
        return {Path(r["src"]).name: r for r in c.arrow("SELECT * FROM journal ORDER BY op_id").to_pylist()}


def _present_paths(catalog: Path) -> list[str]:
    with Catalog(catalog, read_only=True) as c:
        return [p for (p,) in c.rows("SELECT rel_path FROM images WHERE present ORDER BY rel_path")]


def _cli_killed_at(catalog: Path, config: Path, args: list, patch: str) -> subprocess.CompletedProcess:
    """`vdc-lake ARGS` in a subprocess whose `patch` (Python run first) SIGKILLs it at a chosen step."""
    code = (f"import os, signal, pathlib\nimport vdc_lake.effects.engine as a, vdc_lake.effects.operation as o\n{patch}"
            "\nfrom vdc_lake.cli import main; main()")
    return subprocess.run([sys.executable, "-c", code, "--catalog", str(catalog), "--config", str(config), "-q",
                           *map(str, args)], capture_output=True, text=True, timeout=300)


def _unlink_killer(name: str) -> str:
    """A patch that SIGKILLs the process when it is about to remove a file called `name`."""
    return (f"_unlink = pathlib.Path.unlink\n"
            f"def unlink(self, *args, **kwargs):\n"
            f"    if self.name == {name!r}:\n"
            f"        os.kill(os.getpid(), signal.SIGKILL)\n"
            f"    return _unlink(self, *args, **kwargs)\n"
            f"pathlib.Path.unlink = unlink")


def _one_error_line(result) -> str:
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


# -- 1. a recompressed file's new name is never another file's --------------------------------------

def test_recompress_outputs_never_replace_a_file_another_output_or_a_catalogued_image(tmp_path, run_cli):
    """x.bmp and x.tif both become WebP; y.webp, y.recompressed.webp (the user's, made after the
    scan) and a dangling link z.webp hold the first names; w.webp is a catalogued image whose file
    is away for a moment. Before: x.tif's output replaced x.bmp's (and the catalog was then
    "damaged", two present images on one path, so even restore refused), the user's files were
    overwritten and the link replaced."""
    files = {name: ((160, 120), seed, fmt) for seed, (name, fmt) in enumerate(
        [("x.bmp", "BMP"), ("x.tif", "TIFF"), ("y.bmp", "BMP"), ("z.bmp", "BMP"), ("w.bmp", "BMP")])}
    files["w.webp"] = ((120, 90), 9, "WEBP")
    root, catalog, config = _scanned(tmp_path, run_cli, files)
    (root / "y.webp").write_bytes(b"the user's own y.webp")
    (root / "y.recompressed.webp").write_bytes(b"the user's own y.recompressed.webp")
    (root / "z.webp").symlink_to("nowhere.webp")
    shutil.move(root / "w.webp", tmp_path / "w.webp")
    before = tree_hashes(root)

    result = run_cli(["apply", "sanitize", "--backup-dir", tmp_path / "bk", "--apply"], catalog, config=config)
    assert result.exit_code == 0, result.output
    dst = {name: Path(row["dst"]).name for name, row in _journal_by_name(catalog).items()}
    assert dst == {"x.bmp": "x.webp", "x.tif": "x.recompressed.webp", "y.bmp": "y.recompressed-2.webp",
                   "z.bmp": "z.recompressed.webp", "w.bmp": "w.recompressed.webp"}
    assert "5 rewritten files (verified to decode) are new image versions: run `vdc-lake sanitize`" in result.output
    now = tree_hashes(root)
    for rel in ("y.webp", "y.recompressed.webp", "z.webp"):
        assert now[rel] == before[rel], rel
    for name, out in dst.items():
        with Image.open(root / out) as img:
            assert (img.format, img.size) == ("WEBP", (160, 120)), out
        assert not (root / name).exists()
    assert _present_paths(catalog) == sorted(["w.webp", *dst.values()])  # one image per path

    shutil.move(tmp_path / "w.webp", root / "w.webp")
    result = run_cli(["restore"], catalog, config=config)
    assert result.exit_code == 0, result.output
    assert tree_hashes(root) == dict(before, **{"w.webp": file_hash(root / "w.webp")})
    assert _present_paths(catalog) == sorted(files)


# -- 2. a kill between the plan and the act, or between the output and the original's removal -----

def test_a_name_taken_while_apply_was_killed_is_refused_and_an_own_output_is_finished(tmp_path, run_cli):
    """apply killed (SIGKILL) right after journaling its plan; the user then makes a file under the
    journaled output name: the resumed apply fails that operation and touches neither file (before:
    it replaced the user's file). Killed after the output was written, before the original was
    removed: the resumed apply recognises its own output (the same bytes) and finishes."""
    root, catalog, config = _scanned(tmp_path, run_cli, {"a.bmp": ((160, 120), 1, "BMP"),
                                                          "b.bmp": ((160, 120), 2, "BMP")})
    original = tree_hashes(root)
    apply_args = ["apply", "sanitize", "--backup-dir", tmp_path / "bk", "--apply"]
    killed = _cli_killed_at(catalog, config, apply_args,
                            "a.execute_op = lambda op: os.kill(os.getpid(), signal.SIGKILL)")
    assert killed.returncode == -9, killed.stderr
    ops = _journal_by_name(catalog)
    assert {r["state"] for r in ops.values()} == {"planned"} and tree_hashes(root) == original
    (root / "a.webp").write_bytes(b"made by the user after the kill")

    result = run_cli(apply_args, catalog, config=config)
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert line == "Error: 1 operations failed; see the journal table for details"
    ops = _journal_by_name(catalog)
    assert (ops["a.bmp"]["state"], ops["b.bmp"]["state"]) == ("failed", "done")
    real = root.resolve()
    assert ops["a.bmp"]["error"] == (f"recompress of {real / 'a.bmp'} failed: another file already has the output's "
                                     f"name; move it away and run apply again ({real / 'a.webp'}, EEXIST)")
    assert (root / "a.webp").read_bytes() == b"made by the user after the kill"
    assert file_hash(root / "a.bmp") == original["a.bmp"]

    # the same kill, one step later: after the output got its name, before a.bmp was removed
    (root / "a.webp").unlink()
    result = run_cli(["restore"], catalog, config=config)
    assert result.exit_code == 0 and tree_hashes(root) == original, result.output
    unlink = _unlink_killer("c.bmp")
    _image(root / "c.bmp", (160, 120), 3, "BMP")
    assert run_cli(["scan", root], catalog, config=config).exit_code == 0
    assert run_cli(["sanitize"], catalog, config=config).exit_code == 0
    original = tree_hashes(root)
    killed = _cli_killed_at(catalog, config, apply_args, unlink)
    assert killed.returncode == -9, killed.stderr
    assert file_hash(root / "c.bmp") == original["c.bmp"] and (root / "c.webp").exists()
    result = run_cli(apply_args, catalog, config=config)
    assert result.exit_code == 0, result.output
    assert not (root / "c.bmp").exists() and sorted(p.name for p in root.iterdir()) == ["a.webp", "b.webp", "c.webp"]
    assert _journal_by_name(catalog)["c.bmp"]["state"] == "done"
    result = run_cli(["restore"], catalog, config=config)
    assert result.exit_code == 0 and tree_hashes(root) == original, result.output


def test_restore_after_a_killed_recompress_removes_its_own_output_only(tmp_path, run_cli):
    """restore (not a resuming apply) after kills: where the output got its name before the kill,
    restore removes it; where the kill came before the act and the user then made a file under the
    journaled name, restore leaves that file (before: it removed it, being an interrupted op's dst)."""
    root, catalog, config = _scanned(tmp_path, run_cli, {"a.bmp": ((160, 120), 1, "BMP"),
                                                          "b.bmp": ((160, 120), 2, "BMP")})
    original = tree_hashes(root)
    apply_args = ["apply", "sanitize", "--backup-dir", tmp_path / "bk", "--apply"]
    killed = _cli_killed_at(catalog, config, apply_args, _unlink_killer("a.bmp"))
    assert killed.returncode == -9, killed.stderr
    assert sorted(tree_hashes(root)) == ["a.bmp", "a.webp", "b.bmp"]
    (root / "b.webp").write_bytes(b"the user's b.webp, made after the kill")

    result = run_cli(["restore"], catalog, config=config)
    assert result.exit_code == 0, result.output
    assert result.output == "restored 0 files; 2 already original; 0 failed\n"
    assert tree_hashes(root) == dict(original, **{"b.webp": file_hash(root / "b.webp")})
    assert (root / "b.webp").read_bytes() == b"the user's b.webp, made after the kill"


def test_a_resumed_recompress_takes_only_its_own_output_for_done(tmp_path, run_cli):
    """Killed after the backup, before the act; the user then removed a.bmp and made an a.webp of
    their own. The resumed apply must not take it for its output (before: it did, gave it a.bmp's
    mode and times, recorded it as the new version, and restore then removed it)."""
    root, catalog, config = _scanned(tmp_path, run_cli, {"a.bmp": ((160, 120), 1, "BMP")})
    apply_args = ["apply", "sanitize", "--backup-dir", tmp_path / "bk", "--apply"]
    killed = _cli_killed_at(catalog, config, apply_args, "import vdc_lake.fileops.imageops as io\n"
                            "io.ACTIONS['recompress'] = io.Action('recompress', lambda *args: "
                            "os.kill(os.getpid(), signal.SIGKILL), io.recompress_destination)")
    assert killed.returncode == -9, killed.stderr
    (root / "a.bmp").unlink()
    mine = _image(root / "a.webp", (100, 100), 5, "WEBP")
    digest = file_hash(mine)

    result = run_cli(apply_args, catalog, config=config)
    assert result.exit_code == 0, result.output
    assert _journal_by_name(catalog)["a.bmp"]["state"] == "skipped"
    result = run_cli(["restore"], catalog, config=config)
    assert result.exit_code == 0, result.output
    assert file_hash(mine) == digest


# -- 3. a resumed operation and a symlink -----------------------------------------------------------

def test_a_resumed_operation_never_changes_a_file_through_a_symlink(tmp_path, run_cli):
    """apply killed after resizing big.jpg, before journaling it; the user then put a symlink to a
    file outside the root there. Resuming must not take the link's target for its output (before:
    it chmod/chown/utime'd the target outside the root and recorded its bytes as the new version)."""
    root, catalog, config = _scanned(tmp_path, run_cli, {"big.jpg": ((300, 250), 1, "JPEG"),
                                                          "ok.jpg": ((120, 100), 2, "JPEG")})
    apply_args = ["apply", "sanitize", "--backup-dir", tmp_path / "bk", "--apply"]
    killed = _cli_killed_at(catalog, config, apply_args,
                            "o._finished = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)")
    assert killed.returncode == -9, killed.stderr
    with Image.open(root / "big.jpg") as img:
        assert img.size == (200, 167)  # the act happened; the journal still says planned
    victim = _image(tmp_path / "elsewhere" / "victim.jpg", (90, 90), 7)
    os.chmod(victim, 0o600)
    os.utime(victim, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    shape = (os.stat(victim).st_mode, os.stat(victim).st_mtime_ns, file_hash(victim))
    (root / "big.jpg").unlink()
    (root / "big.jpg").symlink_to(victim)

    result = run_cli(apply_args, catalog, config=config)
    assert result.exit_code == 0, result.output
    assert (os.stat(victim).st_mode, os.stat(victim).st_mtime_ns, file_hash(victim)) == shape
    assert (root / "big.jpg").is_symlink()
    op = _journal_by_name(catalog)["big.jpg"]
    assert op["state"] == "skipped" and op["error"].endswith("changed since it was scanned; run `vdc-lake scan` "
                                                             "and plan again"), op


def test_a_journal_whose_output_path_names_another_image_is_refused(tmp_path, run_cli):
    """An edited journal row whose dst names another image of the root: a resize resumed with it
    wrote over that image (no backup of it), and restore removed it as the operation's output.
    Both are refused before a file is touched."""
    import duckdb

    def edit(sql: str, params: list) -> None:
        con = duckdb.connect(str(catalog))
        con.execute(sql, params)
        con.close()

    root, catalog, config = _scanned(tmp_path, run_cli, {"big.jpg": ((300, 250), 1, "JPEG"),
                                                          "a.bmp": ((160, 120), 2, "BMP"),
                                                          "other.jpg": ((120, 100), 3, "JPEG")})
    original, other = tree_hashes(root), str(root.resolve() / "other.jpg")
    copy_catalog(catalog, tmp_path / "scanned.duckdb")
    shutil.copytree(root, tmp_path / "template")
    apply_args = ["apply", "sanitize", "--backup-dir", tmp_path / "bk", "--apply"]
    killed = _cli_killed_at(catalog, config, apply_args,
                            "a.execute_op = lambda op: os.kill(os.getpid(), signal.SIGKILL)")
    assert killed.returncode == -9, killed.stderr
    edit("UPDATE journal SET dst = ? WHERE action = 'resize'", [other])
    result = run_cli(apply_args, catalog, config=config)  # resumes the planned operations
    assert result.exit_code == 1
    assert f"output path {other} is not one resize writes for {root.resolve() / 'big.jpg'}" in result.output
    now = tree_hashes(root)
    assert (now["other.jpg"], now["big.jpg"]) == (original["other.jpg"], original["big.jpg"])

    for path in (root, tmp_path / "bk"):  # again from the scanned state: a whole apply, then an edited row
        shutil.rmtree(path)
    shutil.copytree(tmp_path / "template", root)
    Path(str(catalog) + ".wal").unlink(missing_ok=True)
    copy_catalog(tmp_path / "scanned.duckdb", catalog)
    assert run_cli(apply_args, catalog, config=config).exit_code == 0
    after_apply = tree_hashes(root)
    edit("UPDATE journal SET dst = ?, checksum_after = ? WHERE action = 'recompress'", [other, original["other.jpg"]])
    result = run_cli(["restore"], catalog, config=config)
    assert result.exit_code == 1
    assert _one_error_line(result).startswith("Error: refusing to restore op ")
    assert f"output path {other} is not one recompress writes for {root.resolve() / 'a.bmp'}" in result.output
    assert tree_hashes(root) == after_apply


# -- 4. the backup folder must be writable before anything is journaled ------------------------------

def test_a_backup_folder_that_cannot_be_made_or_is_empty_is_one_error_and_nothing_is_journaled(tmp_path, run_cli):
    root, catalog, config = _scanned(tmp_path, run_cli, {"tiny.jpg": ((40, 40), 1, "JPEG"),
                                                          "big.jpg": ((300, 250), 2, "JPEG")})
    before = tree_hashes(root)
    (tmp_path / "a_file").write_text("not a folder")
    result = run_cli(["apply", "sanitize", "--backup-dir", tmp_path / "a_file" / "bk", "--apply"], catalog,
                     config=config)
    assert result.exit_code == 1
    assert _one_error_line(result) == (
        f"Error: cannot write backups to {tmp_path / 'a_file' / 'bk'} (Not a directory, ENOTDIR); choose a folder "
        "you can write to, outside every scanned root")
    assert tree_hashes(root) == before and _journal_by_name(catalog) == {}
    for args in (["apply", "sanitize", "--apply"], ["restore"]):  # "$BACKUP" of an unset variable: not the cwd
        result = run_cli([*args, "--backup-dir", ""], catalog, config=config)
        assert result.exit_code == 1
        assert _one_error_line(result) == ("Error: --backup-dir is empty; give the folder for the backups, outside "
                                           "every scanned root (e.g. --backup-dir backup/sanitize)")
    assert tree_hashes(root) == before and _journal_by_name(catalog) == {}


# -- 5. operations that fail half-way (immutable files and folders) ----------------------------------

@pytest.fixture
def immutable(tmp_path):
    """chattr +i PATH (root on a filesystem with the flag); every path is made mutable again after."""
    marked: list[Path] = []

    def mark(*paths: Path, on: bool = True) -> None:
        for path in paths:
            subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True, capture_output=True)
            (marked.append if on else marked.remove)(path)

    probe = tmp_path / "probe"
    probe.write_text("x")
    if os.geteuid() != 0 or not shutil.which("chattr") or subprocess.run(
            ["chattr", "+i", str(probe)], capture_output=True).returncode != 0:
        pytest.skip("needs root and a filesystem with chattr +i")
    subprocess.run(["chattr", "-i", str(probe)], check=True)
    yield mark
    for path in marked:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def test_operations_that_fail_half_way_leave_the_tree_as_it_was_and_restore_undoes_only_what_was_done(
        tmp_path, run_cli, immutable):
    """An original that cannot be removed (immutable): its recompress fails after writing the WebP,
    which must go again (before: it stayed, and each apply added one more, x.recompressed.webp...);
    its delete fails. A folder that cannot be written: its resize fails. Each is one journaled line.
    Once they are mutable a second run does them; restoring the first run (whose operations changed
    nothing) must leave the second run's work alone (before: it undid it and reported backups
    missing for the operations that never made one)."""
    files = {"x.bmp": ((160, 120), 1, "BMP"), "tiny.jpg": ((40, 40), 2, "JPEG"),
             "locked/big.jpg": ((300, 250), 3, "JPEG"), "ok.jpg": ((120, 100), 4, "JPEG")}
    root, catalog, config = _scanned(tmp_path, run_cli, files)
    original = tree_hashes(root)
    immutable(root / "x.bmp", root / "tiny.jpg", root / "locked")
    apply_args = ["apply", "sanitize", "--backup-dir", tmp_path / "bk", "--apply"]

    result = run_cli(apply_args, catalog, config=config)
    assert result.exit_code == 1
    assert _one_error_line(result) == "Error: 3 operations failed; see the journal table for details"
    assert tree_hashes(root) == original  # no x.webp, no temp file
    ops = _journal_by_name(catalog)
    assert {r["state"] for r in ops.values()} == {"failed"}
    real = root.resolve()
    for name, action in (("x.bmp", "recompress"), ("tiny.jpg", "delete")):
        assert ops[name]["error"] == f"{action} of {real / name} failed: Operation not permitted ({real / name}, EPERM)"
    assert ops["big.jpg"]["error"].startswith(f"resize of {real / 'locked/big.jpg'} failed: Operation not permitted")
    first_run = ops["x.bmp"]["run_id"]

    immutable(root / "x.bmp", root / "tiny.jpg", root / "locked", on=False)
    result = run_cli(apply_args, catalog, config=config)
    assert result.exit_code == 0, result.output
    after_second = tree_hashes(root)
    assert sorted(after_second) == ["locked/big.jpg", "ok.jpg", "x.webp"]
    result = run_cli(["restore", "--run", first_run], catalog, config=config)
    assert result.exit_code == 0, result.output
    assert result.output == "restored 0 files; 0 already original; 0 failed\n"
    assert tree_hashes(root) == after_second

    immutable(root / "locked")  # a restore that cannot write one folder restores the rest; again, the rest
    result = run_cli(["restore"], catalog, config=config)
    assert result.exit_code == 1
    assert _one_error_line(result) == "Error: 1 files could not be restored"
    assert (f"  restore of {real / 'locked/big.jpg'} failed: Operation not permitted "
            f"({real / 'locked/big.jpg.vdc-restore'}, EPERM)") in result.output.splitlines()
    assert tree_hashes(root) == dict(original, **{"locked/big.jpg": after_second["locked/big.jpg"]})
    immutable(root / "locked", on=False)
    result = run_cli(["restore"], catalog, config=config)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("restored 1 files;")
    assert tree_hashes(root) == original


# -- 6. a root that is not there (a disk not mounted) -------------------------------------------------

def test_restore_never_makes_a_missing_root_again(tmp_path, run_cli):
    """The scanned root is gone (its disk not mounted): restore must not make the folder and put
    the originals there, on the disk below the mount point, and record them restored (it did)."""
    root, catalog, config = _scanned(tmp_path, run_cli, {"sub/tiny.jpg": ((40, 40), 1, "JPEG"),
                                                          "big.jpg": ((300, 250), 2, "JPEG")})
    original = tree_hashes(root)
    assert run_cli(["apply", "sanitize", "--backup-dir", tmp_path / "bk", "--apply"], catalog,
                   config=config).exit_code == 0
    shutil.move(root, tmp_path / "unmounted")
    result = run_cli(["restore"], catalog, config=config)
    assert result.exit_code == 1
    assert _one_error_line(result) == "Error: 2 files could not be restored"
    assert (f"  {root.resolve() / 'big.jpg'}: its scanned root {root.resolve()} is missing (a disk not mounted?); "
            "nothing was restored there; mount it and run restore again") in result.output.splitlines()
    assert not os.path.lexists(root)
    shutil.move(tmp_path / "unmounted", root)
    result = run_cli(["restore"], catalog, config=config)
    assert result.exit_code == 0, result.output
    assert tree_hashes(root) == original


def test_an_apply_resumed_while_the_root_is_missing_leaves_its_operations_for_later(tmp_path, run_cli):
    """Killed after resizing big.jpg (before journaling it), resumed while the disk is not mounted:
    the operation stays planned (before: skipped, for good, so restore never gave the original
    back although its backup was verified) and the next apply, with the disk back, finishes it."""
    root, catalog, config = _scanned(tmp_path, run_cli, {"big.jpg": ((300, 250), 1, "JPEG")})
    original = tree_hashes(root)
    apply_args = ["apply", "sanitize", "--backup-dir", tmp_path / "bk", "--apply"]
    killed = _cli_killed_at(catalog, config, apply_args,
                            "o._finished = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)")
    assert killed.returncode == -9, killed.stderr
    shutil.move(root, tmp_path / "unmounted")
    result = run_cli(apply_args, catalog, config=config)
    assert result.exit_code == 1
    assert _one_error_line(result) == "Error: 1 operations failed; see the journal table for details"
    assert not os.path.lexists(root)
    assert _journal_by_name(catalog)["big.jpg"]["state"] == "planned"
    shutil.move(tmp_path / "unmounted", root)
    result = run_cli(apply_args, catalog, config=config)
    assert result.exit_code == 0, result.output
    assert _journal_by_name(catalog)["big.jpg"]["state"] == "done"
    result = run_cli(["restore"], catalog, config=config)
    assert result.exit_code == 0, result.output
    assert tree_hashes(root) == original


# -- 7. a named pipe is never read ------------------------------------------------------------------

def test_a_checksum_of_a_named_pipe_fails_at_once_instead_of_waiting_for_a_writer(tmp_path):
    """apply checks the bytes of a file, and of a backup, with content_hash: a pipe swapped in after
    the type check must not block it forever (before: open() waited for a writer)."""
    fifo = tmp_path / "image.jpg"
    os.mkfifo(fifo)
    code = ("from vdc_lake.fileops.probe import content_hash\n"
            f"try:\n    content_hash({str(fifo)!r})\nexcept OSError as e:\n    print(e)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert done.stdout.strip() == f"[Errno 22] not a regular file (a named pipe): '{fifo}'", done.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# -- animated images keep every frame ---------------------------------------------------------------

_FRAME_COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230)]


def _animated(path: Path, fmt: str, size=(90, 60)) -> None:
    """Three frames, each a different colour with a white block at the left (so a turn shows)."""
    frames = []
    for colour in _FRAME_COLOURS:
        frame = Image.new("RGB", size, colour)
        frame.paste((255, 255, 255), (0, 0, size[0] // 4, size[1]))
        frames.append(frame)
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=[100, 150, 200], loop=0,
                   **({"lossless": True} if fmt == "WEBP" else {}))


@pytest.mark.parametrize("fmt,suffix", [("GIF", ".gif"), ("WEBP", ".webp")])
@pytest.mark.parametrize("action", ["resize", "rotate_90", "recompress"])
def test_rewriting_an_animated_image_keeps_every_frame(tmp_path, fmt, suffix, action):
    """resize, rotate and recompress wrote the first frame alone (an animated GIF or WebP became a
    still); now every frame is transformed alike, with its duration and the loop count."""
    from vdc_lake.fileops.imageops import recompress_file, resize_file, rotate_file

    src = tmp_path / f"anim{suffix}"
    _animated(src, fmt)
    if action == "resize":
        dst, expected_size = src, (45, 30)
        resize_file(src, dst, {"max_width": 45, "max_height": 45})
    elif action == "rotate_90":
        dst, expected_size = src, (60, 90)
        rotate_file(src, dst, {"action": "rotate_90"})
    else:
        dst, expected_size = tmp_path / "anim.out.webp", (90, 60)
        recompress_file(src, dst, {"recompress_format": "WEBP", "recompress_quality": 90})
    with Image.open(dst) as out:
        assert out.n_frames == 3 and out.size == expected_size
        assert out.info.get("loop") == 0
        for i, colour in enumerate(_FRAME_COLOURS):
            out.seek(i)
            frame = np.asarray(out.convert("RGB"), dtype=int)
            assert out.info["duration"] == [100, 150, 200][i]
            # the frame's colour at the far side from the white block (right, or bottom once turned)
            corner = frame[-1, -1] if action != "rotate_90" else frame[-1, 0]
            assert np.abs(corner - colour).max() < 40, (i, corner, colour)
            if action == "rotate_90":  # the white block (the left quarter) is now the top quarter
                assert frame[:10].mean() > 240 and frame[-10:].mean() < 200


def test_a_leftover_that_cannot_be_removed_never_stops_apply_or_restore(tmp_path, immutable):
    """A temp file of a killed run in a folder that cannot be written since: left there (scan skips
    it), and the run goes on; it stopped every apply and restore with an Error line."""
    from vdc_lake.effects.leftovers import remove_leftovers_of

    root, backup = tmp_path / "root", tmp_path / "backup"
    root.mkdir()
    backup.mkdir()
    stuck, free = root / ".a.jpg.vdc-tmp", backup / "a.jpg.vdc-tmp"
    stuck.write_bytes(b"x")
    free.write_bytes(b"x")
    immutable(root)
    ops = [{"src": str(root / "a.jpg"), "dst": None, "backup": str(backup / "a.jpg"),
            "root": str(root), "backup_root": str(backup)}]
    assert remove_leftovers_of(ops) == [str(free)]
    assert stuck.exists() and not free.exists()


def test_restore_force_never_writes_through_a_link_at_the_kept_copy_s_name(tmp_path):
    """restore --force keeps the user's version as NAME.vdc-user-STAMP beside the backup; a link
    already under that name was written through (to its target, anywhere)."""
    from vdc_lake.effects.restore import _keep_aside

    backup_dir, outside = tmp_path / "backup", tmp_path / "outside.txt"
    backup_dir.mkdir()
    outside.write_text("not yours to write")
    mine = tmp_path / "photo.jpg"
    mine.write_bytes(b"the user's edit")
    (backup_dir / "photo.jpg.vdc-user-20260101T000000").symlink_to(outside)
    kept = _keep_aside(mine, backup_dir / "photo.jpg", "20260101T000000")
    assert kept == backup_dir / "photo.jpg.vdc-user-20260101T000000-1"
    assert kept.read_bytes() == b"the user's edit" and outside.read_text() == "not yours to write"


def test_a_file_changed_keeping_size_and_mtime_is_read_again_by_the_next_scan(tmp_path, run_cli):
    """apply skips a file whose bytes changed since the scan ("run `vdc-lake scan`"); when the change
    kept its size and mtime, scan saw nothing and the advice looped. Now the skip makes the next
    scan read the file again: a new version, and nothing left to delete."""
    root, catalog, config = _scanned(tmp_path, run_cli, {"tiny.jpg": ((40, 40), 1, "JPEG"),
                                                          "ok.jpg": ((120, 100), 2, "JPEG")})
    victim = root / "tiny.jpg"
    st = os.stat(victim)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # other bytes, same size
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "0 changed" in run_cli(["scan", root], catalog, config=config).output  # size and mtime match
    result = run_cli(["apply", "sanitize", "--backup-dir", tmp_path / "bk", "--apply"], catalog, config=config)
    assert result.exit_code == 0, result.output
    assert _journal_by_name(catalog)["tiny.jpg"]["state"] == "skipped" and victim.read_bytes() == bytes(data)
    rescan = run_cli(["scan", root], catalog, config=config)
    assert "1 changed" in rescan.output, rescan.output
    with Catalog(catalog, read_only=True) as c:
        assert c.scalar("SELECT version FROM images WHERE rel_path = 'tiny.jpg'") == 2
