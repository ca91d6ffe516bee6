"""The example notebooks run, as scripts, against the quickstart catalog: after the dry run and
after the pipeline was applied (so they cannot rot)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image


REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "examples/notebooks").glob("*.py"))


def run_notebook(notebook: Path, catalog: Path, cwd: Path, figures: Path) -> str:
    env = {**os.environ, "VDC_LAKE_CATALOG": str(catalog), "MPLBACKEND": "Agg", "VDC_LAKE_FIGURES": str(figures),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, str(notebook)], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def saved_figures(output: str) -> list[Path]:
    """The figures a notebook run as a script said it saved."""
    return [Path(line.split(": ", 1)[1]) for line in output.splitlines() if line.startswith("figure saved: ")]


@pytest.fixture(scope="module")
def quickstart(quickstart_catalogs, tmp_path_factory) -> tuple[dict[str, str], dict[str, str]]:
    """Each notebook's output on the quickstart catalog after the dry run, and after --apply."""
    dry, applied = quickstart_catalogs
    return tuple({nb.name: run_notebook(nb, catalog, catalog.parent, tmp_path_factory.mktemp("figures"))
                  for nb in NOTEBOOKS} for catalog in (dry, applied))


def test_notebooks_run_as_scripts_save_every_figure_and_say_where(quickstart):
    for outputs in quickstart:
        for name, output in outputs.items():
            figures = saved_figures(output)
            assert len(figures) >= 3, (name, output)
            assert all(f.parent.name == name.removesuffix(".py") for f in figures)
            for figure in figures:
                with Image.open(figure) as image:  # a real PNG with something drawn on it
                    assert image.format == "PNG" and image.width > 200


def test_there_are_notebooks():
    assert {nb.name for nb in NOTEBOOKS} >= {"choose_dedup_threshold.py", "explore_clusters.py"}


def _pending_and_applied(output: str, threshold_line: str) -> tuple[int, int]:
    pending = next(int(line.split()[4]) for line in output.splitlines() if line.startswith(threshold_line))
    applied = next(int(line.split(":")[1]) for line in output.splitlines()
                   if line.startswith("already removed by apply dedup"))
    return pending, applied


def test_dedup_notebook_counts_the_same_deletions_before_and_after_apply(quickstart):
    dry, applied = quickstart
    before, after = dry["choose_dedup_threshold.py"], applied["choose_dedup_threshold.py"]
    apply_line = next(line for line in before.splitlines() if line.startswith("apply threshold"))
    threshold = float(apply_line.rsplit(":", 1)[1])
    row = f"threshold {threshold:<5g}"
    pending_before, applied_before = _pending_and_applied(before, row)
    pending_after, applied_after = _pending_and_applied(after, row)
    assert applied_before == 0 and pending_before > 0
    # after apply the deletions moved from pending to the journal: the notebook shows them, not zeros
    assert pending_after == 0 and applied_after > 0
    pairs = [next(line for line in out.splitlines() if line.endswith(" pairs")) for out in (before, after)]
    assert pairs[0] == pairs[1] != "0 pairs"  # the stored pairs stay visible after apply


def test_cluster_notebook_shows_levels_and_allocation(quickstart):
    dry, applied = quickstart
    for output in (dry["explore_clusters.py"], applied["explore_clusters.py"]):
        assert "cluster run" in output and "cluster run None" not in output
        assert "level 0:" in output
