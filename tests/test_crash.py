"""Crash safety of apply and restore: SIGKILL at random moments never loses a file, and after
resume + restore every path is what it was (type, mode, owner, sha256; a symlink a symlink).

One tree (odd names, symlinks inside and out of the root, a read-only file, a 0600 file of
another user) is scanned, sanitized with tight limits (deletes, resizes, recompressions, with
the built-in descriptor), given rotation predictions, exact copies, a clustering and a sample.
Each trial resets it from a template, starts `vdc-lake apply STAGE --apply` (sanitize, rotation,
dedup, sample) or `vdc-lake restore` in a subprocess and kills it after a seeded random delay
within the calibrated window (some trials kill the resuming run too), checks that every original
is in place or has a verified backup, finishes with apply (resume) and restore, and compares.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.conftest import copy_catalog, default_config
from vdc_lake.catalog.connection import Catalog
from vdc_lake.stages.sanitize import sanitize
from vdc_lake.stages.scan import scan
from vdc_lake.catalog.sets import register_prediction_set, write_vectors

SEED = 1234
NOBODY = 65534
RULES = {"min_width": 120, "max_width": 200, "max_height": 200, "max_file_size_mb": 0.03,
         "builtin_descriptor": True}
RULES_TOML = """\
[sanitize]
min_width = 120
max_width = 200
max_height = 200
max_file_size_mb = 0.03
"""
# (count, width, height, format): deletes (too small), resizes, recompressions (BMP over 0.03 MB), clean.
TREE = [(40, 64, 48, "JPEG"), (14, 320, 240, "JPEG"), (6, 160, 120, "BMP"), (30, 160, 120, "JPEG")]
ODD_NAMES = ["odd name (1).jpg", "ünïcödé_图像.jpg", "it's.jpg", "-dash.jpg", "100%.jpg", "semi;colon.jpg"]
N_COPIES = 10          # exact copies of clean images: the dedup plan
SAMPLE_TOTAL = 30
STAGE_OPTIONS = {"sanitize": [], "rotation": ["--threshold", "0.9"], "dedup": [], "sample": []}
# Trials per stage: killed apply runs, and killed restores (after an uninterrupted apply).
APPLY_TRIALS = {"sanitize": 2, "rotation": 2, "dedup": 2, "sample": 1}
RESTORE_TRIALS = {"sanitize": 1, "rotation": 1}


def _image(path: Path, rng, width: int, height: int, fmt: str) -> None:
    base = rng.integers(0, 256, size=(1, 1, 3))
    pixels = np.clip(base + rng.integers(-40, 41, size=(height, width, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def _write_tree(root: Path, outside: Path) -> dict[str, list[str]]:
    """The tree; returns the relative paths by role (clean, resize, links, ...)."""
    rng = np.random.default_rng(SEED)
    roles: dict[str, list[str]] = {"small": [], "resize": [], "recompress": [], "clean": []}
    i = 0
    for (count, width, height, fmt), role in zip(TREE, roles):
        for _ in range(count):
            ext = "jpg" if fmt == "JPEG" else "bmp"
            rel = f"d{i % 5}/img_{i:03d}.{ext}"
            if role in ("resize", "clean") and len(roles[role]) < len(ODD_NAMES) // 2:
                rel = f"d{i % 5}/{ODD_NAMES[i % len(ODD_NAMES)]}"
            _image(root / rel, rng, width, height, fmt)
            roles[role].append(rel)
            i += 1
    roles["copies"] = []
    for k, rel in enumerate(roles["clean"][:N_COPIES]):
        copy = f"copies/copy {k}.jpg"
        (root / copy).parent.mkdir(exist_ok=True)
        shutil.copy2(root / rel, root / copy)
        roles["copies"].append(copy)
    for name, (width, height) in {"outside.jpg": (160, 120), "small.jpg": (64, 48), "big.jpg": (320, 240)}.items():
        _image(outside / name, rng, width, height, "JPEG")
    # Links acted on while their targets are not (the targets outside the root), and one to a file inside.
    links = {"links/to_small.jpg": str(outside / "small.jpg"), "links/to_clean.jpg": f"../{roles['clean'][-1]}",
             "links/to_outside.jpg": str(outside / "outside.jpg"), "links/to_big.jpg": str(outside / "big.jpg")}
    (root / "links").mkdir()
    for rel, target in links.items():
        (root / rel).symlink_to(target)
    roles["links"] = list(links)
    os.chmod(root / roles["resize"][0], 0o444)
    os.chmod(root / roles["clean"][1], 0o444)
    for rel in (roles["resize"][1], roles["clean"][2]):
        os.chmod(root / rel, 0o600)
        if os.geteuid() == 0:
            os.chown(root / rel, NOBODY, NOBODY)
    return roles


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tree_state(root: Path) -> dict[str, tuple]:
    """{relative path: (type, mode, owner, sha256) or ("link", target)} of every non-directory."""
    out: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = os.lstat(path)
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, _sha256(path))
    return out


def _cli(args: list, catalog: Path, config: Path):
    from vdc_lake.cli import cli

    argv = ["--catalog", str(catalog), "--config", str(config), "-q"] + [str(a) for a in args]
    return CliRunner().invoke(cli, argv, prog_name="vdc-lake", catch_exceptions=True)


class Workspace:
    """Fixed paths reset from a template before each trial (the catalog stores absolute roots)."""

    def __init__(self, base: Path):
        self.base = base
        self.data, self.outside = base / "work" / "data", base / "work" / "outside"
        self.catalog, self.backup = base / "work" / "c.duckdb", base / "work" / "bk"
        self.config = base / "rules.toml"
        self.template = base / "template"
        self.trial = 0

    def prepare(self) -> None:
        self.data.mkdir(parents=True)
        self.config.write_text(RULES_TOML)
        roles = _write_tree(self.data, self.outside)
        config = default_config(self.base)
        config.overlay({"sanitize": RULES}, "test")
        with Catalog(self.catalog) as catalog:
            scan(catalog, [self.data], extensions=config.values["scan"]["extensions"], workers=1, quiet=True)
            sanitize(catalog, config.section("sanitize"), workers=1, quiet=True)
            self._predict_rotations(catalog, roles["clean"][:8] + roles["resize"][:4] + roles["links"][1:])
        for args in (["cluster", "--set", "builtin", "--n-clusters", "4", "2", "--n-samples", "3", "2",
                      "--n-resamples", "2", "--device", "cpu"], ["sample", "--total", SAMPLE_TOTAL]):
            result = _cli(args, self.catalog, self.config)
            assert result.exit_code == 0, result.output
        self.n_ops = {}
        with Catalog(self.catalog, read_only=True) as catalog:
            self.n_ops["sanitize"] = catalog.scalar("SELECT count(*) FROM sanitize_actions")
            self.n_ops["rotation"] = catalog.scalar("SELECT count(*) FROM rotation_actions(threshold := 0.9) "
                                                    "WHERE action <> 'none'")
            self.n_ops["dedup"] = catalog.scalar("SELECT count(*) FROM dedup_actions() WHERE action = 'delete'")
            self.n_ops["sample"] = catalog.scalar("SELECT count(*) FROM sample_actions() WHERE action = 'delete'")
        assert self.n_ops["rotation"] == 15 and self.n_ops["dedup"] >= N_COPIES, self.n_ops
        assert not Path(str(self.catalog) + ".wal").exists()
        self.template.mkdir()
        for path in (self.data, self.outside):
            shutil.copytree(path, self.template / path.name, symlinks=True)
        copy_catalog(self.catalog, self.template / "c.duckdb")
        self.original = tree_state(self.data)
        self.outside_state = tree_state(self.outside)

    @staticmethod
    def _predict_rotations(catalog: Catalog, rel_paths: list[str]) -> None:
        """Rotation probabilities (as a rotation model would write them): 90, 180, 270 in turn."""
        rows = catalog.arrow("SELECT image_id, version, rel_path FROM images WHERE list_contains(?, rel_path) "
                             "ORDER BY rel_path", [rel_paths]).to_pylist()
        probs = np.full((len(rows), 4), 0.02, np.float32)
        for k in range(len(rows)):
            probs[k, 1 + k % 3] = 0.94
        run_id = catalog.begin_run("predict", {"set": "rot"})
        register_prediction_set(catalog, "rot", kind="rotation", model="test", class_names=["0", "90", "180", "270"],
                                preprocessing=None, run_id=run_id)
        write_vectors(catalog, "predictions", "rot", run_id, np.array([r["image_id"] for r in rows]),
                      np.array([r["version"] for r in rows]), probs)
        catalog.finish_run(run_id)

    def reset(self) -> None:
        for path in (self.data, self.outside, self.backup):
            shutil.rmtree(path, ignore_errors=True)
        for path in (self.data, self.outside):
            shutil.copytree(self.template / path.name, path, symlinks=True)
        for rel, (kind, *facts) in self.original.items():  # copies belong to whoever copies them
            if kind == "file" and facts[1] != os.geteuid():
                os.chown(self.data / rel, facts[1], facts[1])
        # A new catalog name per trial: a DuckDB instance this process may still cache for a path
        # must never meet a different file under that path.
        for suffix in ("", ".wal", ".lock"):
            Path(str(self.catalog) + suffix).unlink(missing_ok=True)
        shutil.rmtree(str(self.catalog) + ".tmp", ignore_errors=True)
        self.trial += 1
        self.catalog = self.catalog.with_name(f"c-{self.trial}.duckdb")
        copy_catalog(self.template / "c.duckdb", self.catalog)

    def start(self, args: list[str]) -> subprocess.Popen:
        """`vdc-lake ARGS` in a subprocess, committing progress every 16 operations (not 256) so that
        kills also land between commits. It prints one line when the work starts: the plan line for
        apply, 'restore starts' for restore."""
        code = ("import vdc_lake.effects.apply as a, vdc_lake.effects.engine as e; e.FLUSH_EVERY_OPS = 16\n"
                "restore = a.restore\n"
                "def announced(*args, **kwargs):\n"
                "    print('restore starts', flush=True)\n"
                "    return restore(*args, **kwargs)\n"
                "a.restore = announced\n"
                "from vdc_lake.cli import main; main()")
        return subprocess.Popen(
            [sys.executable, "-c", code, "--catalog", str(self.catalog), "--config", str(self.config), "-q", *args],
            cwd=self.base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def apply_args(self, stage: str) -> list[str]:
        return ["apply", stage, "--backup-dir", str(self.backup), "--apply", *STAGE_OPTIONS[stage]]

    def assert_nothing_lost(self) -> None:
        """Each original path is in place as it was, or a backup of it exists (same bytes or link)."""
        root_in_backup = str(self.data.resolve()).lstrip("/")
        now = tree_state(self.data)
        for rel, was in self.original.items():
            if now.get(rel) == was:
                continue
            candidates = [run / root_in_backup / rel for run in self.backup.glob("run-*")]  # glob skips broken links
            backups = [tree_state(b.parent).get(b.name) for b in candidates if os.path.lexists(b)]
            assert any(b is not None and (b == was if was[0] == "link" else b[-1] == was[-1]) for b in backups), \
                f"{rel}: changed or gone without a verified backup"
        assert tree_state(self.outside) == self.outside_state

    def finish_and_restore(self, stage: str, label) -> None:
        """Resume with apply, check the journal, restore, and compare with the original tree."""
        result = _cli(self.apply_args(stage), self.catalog, self.config)
        assert result.exit_code == 0, (label, result.output)
        with Catalog(self.catalog, read_only=True) as catalog:
            states = dict(catalog.rows("SELECT state, count(*) FROM journal GROUP BY ALL"))
        assert states == {"done": self.n_ops[stage]}, (label, states)
        self.restore_and_compare(label)

    def restore_and_compare(self, label) -> None:
        result = _cli(["restore"], self.catalog, self.config)
        assert result.exit_code == 0, (label, result.output)
        assert tree_state(self.data) == self.original, label
        assert tree_state(self.outside) == self.outside_state, label


def _kill_after(proc: subprocess.Popen, delay: float) -> bool:
    """Wait for the line that says the work starts, then SIGKILL after delay.
    Returns True when the kill interrupted the run."""
    proc.stdout.readline()
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def _timed(proc: subprocess.Popen) -> float:
    """Run to the end; seconds from the line that says the work starts to the exit."""
    proc.stdout.readline()
    start = time.monotonic()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return time.monotonic() - start


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    """On tmpfs when there is one: SIGKILL tests process crashes, where the page cache survives and
    fsync changes nothing, and the fsyncs of a trial would cost seconds on a disk."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        base = Path(tempfile.mkdtemp(prefix="vdc-crash-", dir=shm))
    else:
        base = tmp_path_factory.mktemp("crash")
    ws = Workspace(base)
    try:
        ws.prepare()
        yield ws
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_sigkill_during_apply_and_restore_never_loses_a_file(workspace):
    ws = workspace
    rng = random.Random(SEED)
    interrupted = trials = 0
    for stage in APPLY_TRIALS:
        # Calibrate: an uninterrupted apply (and restore) gives the window the kills are spread over;
        # it is a trial of its own, without a kill.
        ws.reset()
        window = _timed(ws.start(ws.apply_args(stage)))
        ws.assert_nothing_lost()
        if RESTORE_TRIALS.get(stage):
            restore_window = _timed(ws.start(["restore"]))
            assert tree_state(ws.data) == ws.original, stage
        else:
            ws.restore_and_compare(stage)

        for trial in range(APPLY_TRIALS[stage]):
            ws.reset()
            killed = _kill_after(ws.start(ws.apply_args(stage)), rng.uniform(0.0, 0.7 * window))
            interrupted, trials = interrupted + killed, trials + 1
            ws.assert_nothing_lost()
            if killed and trial == 0:  # kill the resuming run as well
                _kill_after(ws.start(ws.apply_args(stage)), rng.uniform(0.0, window / 2))
                ws.assert_nothing_lost()
            ws.finish_and_restore(stage, (stage, trial))

        for trial in range(RESTORE_TRIALS.get(stage, 0)):
            ws.reset()
            result = _cli(ws.apply_args(stage), ws.catalog, ws.config)
            assert result.exit_code == 0, result.output
            killed = _kill_after(ws.start(["restore"]), rng.uniform(0.0, 0.7 * restore_window))
            interrupted, trials = interrupted + killed, trials + 1
            ws.assert_nothing_lost()
            ws.restore_and_compare((stage, "restore", trial))
    assert interrupted >= trials // 2  # most kills really landed inside the run
