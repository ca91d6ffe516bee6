"""Progress output: a bar on a terminal, plain periodic lines (no carriage returns) in a piped log."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from examples.make_sample_data import make_sample_data
from vdc_lake.parallel import LogProgress

REPO = Path(__file__).resolve().parent.parent


def test_log_progress_writes_whole_lines_at_most_once_per_period():
    stream = io.StringIO()
    with LogProgress(100, "scan", "file", stream, every_s=3600) as bar:
        for _ in range(100):
            bar.update()
    assert stream.getvalue() == ""  # ended long before one period: nothing to say

    stream = io.StringIO()
    with LogProgress(4, "scan", "file", stream, every_s=0) as bar:
        bar.set_description("scan roots", refresh=False)
        for _ in range(4):
            bar.update()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0].startswith("scan roots: 1/4 file")
    assert lines[-1].startswith("scan roots: 4/4 file")


def test_a_piped_cli_run_has_no_carriage_returns(tmp_path):
    images = tmp_path / "images"
    make_sample_data(images, n_base=4, seed=0)
    env = {**os.environ, "VDC_LAKE_CATALOG": str(tmp_path / "catalog.duckdb")}
    log = b""
    for args in (["scan", str(images)], ["sanitize"], ["plan", "sanitize"]):
        done = subprocess.run([sys.executable, "-m", "vdc_lake.cli", *args], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        assert done.returncode == 0, done.stdout.decode()
        log += done.stdout
    assert b"\r" not in log
    assert b"\x1b[" not in log  # no terminal control sequences either
