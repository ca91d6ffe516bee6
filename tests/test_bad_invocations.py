"""Bad invocations of every command: one `Error:` line that names the valid values, no traceback,
and nothing recorded as done in the catalog. One catalog is built per module (scan, sanitize,
cluster, sample, apply) and shared by every case."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from vdc_lake.catalog.connection import Catalog
from vdc_lake.cli import cli


def invoke(catalog: Path, args: list, *, config: Path | None = None):
    argv = ["--catalog", str(catalog), "-q"] + (["--config", str(config)] if config else [])
    return CliRunner().invoke(cli, argv + [str(a) for a in args], prog_name="vdc-lake", catch_exceptions=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_template):
    """(folder, catalog) after scan (run 1), sanitize (2), cluster (3), sample (4) and apply sanitize (5)."""
    work = tmp_path_factory.mktemp("bad_invocations")
    root = work / "data"
    shutil.copytree(sample_template.root, root, symlinks=True)
    catalog = work / "catalog.duckdb"
    cwd = os.getcwd()
    os.chdir(work)  # no stray vdc-lake.toml
    try:
        for args in (["scan", root, "--workers", "2"], ["sanitize", "--workers", "2"],
                     ["cluster", "--set", "builtin", "--n-clusters", "4", "2", "--n-samples", "3", "2",
                      "--n-resamples", "2", "--device", "cpu"],
                     ["sample", "--total", "20"],
                     ["apply", "sanitize", "--backup-dir", work / "backup", "--apply"]):
            result = invoke(catalog, args)
            assert result.exit_code == 0, result.output
    finally:
        os.chdir(cwd)
    with Catalog(catalog, read_only=True) as c:
        stages = dict(c.rows("SELECT stage, run_id FROM runs"))
    assert stages == {"scan": 1, "sanitize": 2, "cluster": 3, "sample": 4, "apply:sanitize": 5}
    (work / "examples").mkdir()
    return work, catalog


def _pipeline(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path


PIPELINES = {
    "cluster_bad_levels.toml": '[[step]]\ncommand = "status"\n\n[[step]]\ncommand = "cluster"\nset = "builtin"\n'
                               'n_clusters = [3, 12]\n',
    "self.toml": '[[step]]\ncommand = "status"\n\n[[step]]\ncommand = "run"\nargs = ["self.toml"]\n',
    "a.toml": '[[step]]\ncommand = "run"\nargs = ["b.toml"]\n',
    "b.toml": '[[step]]\ncommand = "run"\nargs = ["a.toml"]\n',
    "empty_command.toml": '[[step]]\ncommand = ""\n',
    "unknown_option.toml": '[[step]]\ncommand = "sanitize"\nmin_widht = 300\n',
    "unknown_command.toml": '[[step]]\ncommand = "sanitise"\n',
    "apply_in_step.toml": '[[step]]\ncommand = "apply"\nargs = ["sanitize"]\nyes = true\nno_backup = true\n',
    "sample_zero.toml": '[[step]]\ncommand = "sample"\ntotal = 0\n',
    "catalog_number.toml": '[pipeline]\ncatalog = 5\n\n[[step]]\ncommand = "status"\n',
    "catalog_empty.toml": '[pipeline]\ncatalog = ""\n\n[[step]]\ncommand = "status"\n',
    "pipeline_scalar.toml": 'pipeline = "x.duckdb"\n\n[[step]]\ncommand = "status"\n',
    "command_number.toml": '[[step]]\ncommand = 5\n',
    "sql_stdin.toml": '[[step]]\ncommand = "sql"\nargs = ["-"]\n',
    "latin1_pipeline.toml": '# caf\xe9\n[[step]]\ncommand = "status"\n'.encode("latin-1"),
}

CONFIGS = {
    "dedup_threshold.toml": "[apply_deduplication]\nthreshold = 5\n",
    "min_width_text.toml": '[sanitize]\nmin_width = "wide"\n',
    "sizes.toml": "[sanitize]\nmin_width = 5000\nmax_width = 100\n",
    "n_clusters.toml": "[hierarchical_kmeans]\nn_clusters = [3, 12]\n",
    "workers_decimal.toml": "[scan]\nworkers = 2.0\n",
    "levels_decimal.toml": "[hierarchical_kmeans]\nn_clusters = [4.0, 2.0]\nn_samples = [3, 2]\n",
    "models_dir_number.toml": "[predict]\nmodels_dir = 5\n",
    "flag_text.toml": '[sanitize]\ncheck_corruption = "yes"\n',
    "latin1_config.toml": '# caf\xe9\n[sanitize]\nmin_width = 100\n'.encode("latin-1"),
}

# (args, a fragment of the one Error: line, config file or None)
CASES = [
    # scan
    (["scan", "data", "--workers", "-1"], "--workers must be a whole number of processes (0 = one per CPU core) >= 0, not -1", None),
    (["scan", "no/such/folder"], "is not a directory", None),
    # sanitize
    (["sanitize", "--min-width", "5000", "--max-width", "100"], "--min-width (5000) must not exceed --max-width (100)", None),
    (["sanitize", "--max-file-size-mb", "0"], "--max-file-size-mb must be a size in MB > 0, not 0.0", None),
    (["sanitize", "--min-aspect-ratio", "nan"], "--min-aspect-ratio must be an aspect ratio (width / height) > 0, not nan", None),
    (["sanitize", "--max-pixels", "0"], "--max-pixels must be a whole number of pixels >= 1, not 0", None),
    # predict
    (["predict", "--model", "builtin", "--kind", "descriptor", "--batch-size", "0"], "--batch-size must be a whole number of images >= 1", None),
    (["predict", "--model", "builtin", "--kind", "descriptor", "--num-workers", "-1"], "--num-workers must be", None),
    (["predict", "--model", "builtin", "--kind", "descriptor", "--size", "0"], "--size", None),
    (["predict", "--model", "builtin", "--kind", "descriptor", "--rotate-threshold", "2"], "--rotate-threshold must be a probability between 0 and 1, not 2.0", None),
    (["predict", "--model", "builtin", "--kind", "descriptor", "--draft-min-size", "-1"], "--draft-min-size must be", None),
    # dedup
    (["dedup", "index", "--set", "nosuch"], "nosuch", None),
    (["dedup", "report", "--set", "builtin", "--report-threshold", "-1"], "--report-threshold must be a cosine distance between 0 and 2, not -1.0", None),
    (["dedup", "report", "--set", "builtin", "--neighbors", "0"], "--neighbors must be a whole number of neighbours >= 1, not 0", None),
    (["dedup", "report", "--set", "builtin", "--max-pairs-per-image", "0"], "--max-pairs-per-image must be a whole number of pairs >= 1, not 0", None),
    # filter, score
    (["filter", "examples", "--set", "nosuch", "--examples", "examples"], "nosuch", None),
    (["score", "--head", "no-such-head.pt", "--set", "builtin", "--name", "aesthetic"], "no-such-head.pt", None),
    # cluster
    (["cluster", "--set", "builtin", "--n-clusters", "3", "12"], "--n-clusters must be one or more whole numbers >= 1, largest first", None),
    (["cluster", "--set", "builtin", "--n-clusters", "4", "2", "--n-samples", "5", "3", "2"], "--n-samples has 3 values but --n-clusters has 2 levels; give one count per level, e.g. --n-samples 5 3", None),
    (["cluster", "--set", "builtin", "--n-clusters", "100000"], "100000", None),
    (["cluster", "--set", "builtin", "--max-iters", "0"], "--max-iters must be a whole number of iterations >= 1, not 0", None),
    (["cluster", "--set", "builtin", "--nproc-per-node", "0"], "'--nproc-per-node'", None),
    (["cluster", "--set", "builtin"], "[hierarchical_kmeans] n_clusters in", "n_clusters.toml"),
    # sample
    (["sample", "--total", "0"], "'--total': 0 is not in the range x>=1", None),
    (["sample", "--total", "-5"], "'--total': -5 is not in the range x>=1", None),
    (["sample", "--total", "10", "--cluster-run", "1"], "--cluster-run 1 is a scan run, not a cluster run; give a cluster run (newest: 3)", None),
    (["sample", "--total", "100000"], "100,000", None),
    # plan
    (["plan", "sample", "--run", "99"], "there is no run 99", None),
    (["plan", "sample", "--run", "1"], "--run 1 is a scan run, not a sample run; give a sample run (newest: 4)", None),
    (["plan", "dedup", "--threshold", "5"], "--threshold must be a cosine distance between 0 and 2, not 5.0", None),
    (["plan", "dedup", "--threshold", "nan"], "--threshold must be a cosine distance between 0 and 2, not nan", None),
    (["plan", "dedup", "--threshold", "-1"], "--threshold must be a cosine distance between 0 and 2, not -1.0", None),
    (["plan", "rotation", "--threshold", "1.5"], "--threshold must be a probability between 0 and 1, not 1.5", None),
    (["plan", "dedup", "--set", "nosuch"], "--set 'nosuch': no embedding set of that name; known embedding sets: builtin", None),
    (["plan", "score", "--name", "nosuch", "--min-score", "1"], "--name 'nosuch': no score of that name", None),
    (["plan", "examples", "--threshold", "inf"], "--threshold must be a cosine distance between 0 and 2, not inf", None),
    (["plan", "nosuch"], "unknown stage 'nosuch'", None),
    (["plan", "sanitize", "--examples", "-1"], "'--examples'", None),
    (["plan", "dedup"], "[apply_deduplication] threshold in", "dedup_threshold.toml"),
    # apply
    (["apply", "sample", "--run", "1", "--backup-dir", "backup2"], "--run 1 is a scan run, not a sample run", None),
    (["apply", "dedup", "--keep", "nosuch"], "'--keep'", None),
    (["apply", "dedup", "--threshold", "3", "--backup-dir", "backup2", "--apply"], "--threshold must be a cosine distance between 0 and 2, not 3.0", None),
    # restore
    (["restore", "--run", "1"], "--run 1 is a scan run, not an apply run; give an apply run (newest: 5)", None),
    (["restore", "--run", "99"], "there is no run 99", None),
    (["restore", "--run", "0"], "--run must be a run id >= 1, not 0", None),
    # export, report
    (["export", "--to", "out", "--shard-size-mb", "0"], "--shard-size-mb must be a size in MB > 0, not 0.0", None),
    (["export", "--to", "out", "--format", "nosuch"], "'--format'", None),
    (["export", "--to", ""], "--to is empty; give the folder to export into (e.g. --to out/curated)", None),
    (["report", "--out", " "], "--out is empty; give the folder to write the report into (e.g. --out report)", None),
    (["report", "--out", "report", "--report-threshold", "-1"], "--report-threshold must be a cosine distance between 0 and 2, not -1.0", None),
    (["report", "--out", "report", "--thumbnails", "-1"], "--thumbnails must be a whole number of images >= 0, not -1", None),
    (["report", "--out", "report", "--rotation-threshold", "2"], "--rotation-threshold must be a probability between 0 and 1, not 2.0", None),
    # calibration, incremental curation and the review app (issues 21, 22)
    (["dedup", "calibrate", "--set", "nosuch"], "--set 'nosuch': no embedding set of that name; known embedding sets: builtin", None),
    (["dedup", "calibrate", "--set", "builtin", "--target-precision", "2"], "--target-precision must be a probability between 0 and 1, not 2.0", None),
    (["labels", "draw", "--set", "nosuch", "--n", "5", "--out", "q.csv"], "no embedding set of that name", None),
    (["labels", "draw", "--set", "builtin", "--n", "0", "--out", "q.csv"], "--n must be a whole number of pairs >= 1, not 0", None),
    (["labels", "import", "no_such_labels.csv"], "no_such_labels.csv is not a file; give the CSV of `vdc-lake labels draw`", None),
    (["labels", "import", "latin1_pipeline.toml"], "is not UTF-8 text", None),
    (["cluster", "--assign-new", "--set", "nosuch"], "set 'nosuch' has no clustering to assign new images to", None),
    (["sample", "--total", "0", "--stable"], "0 is not in the range x>=1", None),
    (["review", "--port", "99999"], "--port must be a TCP port between 1 and 65535, not 99999", None),
    (["review", "--host", "0.0.0.0"], "add --allow-remote to do so", None),
    # sql
    (["sql", "SELEC 1"], "query failed", None),
    (["sql", "SELECT 1", "--format", "csv", "--output", "no/such/dir/x.csv"], "no/such/dir/x.csv: no such file or directory; check the path", None),
    (["sql", "SELECT * FROM dedup_actions(keep := 'nosuch')"], "query failed", None),
    (["sql", "-"], "`sql -` read no query from stdin; pipe one in", None),
    (["sql", "-- only a comment\nSELEC 1"], "query failed", None),
    (["run", "sql_stdin.toml"], "step 1 (sql): a step cannot read its query from stdin (`-`)", None),
    # run: a failing step shows run's table; a bad file is refused before step 1
    (["run", "cluster_bad_levels.toml"], "pipeline stopped at step 2 (cluster --set builtin --n-clusters 3 12): --n-clusters must be", None),
    (["run", "self.toml"], "step 2 (run): runs self.toml, which is already running", None),
    (["run", "a.toml"], "runs a.toml, which is already running", None),
    (["run", "empty_command.toml"], "step 1 has an empty `command`", None),
    (["run", "unknown_option.toml"], "step 1 (sanitize): No such option '--min-widht'", None),
    (["run", "unknown_command.toml"], "step 1 (sanitise): unknown command 'sanitise'; known commands: ", None),
    (["run", "apply_in_step.toml"], "step 1 (apply): a step cannot pass --yes", None),
    (["run", "sample_zero.toml"], "step 1 (sample): Invalid value for '--total': 0 is not in the range x>=1", None),
    (["run", "catalog_number.toml"], '[pipeline] catalog in catalog_number.toml must be text: a catalog path in quotes '
                                     '(e.g. catalog = "data/catalog.duckdb"), not 5', None),
    (["run", "catalog_empty.toml"], "[pipeline] catalog in catalog_empty.toml must be text: a catalog path", None),
    (["run", "pipeline_scalar.toml"], "pipeline pipeline_scalar.toml: `pipeline` must be a table", None),
    (["run", "command_number.toml"], "step 1: `command` must be a vdc-lake command in quotes such as \"scan\" "
                                     "or \"dedup report\", not 5", None),
    # config: a value of the wrong type names its key, what it must be and the file
    (["config", "show"], "[apply_deduplication] threshold in", "dedup_threshold.toml"),
    (["scan", "data"], "workers_decimal.toml must be a whole number of processes (0 = one per CPU core) >= 0, "
                       "written without a decimal point or exponent, not 2.0", "workers_decimal.toml"),
    (["cluster", "--set", "builtin", "--device", "cpu"], "[hierarchical_kmeans] n_clusters in", "levels_decimal.toml"),
    (["status"], "[predict] models_dir in", "models_dir_number.toml"),
    (["sanitize"], "flag_text.toml must be true or false, not 'yes'", "flag_text.toml"),
    (["config", "show"], "latin1_config.toml is not UTF-8 text (byte 0xe9 at offset 5); save it as UTF-8 TOML",
     "latin1_config.toml"),
    (["run", "latin1_pipeline.toml"], "pipeline latin1_pipeline.toml is not UTF-8 text (byte 0xe9 at offset 5)", None),
    (["config", "show"], "[sanitize] min_width in", "min_width_text.toml"),
    (["status"], "[sanitize] min_width in", "sizes.toml"),
]


@pytest.mark.parametrize("args, fragment, config", CASES, ids=[" ".join(c[0])[:60] + (f" [{c[2]}]" if c[2] else "")
                                                              for c in CASES])
def test_bad_invocation_is_one_error_line(built, monkeypatch, args, fragment, config):
    folder, catalog = built
    monkeypatch.chdir(folder)
    for name, text in PIPELINES.items():
        _pipeline(folder, name, text)
    config_path = None
    if config:
        config_path = folder / config
        _pipeline(folder, config, CONFIGS[config])
    with Catalog(catalog, read_only=True) as c:
        runs_before = c.rows("SELECT run_id, status FROM runs WHERE status = 'done' ORDER BY run_id")

    result = invoke(catalog, args, config=config_path)

    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert fragment in errors[0], result.output
    with Catalog(catalog, read_only=True) as c:
        assert c.rows("SELECT run_id, status FROM runs WHERE status = 'done' ORDER BY run_id") == runs_before
    assert not (folder / "out").exists() and not (folder / "report").exists()


def test_config_file_and_option_get_the_same_rule(built, monkeypatch):
    """The same bad value from the command line and from vdc-lake.toml: the same words, each naming its origin."""
    folder, catalog = built
    monkeypatch.chdir(folder)
    from_cli = invoke(catalog, ["plan", "dedup", "--threshold", "5"]).output
    local = folder / "vdc-lake.toml"
    local.write_text("[apply_deduplication]\nthreshold = 5.0\n")
    try:
        from_file = invoke(catalog, ["plan", "dedup"]).output
    finally:
        local.unlink()
    rule = "must be a cosine distance between 0 and 2, not 5.0"
    assert from_cli == f"Error: --threshold {rule}\n"
    assert from_file.endswith(f"Error: [apply_deduplication] threshold in {local} {rule}\n")


def test_unexpected_errors_show_a_traceback_with_debug(built, monkeypatch):
    folder, catalog = built
    monkeypatch.chdir(folder)
    args = ["cluster", "--set", "builtin", "--n-clusters", "100000"]
    assert invoke(catalog, args).output.count("Error:") == 1
    monkeypatch.setenv("VDC_LAKE_DEBUG", "1")
    result = invoke(catalog, args)
    assert result.exit_code != 0 and result.exception is not None and not isinstance(result.exception, SystemExit)


def test_a_pipeline_with_unknown_tables_or_keys_is_refused(built, monkeypatch):
    folder, catalog = built
    monkeypatch.chdir(folder)
    (folder / "typo.toml").write_text('[pipeline]\ncatalgo = "x.duckdb"\n\n[[step]]\ncommand = "status"\n')
    result = invoke(catalog, ["run", "typo.toml"])
    assert result.output == ("Error: pipeline typo.toml: unknown key 'catalgo' in [pipeline]; known keys: catalog\n")
    (folder / "typo.toml").write_text('[[steps]]\ncommand = "status"\n')
    assert invoke(catalog, ["run", "typo.toml"]).output.startswith("Error: pipeline typo.toml: unknown table 'steps'")


def test_a_pipeline_catalog_that_is_not_text_is_refused_before_any_file_is_made(built, monkeypatch):
    folder, catalog = built
    monkeypatch.chdir(folder)
    (folder / "number.toml").write_text('[pipeline]\ncatalog = 5\n\n[[step]]\ncommand = "scan"\nargs = ["data"]\n')
    before = sorted(p.name for p in folder.iterdir())
    result = invoke(catalog, ["run", "number.toml"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: [pipeline] catalog in number.toml must be text: "), result.output
    assert sorted(p.name for p in folder.iterdir()) == before  # no catalog named "5" (nor its lock)


@pytest.mark.parametrize("args", [["config", "show"], ["sql", "SELECT range AS n FROM range(100000)"], ["status"]],
                         ids=["config show", "sql", "status"])
def test_output_into_a_reader_that_closes_early_exits_0_quietly(built, args):
    """`vdc-lake ARGS | head -1`: a real pipe whose reader is gone (closed before the first write,
    so every write fails), and a real `head -1`; exit 0 and nothing on stderr either way."""
    import subprocess
    import sys

    folder, catalog = built
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=repo)
    env.pop("VDC_LAKE_DEBUG", None)
    command = [sys.executable, "-m", "vdc_lake.cli", "--catalog", str(catalog), "-q", *args]
    process = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0, stderr
    assert stderr == ""
    shell = " ".join(f"'{a}'" for a in command) + " | head -1; exit ${PIPESTATUS[0]}"
    done = subprocess.run(["bash", "-c", shell], cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert len(done.stdout.splitlines()) == 1


def test_sql_takes_a_query_that_starts_with_a_comment_and_one_from_stdin(built, monkeypatch):
    folder, catalog = built
    monkeypatch.chdir(folder)
    with Catalog(catalog, read_only=True) as c:
        runs = c.scalar("SELECT count(*) FROM runs")
    query = "-- how many runs\nSELECT count(*) AS n FROM runs"
    for args in (["sql", query, "--format", "csv"],          # taken as the query, not as an option
                 ["sql", "--format", "csv", "--", query]):   # after --, as --help shows
        result = invoke(catalog, args)
        assert result.exit_code == 0, result.output
        assert result.output == f'"n"\n{runs}\n'
    argv = ["--catalog", str(catalog), "-q", "sql", "-", "--format", "csv"]
    result = CliRunner().invoke(cli, argv, input=query + "\n", prog_name="vdc-lake")
    assert result.exit_code == 0, result.output
    assert result.output == f'"n"\n{runs}\n'
    help_text = invoke(catalog, ["sql", "--help"]).output
    assert 'vdc-lake sql -- "-- ' in help_text and "vdc-lake sql - <" in help_text
    (folder / "comment_step.toml").write_text('[[step]]\ncommand = "sql"\nargs = ["-- runs\\nSELECT 41 + 1 AS answer"]\n')
    result = invoke(catalog, ["run", "comment_step.toml"])
    assert result.exit_code == 0 and "42" in result.output, result.output


def test_a_pipeline_whose_reader_closes_inside_a_step_exits_0_quietly(built):
    """The pipe breaks inside a step (its output goes through run's copy of stdout): no 'step
    failed', no Error line, exit 0. The step's output is far larger than a pipe's buffer, so it
    is still writing when the reader closes after the first line."""
    import subprocess
    import sys

    folder, catalog = built
    (folder / "big_output.toml").write_text('[[step]]\ncommand = "sql"\nargs = ["SELECT range AS n FROM range(200000)"]'
                                            '\n\n[[step]]\ncommand = "status"\n')
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("VDC_LAKE_DEBUG", None)
    process = subprocess.Popen([sys.executable, "-m", "vdc_lake.cli", "--catalog", str(catalog), "-q", "run",
                                "big_output.toml"], cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline().startswith(b"$ vdc-lake sql")
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0, stderr
    assert stderr == ""
