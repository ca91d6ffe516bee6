"""What a new user meets first (issue 23): the install line and its extras, status counts that
add up, hints instead of a bare "0 operations", the settings an export was made under, no
catalog or lock file left by a failed first command, whole words in the pipeline summary, no
"-0.0000", paths that tell two files of one name apart, readable JSON in `sql`, a prompt cluster
error on small sets, and sample data without a folder that reads like a backup."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import catalog_rows, noise_jpeg, ok_output
from vdc_lake.catalog.connection import Catalog

REPO = Path(__file__).resolve().parent.parent


# -- install ---------------------------------------------------------------------------------------

def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_user_install_holds_the_main_job_and_the_extras_name_the_rest():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    main, extras = _names(project["dependencies"]), project["optional-dependencies"]
    assert {"torch", "birder", "duckdb", "usearch", "starlette", "uvicorn", "jinja2"} <= main
    assert not main & {"pytest", "ray", "httpx", "jupytext", "jupyterlab", "matplotlib"}
    assert {"pytest", "httpx"} <= _names(extras["test"])
    assert _names(extras["scale"]) == {"ray"}
    notebooks = _names(extras["notebooks"])
    assert {"jupytext", "ipykernel", "matplotlib"} <= notebooks and notebooks & {"jupyterlab", "notebook"}


def test_readme_installs_the_main_job_then_the_test_extra_and_ci_adds_ray():
    readme = (REPO / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    first, second = [line for line in setup.splitlines() if line.strip() and not line.startswith("#")]
    assert "pip install -e . &&" in first and first.endswith("bash examples/quickstart.sh")
    assert 'pip install -e ".[test]"' in second and second.endswith("python -m pytest -q -n 2")
    assert "download.pytorch.org/whl/cpu" in readme  # the CPU-only torch, with the sizes both ways
    assert re.search(r"6\.\d GB", readme) and re.search(r"1\.\d GB", readme)
    assert '".[test,scale]"' in (REPO / ".ci/run").read_text()


def test_generated_notebooks_and_their_figures_are_ignored_by_git():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("examples/notebooks/choose_dedup_threshold.ipynb", "figures/explore_clusters/cluster_sizes.png"):
        done = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, check=False)
        assert done.returncode == 0, f"{path} is not ignored by git"


# -- counts and settings on the quickstart catalog -------------------------------------------------

def _copy(catalog: Path, copy: Path) -> Path:
    shutil.copyfile(catalog, copy)
    if Path(f"{catalog}.vectors").exists():  # a catalog is its file and its vector files
        shutil.copytree(f"{catalog}.vectors", f"{copy}.vectors")
    return copy


@pytest.fixture
def dry_catalog(quickstart_catalogs, tmp_path) -> Path:
    """A private copy of the quickstart catalog as its dry run left it."""
    return _copy(quickstart_catalogs[0], tmp_path / "dry.duckdb")


@pytest.fixture
def applied_catalog(quickstart_catalogs, tmp_path) -> Path:
    """A private copy of the quickstart catalog after `run --apply` (its files are the tree's now)."""
    return _copy(quickstart_catalogs[1], tmp_path / "applied.duckdb")


def _table(output: str, header: str) -> list[list[str]]:
    """The rows of the table whose header line starts with `header` (split on runs of 2+ spaces)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.strip() or not re.match(r"\S+  ", line):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_status_counts_each_removed_image_once_under_the_first_decision(dry_catalog, run_cli):
    output = ok_output(run_cli(["status"], dry_catalog))
    deletes = {stage: int(n) for stage, action, n in _table(output, "stage ") if action == "delete"}
    assert set(deletes) >= {"sanitize", "dedup", "sample"}
    assert "deletions counted once per image, under the first decision" in output
    present, curated = catalog_rows(dry_catalog, "SELECT (SELECT count(*) FROM images WHERE present), "
                                                 "(SELECT count(*) FROM curated)")[0]
    assert sum(deletes.values()) + curated == present  # the rows add up: no image counted twice
    # the sample's own plan also holds images sanitize and dedup remove; status counts them there
    plan = ok_output(run_cli(["plan", "sample", "--examples", "0"], dry_catalog))
    planned = int(re.search(r"plan sample: (\d+) operations", plan).group(1))
    assert planned == deletes["sample"] + deletes["sanitize"] + deletes["dedup"]


def test_export_records_the_dedup_thresholds_in_force_for_the_set(applied_catalog, run_cli, tmp_path):
    ok_output(run_cli(["export", "--to", tmp_path / "out", "--format", "manifest"], applied_catalog))
    settings = json.loads((tmp_path / "out/export.json").read_text())["settings"]
    assert settings["apply_deduplication.threshold (set builtin)"] == 0.08  # the set's own, not 0.25
    assert settings["dedup.report_threshold (set builtin)"] == 0.16
    assert "apply_deduplication.threshold" not in settings and "dedup.report_threshold" not in settings
    config = tmp_path / "strict.toml"
    config.write_text("[apply_deduplication]\nthreshold = 0.05\n")
    ok_output(run_cli(["export", "--to", tmp_path / "out2", "--format", "manifest"], applied_catalog,
                      config=config))
    settings = json.loads((tmp_path / "out2/export.json").read_text())["settings"]
    assert settings["apply_deduplication.threshold (set builtin)"] == 0.05  # a configured value wins


def test_sql_cuts_long_json_values_in_a_table_and_says_how_to_see_them(dry_catalog, run_cli):
    output = ok_output(run_cli(["sql", "SELECT run_id, params FROM runs ORDER BY run_id LIMIT 3"], dry_catalog))
    rows = output.splitlines()[2:5]
    assert all(len(row) < 120 and row.endswith("...") for row in rows), output
    assert "(long JSON values of params cut to 100 characters: --format json shows them whole)" in output
    whole = json.loads(ok_output(run_cli(["sql", "SELECT run_id, params FROM runs ORDER BY run_id LIMIT 3",
                                          "--format", "json"], dry_catalog)))
    assert len(whole) == 3 and all(len(str(r["params"])) > 100 for r in whole)
    short = ok_output(run_cli(["sql", "SELECT rel_path FROM images ORDER BY rel_path LIMIT 2"], dry_catalog))
    assert "cut to" not in short  # plain text (paths) is never cut


# -- a new catalog: hints, failed first commands, lock files ---------------------------------------

def _photos(root: Path, n: int = 4) -> Path:
    for i in range(n):
        noise_jpeg(root / f"photo_{i}.jpg", seed=i)
    return root


def test_plans_with_nothing_to_decide_on_name_the_command_that_makes_it(tmp_path, catalog_path, run_cli):
    ok_output(run_cli(["scan", _photos(tmp_path / "photos")], catalog_path))
    hints = {"sanitize": "`vdc-lake sanitize`", "rotation": "`vdc-lake predict --model MODEL --kind rotation`",
             "examples": "`vdc-lake filter examples --set SET --examples FOLDER`",
             "dedup": "`vdc-lake dedup report --set builtin`"}
    for stage, command in hints.items():
        output = ok_output(run_cli(["plan", stage], catalog_path))
        note = next(line for line in output.splitlines() if line.startswith("note: "))
        assert command in note, output
        assert f"plan {stage}: 0 operations" in output
    result = run_cli(["plan", "score"], catalog_path)
    assert result.exit_code == 1 and "`vdc-lake score --head HEAD.pt --set SET --name NAME`" in result.output
    ok_output(run_cli(["sanitize"], catalog_path))  # its inputs exist now: no note
    assert "note:" not in ok_output(run_cli(["plan", "sanitize"], catalog_path))
    dedup = ok_output(run_cli(["plan", "dedup"], catalog_path))
    assert "no near-duplicate report yet; `vdc-lake dedup report --set builtin`" in dedup


def _beside(catalog: Path) -> list[str]:
    return sorted(p.name for p in catalog.parent.iterdir() if p.name.startswith(catalog.name))


def test_a_failed_first_command_leaves_no_catalog_and_commands_leave_no_lock(tmp_path, catalog_path, run_cli):
    result = run_cli(["scan", tmp_path / "phtos"], catalog_path)  # mistyped
    assert result.exit_code == 1 and "is not a directory" in result.output
    assert _beside(catalog_path) == []
    photos = _photos(tmp_path / "photos")
    for args in (["scan", photos], ["sanitize"], ["status"], ["plan", "dedup"], ["scan", tmp_path / "phtos"]):
        run_cli(args, catalog_path)
        assert catalog_path.is_file() and not Path(f"{catalog_path}.lock").exists(), args
    # a failed command on a catalog that holds images keeps it as it was
    assert catalog_rows(catalog_path, "SELECT count(*) FROM images WHERE present")[0][0] == 4


def test_a_lock_file_left_by_a_killed_writer_is_taken_over_and_removed(tmp_path, catalog_path, run_cli):
    ok_output(run_cli(["scan", _photos(tmp_path / "photos")], catalog_path))
    Path(f"{catalog_path}.lock").write_text('{"pid": 999999, "host": "gone"}')  # no one holds its flock
    ok_output(run_cli(["sanitize"], catalog_path))
    assert not Path(f"{catalog_path}.lock").exists()
    with Catalog(catalog_path):  # held: the file is there while a writer runs
        assert Path(f"{catalog_path}.lock").exists()
    assert not Path(f"{catalog_path}.lock").exists()


# -- output: summaries, distances, report paths ----------------------------------------------------

def test_the_run_summary_cuts_results_at_whole_words(tmp_path, run_cli):
    from vdc_lake.cli.run import RESULT_WIDTH, whole_words

    text = "scan run 1: 4 files listed: 4 new, 0 changed, 0 touched (same bytes), 0 unchanged, 0 gone, 0 unreadable"
    cut = whole_words(text, 60)
    assert cut.endswith("...") and len(cut) <= 60 and text.startswith(cut[:-3]) and text[len(cut) - 3] in " ,"
    assert whole_words("short", 60) == "short" and len(whole_words("x" * 100, 20)) == 20
    photos = _photos(tmp_path / "photos")
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(f'[pipeline]\ncatalog = "{tmp_path / "c.duckdb"}"\n\n[[step]]\ncommand = "scan"\n'
                        f'args = ["{photos}"]\n')
    output = ok_output(run_cli(["run", pipeline]))
    row = next(line for line in output.splitlines() if line.startswith("1 "))
    result = re.split(r"\s{2,}", row.strip())[-1]
    full = next(line for line in output.splitlines() if line.startswith("scan run 1:"))
    assert len(full) > RESULT_WIDTH and result.endswith("...") and len(result) <= RESULT_WIDTH
    assert full.startswith(result[:-3]) and full[len(result) - 3] in " ,;:"  # the cut falls between words


def _two_copies(root: Path) -> None:
    """a/x.png and b/x.png: one picture and its copy re-saved a shade brighter (a near duplicate)."""
    pixels = np.random.default_rng(3).integers(0, 250, (120, 130, 3), dtype=np.uint8)
    for folder, shade in (("a", 0), ("b", 1)):
        (root / folder).mkdir(parents=True)
        Image.fromarray(pixels + shade).save(root / folder / "x.png")


def test_distances_never_print_as_minus_zero_and_cards_show_root_relative_paths(tmp_path, catalog_path, run_cli):
    root = tmp_path / "photos"
    _two_copies(root)
    for args in (["scan", root], ["sanitize"], ["dedup", "report", "--set", "builtin"]):
        ok_output(run_cli(args, catalog_path))
    with Catalog(catalog_path) as catalog:  # a float32 distance of a copy can lie a hair under 0
        assert catalog.scalar("SELECT count(*) FROM dup_edges WHERE set_name = 'builtin'") == 1
        catalog.execute("UPDATE dup_edges SET distance = -1e-7 WHERE set_name = 'builtin'")
    plan = ok_output(run_cli(["plan", "dedup"], catalog_path))
    assert "distance 0.0000" in plan and "-0.0000" not in plan
    ok_output(run_cli(["report", "--out", tmp_path / "report"], catalog_path))
    pages = "".join(p.read_text() for p in (tmp_path / "report").glob("*.html"))
    assert "-0.0000" not in pages and "distance to the kept image 0.0000" in pages
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", pages)
    assert any("a/x.png" in c for c in captions) and any("b/x.png" in c for c in captions)


def test_cluster_defaults_on_a_small_set_fail_before_any_work_and_name_sizes_that_fit(tmp_path, catalog_path,
                                                                                       run_cli):
    ok_output(run_cli(["scan", _photos(tmp_path / "photos", 30)], catalog_path))
    ok_output(run_cli(["sanitize"], catalog_path))
    started = time.monotonic()
    result = run_cli(["cluster", "--set", "builtin"], catalog_path)
    assert result.exit_code == 1 and time.monotonic() - started < 5, result.output
    assert "has 30 vectors of present images, not more than the 1,000 clusters asked for" in result.output
    assert "e.g. --n-clusters 3" in result.output
    assert catalog_rows(catalog_path, "SELECT count(*) FROM runs WHERE stage = 'cluster'")[0][0] == 0
    suggested = re.search(r"e\.g\. --n-clusters ([\d ]+)", result.output).group(1).split()
    ok_output(run_cli(["cluster", "--set", "builtin", "--n-clusters", *suggested], catalog_path))


# -- the sample data -------------------------------------------------------------------------------

def test_the_sample_data_has_no_folder_that_reads_like_a_backup(sample_template):
    folders = {p.name for p in sample_template.root.iterdir() if p.is_dir()}
    assert "backup" not in folders and "copies" in folders
    assert all(rel.startswith("copies/") for rel in sample_template.kind("exact_copy"))
