"""Progress output: a bar on a terminal, plain periodic lines (no carriage returns) in a piped log."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from examples.make_sample_data import make_sample_data
from vdc_lake.progress import LogProgress

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


def test_lazy_rows_is_the_list_it_stands_for():
    """Work lists are made from Arrow rows on demand (scan, sanitize): same items, same order,
    by index, slice and iteration (across its 8192-row chunks), through the process pool too."""
    import pyarrow as pa

    from vdc_lake.scale.parallel import LazyRows, map_ordered

    n = 20_000
    table = pa.table({"a": list(range(n)), "b": [f"f{i}" for i in range(n)]})
    expected = [(i, f"f{i}") for i in range(n)]
    lazy = LazyRows(table, lambda row: (row["a"], row["b"]))
    assert len(lazy) == n and list(lazy) == expected
    assert lazy[0] == expected[0] and lazy[-1] == expected[-1] and lazy[8191:8194] == expected[8191:8194]
    assert lazy[::5000] == expected[::5000] and lazy[n:] == []
    with pytest.raises(IndexError):
        lazy[n]
    assert list(map_ordered(str, lazy[:300], workers=2, quiet=True)) == [str(t) for t in expected[:300]]
    assert list(map_ordered(str, LazyRows(table.slice(0, 300), lambda r: (r["a"], r["b"])), workers=2,
                            quiet=True)) == [str(t) for t in expected[:300]]
