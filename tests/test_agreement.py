"""Every reader sees the same decisions (issue 10): under a config override in vdc-lake.toml or
--config, `plan`, `status`, the decision macros' defaults read through a plain read-only DuckDB
connection, `curated`, `export` (manifest) and `report` agree on the counts, for each decision:
sanitize, rotation, dedup, examples, score and sample.

One catalog is built per module (sample data scanned, sanitized with the builtin descriptor,
near-duplicates reported, rotation predictions, an example filter and a score head); each test
works on a copy of it in a fresh folder with its own config file.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vdc_lake.catalog.connection import Catalog
from vdc_lake.cli import cli
from vdc_lake.kernels.descriptor import SET_DIM
from vdc_lake.catalog.sets import register_prediction_set, write_vectors

# Each decision: (how `status` names it, the config override, the SQL counting its deletes or
# corrections at the catalog's settings, as a notebook would write it).
DECISIONS = {
    "sanitize": ("[sanitize]\nmax_aspect_ratio = 1.2\n",
                 "SELECT count(*) FROM sanitize_actions"),
    "rotation": ("[rotation_correction]\nthreshold = 0.55\n",
                 "SELECT count(*) FROM rotation_actions() WHERE action <> 'none'"),
    "dedup": ("[apply_deduplication]\nthreshold = 0.001\n",
              "SELECT count(*) FROM dedup_actions() WHERE action = 'delete'"),
    "examples": ("[filter_by_examples]\nthreshold = 0.005\n",
                 "SELECT count(*) FROM example_actions() WHERE action = 'delete'"),
    "score": None,  # its bound comes from the score head's outputs (see _score_config)
    "sample": ("[hierarchical_sampling]\nseed = 7\nstrategy = \"closest\"\n",
               "SELECT count(*) FROM sample_actions() WHERE action = 'delete'"),
}
SAMPLE_TOTAL = 20


def _invoke(args: list, catalog: Path, config: Path | None = None):
    argv = ["--catalog", str(catalog), "-q"] + (["--config", str(config)] if config else [])
    result = CliRunner().invoke(cli, argv + [str(a) for a in args], prog_name="vdc-lake")
    assert result.exit_code == 0, (args, result.output)
    return result.output


def build_decision_catalog(work: Path, sample_template) -> dict:
    """A catalog in `work` with every decision's inputs, made with the bundled defaults, over a
    copy of the sample images: {catalog, root, score_cut (a score a third of the way up)}."""
    root = work / "data"
    shutil.copytree(sample_template.root, root, symlinks=True)
    catalog = work / "catalog.duckdb"
    old_cwd = os.getcwd()
    os.chdir(work)  # no stray vdc-lake.toml
    try:
        _invoke(["scan", root], catalog)
        _invoke(["sanitize"], catalog)
        _invoke(["dedup", "report", "--set", "builtin", "--report-threshold", "0.5"], catalog)
        examples = work / "unwanted"
        examples.mkdir()
        for i, rel in enumerate(sample_template.manifest["clean"][:3]):
            with Image.open(root / rel) as img:
                img.convert("RGB").resize((img.width // 2, img.height // 2)).save(examples / f"ex{i}.jpg")
        _invoke(["filter", "examples", "--set", "builtin", "--examples", examples], catalog)
        head = torch.nn.Linear(SET_DIM, 1)  # the builtin set's dimension
        torch.manual_seed(0)
        torch.nn.init.normal_(head.weight)
        torch.save(torch.nn.Sequential(head).state_dict(), work / "head.pt")
        _invoke(["score", "--head", work / "head.pt", "--set", "builtin", "--name", "aesthetic"], catalog)
        with Catalog(catalog) as c:  # rotation probabilities of a model, spread around the thresholds
            ids = c.arrow("SELECT image_id, version FROM image_files ORDER BY image_id LIMIT 12")
            run_id = c.begin_run("predict", {"set": "rot"})
            register_prediction_set(c, "rot", kind="rotation", model="test", class_names=["0", "90", "180", "270"],
                                    preprocessing=None, run_id=run_id)
            top = np.linspace(0.4, 0.95, len(ids))
            probs = np.stack([(1 - top) / 3, top, (1 - top) / 3, (1 - top) / 3], axis=1).astype(np.float32)
            write_vectors(c, "predictions", "rot", run_id, ids.column("image_id").to_numpy(),
                          ids.column("version").to_numpy(), probs)
            c.finish_run(run_id)
            scores = np.sort(c.arrow("SELECT score FROM scores").column(0).to_numpy())
        _invoke(["cluster", "--set", "builtin", "--n-clusters", 6, 2, "--method", "centers"], catalog)
    finally:
        os.chdir(old_cwd)
    return {"catalog": catalog, "root": root, "score_cut": float(scores[len(scores) // 3])}


@pytest.fixture(scope="module")
def base(tmp_path_factory, sample_template) -> dict:
    """A catalog with every decision's inputs, made with the bundled defaults."""
    return build_decision_catalog(tmp_path_factory.mktemp("agreement"), sample_template)


