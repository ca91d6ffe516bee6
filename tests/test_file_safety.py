"""File safety of apply and restore (issue 11): nothing outside its place is touched, a delete is
re-checked on the current bytes, restore gives back exactly what was there (bytes, symlinks, hard
links, mode, owner, times, the earlier image version) and never overwrites a user's later edit
without keeping it. Catalogs are tampered with through a plain writable DuckDB connection."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

from tests.conftest import copy_catalog, default_config, file_hash
from vdc_lake.effects.apply import apply_plan, make_plan, restore
from vdc_lake.catalog.connection import Catalog
from vdc_lake.review.decisions import decision_query
from vdc_lake.errors import PlanError
from vdc_lake.stages.sanitize import sanitize
from vdc_lake.stages.scan import scan

RULES = {"max_width": 200, "max_height": 200, "builtin_descriptor": True}
RULES_TOML = "[sanitize]\nmax_width = 200\nmax_height = 200\nbuiltin_descriptor = false\n"
NOBODY = 65534
# What sanitize plans for the template tree (tiny: under 80 px; big: over 200 px).
DELETED = ["tiny_a.jpg", "sub/tiny_b.jpg", "tiny_b_hardlink.jpg", "link_tiny.jpg"]
RESIZED = ["big_c.jpg", "sub/big_d.jpg", "link_big.jpg"]


def _image(path: Path, size: tuple[int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
    return path


def _write_tree(root: Path, elsewhere: Path) -> None:
    """data/ with plain files, a hard-linked pair, symlinks to files outside the root and an exact
    copy; elsewhere/ holds the link targets (outside every root: never to be touched)."""
    _image(root / "tiny_a.jpg", (40, 40), 1)
    _image(root / "sub" / "tiny_b.jpg", (50, 30), 2)
    os.link(root / "sub" / "tiny_b.jpg", root / "tiny_b_hardlink.jpg")
    _image(root / "big_c.jpg", (300, 240), 3)
    _image(root / "sub" / "big_d.jpg", (260, 210), 4)
    _image(root / "ok.jpg", (120, 100), 5)
    shutil.copy2(root / "ok.jpg", root / "sub" / "ok_copy.jpg")
    (root / "link_big.jpg").symlink_to(_image(elsewhere / "target_big.jpg", (300, 220), 6))
    (root / "link_tiny.jpg").symlink_to(_image(elsewhere / "target_tiny.jpg", (30, 30), 7))


class Workspace:
    """Fixed paths reset from a template before each test (the catalog stores absolute roots):
    base/data (the scanned root), base/elsewhere, base/c.duckdb (scanned and sanitized)."""

    def __init__(self, base: Path):
        self.base, self.template = base, base / "template"
        self.root, self.elsewhere, self.catalog = base / "data", base / "elsewhere", base / "c.duckdb"
        self.backup = base / "bk"

    def prepare(self) -> None:
        _write_tree(self.root, self.elsewhere)
        config = default_config(self.base)
        config.overlay({"sanitize": RULES}, "test")
        with Catalog(self.catalog) as catalog:
            scan(catalog, [self.root], extensions=config.values["scan"]["extensions"], workers=1, quiet=True)
            sanitize(catalog, config.section("sanitize"), workers=1, quiet=True)
        self.template.mkdir()
        for path in (self.root, self.elsewhere):
            shutil.copytree(path, self.template / path.name, symlinks=True)
        copy_catalog(self.catalog, self.template / self.catalog.name)

    def reset(self) -> None:
        for path in (self.root, self.elsewhere, self.backup, self.base / "moved", self.base / "victim"):
            shutil.rmtree(path, ignore_errors=True)
        for path in (self.root, self.elsewhere):
            shutil.copytree(self.template / path.name, path, symlinks=True)
        (self.root / "tiny_b_hardlink.jpg").unlink()  # copytree splits hard links
        os.link(self.root / "sub" / "tiny_b.jpg", self.root / "tiny_b_hardlink.jpg")
        for suffix in ("", ".wal"):
            Path(str(self.catalog) + suffix).unlink(missing_ok=True)
        copy_catalog(self.template / self.catalog.name, self.catalog)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("safety"))
    ws.prepare()
    return ws


@pytest.fixture
def ws(workspace) -> Workspace:
    workspace.reset()
    return workspace


def _apply(catalog_path: Path, backup: Path | None, stage: str = "sanitize", **options):
    config = default_config(catalog_path.parent)
    with Catalog(catalog_path) as catalog:
        source_sql, params, op_options = decision_query(stage, config, **options)
        plan = make_plan(catalog, stage, source_sql, params, op_options)
        return apply_plan(catalog, plan, backup_dir=backup, no_backup=backup is None, quiet=True)


def _tamper(catalog_path: Path, sql: str) -> None:
    con = duckdb.connect(str(catalog_path))
    try:
        con.execute(sql)
    finally:
        con.close()


def _journal(catalog_path: Path) -> dict[str, dict]:
    with Catalog(catalog_path, read_only=True) as catalog:
        rows = catalog.arrow("SELECT * FROM journal ORDER BY op_id").to_pylist()
    return {Path(r["src"]).name: r for r in rows}


def _shape(path: Path) -> tuple:
    """What a path is: (type, mode, owner, group, mtime, bytes) or ("link", target)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    return ("file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, file_hash(path))


def _shapes(*folders: Path) -> dict[Path, tuple]:
    return {p: _shape(p) for folder in folders for p in sorted(folder.rglob("*")) if not p.is_dir() or p.is_symlink()}


# -- 1. the backup folder lies outside every scanned root -------------------------------------------

def test_a_backup_folder_inside_or_around_a_root_is_refused(ws):
    (ws.root / "sub" / "bk").mkdir()
    (ws.base / "bk-link").symlink_to(ws.root / "sub" / "bk")  # outside the root, pointing into it
    before = _shapes(ws.root)
    root = ws.root.resolve()
    cases = {ws.root / "_backup": "lies inside", ws.base / "bk-link": "lies inside", ws.base: "contains"}
    config = default_config(ws.base)
    with Catalog(ws.catalog) as catalog:
        source_sql, params, options = decision_query("sanitize", config)
        plan = make_plan(catalog, "sanitize", source_sql, params, options)
        for backup, relation in cases.items():
            with pytest.raises(PlanError) as err:
                apply_plan(catalog, plan, backup_dir=backup, quiet=True)
            assert str(err.value) == (
                f"--backup-dir {backup} {relation} the scanned root {root}"
                + (": its backups would be scanned as images" if relation == "lies inside" else "")
                + f"; choose a folder outside every scanned root (e.g. {root.parent / 'data-backup'})")
    assert _shapes(ws.root) == before
    assert _journal(ws.catalog) == {}


def test_the_dry_run_of_apply_refuses_a_backup_folder_inside_a_root_too(ws, run_cli):
    result = run_cli(["apply", "sanitize", "--backup-dir", ws.root / "_backup"], ws.catalog)
    assert result.exit_code == 1
    assert result.output.splitlines()[-1].startswith(
        f"Error: --backup-dir {ws.root / '_backup'} lies inside the scanned root {ws.root.resolve()}")


# -- 2. just before a delete, the reason is checked again ---------------------------------------------

def _add_finding(catalog_path: Path, rel_path: str, rule: str, detail: str) -> None:
    """What a catalog says when an intact file was briefly unreadable while it was checked."""
    _tamper(catalog_path, f"""INSERT INTO findings SELECT c.run_id, i.image_id, i.version, '{rule}', '{detail}',
                              'delete' FROM images i, (SELECT max(run_id) AS run_id FROM sanitize_checks) c
                              WHERE i.rel_path = '{rel_path}'""")


def test_a_delete_whose_reason_no_longer_holds_is_skipped(ws):
    """A decode failure is decoded again; an unreadable file is never a reason to delete."""
    _add_finding(ws.catalog, "ok.jpg", "corrupt", "decoding failed (image file is truncated)")
    _add_finding(ws.catalog, "sub/ok_copy.jpg", "unreadable", "cannot read the file (Permission denied, EACCES)")
    summary = _apply(ws.catalog, ws.backup)
    assert (ws.root / "ok.jpg").exists() and (ws.root / "sub/ok_copy.jpg").exists()
    journal = _journal(ws.catalog)
    assert (journal["ok.jpg"]["state"], journal["ok_copy.jpg"]["state"]) == ("skipped", "skipped")
    assert journal["ok.jpg"]["error"] == (f"skipped: reason no longer holds for {ws.root.resolve() / 'ok.jpg'}: "
                                          "the file decodes completely now")
    assert journal["ok_copy.jpg"]["error"].endswith("which is no reason to delete it")
    assert (summary.done, summary.skipped, summary.failed) == (7, 2, 0)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_a_file_apply_cannot_read_is_never_deleted():
    """apply run as `nobody`: a planned delete of a file nobody cannot read is skipped."""
    base = Path(tempfile.mkdtemp(prefix="vdc-perm-"))
    try:
        os.chmod(base, 0o755)
        root = base / "data"
        _image(root / "tiny_a.jpg", (40, 40), 1)
        secret = _image(root / "tiny_secret.jpg", (40, 40), 2)
        config = default_config(base)
        config.overlay({"sanitize": dict(RULES, builtin_descriptor=False)}, "test")
        with Catalog(base / "c.duckdb") as catalog:
            scan(catalog, [root], extensions=config.values["scan"]["extensions"], workers=1, quiet=True)
            sanitize(catalog, config.section("sanitize"), workers=1, quiet=True)
        for path in [base, *base.rglob("*")]:
            os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        os.chown(secret, 0, 0)
        os.chmod(secret, 0o600)
        (base / "rules.toml").write_text(RULES_TOML)
        result = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-m",
             "vdc_lake.cli", "--catalog", str(base / "c.duckdb"), "--config", str(base / "rules.toml"), "-q",
             "apply", "sanitize", "--backup-dir", str(base / "bk"), "--apply"],
            cwd=base, capture_output=True, text=True, env=dict(os.environ, HOME=str(base)))
        assert secret.exists(), result.stdout + result.stderr
        assert not (root / "tiny_a.jpg").exists(), result.stdout + result.stderr
        assert f"{secret} cannot be read now (Permission denied); nothing done" in result.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- 3. restore does not overwrite the user's later edits -------------------------------------------

