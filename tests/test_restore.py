"""Restore under hostile conditions (issue 24): a restore killed at any moment is finished by the
next one, which gives back exactly what was there before any apply; leftover clean-up touches only
what the operation itself may touch; a restored symlink gets its own times back.

The killed-restore loop kills `vdc-lake restore` at deterministic points: a subprocess counts the
file-system calls and catalog transactions of its restore and SIGKILLs itself before the k-th one
(the points are drawn with a fixed seed from the count of an uninterrupted restore). No timing is
measured or asserted: the assertions hold whatever the point.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from tests.conftest import copy_catalog, file_hash
from vdc_lake.catalog.connection import Catalog

SEED = 24
NOBODY = 65534
KILLED_RESTORES = 24          # restores killed at a seeded point (the acceptance asks for at least 20)
KILL_FOLLOW_UP_EVERY = 4      # every 4th trial kills the restore that finishes the killed one, too
RULES_TOML = "[sanitize]\nmax_width = 300\nmax_height = 300\nmax_file_size_mb = 0.05\n"

# The restore subprocess: counts every call that changes a file (and each catalog transaction,
# before BEGIN and after COMMIT) made while `restore` runs, and SIGKILLs itself just before the
# KILL_AT-th (0: never); prints the count when restore returns. The journal is flushed every 8
# operations (not 4096), so kill points also land between flushes.
KILLER = r"""
import contextlib, os, pathlib, shutil, signal, sys
import vdc_lake.effects.apply as apply_module
import vdc_lake.effects.restore_journal as restore_journal
from vdc_lake.catalog.connection import Catalog

kill_at, steps, active = int(os.environ["VDC_TEST_KILL_AT"]), [0], [False]

