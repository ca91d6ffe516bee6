"""The documentation says what the code does.

- README.md's "Curate your own folder" commands run as written (bash, the venv's vdc-lake) on
  generated sample data: every exit code 0, the sample has the size asked for, and `restore`
  gives back the tree byte for byte.
- The numbered SQL queries of docs/catalog.md run on the quickstart catalog and show what their
  titles say. The quickstart is built once for the session (conftest.quickstart_catalogs) as
  examples/quickstart.sh does it: the sample data, `vdc-lake run examples/quickstart.toml` (dry
  run), then again with --apply. Queries about what would be removed read the catalog as the dry
  run left it (every image still there); queries about what was removed and sampled read it after
  --apply (two cluster and sample runs).
- docs/cli.md is what scripts/gen_cli_docs.py writes now, and documents every command.
- Every relative link of README.md and docs/*.md names a file that exists (and a heading that
  exists, for a link with an #anchor).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from examples.make_sample_data import make_sample_data
from tests.conftest import tree_hashes
from tests.test_quickstart import REPO, SAMPLE_TOTAL
from vdc_lake.catalog.connection import Catalog
from vdc_lake.cli import cli

README = REPO / "README.md"
DOCS = REPO / "docs"
CATALOG_DOC = DOCS / "catalog.md"
CLI_DOC = DOCS / "cli.md"
GENERATOR = REPO / "scripts" / "gen_cli_docs.py"
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


# -- README: curate your own folder --------------------------------------------------------------

def curate_commands() -> list[str]:
    """The command lines of the first ```sh block under README's '## Curate your own folder'."""
    section = re.search(r"^## Curate your own folder\n(.*?)(?=^## |\Z)", README.read_text(), re.S | re.M)
    assert section, "README.md has no '## Curate your own folder' section"
    block = re.search(r"^```sh\n(.*?)^```", section.group(1), re.S | re.M)
    assert block, "the 'Curate your own folder' section has no ```sh block"
    return [line for line in block.group(1).splitlines() if shlex.split(line, comments=True)]


def words(line: str) -> list[str]:
    return shlex.split(line, comments=True)


def test_readme_keeps_its_heading_and_set_up_commands():
    """.ci/run and the quickstart rely on these lines as they are."""
    text = README.read_text()
    assert text.startswith("# vdc-lake\n")
    assert ("python3 -m venv .venv && . .venv/bin/activate && pip install -e . "
            "&& bash examples/quickstart.sh") in text
    assert '. .venv/bin/activate && pip install -e ".[test]" && python -m pytest -q -n 2' in text


def test_curate_your_own_folder_is_ten_commands_or_fewer():
    commands = [words(line) for line in curate_commands()]
    assert 1 <= len(commands) <= 10
    assert all(argv[0] == "vdc-lake" for argv in commands)
    names = [argv[1] for argv in commands]
    assert names[0] == "scan" and "~/photos" in commands[0]
    assert names[-1] == "restore", "the block ends by undoing every apply"
    assert "sample" in names and all("--backup-dir" in argv for argv in commands if argv[1] == "apply")