def test_restore_leaves_a_file_changed_after_apply_alone_unless_forced(ws, run_cli):
    original = _shapes(ws.root)
    _apply(ws.catalog, ws.backup)
    edited, recreated = ws.root / "big_c.jpg", ws.root / "tiny_a.jpg"
    _image(edited, (100, 90), 17)  # the user's own edit of a resized file
    _image(recreated, (90, 90), 18)  # and a new file where a deleted one was
    mine = {edited: file_hash(edited), recreated: file_hash(recreated)}

    result = run_cli(["restore"], ws.catalog)
    assert result.exit_code == 1
    assert "restored 5 files; 0 already original; 2 changed since apply, left alone" in result.output
    assert f"{edited.resolve()}: changed since apply run" in result.output
    assert "Error: 2 files could not be restored" in result.output
    assert {p: file_hash(p) for p in mine} == mine  # untouched
    assert _shape(ws.root / "sub/big_d.jpg") == original[ws.root / "sub/big_d.jpg"]  # the others came back

    result = run_cli(["restore", "--force"], ws.catalog)
    assert result.exit_code == 0, result.output
    assert _shapes(ws.root) == original
    backups = {Path(j["src"]).name: Path(j["backup"]) for j in _journal(ws.catalog).values()}
    for path, digest in mine.items():
        kept = list(backups[path.name].parent.glob(f"{path.name}.vdc-user-*"))
        assert [file_hash(k) for k in kept] == [digest], path
        assert f"your version kept: {kept[0]}" in result.output


