"""Crash safety of apply: SIGKILL at random moments never loses a file, and restore undoes it all.

A 200-file tree is sanitized with tight limits so almost every file has an operation (150
deletes, 25 resizes, 15 recompressions). Each trial starts `vdc-lake apply sanitize --apply` in a
subprocess and kills it after a seeded random delay (some trials kill the resuming run too),
then checks that every original is in place or has a verified backup, that re-running apply
completes every operation, and that restore gives back a byte-identical tree.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import default_config, file_hash, tree_hashes
from vdc_lake.catalog import Catalog
from vdc_lake.sanitize import sanitize
from vdc_lake.scan import scan

N_TRIALS = 20
SEED = 1234
RULES = """\
[sanitize]
min_width = 120
max_width = 200
max_height = 200
max_file_size_mb = 0.03
builtin_descriptor = false
"""
# (count, width, height, format): 150 deletes, 25 resizes, 15 recompressions, 10 left alone.
TREE = [(150, 64, 48, "JPEG"), (25, 320, 240, "JPEG"), (15, 160, 120, "BMP"), (10, 160, 120, "JPEG")]
N_OPS = 190


def _write_tree(root: Path) -> None:
    rng = np.random.default_rng(SEED)
    i = 0
    for count, width, height, fmt in TREE:
        for _ in range(count):
            base = rng.integers(0, 256, size=(1, 1, 3))
            pixels = np.clip(base + rng.integers(-40, 41, size=(height, width, 3)), 0, 255).astype(np.uint8)
            ext = "jpg" if fmt == "JPEG" else "bmp"
            path = root / f"d{i % 7}" / f"img_{i:03d}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            i += 1


class Workspace:
    """Fixed paths reset from a template before each trial (the catalog stores absolute roots)."""

    def __init__(self, base: Path):
        self.base = base
        self.data, self.catalog, self.backup = base / "work" / "data", base / "work" / "c.duckdb", base / "work" / "bk"
        self.config = base / "rules.toml"
        self.template = base / "template"

    def prepare(self) -> None:
        self.data.mkdir(parents=True)
        self.config.write_text(RULES)
        _write_tree(self.data)
        config = default_config(self.base)
        config.overlay({"sanitize": {"min_width": 120, "max_width": 200, "max_height": 200,
                                     "max_file_size_mb": 0.03, "builtin_descriptor": False}}, "test")
        with Catalog(self.catalog) as catalog:
            scan(catalog, [self.data], extensions=config.values["scan"]["extensions"], workers=1, quiet=True)
            sanitize(catalog, config.section("sanitize"), workers=1, quiet=True)
            counts = dict(catalog.rows("SELECT action, count(*) FROM sanitize_actions GROUP BY ALL"))
        assert counts == {"delete": 150, "resize": 25, "recompress": 15}
        assert not Path(str(self.catalog) + ".wal").exists()
        self.template.mkdir()
        shutil.copytree(self.data, self.template / "data")
        shutil.copy2(self.catalog, self.template / "c.duckdb")
        self.original = tree_hashes(self.data)
        assert len(self.original) == 200

    def reset(self) -> None:
        for path in (self.data, self.backup):
            shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(self.template / "data", self.data)
        for suffix in ("", ".wal"):
            Path(str(self.catalog) + suffix).unlink(missing_ok=True)
        shutil.copy2(self.template / "c.duckdb", self.catalog)

    def start_apply(self) -> subprocess.Popen:
        """`vdc-lake apply sanitize --apply`, committing progress every 16 operations (not 256) so
        that kills also land between commits."""
        code = "import vdc_lake.apply as a; a.FLUSH_EVERY_OPS = 16; from vdc_lake.cli import main; main()"
        return subprocess.Popen(
            [sys.executable, "-c", code, "--catalog", str(self.catalog), "--config", str(self.config),
             "-q", "apply", "sanitize", "--backup-dir", str(self.backup), "--apply"],
            cwd=self.base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def assert_nothing_lost(self) -> None:
        """Each original file is in place with its bytes, or a backup with its bytes exists."""
        root_in_backup = str(self.data.resolve()).lstrip("/")
        for rel, digest in self.original.items():
            path = self.data / rel
            if path.exists() and file_hash(path) == digest:
                continue
            backups = list(self.backup.glob(f"run-*/{root_in_backup}/{rel}"))
            assert any(file_hash(b) == digest for b in backups), f"{rel}: changed or gone without a verified backup"


def _kill_after(proc: subprocess.Popen, delay: float) -> bool:
    """Wait for the plan line (imports and catalog opening are done), then SIGKILL after delay.
    Returns True when the kill interrupted the run."""
    proc.stdout.readline()
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    """On tmpfs when there is one: SIGKILL tests process crashes, where the page cache survives and
    fsync changes nothing, and the ~2,000 fsyncs of a trial would cost seconds on a disk."""
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


def test_sigkill_during_apply_never_loses_a_file(workspace, run_cli):
    ws = workspace
    rng = random.Random(SEED)

    # Calibrate: an uninterrupted run gives the window the kills are spread over.
    ws.reset()
    proc = ws.start_apply()
    proc.stdout.readline()
    start = time.monotonic()
    out, err = proc.communicate(timeout=120)
    window = time.monotonic() - start
    assert proc.returncode == 0, err
    assert out.endswith(f"{N_OPS} done, 0 skipped, 0 failed\n")

    interrupted = 0
    for trial in range(N_TRIALS):
        ws.reset()
        killed = _kill_after(ws.start_apply(), rng.uniform(0.0, 0.7 * window))
        interrupted += killed
        ws.assert_nothing_lost()
        if killed and trial % 3 == 0:  # kill the resuming run as well
            _kill_after(ws.start_apply(), rng.uniform(0.0, window / 2))
            ws.assert_nothing_lost()

        result = run_cli(["apply", "sanitize", "--backup-dir", ws.backup, "--apply"], ws.catalog, config=ws.config)
        assert result.exit_code == 0, (trial, result.output)
        with Catalog(ws.catalog, read_only=True) as catalog:
            states = dict(catalog.rows("SELECT state, count(*) FROM journal GROUP BY ALL"))
        assert states == {"done": N_OPS}, (trial, states)
        remaining = tree_hashes(ws.data)
        assert len(remaining) == 25 + 15 + 10, trial  # resized, recompressed (.webp) and untouched files
        for rel in remaining:
            with Image.open(ws.data / rel) as img:
                assert max(img.size) <= 200 and img.format == ("WEBP" if rel.endswith(".webp") else "JPEG"), rel
                img.load()  # complete, not a half-written output taken for done

        result = run_cli(["restore"], ws.catalog)
        assert result.exit_code == 0, (trial, result.output)
        assert tree_hashes(ws.data) == ws.original, trial
    assert interrupted >= N_TRIALS // 2  # most kills really landed inside the run