def test_curate_your_own_folder_runs_as_written(tmp_path):
    """On ~300 generated photos (HOME = tmp_path, so ~/photos is the sample data), from a working
    folder beside them: every command exits 0, the last apply leaves exactly the sample's --total
    images, and the closing `restore` gives back every file byte for byte."""
    lines = curate_commands()
    photos = tmp_path / "photos"
    make_sample_data(photos)
    (photos / "manifest.json").unlink()  # not an image: the folder holds only what scan registers
    before = tree_hashes(photos)
    work = tmp_path / "work"
    work.mkdir()
    venv_bin = str(Path(sys.executable).parent)
    env = {key: value for key, value in os.environ.items() if key != "VDC_LAKE_CATALOG"}
    env.update(HOME=str(tmp_path), PATH=venv_bin + os.pathsep + env.get("PATH", ""))
    total = next(int(argv[argv.index("--total") + 1]) for argv in map(words, lines) if argv[1] == "sample")

    for line in lines:
        if words(line)[1] == "restore":
            with Catalog(work / "vdc-lake.duckdb", read_only=True) as catalog:
                present = catalog.scalar("SELECT count(*) FROM images WHERE present")
                curated = catalog.scalar("SELECT count(*) FROM curated")
            files = [p for p in photos.rglob("*") if p.is_file()]
            assert present == curated == len(files) == total
        result = subprocess.run(line, shell=True, executable="/bin/bash", cwd=work, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"

    assert tree_hashes(photos) == before


# -- docs/catalog.md: the numbered queries -------------------------------------------------------

def catalog_queries() -> dict[int, str]:
    """{number: SQL} of the numbered queries (`-- N. title` then the statement) in catalog.md's sql blocks."""
    blocks = re.findall(r"```sql\n(.*?)```", CATALOG_DOC.read_text(), re.S)
    queries: dict[int, str] = {}
    for block in blocks:
        for number, body in re.findall(r"^-- (\d+)\. [^\n]*\n(.*?)(?=^-- \d+\. |\Z)", block, re.S | re.M):
            queries[int(number)] = body.strip()
    return queries


# Queries answered on the catalog as the dry run left it; the others after --apply.
ON_DRY_RUN = {3, 4}


@pytest.fixture(scope="module")
def catalogs(quickstart_catalogs) -> tuple[Path, Path]:
    """(a copy of the catalog after the quickstart's dry run, the catalog after --apply)."""
    return quickstart_catalogs


@pytest.fixture(scope="module")
def quickstart(catalogs) -> Path:
    return catalogs[1]


@pytest.fixture(scope="module")
def answers(catalogs) -> dict[int, list[tuple]]:
    out = {}
    for number, sql in catalog_queries().items():
        with Catalog(catalogs[0] if number in ON_DRY_RUN else catalogs[1], read_only=True) as catalog:
            out[number] = catalog.rows(sql)
    return out


def test_the_catalog_page_has_its_five_queries():
    assert sorted(catalog_queries()) == [1, 2, 3, 4, 5]


def test_1_why_was_this_image_removed(answers):
    """The truncated JPEG was deleted by the sanitize apply run, with its backup and parameters."""
    rows = answers[1]
    assert len(rows) == 1
    action, state, ts, stage, params, src, backup = rows[0]
    assert (action, state, stage) == ("delete", "done", "apply:sanitize")
    assert src.endswith("broken/cut_off.jpg") and backup and '"backup_dir"' in params


def test_2_findings_by_rule_count_each_image_once(answers, catalogs):
    """On the applied catalog two sanitize runs checked every image: each finding counts once."""
    rows = answers[2]
    with Catalog(catalogs[1], read_only=True) as catalog:
        assert catalog.scalar("SELECT count(*) FROM runs WHERE stage = 'sanitize' AND status = 'done'") >= 2
        assert sum(n for _, _, n in rows) == catalog.scalar(
            "SELECT count(*) FROM (SELECT DISTINCT image_id, version, rule FROM findings WHERE image_id <> 0)")
        truncated = catalog.scalar("SELECT count(DISTINCT image_id) FROM findings WHERE rule = 'truncated'")
    assert dict(((rule, n) for rule, _, n in rows))["truncated"] == truncated
    assert [n for _, _, n in rows] == sorted((n for _, _, n in rows), reverse=True)
    assert {"truncated", "zero_byte", "not_an_image", "decompression_bomb"} <= {rule for rule, _, _ in rows}


def test_3_removals_grow_with_the_threshold_up_to_the_report_threshold(answers):
    """The quickstart reports pairs up to 0.1: past it the count stays flat, as the query's note says."""
    rows = answers[3]
    assert [float(t) for t, _ in rows] == [0.05, 0.1, 0.25, 0.4]
    removed = [n for _, n in rows]
    assert removed == sorted(removed) and removed[0] > 0
    assert removed[1] == removed[2] == removed[3]


def test_4_largest_groups_list_every_member(answers):
    rows = answers[4]
    assert 0 < len(rows) <= 10
    sizes = [size for _, size, _ in rows]
    assert sizes == sorted(sizes, reverse=True)
    assert all(len(paths) == size >= 2 for _, size, paths in rows)


def test_5_images_per_top_cluster_add_up_to_the_sample(answers, quickstart):
    """Two cluster runs (dry run and --apply) must not count the sample twice."""
    rows = answers[5]
    with Catalog(quickstart, read_only=True) as catalog:
        assert catalog.scalar("SELECT count(*) FROM runs WHERE stage = 'cluster'") == 2
    assert sum(n for _, n in rows) == SAMPLE_TOTAL
    assert [n for _, n in rows] == sorted((n for _, n in rows), reverse=True)


def test_common_options_work_before_and_after_the_command(quickstart, tmp_path, monkeypatch):
    """docs/workflow.md: every command takes --catalog, --config and -q, before or after its name."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "strict.toml"
    config.write_text("[sanitize]\nmin_width = 300\n")
    query = "SELECT count(*) AS n FROM images WHERE present"
    before = CliRunner().invoke(cli, ["--catalog", str(quickstart), "-q", "sql", query, "--format", "csv"])
    after = CliRunner().invoke(cli, ["sql", query, "--format", "csv", "--catalog", str(quickstart), "-q"])
    assert before.exit_code == after.exit_code == 0, after.output
    assert before.output == after.output and before.output.split() == ['"n"', str(SAMPLE_TOTAL)]
    shown = CliRunner().invoke(cli, ["config", "show", "--config", str(config)])
    assert re.search(rf"^sanitize\.min_width\s+300\s+{re.escape(str(config))}$", shown.output, re.M)
    # after the command wins over before it
    other = tmp_path / "missing.duckdb"
    result = CliRunner().invoke(cli, ["--catalog", str(quickstart), "status", "--catalog", str(other)])
    assert result.exit_code == 1 and f"no catalog at {other}" in result.output


# -- docs/cli.md ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def generator():
    """scripts/gen_cli_docs.py as a module."""
    spec = importlib.util.spec_from_file_location("gen_cli_docs", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def all_commands(command: click.Command = cli, path: str = "vdc-lake") -> dict[str, click.Command]:
    """{'vdc-lake dedup report': command, ...} for the group and every command below it."""
    out = {path: command}
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            out.update(all_commands(sub, f"{path} {name}"))
    return out


def test_cli_reference_is_current():
    """In a fresh process, as a user runs it: click caches a command's help option the first time a
    context asks for it (a pipeline step parsed by `run` asks without -h), so a process that has
    already run commands can render another help than `vdc-lake COMMAND --help` prints."""
    assert CLI_DOC.exists(), "docs/cli.md is missing: run python scripts/gen_cli_docs.py"
    result = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, (f"docs/cli.md is not what the commands' --help says now: "
                                    f"run python scripts/gen_cli_docs.py\n{result.stdout}{result.stderr}")


def test_every_command_has_help_and_is_documented(generator):
    doc = CLI_DOC.read_text()
    commands = {name: command for name, command in all_commands().items() if not command.hidden}
    assert len(commands) > 20 and {"vdc-lake scan", "vdc-lake dedup report", "vdc-lake restore"} <= set(commands)
    assert {name for name, _, _ in generator.commands()} == set(commands)
    for name, command in commands.items():
        assert (command.help or "").strip(), f"`{name}` has no help text"
        assert f"\n## {name}\n" in doc, f"`{name}` is not in docs/cli.md: run python scripts/gen_cli_docs.py"


# -- links ---------------------------------------------------------------------------------------

def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings (code blocks left out)."""
    text = FENCE.sub("", path.read_text())
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_docs_folder_has_its_pages():
    names = {p.name for p in DOCS.glob("*.md")}
    assert {"workflow.md", "catalog.md", "safety.md", "configuration.md", "scale.md", "development.md",
            "cli.md"} <= names


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_points_at_an_existing_file(path):
    text = FENCE.sub("", path.read_text())
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{path.relative_to(REPO)}: broken links {broken}"