# -- 4. modes, owners, times, symlinks and hard links --------------------------------------------------

def test_mode_owner_times_and_links_survive_apply_and_restore(ws):
    """A 0600 file of another user, a read-only file, symlinks (to targets outside the root) and a
    hard-linked pair: apply keeps what it rewrites as it was, restore gives everything back."""
    private, readonly, deleted = ws.root / "big_c.jpg", ws.root / "sub/big_d.jpg", ws.root / "tiny_a.jpg"
    os.chown(private, NOBODY, NOBODY)
    os.chmod(private, 0o600)
    os.chmod(readonly, 0o444)
    os.chown(deleted, NOBODY, 0)
    os.chmod(deleted, 0o640)
    for i, path in enumerate((private, readonly, deleted)):
        os.utime(path, ns=(1_600_000_000_000_000_000 + i, 1_500_000_000_000_000_000 + i))
    before, targets = _shapes(ws.root), _shapes(ws.elsewhere)

    summary = _apply(ws.catalog, ws.backup)
    assert (summary.done, summary.failed) == (7, 0), summary.errors
    for path in (private, readonly):  # rewritten: new bytes, the same mode, owner, group and mtime
        assert _shape(path)[:5] == before[path][:5], path
        assert file_hash(path) != before[path][5]
    assert _shape(Path(_journal(ws.catalog)["big_c.jpg"]["backup"])) == before[private]  # as private as the original
    big_link = ws.root / "link_big.jpg"  # the link was replaced by the resized file; its target is untouched
    assert not big_link.is_symlink() and Image.open(big_link).size == (200, 147)
    assert not os.path.lexists(ws.root / "link_tiny.jpg")
    assert _shapes(ws.elsewhere) == targets

    with Catalog(ws.catalog) as catalog:
        back = restore(catalog, quiet=True)
    assert (back.restored, back.failed) == (7, 0), back.errors
    assert _shapes(ws.root) == before
    assert _shapes(ws.elsewhere) == targets
    a, b = os.stat(ws.root / "sub/tiny_b.jpg"), os.stat(ws.root / "tiny_b_hardlink.jpg")
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)  # one file under two names again