def step():
    if active[0]:
        steps[0] += 1
        if steps[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

def counted(call):
    def wrapper(*args, **kwargs):
        step()
        return call(*args, **kwargs)
    return wrapper

for module, name in [(os, "replace"), (os, "rename"), (os, "link"), (os, "symlink"), (os, "unlink"),
                     (os, "utime"), (os, "chmod"), (os, "chown"), (shutil, "copy2"), (shutil, "copyfile")]:
    setattr(module, name, counted(getattr(module, name)))
pathlib.Path.unlink = counted(pathlib.Path.unlink)
transaction = Catalog.transaction

@contextlib.contextmanager
def counted_transaction(self):
    step()
    with transaction(self) as con:
        yield con
    step()

Catalog.transaction = counted_transaction
restore_journal.RESTORE_FLUSH_EVERY_OPS = 8
restore = apply_module.restore

def counting_restore(*args, **kwargs):
    active[0] = True
    try:
        return restore(*args, **kwargs)
    finally:
        active[0] = False
        print("steps", steps[0], flush=True)

apply_module.restore = counting_restore
from vdc_lake.cli import main
main()
"""


# -- what a tree is -------------------------------------------------------------------------------

def tree_state(*folders: Path) -> dict[str, tuple]:
    """Every entry but folders: ("link", target, the link's own mtime) or ("file", mode, uid, gid,
    mtime, bytes' hash, the other paths of its inode), relative to the folders' parent."""
    entries: dict[str, os.stat_result] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                entries[str(path.relative_to(folder.parent))] = st
    inodes: dict[tuple[int, int], list[str]] = {}
    for rel, st in entries.items():
        inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    base = folders[0].parent
    out: dict[str, tuple] = {}
    for rel, st in entries.items():
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(base / rel), st.st_mtime_ns)
        else:
            siblings = tuple(sorted(set(inodes[(st.st_dev, st.st_ino)]) - {rel}))
            out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns,
                        file_hash(base / rel), siblings)
    return out


def catalog_images(catalog_path: Path) -> dict[str, tuple]:
    """{root/rel_path: (version, present, content_hash, width, height)} of every images row."""
    with Catalog(catalog_path, read_only=True) as catalog:
        rows = catalog.rows("SELECT root || '/' || rel_path, version, present, content_hash, width, height "
                            "FROM images ORDER BY image_id")
    return {path: tuple(rest) for path, *rest in rows}


def _image(path: Path, size: tuple[int, int], seed: int, fmt: str = "JPEG") -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(rng.integers(0, 256, (1, 1, 3)) + rng.integers(-30, 31, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return path


def _cli(base: Path, catalog: Path, *args) -> Result:
    from vdc_lake.cli import cli

    argv = ["--catalog", str(catalog), "--config", str(base / "rules.toml"), "-q", *[str(a) for a in args]]
    return CliRunner().invoke(cli, argv, prog_name="vdc-lake", catch_exceptions=True)


# -- the killed-restore loop -----------------------------------------------------------------------

class KilledRestores:
    """base/work/{data, elsewhere, B, c-N.duckdb}: the sample collection plus symlinks (into the root
    and out of it), a hard-linked pair, read-only and private files (one of another user when
    running as root) and fixed times; scanned, sanitized, dedup-reported, then `apply sanitize` and
    `apply dedup` with backups. reset() puts that post-apply state back exactly (cp -a)."""

    def __init__(self, base: Path):
        self.base, self.work, self.template = base, base / "work", base / "template"
        self.data, self.elsewhere, self.backup = self.work / "data", self.work / "elsewhere", self.work / "B"
        self.catalog = self.work / "c.duckdb"
        self.trial = 0

    def prepare(self, sample_root: Path) -> None:
        (self.base / "rules.toml").write_text(RULES_TOML)
        self.work.mkdir()
        subprocess.run(["cp", "-a", str(sample_root), str(self.data)], check=True)
        self._add_odd_files()
        self.original = tree_state(self.data, self.elsewhere)
        for args in (["scan", self.data], ["sanitize"],
                     ["dedup", "report", "--set", "builtin", "--report-threshold", "0.1"]):
            result = _cli(self.base, self.catalog, *args)
            assert result.exit_code == 0, result.output
        self.original_images = catalog_images(self.catalog)
        for stage in ("sanitize", "dedup"):
            result = _cli(self.base, self.catalog, "apply", stage, "--backup-dir", self.backup, "--apply")
            assert result.exit_code == 0, result.output
        with Catalog(self.catalog, read_only=True) as catalog:
            self.n_ops = dict(catalog.rows("SELECT action, count(*) FROM journal GROUP BY ALL"))
            # images changed by both runs: restore undoes two operations on each, newest first
            self.twice = catalog.scalar("SELECT count(*) FROM (SELECT image_id FROM journal GROUP BY ALL "
                                        "HAVING count(*) > 1)")
        assert set(self.n_ops) >= {"delete", "resize", "recompress"} and self.twice > 0, (self.n_ops, self.twice)
        self.template.mkdir()
        for path in (self.data, self.elsewhere, self.backup):
            subprocess.run(["cp", "-a", str(path), str(self.template / path.name)], check=True)
        copy_catalog(self.catalog, self.template / self.catalog.name)  # with its vector files

    def _add_odd_files(self) -> None:
        big = _image(self.elsewhere / "big target.jpg", (420, 360), 1)      # resized: the link becomes a file
        tiny = _image(self.elsewhere / "tiny target.jpg", (40, 30), 2)      # deleted: the link goes
        (self.data / "links").mkdir()
        (self.data / "links" / "to big.jpg").symlink_to(big)
        (self.data / "links" / "to tiny.jpg").symlink_to(tiny)
        (self.data / "links" / "to a scene.jpg").symlink_to("../scenes/scene_0001.jpg")  # an exact copy
        first = _image(self.data / "hard" / "first.jpg", (500, 400), 3)     # two names: each resized, one then
        os.link(first, self.data / "hard" / "second.jpg")                  # deleted as the other's duplicate
        _image(self.data / "hard" / "raw.bmp", (180, 120), 4, "BMP")        # recompressed (a new name)
        os.chmod(self.data / "hard" / "raw.bmp", 0o444)
        private = self.data / "scenes" / "scene_0002.jpg"
        os.chmod(private, 0o600)
        if os.geteuid() == 0:
            os.chown(private, NOBODY, NOBODY)
        rng = random.Random(SEED)
        for path in sorted(self.data.rglob("*")) + sorted(self.elsewhere.rglob("*")):
            if not path.is_dir() or path.is_symlink():
                when = 1_500_000_000_000_000_000 + rng.randrange(10**15)
                os.utime(path, ns=(when + 7, when), follow_symlinks=False)

    def reset(self) -> None:
        """The post-apply state at the same paths (the catalog records them), under a new catalog
        name (a DuckDB instance this process may cache for a path never meets another file)."""
        for path in (self.data, self.elsewhere, self.backup):
            shutil.rmtree(path, ignore_errors=True)
        for suffix in ("", ".wal", ".lock"):
            Path(str(self.catalog) + suffix).unlink(missing_ok=True)
        self.trial += 1
        self.catalog = self.work / f"c-{self.trial}.duckdb"
        for path in (self.data, self.elsewhere, self.backup):
            subprocess.run(["cp", "-a", str(self.template / path.name), str(path)], check=True)
        copy_catalog(self.template / "c.duckdb", self.catalog)

    def killed_restore(self, kill_at: int) -> subprocess.CompletedProcess:
        """`vdc-lake restore` in a subprocess that SIGKILLs itself before step kill_at (0: never)."""
        return subprocess.run(
            [sys.executable, "-c", KILLER, "--catalog", str(self.catalog), "--config", str(self.base / "rules.toml"),
             "-q", "restore"],
            cwd=self.base, env={**os.environ, "VDC_TEST_KILL_AT": str(kill_at)}, capture_output=True, text=True,
            timeout=300)

    def assert_restored(self, label) -> None:
        """The tree and the catalog as they were before any apply; every operation journaled
        `restored`; no temp file, no kept 'user version' (nobody changed anything)."""
        assert tree_state(self.data, self.elsewhere) == self.original, label
        assert catalog_images(self.catalog) == self.original_images, label
        with Catalog(self.catalog, read_only=True) as catalog:
            states = dict(catalog.rows("SELECT state, count(*) FROM journal GROUP BY ALL"))
        assert states == {"restored": sum(self.n_ops.values())}, (label, states)
        leftovers = [p for p in self.backup.rglob("*") if ".vdc-" in p.name]
        assert leftovers == [], (label, leftovers)


@pytest.fixture(scope="module")
def killed_restores(sample_template, tmp_path_factory):
    """On tmpfs when there is one: SIGKILL tests process crashes (the page cache survives), and the
    fsyncs of each trial would cost seconds on a disk."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        base = Path(tempfile.mkdtemp(prefix="vdc-restore-", dir=shm))
    else:
        base = tmp_path_factory.mktemp("restore")
    ws = KilledRestores(base)
    try:
        ws.prepare(sample_template.root)
        yield ws
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_restore_killed_at_any_point_is_finished_by_the_next_restore(killed_restores):
    """The next `vdc-lake restore` (no --force) finishes a killed one: it takes the files the killed
    run put back for restored (not for the user's edits), and the tree is what it was before any
    apply: type, mode, owner, bytes, mtimes, symlinks (with their own mtimes), hard links; the
    catalog has every image's scanned version back."""
    ws = killed_restores
    ws.reset()
    calibration = ws.killed_restore(0)
    assert calibration.returncode == 0, calibration.stderr
    n_steps = int(re.search(r"^steps (\d+)$", calibration.stdout, re.M).group(1))
    ws.assert_restored("uninterrupted")
    rng = random.Random(SEED)
    for trial, kill_at in enumerate(sorted(rng.sample(range(1, n_steps + 1), KILLED_RESTORES))):
        label = (trial, kill_at, n_steps)
        ws.reset()
        killed = ws.killed_restore(kill_at)
        assert killed.returncode == -signal.SIGKILL, (label, killed.stdout, killed.stderr)
        if trial % KILL_FOLLOW_UP_EVERY == KILL_FOLLOW_UP_EVERY - 1:  # it may finish before the point
            follow_up = ws.killed_restore(rng.randint(1, 40))
            assert follow_up.returncode in (0, -signal.SIGKILL), (label, follow_up.stderr)
        result = _cli(ws.base, ws.catalog, "restore")
        assert result.exit_code == 0 and "changed since apply" not in result.output, (label, result.output)
        ws.assert_restored(label)


# -- a small tree for the confinement and symlink tests ----------------------------------------------

def _small_tree(base: Path) -> tuple[Path, Path]:
    """base/data (scanned, sanitized with max 300 px: big_*.jpg resized, tiny_*.jpg deleted) with a
    symlink to a big and to a tiny file (each an image too: resized, deleted); returns (data, catalog)."""
    data, catalog = base / "data", base / "c.duckdb"
    (base / "rules.toml").write_text(RULES_TOML)
    _image(data / "big_a.jpg", (420, 330), 11)
    _image(data / "sub" / "big_b.jpg", (360, 500), 12)
    _image(data / "tiny_c.jpg", (40, 40), 13)
    _image(data / "ok.jpg", (200, 150), 14)
    (data / "link_big.jpg").symlink_to("sub/big_b.jpg")
    (data / "link_tiny.jpg").symlink_to("tiny_c.jpg")
    for args in (["scan", data], ["sanitize"]):
        result = _cli(base, catalog, *args)
        assert result.exit_code == 0, result.output
    return data, catalog


def _tamper(catalog_path: Path, sql: str) -> None:
    con = duckdb.connect(str(catalog_path))
    try:
        con.execute(sql)
    finally:
        con.close()


def test_a_restored_symlink_gets_its_own_times_back(tmp_path):
    """A symlink that apply replaced by the resized file, and one it deleted: restore makes each the
    same link again, with the link's own mtime (not the time of the restore, not its target's)."""
    data, catalog = _small_tree(tmp_path)
    links = [data / "link_big.jpg", data / "link_tiny.jpg"]
    for k, link in enumerate(links):
        os.utime(link, ns=(1_400_000_000_000_000_000 + k, 1_300_000_000_000_000_000 + k), follow_symlinks=False)
    before = tree_state(data)
    result = _cli(tmp_path, catalog, "apply", "sanitize", "--backup-dir", tmp_path / "B", "--apply")
    assert result.exit_code == 0, result.output
    assert not links[0].is_symlink() and not os.path.lexists(links[1])
    result = _cli(tmp_path, catalog, "restore")
    assert result.exit_code == 0, result.output
    for k, link in enumerate(links):
        assert link.is_symlink() and os.lstat(link).st_mtime_ns == 1_300_000_000_000_000_000 + k, link
    assert tree_state(data) == before


# -- leftover clean-up is confined like the operation ------------------------------------------------

LEFTOVER_NAMES = ["important.txt.vdc-tmp", ".important.txt.vdc-tmp", "important.txt.vdc-restore"]


def test_leftover_clean_up_never_touches_what_the_refused_operation_may_not(tmp_path):
    """A killed apply's row (state planned) edited to name files it may not touch: a backup outside
    apply's layout in a foreign folder the run's backup_dir was pointed at, a root no scan was given,
    a backup folder inside the root. apply and restore refuse the operation, and the clean-up of
    temp files that runs before it removes none of the files with temp names there either; the
    temp files of an honest unfinished operation are still removed."""
    data, catalog = _small_tree(tmp_path)
    foreign, backup = tmp_path / "foreign", tmp_path / "B"
    result = _cli(tmp_path, catalog, "apply", "sanitize", "--backup-dir", backup, "--apply")
    assert result.exit_code == 0, result.output
    copy_catalog(catalog, tmp_path / "applied.duckdb")
    with Catalog(catalog, read_only=True) as cat:
        ops = {Path(src).name: (op_id, image_id, bk) for op_id, image_id, src, bk in cat.rows(
            "SELECT op_id, image_id, src, backup FROM journal")}
    op_id, image_id, a_backup = ops["big_a.jpg"]
    honest_id, _, honest_backup = ops["big_b.jpg"]
    root, foreign_real = data.resolve(), foreign.resolve()
    tamperings = {
        "a foreign backup folder": (
            f"""UPDATE runs SET params = json_object('backup_dir', '{foreign_real}') WHERE stage LIKE 'apply:%';
                UPDATE journal SET state = 'planned', src = '{root}/important.txt',
                                   backup = '{foreign_real}/important.txt' WHERE op_id = {op_id}""",
            [data / name for name in LEFTOVER_NAMES] + [foreign / "important.txt.vdc-tmp"]),
        "a root no scan was given": (
            f"""UPDATE images SET root = '{foreign_real}', rel_path = 'important.txt' WHERE image_id = {image_id};
                UPDATE journal SET state = 'planned', src = '{foreign_real}/important.txt' WHERE op_id = {op_id}""",
            [foreign / name for name in LEFTOVER_NAMES]),
        "a backup folder inside the root": (
            f"""UPDATE runs SET params = json_object('backup_dir', '{root}') WHERE stage LIKE 'apply:%';
                UPDATE journal SET state = 'planned', backup = replace(backup, '{backup.resolve()}', '{root}')
                WHERE op_id = {op_id}""",
            [Path(str(a_backup).replace(str(backup.resolve()), str(root)) + ".vdc-tmp"), data / ".big_a.jpg.vdc-tmp"]),
    }
    for what, (sql, planted) in tamperings.items():
        for command in (["apply", "sanitize", "--backup-dir", backup, "--apply"], ["restore"]):
            shutil.rmtree(foreign, ignore_errors=True)
            copy_catalog(tmp_path / "applied.duckdb", catalog)
            _tamper(catalog, sql)
            after_apply = tree_state(data)
            for path in planted:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"not yours")
            result = _cli(tmp_path, catalog, *command)
            assert result.exit_code == 1, (what, command, result.output)
            assert re.search("refus|lies inside the scanned root", result.output), (what, result.output)
            kept = [p for p in planted if p.exists() and p.read_bytes() == b"not yours"]
            assert kept == planted, (what, command[0], sorted(set(map(str, planted)) - set(map(str, kept))))
            for path in planted:
                path.unlink()
            assert tree_state(data) == after_apply, (what, command)
    # an honest operation left planned: its temp files (in its root and its backup folder) are removed
    copy_catalog(tmp_path / "applied.duckdb", catalog)
    _tamper(catalog, f"UPDATE journal SET state = 'planned' WHERE op_id = {honest_id}")
    ours = [data / "sub" / ".big_b.jpg.vdc-tmp", data / "sub" / "big_b.jpg.vdc-restore",
            Path(honest_backup + ".vdc-tmp")]
    for path in ours:
        path.write_bytes(b"half a file")
    result = _cli(tmp_path, catalog, "apply", "sanitize", "--backup-dir", backup, "--apply")
    assert result.exit_code == 0, result.output
    assert [p for p in ours if os.path.lexists(p)] == []
