"""Every SQL query of README.md runs on the quickstart catalog and shows what the README says.

The quickstart is built once for the session (conftest.quickstart_catalogs) as examples/quickstart.sh does it: the sample data,
`vdc-lake run examples/quickstart.toml` (dry run), then again with --apply. Queries about what
would be removed read the catalog as the dry run left it (every image still there); queries
about what was removed and sampled read it after --apply (two cluster and sample runs).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.test_quickstart import REPO, SAMPLE_TOTAL
from vdc_lake.catalog import Catalog
from vdc_lake.cli import cli

README = REPO / "README.md"


def readme_queries() -> dict[int, str]:
    """{number: SQL} of the numbered queries (`-- N. title` then the statement) in README sql blocks."""
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), re.S)
    queries: dict[int, str] = {}
    for block in blocks:
        for number, body in re.findall(r"^-- (\d+)\. [^\n]*\n(.*?)(?=^-- \d+\. |\Z)", block, re.S | re.M):
            queries[int(number)] = body.strip()
    return queries


def run(args: list, catalog: Path | None = None):
    argv = (["--catalog", str(catalog)] if catalog else []) + ["-q"] + [str(a) for a in args]
    return CliRunner().invoke(cli, argv, prog_name="vdc-lake", catch_exceptions=True)


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
    for number, sql in readme_queries().items():
        with Catalog(catalogs[0] if number in ON_DRY_RUN else catalogs[1], read_only=True) as catalog:
            out[number] = catalog.rows(sql)
    return out


def test_the_readme_has_its_five_queries():
    assert sorted(readme_queries()) == [1, 2, 3, 4, 5]


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
    """The quickstart reports pairs up to 0.1: past it the count stays flat, as the README says."""
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
    """The README: every command takes --catalog, --config and -q, before or after its name."""
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