# -- 5. the dry run tells the truth -------------------------------------------------------------------

def test_restore_dry_run_of_a_no_backup_run_says_it_cannot_restore(ws, run_cli):
    _apply(ws.catalog, None)
    result = run_cli(["restore", "--dry-run"], ws.catalog)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        "would restore 0 files; 0 already original; 7 files cannot be restored (run used --no-backup); 0 failed")


# -- 6. confinement against a tampered catalog ---------------------------------------------------------

def test_a_tampered_rel_path_cannot_make_apply_act_outside_the_root(ws):
    victim = _image(ws.base / "victim" / "tiny_v.jpg", (40, 40), 11)
    digest = file_hash(victim)
    _tamper(ws.catalog, f"UPDATE images SET rel_path = '../victim/tiny_v.jpg', content_hash = '{digest}' "
                        "WHERE rel_path = 'tiny_a.jpg'")
    summary = _apply(ws.catalog, ws.backup)
    assert file_hash(victim) == digest
    errors = [e for e in summary.errors if "victim" in e]
    assert len(errors) == 1 and "lies outside the scanned root" in errors[0], summary.errors
    assert not list(ws.backup.rglob("tiny_v.jpg"))



def test_a_tampered_root_is_refused_by_apply_restore_and_exit_1(ws, run_cli):
    """The scanned root is read from the images row too: a root no scan run was given is refused
    (journal 'refused', apply exits 1), and restore refuses it before touching anything."""
    victim = _image(ws.base / "victim" / "v3.jpg", (40, 40), 13)
    digest = file_hash(victim)
    copy_catalog(ws.catalog, ws.base / "scanned.duckdb")
    _tamper(ws.catalog, f"UPDATE images SET root = '{victim.parent}', rel_path = 'v3.jpg', content_hash = '{digest}' "
                        "WHERE rel_path = 'tiny_a.jpg'")
    result = run_cli(["apply", "sanitize", "--no-backup", "--apply"], ws.catalog)
    assert result.exit_code == 1, result.output
    assert "6 done, 0 skipped, 1 refused, 0 failed" in result.output, result.output
    assert "Error: 1 operations were refused" in result.output
    assert file_hash(victim) == digest
    refused = {name: r for name, r in _journal(ws.catalog).items() if r["state"] == "refused"}
    assert list(refused) == ["v3.jpg"] and "no scan run was given" in refused["v3.jpg"]["error"]
    # restore: apply ran on the honest catalog, then the row was edited
    ws.reset()
    copy_catalog(ws.base / "scanned.duckdb", ws.catalog)
    victim = _image(ws.base / "victim" / "big_c.jpg", (40, 40), 13)
    digest = file_hash(victim)
    _apply(ws.catalog, ws.backup)
    after_apply = _shapes(ws.root)
    _tamper(ws.catalog, f"UPDATE images SET root = '{victim.parent}' WHERE rel_path = 'big_c.jpg'")
    result = run_cli(["restore"], ws.catalog)
    assert result.exit_code == 1 and "no scan run was given" in result.output, result.output
    assert file_hash(victim) == digest and _shapes(ws.root) == after_apply