def _plan_count(output: str, stage: str) -> int:
    return int(re.search(rf"^plan {stage}: (\d+) operations", output, re.M).group(1))


def _status_count(output: str, stage: str) -> int:
    """Sum of the stage's rows in the pending-decisions table of `status`."""
    return sum(int(n) for n in re.findall(rf"^{stage}\s+\S+\s+(\d+)\s*$", output, re.M))


def _status_curated(output: str) -> int:
    return int(re.search(r"^curated \(what export writes\): (\d+) images", output, re.M).group(1))


def _report_numbers(index: Path) -> tuple[int, int]:
    """(images left at the end of the funnel, rotation corrections the rotation section counts)."""
    page = index.read_text(encoding="utf-8")
    table = re.search(r'<table class="funnel">.*?</table>', page, re.S).group(0)
    funnel = re.findall(r"<tr><td>[^<]+</td><td>([\d,]+)</td>", table)
    rotated = re.search(r"([\d,]+) images would be turned upright", page)
    return int(funnel[-1].replace(",", "")), int(rotated.group(1).replace(",", "")) if rotated else 0


@pytest.mark.parametrize("decision, via", [(d, ("local", "option")[i % 2]) for i, d in enumerate(DECISIONS)])
def test_every_reader_agrees_under_a_config_override(base, tmp_path, monkeypatch, decision, via):
    """via: the override is vdc-lake.toml in the working folder (local) or a --config file (option)."""
    work = tmp_path / "work"
    work.mkdir()
    catalog = work / "catalog.duckdb"
    shutil.copy(base["catalog"], catalog)
    if decision == "score":
        override = f"[filter_by_score]\nname = \"aesthetic\"\nmin_score = {base['score_cut']!r}\n"
        count_sql = "SELECT count(*) FROM score_actions('aesthetic') WHERE action = 'delete'"
    else:
        override, count_sql = DECISIONS[decision]
    with Catalog(catalog) as c:  # the copy's settings are the bundled defaults
        default_count = c.scalar(count_sql)
    monkeypatch.chdir(work)
    config = None
    if via == "local":
        (work / "vdc-lake.toml").write_text(override)
    else:
        config = tmp_path / "override.toml"
        config.write_text(override)

    # The stages whose results depend on the config run under it (writers record the settings).
    if decision == "sanitize":
        _invoke(["sanitize"], catalog, config)
    if decision == "sample":
        _invoke(["sample", "--total", SAMPLE_TOTAL], catalog, config)

    planned = _plan_count(_invoke(["plan", decision, "--examples", 0], catalog, config), decision)
    status = _invoke(["status"], catalog, config)
    with duckdb.connect(str(catalog), read_only=True) as con:  # a notebook, no vdc-lake code
        macro = con.execute(count_sql).fetchone()[0]
        curated = {r[0] for r in con.execute("SELECT image_id FROM curated").fetchall()}
        deleted = set()
        if decision != "rotation":
            deleted = {r[0] for r in con.execute(count_sql.replace("count(*)", "image_id")).fetchall()
                       if decision != "sanitize"}
        threshold_setting = con.execute("SELECT value, source FROM settings WHERE section = ? AND key = ?",
                                        ["rotation_correction", "threshold"]).fetchone()
    _invoke(["export", "--to", tmp_path / "out", "--format", "manifest"], catalog, config)
    exported = set(pq.read_table(tmp_path / "out" / "manifest.parquet").column("image_id").to_pylist())
    _invoke(["report", "--out", tmp_path / "report", "--thumbnails", 0], catalog, config)
    report_left, report_rotated = _report_numbers(tmp_path / "report" / "index.html")

    assert planned > 0
    assert planned == macro == _status_count(status, decision)
    assert exported == curated and len(curated) == _status_curated(status) == report_left
    assert not deleted & curated
    if decision == "rotation":
        assert report_rotated == planned and threshold_setting[0] == "0.55"
        assert threshold_setting[1].endswith(("vdc-lake.toml", "override.toml"))
    if decision == "sample":
        assert len(curated) == SAMPLE_TOTAL  # chosen among the images the other decisions keep
    if decision != "sample":
        assert planned != default_count  # the override changed the decision
