"""The command line: exit codes, exact messages, output files, and the catalog state left behind."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from tests.conftest import cli_fails, image_rows, tree_hashes
from vdc_lake.catalog.connection import Catalog
from vdc_lake.review.decisions import DECISIONS


def _ok(result):
    assert result.exit_code == 0, result.output
    assert result.exception is None
    return result.output


_fails = cli_fails


def _runs(catalog_path) -> list[tuple]:
    with Catalog(catalog_path, read_only=True) as catalog:
        return catalog.rows("SELECT run_id, stage, status, params FROM runs ORDER BY run_id")


@pytest.fixture
def scanned(sample_tree, catalog_path, run_cli):
    _ok(run_cli(["scan", sample_tree.root, "--workers", "2"], catalog_path))
    return sample_tree


@pytest.mark.parametrize("args", [["status"], ["sql", "SELECT 1"], ["plan", "sanitize"]])
def test_commands_that_need_a_catalog_name_the_fix(run_cli, tmp_path, args):
    missing = tmp_path / "missing.duckdb"
    _fails(run_cli(args, missing),
           f"no catalog at {missing}; run `vdc-lake scan ROOT` first or pass --catalog PATH")
    assert not missing.exists()


def test_scan_sanitize_status_report_and_record(sample_tree, catalog_path, run_cli):
    n = len(sample_tree.all_files())
    out = _ok(run_cli(["scan", sample_tree.root], catalog_path))
    assert out == (f"scan run 1: {n} files listed: {n} new, 0 changed, 0 touched (same bytes), "
                   "0 unchanged, 0 gone, 3 unreadable headers\n")
    out = _ok(run_cli(["sanitize"], catalog_path))
    assert re.fullmatch(rf"sanitize run 2: {n} images checked \(\d+ decoded\), 20 findings on 16 images\n", out)
    out = _ok(run_cli(["status"], catalog_path))
    assert out.startswith(f"catalog {catalog_path}\n")
    assert re.search(r"^present\s+" + str(n) + "$", out, re.M)
    assert re.search(r"^sanitize\s+delete\s+8$", out, re.M)
    assert re.search(r"^2\s+sanitize\s+done\s", out, re.M)
    assert [r[1:3] for r in _runs(catalog_path)] == [("scan", "done"), ("sanitize", "done")]
    with Catalog(catalog_path, read_only=True) as catalog:
        assert catalog.scalar("SELECT count(*) FROM sanitize_actions") == 10


def test_scan_of_a_missing_root(run_cli, catalog_path, tmp_path):
    _fails(run_cli(["scan", tmp_path / "nope"], catalog_path),
           f"scan root {tmp_path / 'nope'} is not a directory; pass folders that hold images")
    assert not catalog_path.exists()  # a failed first command leaves no empty catalog behind


def test_sql_errors(scanned, catalog_path, run_cli):
    result = run_cli(["sql", "SELEC 1"], catalog_path)
    assert result.exit_code == 1
    assert result.output.startswith('Error: query failed: Parser Error: syntax error at or near "SELEC"')
    result = run_cli(["sql", "UPDATE images SET present = false"], catalog_path)
    assert result.exit_code == 1
    assert result.output.startswith("Error: query failed: ") and "read-only" in result.output
    _fails(run_cli(["sql", "SELECT 1", "--format", "parquet"], catalog_path), "parquet output needs --output FILE")
    assert all(r["present"] for r in image_rows(catalog_path).values())


def test_sql_write_changes_the_catalog(scanned, catalog_path, run_cli):
    _ok(run_cli(["sql", "--write", "UPDATE images SET present = false WHERE rel_path LIKE 'broken/%'"], catalog_path))
    rows = image_rows(catalog_path)
    assert {rel for rel, r in rows.items() if not r["present"]} == {r for r in rows if r.startswith("broken/")}


def test_sql_output_formats(scanned, catalog_path, run_cli, tmp_path):
    query = "SELECT rel_path, width, height FROM images WHERE rel_path LIKE 'sizes/%' ORDER BY rel_path"
    expect = [{"rel_path": rel, "width": r["width"], "height": r["height"]}
              for rel, r in sorted(image_rows(catalog_path).items()) if rel.startswith("sizes/")]
    assert len(expect) == 5

    table = _ok(run_cli(["sql", query], catalog_path))
    assert table.splitlines()[0].split() == ["rel_path", "width", "height"]
    assert table.endswith("(5 rows)\n")

    _ok(run_cli(["sql", query, "--format", "csv", "--output", tmp_path / "out.csv"], catalog_path))
    assert pa_csv.read_csv(tmp_path / "out.csv").to_pylist() == expect
    assert _ok(run_cli(["sql", query, "--format", "csv"], catalog_path)) == (tmp_path / "out.csv").read_text()

    _ok(run_cli(["sql", query, "--format", "json", "--output", tmp_path / "out.json"], catalog_path))
    assert json.loads((tmp_path / "out.json").read_text()) == expect
    assert json.loads(_ok(run_cli(["sql", query, "--format", "json"], catalog_path))) == expect

    out = _ok(run_cli(["sql", query, "--format", "parquet", "--output", tmp_path / "out.parquet"], catalog_path))
    assert out == ""
    assert pq.read_table(tmp_path / "out.parquet").to_pylist() == expect


def test_plan_unknown_stage(scanned, catalog_path, run_cli):
    _fails(run_cli(["plan", "nope"], catalog_path),
           f"unknown stage 'nope'; choose one of: {', '.join(sorted(DECISIONS))}")


def test_plan_prints_counts(scanned, catalog_path, run_cli):
    _ok(run_cli(["sanitize"], catalog_path))
    out = _ok(run_cli(["plan", "sanitize", "--examples", "1"], catalog_path))
    lines = out.splitlines()
    assert lines[:4] == ["plan sanitize: 10 operations:", "  delete       8", "  recompress   1", "  resize       1"]
    assert lines[4] == "examples:" and len(lines) == 6


def test_apply_needs_backup_dir_or_no_backup(scanned, catalog_path, run_cli):
    _ok(run_cli(["sanitize"], catalog_path))
    before = tree_hashes(scanned.root)
    result = run_cli(["apply", "sanitize", "--apply"], catalog_path)
    assert result.exit_code == 1
    assert result.output.startswith("plan sanitize: 10 operations:\n")
    assert result.output.endswith(
        "Error: apply needs --backup-dir DIR (or an explicit --no-backup to change files without a copy)\n")
    assert tree_hashes(scanned.root) == before
    with Catalog(catalog_path, read_only=True) as catalog:
        assert catalog.scalar("SELECT count(*) FROM journal") == 0


def test_apply_dry_run_then_apply_then_restore(scanned, catalog_path, run_cli, tmp_path):
    _ok(run_cli(["sanitize"], catalog_path))
    before = tree_hashes(scanned.root)
    rows_before = image_rows(catalog_path)
    backup = tmp_path / "backup"

    out = _ok(run_cli(["apply", "sanitize", "--backup-dir", backup], catalog_path))
    assert out.endswith("dry run: nothing changed; add --apply to carry this out\n")
    assert tree_hashes(scanned.root) == before and not backup.exists()
    assert image_rows(catalog_path) == rows_before

    out = _ok(run_cli(["apply", "sanitize", "--backup-dir", backup, "--yes"], catalog_path))
    assert out.endswith("apply run 3: 10 done, 0 skipped, 0 failed\n")
    assert sum(not r["present"] for r in image_rows(catalog_path).values()) == 8
    params = json.loads(_runs(catalog_path)[-1][3])
    assert params["backup_dir"] == str(backup.resolve()) and params["max_width"] == 3200

    out = _ok(run_cli(["plan", "sanitize"], catalog_path))
    assert out == "plan sanitize: 0 operations\n"

    _fails(run_cli(["restore", "--run", "99"], catalog_path),
           'there is no run 99; list runs with `vdc-lake sql "SELECT * FROM runs"`')
    assert _ok(run_cli(["restore", "--dry-run"], catalog_path)) == (
        "would restore 10 files; 0 already original; 0 failed\n")
    assert _ok(run_cli(["restore", "--run", "3"], catalog_path)) == "restored 10 files; 0 already original; 0 failed\n"
    assert tree_hashes(scanned.root) == before
    assert all(r["present"] for r in image_rows(catalog_path).values())


def test_writer_commands_refuse_a_locked_catalog(scanned, catalog_path, run_cli):
    with Catalog(catalog_path):
        result = run_cli(["sanitize"], catalog_path)
    assert result.exit_code == 1
    assert re.fullmatch(
        rf"Error: catalog {re.escape(str(catalog_path))} is in use by PID {os.getpid()} on \S+ since \S+; "
        r"wait for that command to finish \(or stop it\), or open the catalog read-only\n", result.output)
    assert [r[1] for r in _runs(catalog_path)] == ["scan"]


# -- configuration ---------------------------------------------------------------------------------

def test_option_precedence_cli_over_file_over_default(scanned, catalog_path, run_cli, tmp_path):
    config = tmp_path / "wide.toml"
    config.write_text("[sanitize]\nmin_width = 300\nmax_file_size_mb = 50.0\n")

    def sanitize(*args, config_file=None):
        """Run sanitize; return (min_width, max_file_size_mb) it recorded and its findings by rule."""
        _ok(run_cli(["sanitize", "--recheck", *args], catalog_path, config=config_file))
        run_id, _, _, params = _runs(catalog_path)[-1]
        params = json.loads(params)
        with Catalog(catalog_path, read_only=True) as catalog:
            found = catalog.rows("SELECT rule, detail FROM findings WHERE run_id = ? AND rule IN "
                                 "('width_too_small', 'file_too_large') ORDER BY ALL", [run_id])
        return (params["min_width"], params["max_file_size_mb"]), found

    recorded, found = sanitize()
    assert recorded == (80, 10.0)
    assert [rule for rule, _ in found] == ["file_too_large", "width_too_small"]  # the BMP; the 40 px image

    recorded, found = sanitize(config_file=config)
    assert recorded == (300, 50.0)
    assert {rule for rule, _ in found} == {"width_too_small"} and len(found) > 1
    assert all(detail.endswith(" < 300px") for _, detail in found)

    recorded, found_cli = sanitize("--min-width", "500", config_file=config)
    assert recorded == (500, 50.0)
    assert len(found_cli) > len(found)
    assert all(detail.endswith(" < 500px") for _, detail in found_cli)


def test_readers_work_while_a_writer_holds_the_catalog(scanned, catalog_path, run_cli):
    with Catalog(catalog_path) as writer:
        writer.release()  # between batches a writer holds only its lock, not the file
        assert _ok(run_cli(["sql", "SELECT count(*) AS n FROM images", "--format", "json"], catalog_path)) == (
            f'[\n {{\n  "n": {len(scanned.all_files())}\n }}\n]\n')
        assert "present" in _ok(run_cli(["status"], catalog_path))
        assert writer.scalar("SELECT count(*) FROM runs") == 1  # and the writer carries on after them


# -- pipelines and common options ---------------------------------------------------------------------

def _write_pipeline(path, steps: str, catalog=None):
    head = f'[pipeline]\ncatalog = "{catalog}"\n\n' if catalog else ""
    path.write_text(head + steps)
    return path


def test_dry_run_pipeline_skips_sql_steps_that_write_files(scanned, catalog_path, run_cli, tmp_path):
    copied, output = tmp_path / "copied.csv", tmp_path / "output.csv"
    pipeline = _write_pipeline(tmp_path / "p.toml", f'''
[[step]]
command = "sql"
args = ["SELECT 1 AS one; COPY (SELECT rel_path FROM images) TO '{copied}' (HEADER)"]

[[step]]
command = "sql"
args = ["SELECT count(*) AS n FROM images"]
format = "csv"
output = "{output}"

[[step]]
command = "sql"
args = ["SELECT count(*) AS n FROM images"]
''')
    out = _ok(run_cli(["run", pipeline], catalog_path))
    assert not copied.exists() and not output.exists()
    assert "note: step 1 (sql SELECT 1 AS one; COPY" in out and "its SQL writes files (COPY)" in out
    assert re.search(r"^1\s+sql .*\s+skipped\s+0\.0\s+skipped in a dry run", out, re.M)
    assert re.search(r"^2\s+sql .*\s+skipped\s", out, re.M)
    assert re.search(r"^3\s+sql .*\s+ok\s", out, re.M)

    _ok(run_cli(["run", pipeline, "--apply"], catalog_path))
    assert len(copied.read_text().splitlines()) == len(scanned.all_files()) + 1
    assert output.read_text().splitlines()[1] == str(len(scanned.all_files()))


def test_pipeline_steps_get_the_config_and_may_run_other_pipelines(scanned, catalog_path, run_cli, tmp_path):
    inner = _write_pipeline(tmp_path / "inner.toml", '[[step]]\ncommand = "sanitize"\nquick = true\n')
    outer = _write_pipeline(tmp_path / "outer.toml", f'[[step]]\ncommand = "run"\nargs = ["{inner}"]\n')
    config = tmp_path / "wide.toml"
    config.write_text("[sanitize]\nmin_width = 300\n")
    _ok(run_cli(["run", outer], catalog_path, config=config))
    run_id, stage, status, params = _runs(catalog_path)[-1]
    assert (stage, status) == ("sanitize", "done") and json.loads(params)["min_width"] == 300


def test_a_pipeline_is_checked_before_its_first_step(scanned, catalog_path, run_cli, tmp_path):
    pipeline = _write_pipeline(tmp_path / "p.toml", '[[step]]\ncommand = "sanitize"\n\n'
                               '[[step]]\ncommand = "cluster"\nset = "builtin"\nn_clustres = [4, 2]\n')
    result = run_cli(["run", pipeline], catalog_path)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: pipeline {pipeline}: step 2 (cluster): No such option '--n-clustres'")
    assert [r[1] for r in _runs(catalog_path)] == ["scan"]  # step 1 did not run


def test_cluster_fits_the_default_n_samples_to_the_levels_asked_for(scanned, catalog_path, run_cli):
    _ok(run_cli(["sanitize"], catalog_path))
    result = run_cli(["cluster", "--set", "builtin", "--n-clusters", "4", "2", "--n-resamples", "2",
                      "--device", "cpu"], catalog_path)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("note: n_samples 10 5 3 (default) has 3 values for 2 levels; using 10 5 "
                                    "(pass --n-samples to choose)\n")
    params = json.loads(_runs(catalog_path)[-1][3])
    assert (params["n_clusters"], params["n_samples"]) == ([4, 2], [10, 5])
    with Catalog(catalog_path, read_only=True) as catalog:
        assert catalog.rows("SELECT level, count(*) FROM clusters GROUP BY level ORDER BY level") == [(0, 4), (1, 2)]


def test_common_options_after_the_command_override_the_ones_before(scanned, catalog_path, run_cli, tmp_path):
    other = tmp_path / "other.duckdb"
    result = run_cli(["status", "--catalog", other], catalog_path)
    _fails(result, f"no catalog at {other}; run `vdc-lake scan ROOT` first or pass --catalog PATH")
    assert "present" in _ok(run_cli(["status", "--catalog", catalog_path, "-q"], other))


def test_false_in_a_pipeline_step_passes_the_off_switch(scanned, catalog_path, run_cli, tmp_path):
    pipeline = _write_pipeline(tmp_path / "p.toml", '[[step]]\ncommand = "sanitize"\nquick = false\n\n'
                               '[[step]]\ncommand = "dedup index"\nset = "builtin"\nl2_normalize = false\nforce = true\n')
    out = _ok(run_cli(["run", pipeline], catalog_path))
    assert "$ vdc-lake sanitize\n" in out and "$ vdc-lake dedup index --set builtin --no-l2-normalize --force\n" in out
    stage, params = _runs(catalog_path)[-1][1], json.loads(_runs(catalog_path)[-1][3])
    assert stage == "dedup-index" and params["l2_normalize"] is False


@pytest.mark.parametrize("name", ["quickstart.toml", "gldv2.toml"])
def test_the_example_pipelines_pass_the_check(name):
    from pathlib import Path

    from vdc_lake.cli.run import off_switches, parse_step
    from vdc_lake.cli.pipeline import check_pipeline

    examples = Path(__file__).resolve().parent.parent / "examples"
    assert len(check_pipeline(examples / name, parse_step, off_switches=off_switches)["step"]) == 10


def test_every_output_location_is_named_output_or_o_and_the_old_names_still_work(scanned, catalog_path, run_cli,
                                                                                 tmp_path):
    for command, old in [(["export", "--format", "manifest"], "--to"), (["report", "--thumbnails", "0"], "--out")]:
        for j, flag in enumerate(("--output", "-o", old)):
            folder = tmp_path / f"{command[0]}-{j}"
            result = run_cli([*command, flag, folder], catalog_path)
            assert result.exit_code == 0, result.output
            assert (folder / ("manifest.parquet" if command[0] == "export" else "index.html")).is_file()
    for j, flag in enumerate(("--output", "-o")):
        out = tmp_path / f"q{j}.csv"
        result = run_cli(["sql", "SELECT 42 AS answer", "--format", "csv", flag, out], catalog_path)
        assert result.exit_code == 0, result.output
        assert out.read_text().replace('"', "").split() == ["answer", "42"]


@pytest.mark.parametrize("written", ["{tmp}/made/here/c.duckdb", "~/made/here/c.duckdb"])
def test_a_pipeline_makes_the_folder_of_the_catalog_it_names(scanned, run_cli, tmp_path, monkeypatch, written):
    """A catalog path written in the pipeline file is the author's choice: `run` makes its
    folder (and says so), ~ expanded once; a typed --catalog in a missing folder stays an error."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    written = written.format(tmp=tmp_path)
    catalog = Path(written).expanduser()
    pipeline = _write_pipeline(tmp_path / "p.toml", f'''
[pipeline]
catalog = "{written}"

[[step]]
command = "scan"
args = ["{scanned.root}"]
''')
    out = _ok(run_cli(["run", pipeline]))
    assert f"made the catalog's folder {catalog.parent}" in out and not (tmp_path / "~").exists()
    with Catalog(catalog, read_only=True) as c:
        assert c.scalar("SELECT count(*) FROM images") == len(scanned.all_files())
    typed = run_cli(["scan", scanned.root], tmp_path / "missing" / "c.duckdb")
    assert typed.exit_code != 0 and "does not exist" in typed.output
    assert not (tmp_path / "missing").exists()


def test_short_help_still_works_after_a_pipeline_was_checked_in_the_same_process():
    # checking a step makes a context for the command outside the group: click caches the
    # command's help option then, and `-h` was refused afterwards
    from click.testing import CliRunner

    from vdc_lake.cli import cli
    from vdc_lake.cli.run import parse_step

    parse_step(["apply", "sanitize"])
    result = CliRunner().invoke(cli, ["apply", "-h"], prog_name="vdc-lake")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: vdc-lake apply [OPTIONS] STAGE")