def test_tampered_journal_rows_cannot_make_restore_touch_anything_outside(ws, run_cli):
    """src or dst pointed outside the root; the run's backup folder and backups pointed at the data."""
    victim = _image(ws.base / "victim" / "big_v.jpg", (40, 40), 12)
    digest = file_hash(victim)
    _apply(ws.catalog, ws.backup)
    after_apply = _shapes(ws.root)
    root, bk = ws.root.resolve(), str(ws.backup.resolve())
    tampering = {
        "src": f"UPDATE journal SET src = '{root}/../victim/big_v.jpg' WHERE src LIKE '%big_c.jpg'",
        "dst": f"UPDATE journal SET dst = '{root}/../victim/big_v.jpg' WHERE src LIKE '%big_c.jpg'",
        "backup_dir": f"""UPDATE runs SET params = json_object('backup_dir', '{root}') WHERE stage LIKE 'apply:%';
                          UPDATE journal SET backup = replace(backup, '{bk}', '{root}')""",
    }
    copy_catalog(ws.catalog, ws.base / "applied.duckdb")
    for what, sql in tampering.items():
        copy_catalog(ws.base / "applied.duckdb", ws.catalog)
        _tamper(ws.catalog, sql)
        result = run_cli(["restore"], ws.catalog)
        assert result.exit_code == 1, what
        expected = (f"lies inside the scanned root {root}" if what == "backup_dir"
                    else "lies outside the scanned root")
        assert result.output.startswith("Error: ") and expected in result.output, (what, result.output)
        assert file_hash(victim) == digest, what
        assert _shapes(ws.root) == after_apply, what  # refused before touching anything


def test_resume_and_restore_refuse_a_tampered_backup_folder_in_the_same_words(ws):
    """An apply run killed with operations still planned, whose recorded backup folder was then
    pointed into the scanned root: resuming it (the next apply) and restoring it both refuse it
    before touching a file, through the one check of a run's recorded backup folder."""
    _apply(ws.catalog, ws.backup)
    after_apply = _shapes(ws.root)
    root = ws.root.resolve()
    _tamper(ws.catalog, f"""UPDATE journal SET state = 'planned' WHERE op_id = (SELECT max(op_id) FROM journal);
                            UPDATE runs SET params = json_object('backup_dir', '{root}') WHERE stage LIKE 'apply:%'""")
    with Catalog(ws.catalog, read_only=True) as catalog:
        run_id = catalog.scalar("SELECT max(run_id) FROM runs WHERE stage LIKE 'apply:%'")
    expected = f"the backup folder of apply run {run_id} {root} lies inside the scanned root {root}"
    with pytest.raises(PlanError) as resumed:
        _apply(ws.catalog, ws.base / "bk2")
    with pytest.raises(PlanError) as restored:
        with Catalog(ws.catalog) as catalog:
            restore(catalog, quiet=True)
    assert str(resumed.value).startswith(expected), str(resumed.value)
    assert str(restored.value) == str(resumed.value)
    assert _shapes(ws.root) == after_apply
    assert not (ws.base / "bk2").exists()


def test_restore_from_an_explicit_backup_folder(ws, run_cli):
    """The user names the backup folder (it moved): restore reads only inside it."""
    original = _shapes(ws.root)
    _apply(ws.catalog, ws.backup)
    shutil.move(ws.backup, ws.base / "moved")
    result = run_cli(["restore", "--backup-dir", ws.base / "nothing-here"], ws.catalog)
    assert result.exit_code == 1 and "; 7 failed" in result.output  # every backup missing: nothing changes
    result = run_cli(["restore", "--backup-dir", ws.root / "sub"], ws.catalog)
    assert result.exit_code == 1 and "lies inside the scanned root" in result.output
    result = run_cli(["restore", "--backup-dir", ws.base / "moved"], ws.catalog)
    assert result.exit_code == 0, result.output
    assert _shapes(ws.root) == original


# -- issue 10 item 9: restore keeps the analysis ----------------------------------------------------

def test_a_restored_image_gets_its_earlier_version_and_analysis_back(ws):
    """sanitize (built-in descriptor), apply dedup (exact copies), apply sanitize, restore: the restored images are
    their earlier versions again, with their descriptors, and dedup plans the same; a resize
    (new bytes, new version) undone by restore gives the earlier version back too."""
    def state():
        with Catalog(ws.catalog, read_only=True) as c:
            versions = dict(c.rows("SELECT rel_path, version FROM images WHERE present"))
            vectors = c.scalar("SELECT count(*) FROM embeddings e JOIN images i USING (image_id, version) "
                               "WHERE i.present AND e.set_name = 'builtin'")
            plan = c.rows("SELECT image_id, action FROM dedup_actions(threshold := 0.02) WHERE action = 'delete' "
                          "ORDER BY ALL")
        return versions, vectors, plan

    before = state()
    assert len(before[2]) == 2 and before[1] == len(before[0])
    _apply(ws.catalog, ws.backup, "dedup", threshold=0.02)
    _apply(ws.catalog, ws.backup)
    config = default_config(ws.base)
    config.overlay({"sanitize": RULES}, "test")
    with Catalog(ws.catalog) as catalog:  # analysis of the resized versions
        sanitize(catalog, config.section("sanitize"), workers=1, quiet=True)
        newer = catalog.scalar("SELECT count(*) FROM embeddings e JOIN images i USING (image_id, version)")
    assert newer > 0 and state() != before
    with Catalog(ws.catalog) as catalog:
        back = restore(catalog, quiet=True)
        stale = catalog.scalar("""SELECT count(*) FROM (SELECT image_id, version FROM embeddings
                                  UNION ALL SELECT image_id, version FROM sanitize_checks) d
                                  JOIN images i USING (image_id) WHERE d.version > i.version""")
    assert back.failed == 0, back.errors
    assert state() == before
    assert stale == 0  # rows of the versions restore undid are gone: a later change cannot inherit them
    a, b = os.stat(ws.root / "sub/tiny_b.jpg"), os.stat(ws.root / "tiny_b_hardlink.jpg")
    assert a.st_ino == b.st_ino  # dedup deleted one name of a hard-linked pair: it is linked again


def test_a_duplicate_whose_kept_copy_is_gone_is_not_deleted_whatever_the_keepers_name(tmp_path):
    """The keeper is read from the journal's params (kept_path), not parsed out of the reason's
    text: a kept file whose name holds a line break, deleted between plan and apply, still
    stops the delete of its duplicate."""
    root = tmp_path / "data"
    keeper = _image(root / "a\nb.jpg", (120, 100), 11)
    shutil.copy2(keeper, root / "z.jpg")
    config = default_config(tmp_path)
    with Catalog(tmp_path / "c.duckdb") as catalog:
        scan(catalog, [root], extensions=config.values["scan"]["extensions"], workers=1, quiet=True)
        source_sql, params, op_options = decision_query("dedup", config)
        plan = make_plan(catalog, "dedup", source_sql, params, op_options)
        assert len(plan) == 1
        keeper.unlink()
        summary = apply_plan(catalog, plan, backup_dir=tmp_path / "bk", quiet=True)
    assert (root / "z.jpg").exists() and (summary.done, summary.skipped) == (0, 1)
    (op,) = _journal(tmp_path / "c.duckdb").values()
    assert op["state"] == "skipped" and op["error"].endswith(f"the kept copy {keeper.resolve()} is gone"), op
