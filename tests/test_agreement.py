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
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tests.conftest import copy_catalog
from vdc_lake.catalog.connection import Catalog
from vdc_lake.cli import cli
from vdc_lake.kernels.descriptor import SET_DIM
from vdc_lake.catalog.sets import register_embedding_set, register_prediction_set, write_vectors

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
    copy_catalog(base["catalog"], catalog)
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
    assert planned == macro
    assert _status_count(status, decision) == sum(exclusive_pending(catalog).get(decision, Counter()).values())
    assert exported == curated and len(curated) == _status_curated(status) == report_left
    assert not deleted & curated
    if decision == "rotation":
        assert report_rotated == planned and threshold_setting[0] == "0.55"
        assert threshold_setting[1].endswith(("vdc-lake.toml", "override.toml"))
    if decision == "sample":
        assert len(curated) == SAMPLE_TOTAL  # chosen among the images the other decisions keep
    if decision != "sample":
        assert planned != default_count  # the override changed the decision


# The same question gets the same answer, image for image, from every reader: the dry-run plan
# (`vdc-lake apply STAGE` without --apply, and `plan STAGE`), `status` (pending counts and the
# settings table), the SQL views read through a plain read-only DuckDB connection, `export` and
# `report` (its gallery pages and counts), for each decision stage (sanitize, rotation, dedup,
# examples, score, sample, override), under settings from vdc-lake.toml and --config, with CLI
# flags, per-set dedup thresholds and overrides, after a partial apply, an interrupted apply and a
# restore.
# 
# One catalog is built per module (the sample data scanned, sanitized with the builtin descriptor,
# near-duplicates reported, an example filter, a score head, rotation predictions and a
# clustering); each test starts from a fresh copy of it and of its image files, at the same path
# (the catalog names the files by absolute path), so an apply in one test never shows in another.


STAGES = ("sanitize", "rotation", "dedup", "examples", "score", "sample", "override")


# Each stage's operations at the catalog's settings, as a notebook would ask for them.
VIEW_SQL = {
    "sanitize": "SELECT image_id, action FROM sanitize_actions",
    "rotation": "SELECT image_id, action FROM rotation_actions() WHERE action <> 'none'",
    "dedup": "SELECT image_id, action FROM dedup_actions() WHERE action = 'delete'",
    "examples": "SELECT image_id, action FROM example_actions() WHERE action = 'delete'",
    "score": "SELECT image_id, action FROM score_actions(setting('filter_by_score', 'name')) WHERE action = 'delete'",
    "sample": "SELECT image_id, action FROM sample_actions() WHERE action = 'delete'",
    "override": "SELECT image_id, action FROM override_actions WHERE action = 'delete'",
}


# The stages an apply of rotation and sanitize changes the answer of (new versions, gone files).
APPLIED_STAGES = ("sanitize", "rotation", "dedup", "sample")


SETTINGS_TOML = """\
[rotation_correction]
threshold = 0.6
[apply_deduplication]
threshold = 0.05
[filter_by_examples]
threshold = 0.005
[filter_by_score]
name = "aesthetic"
min_score = {min_score!r}
"""


def _invoke_result(args: list, catalog: Path, config: Path | None = None, *, ok: bool = True):
    argv = ["--catalog", str(catalog), "-q"] + (["--config", str(config)] if config else [])
    result = CliRunner().invoke(cli, argv + [str(a) for a in args], prog_name="vdc-lake")
    if ok:
        assert result.exit_code == 0, (args, result.output)
    return result


@pytest.fixture(scope="module")
def template(tmp_path_factory, sample_template) -> dict:
    """A catalog with every decision's inputs (bundled defaults) and its image files."""
    work = tmp_path_factory.mktemp("audit_template")
    return {"work": work, **build_decision_catalog(work, sample_template)}


@pytest.fixture
def fresh(template, tmp_path, monkeypatch) -> dict:
    """The template's catalog and image files as they were built, at the template's paths; the
    working folder (cwd) is an empty folder of this test."""
    root = template["root"]
    pristine = template["work"] / "pristine"
    if not pristine.exists():  # the first test keeps an untouched copy of the files
        shutil.copytree(root, pristine / "data", symlinks=True)
        copy_catalog(template["catalog"], pristine / "catalog.duckdb")
    shutil.rmtree(root)
    shutil.copytree(pristine / "data", root, symlinks=True)
    catalog = tmp_path / "catalog.duckdb"
    copy_catalog(pristine / "catalog.duckdb", catalog)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return {"catalog": catalog, "root": root, "work": work, "tmp": tmp_path, "score_cut": template["score_cut"]}


# -- what each reader says --------------------------------------------------------------------------

def _paths(catalog: Path) -> dict[str, int]:
    with duckdb.connect(str(catalog), read_only=True) as con:
        return dict(con.execute("SELECT root || '/' || rel_path, image_id FROM images").fetchall())


def planned(catalog: Path, stage: str, config: Path | None = None, flags: tuple = (), command: str = "apply"
            ) -> dict[int, str]:
    """{image_id: action} of `vdc-lake apply STAGE` (dry run) or `plan STAGE`, every operation listed."""
    out = _invoke_result([command, stage, "--examples", 10**6, *flags], catalog, config).output
    ids = _paths(catalog)
    ops = {ids[path]: action for action, path in re.findall(r"^  (\S+) +(/.*?)  \(", out, re.M)}
    assert len(ops) == int(re.search(rf"^plan {stage}: (\d+) operations", out, re.M).group(1)), out
    if command == "apply":
        assert "dry run: nothing changed" in out
    return ops


def viewed(catalog: Path, sql: str) -> dict[int, str]:
    with duckdb.connect(str(catalog), read_only=True) as con:  # a notebook: no vdc-lake code
        return dict(con.execute(sql).fetchall())


def status(catalog: Path, config: Path | None = None) -> tuple[dict[str, Counter], int, str]:
    """({stage: Counter(action: images)} of the pending table, curated count, the whole output)."""
    out = _invoke_result(["status"], catalog, config).output
    table = out.split("stage ", 1)[1].split("curated (what export writes)")[0]
    pending: dict[str, Counter] = {}
    for stage, action, n in re.findall(r"^(\w+) +(\S+(?: \(unfinished\))?) +(\d+) *$", table, re.M):
        pending.setdefault(stage, Counter())[action] = int(n)
    curated = int(re.search(r"^curated \(what export writes\): (\d+) images", out, re.M).group(1))
    return pending, curated, out


def exclusive_pending(catalog: Path) -> dict[str, Counter]:
    """What `status` counts per stage, from the views alone: each stage's actions, with an image
    several decisions delete counted once, under the first of them in the registry's order."""
    from vdc_lake.review.decisions import DECISIONS

    score_name = next(iter(viewed(catalog, "SELECT setting('filter_by_score', 'name'), 1")))
    unfinished = set(viewed(catalog, "SELECT image_id, 1 FROM journal WHERE state = 'planned'"))  # apply finishes them
    counts: dict[str, Counter] = {}
    removed: set[int] = set()
    for stage in DECISIONS:
        if stage not in VIEW_SQL or (stage == "score" and not score_name):
            continue
        ops = {image: action for image, action in viewed(catalog, VIEW_SQL[stage]).items() if image not in unfinished}
        own = Counter(action for image, action in ops.items() if action != "delete" or image not in removed)
        removed |= {image for image, action in ops.items() if action == "delete"}
        if own:
            counts[stage] = own
    return counts


def settings_table(out: str) -> dict[str, tuple[str, str]]:
    """{setting: (value, source)} of the settings table `status` prints."""
    block = out.split("decision setting", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in block.splitlines()[2:]:
        parts = re.split(r" {2,}", line.strip())
        if len(parts) == 3:
            rows[parts[0]] = (parts[1], parts[2])
        elif len(parts) == 2:  # an empty value (filter_by_score.name)
            rows[parts[0]] = ("", parts[1])
    return rows


def reported(catalog: Path, out_dir: Path, config: Path | None = None, flags: tuple = ()) -> dict:
    """What `report` says: planned image ids per gallery, the decision table's counts, the funnel's end."""
    _invoke_result(["report", "--out", out_dir, "--thumbnails", 0, "--page-size", 10**5, *flags], catalog, config)
    galleries = {page.name[:-len("-1.html")]: {int(i) for i in re.findall(
        r'data-image-id="(\d+)" data-planned="1"', page.read_text(encoding="utf-8"))}
        for page in out_dir.glob("*-1.html")}
    index = (out_dir / "index.html").read_text(encoding="utf-8")
    decisions = re.search(r"Planned operations by decision</h2>.*?</table>", index, re.S).group(0)
    counts = {name: int(n.replace(",", "")) for name, n in re.findall(r"<tr><td>(\w+)</td><td>([\d,]+)</td>",
                                                                      decisions)}
    funnel = re.search(r'<table class="funnel">.*?</table>', index, re.S).group(0)
    left = int(re.findall(r"<tr><td>[^<]+</td><td>([\d,]+)</td>", funnel)[-1].replace(",", ""))
    return {"galleries": galleries, "counts": counts, "left": left, "index": index}


def exported(catalog: Path, out_dir: Path, config: Path | None = None) -> set[int]:
    _invoke_result(["export", "--to", out_dir, "--format", "manifest"], catalog, config)
    return set(pq.read_table(out_dir / "manifest.parquet").column("image_id").to_pylist())


def assert_readers_agree(catalog: Path, tmp: Path, config: Path | None = None, *, stages=STAGES
                         ) -> dict[str, dict[int, str]]:
    """Every reader gives the same operations per stage and the same curated set; returns the
    operations per stage."""
    pending, curated_count, out = status(catalog, config)
    expected_pending = exclusive_pending(catalog)
    tag = len(list(tmp.glob("report*")))
    report = reported(catalog, tmp / f"report{tag}", config)
    ops = {}
    score_name = next(iter(viewed(catalog, "SELECT setting('filter_by_score', 'name'), 1")))
    for stage in stages:
        view = viewed(catalog, VIEW_SQL[stage])
        if stage == "score" and not score_name:  # no score filter configured: no plan, nothing pending
            result = _invoke_result(["apply", "score"], catalog, config, ok=False)
            assert result.exit_code == 1 and "score decisions need --name" in result.output
            assert not view and "score" not in pending and report["counts"]["score"] == 0
            continue
        dry = planned(catalog, stage, config)
        assert dry == view, (stage, set(dry.items()) ^ set(view.items()))
        assert pending.get(stage, Counter()) == expected_pending.get(stage, Counter()), (stage, pending, out)
        assert report["counts"][stage] == len(view), (stage, report["counts"])
        if stage in report["galleries"]:
            assert report["galleries"][stage] == set(view), (stage, report["galleries"][stage] ^ set(view))
        else:
            assert not view, stage
        ops[stage] = view
    if "rotation" in ops:  # the funnel counts rotations among sanitize's survivors, and says how many plan has
        funnel = re.search(r"<td>rotated</td><td>[\d,]+</td><td>([\d,]+) to be turned upright([^<]*)",
                           report["index"])
        turned = int(funnel.group(1).replace(",", ""))
        assert turned == len(ops["rotation"]) or f"`plan rotation` turns {len(ops['rotation']):,}," in funnel.group(2)
    curated = set(viewed(catalog, "SELECT image_id, 1 FROM curated"))
    assert exported(catalog, tmp / f"export{tag}", config) == curated
    assert curated_count == len(curated) == report["left"]
    deleted = {i for stage, o in ops.items() for i, action in o.items() if action == "delete"}
    assert not deleted & curated  # nothing a decision deletes is exported
    return ops


# -- the dedup threshold in status (the quickstart wart) ----------------------------------------------

def _dedup_rows(out: str) -> dict[str, tuple[str, str]]:
    return {k: v for k, v in settings_table(out).items() if k.startswith("apply_deduplication.threshold")}


@pytest.mark.parametrize("via", ["defaults", "local", "option"])
def test_status_shows_the_one_dedup_threshold_that_plan_uses(fresh, via):
    """Before: status listed `apply_deduplication.threshold 0.25 default` beside `dedup apply
    threshold, set builtin 0.08`, and plan used 0.08. Now one row per set, the value in force."""
    catalog, config = fresh["catalog"], None
    if via == "local":
        (fresh["work"] / "vdc-lake.toml").write_text("[apply_deduplication]\nthreshold = 0.05\n")
    elif via == "option":
        config = fresh["tmp"] / "strict.toml"
        config.write_text("[apply_deduplication]\nthreshold = 0.03\n")
    expected = {"defaults": ("0.08", "set builtin's own"),
                "local": ("0.05", str(fresh["work"] / "vdc-lake.toml")),
                "option": ("0.03", str(config))}[via]
    out = status(catalog, config)[2]
    assert _dedup_rows(out) == {"apply_deduplication.threshold (set builtin)": expected}, out
    with duckdb.connect(str(catalog), read_only=True) as con:
        in_force = con.execute("SELECT apply_threshold FROM dedup_thresholds WHERE set_name = 'builtin'").fetchone()[0]
        at_value = dict(con.execute("SELECT image_id, action FROM dedup_actions(threshold := ?) "
                                    "WHERE action = 'delete'", [float(expected[0])]).fetchall())
    assert f"{in_force:g}" == expected[0]
    assert planned(catalog, "dedup", config, command="plan") == planned(catalog, "dedup", config) == at_value
    plan_output = _invoke_result(["plan", "dedup", "--examples", 0], catalog, config).output
    assert plan_output.startswith(f"dedup at distance < {expected[0]} in set builtin ({expected[1]}); "
                                  "keep largest-resolution (default)\n"), plan_output
    assert ("a set's own dedup threshold" in out) == (via == "defaults")


def test_status_lists_each_sets_threshold_and_the_fallback_only_where_it_applies(fresh):
    """Two registered sets with their own thresholds, and edges imported under an unregistered set:
    status lists all three values the decision uses, each one where dedup_actions() takes it."""
    catalog = fresh["catalog"]
    with Catalog(catalog) as c:
        table = c.arrow("SELECT image_id, version, vector FROM embeddings WHERE set_name = 'builtin' ORDER BY image_id")
        vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
        run_id = c.begin_run("predict", {"set": "sscd"})
        register_embedding_set(c, "sscd", kind="descriptor", model="resnet_v1_50_c1_sscd", dim=vectors.shape[1],
                               preprocessing=None, run_id=run_id)
        write_vectors(c, "embeddings", "sscd", run_id, table.column("image_id").to_numpy(),
                      table.column("version").to_numpy(), vectors)
        c.finish_run(run_id)
    _invoke_result(["dedup", "report", "--set", "sscd", "--report-threshold", "0.3"], catalog)
    with Catalog(catalog) as c:  # edges of a set that is not registered (as an import of another tool's pairs)
        run_id = c.begin_run("dedup-report", {"set": "other", "threshold": 0.5})
        c.execute("INSERT INTO dup_edges (run_id, set_name, image_a, image_b, version_a, version_b, distance) "
                  "SELECT ?, 'other', image_a, image_b, version_a, version_b, distance FROM dup_edges "
                  "WHERE set_name = 'builtin' AND run_id = (SELECT max(run_id) FROM runs WHERE stage = 'dedup-report' "
                  "AND params->>'set' = 'builtin')", [run_id])
        c.finish_run(run_id)
    out = status(catalog)[2]
    assert _dedup_rows(out) == {
        "apply_deduplication.threshold (set builtin)": ("0.08", "set builtin's own"),
        "apply_deduplication.threshold (set sscd)": ("0.25", "set sscd's own"),
        "apply_deduplication.threshold (other sets)": ("0.25", "default"),
    }, out
    # sscd's 0.25 lies beyond the 0.3 searched? no: only a threshold above the search warns
    assert "warning: the dedup apply threshold" not in out
    dry = planned(catalog, "dedup")
    assert dry == viewed(catalog, VIEW_SQL["dedup"]) and status(catalog)[0]["dedup"] == Counter(dry.values())


def test_a_threshold_beyond_the_reported_distance_is_named_by_status_and_plan(fresh):
    catalog = fresh["catalog"]
    _invoke_result(["dedup", "report", "--set", "builtin", "--report-threshold", "0.04"], catalog)
    (fresh["work"] / "vdc-lake.toml").write_text("[apply_deduplication]\nthreshold = 0.3\n")
    warning = ("warning: the dedup apply threshold of set builtin (0.3) is above the distance its newest dedup "
               "report searched (0.04)")
    assert warning in status(catalog)[2]
    result = _invoke_result(["plan", "dedup"], catalog)
    assert warning in result.output and "--report-threshold 0.3" in result.output
    assert "warning" not in _invoke_result(["plan", "dedup", "--threshold", "0.02"], catalog).output


# -- every reader, every stage -------------------------------------------------------------------------

def test_readers_agree_under_config_settings_overrides_and_a_sample(fresh):
    """Settings from a --config file, overrides (keep and drop) and a sample: every stage's
    operations agree image for image; status and plan name the values the views use.
    (vdc-lake.toml alone: test_every_reader_agrees_under_a_config_override.)"""
    catalog, config = fresh["catalog"], fresh["tmp"] / "override.toml"
    config.write_text(SETTINGS_TOML.format(min_score=fresh["score_cut"]))
    source = str(config)
    defaults = {stage: viewed(catalog, sql) for stage, sql in VIEW_SQL.items()}
    dups = viewed(catalog, "SELECT image_id, kept_image_id FROM dedup_actions(threshold := 0.05) "
                           "WHERE action = 'delete' ORDER BY image_id LIMIT 2")
    kept, dropped = next(iter(dups)), sorted(set(viewed(catalog, "SELECT image_id, 1 FROM curated")))[:2]
    _invoke_result(["override", "keep", kept], catalog, config)
    _invoke_result(["override", "drop", *dropped], catalog, config)
    _invoke_result(["sample", "--total", 8], catalog, config)
    ops = assert_readers_agree(catalog, fresh["tmp"], config)
    rows = settings_table(status(catalog, config)[2])
    assert rows["rotation_correction.threshold"] == ("0.6", source)
    for stage, line in (("rotation", f"rotation at probability > 0.6 ({source})"),
                        ("examples", f"examples at distance < 0.005 ({source})"),
                        ("score", f"score aesthetic kept within [{fresh['score_cut']:g} ({source}), inf (default)]")):
        assert _invoke_result(["plan", stage, "--examples", 0], catalog, config).output.splitlines()[0] == line
    assert rows["apply_deduplication.threshold (set builtin)"] == ("0.05", source)
    assert rows["filter_by_examples.threshold"] == ("0.005", source)
    assert rows["filter_by_score.name"] == ("aesthetic", source)
    for stage in ("rotation", "dedup", "examples", "score"):
        assert ops[stage] != defaults[stage], stage  # the settings changed the decision
    assert ops["override"] == {i: "delete" for i in dropped}
    assert kept not in ops["dedup"] and len(viewed(catalog, "SELECT image_id, 1 FROM curated")) == 8


def test_cli_flags_give_plan_report_and_the_macros_the_same_answer(fresh):
    """A CLI value applies to that command only: the dry run at --threshold equals the macro called
    with it and the report's gallery at the same value; status keeps the catalog's settings."""
    catalog = fresh["catalog"]
    for stage, flags, sql, report_flag in (
            ("dedup", ("--threshold", "0.3"), "SELECT image_id, action FROM dedup_actions(threshold := 0.3) "
                                              "WHERE action = 'delete'", ("--dedup-threshold", "0.3")),
            ("rotation", ("--threshold", "0.5"), "SELECT image_id, action FROM rotation_actions(threshold := 0.5) "
                                                 "WHERE action <> 'none'", ("--rotation-threshold", "0.5"))):
        dry = planned(catalog, stage, flags=flags)
        assert dry == viewed(catalog, sql) and dry != viewed(catalog, VIEW_SQL[stage])
        said = _invoke_result(["apply", stage, *flags, "--examples", 0], catalog).output.splitlines()[0]
        assert said == {"dedup": "dedup at distance < 0.3 (--threshold); keep largest-resolution (default)",
                        "rotation": "rotation at probability > 0.5 (--threshold)"}[stage]
        report = reported(catalog, fresh["tmp"] / f"report-{stage}", flags=report_flag)
        assert report["galleries"][stage] == set(dry) and report["counts"][stage] == len(dry)
        assert status(catalog)[0].get(stage, Counter()) == exclusive_pending(catalog).get(stage, Counter())
    dry = planned(catalog, "score", flags=("--name", "aesthetic", "--max-score", fresh["score_cut"]))
    assert dry == viewed(catalog, f"SELECT image_id, action FROM score_actions('aesthetic', max_score := "
                                  f"{fresh['score_cut']!r}) WHERE action = 'delete'") and dry
    assert "score" not in status(catalog)[0]  # no score filter in the catalog's settings


def test_readers_agree_after_a_partial_apply_and_after_restore(fresh):
    """sample, then apply rotation and sanitize (new versions of sampled images), then restore.
    Before: the sample's selection was matched by version, so `apply sample` would delete the
    sampled images that vdc-lake had just rotated or resized (reason: not selected)."""
    catalog, backup = fresh["catalog"], fresh["tmp"] / "backup"
    _invoke_result(["sample", "--total", 25], catalog)
    sampled = set(viewed(catalog, "SELECT image_id, 1 FROM curated"))
    clusters = viewed(catalog, "SELECT image_id, leaf_cluster_id FROM curated")
    before = {stage: viewed(catalog, VIEW_SQL[stage]) for stage in APPLIED_STAGES}
    changed = set(viewed(catalog, "SELECT image_id, 1 FROM rotation_actions(threshold := 0.3) "
                                  "WHERE action <> 'none' UNION SELECT image_id, 1 FROM sanitize_actions "
                                  "WHERE action <> 'delete'")) & sampled
    assert changed  # the scenario turns or resizes images the sample selected
    _invoke_result(["apply", "rotation", "--threshold", "0.3", "--backup-dir", backup, "--apply"], catalog, ok=False)
    _invoke_result(["apply", "sanitize", "--backup-dir", backup, "--apply"], catalog)
    assert set(viewed(catalog, "SELECT image_id, version FROM image_files WHERE version > 1")) >= changed
    after = assert_readers_agree(catalog, fresh["tmp"], stages=APPLIED_STAGES)
    assert not changed & set(after["sample"])  # still selected: apply sample leaves them
    assert set(viewed(catalog, "SELECT image_id, 1 FROM curated")) == sampled
    index = reported(catalog, fresh["tmp"] / "report-applied")["index"]
    assert re.search(r"Sample run \d+ selected 25 images", index)  # the report's sampling section too
    # and keep the cluster the sample chose them from (curated, the export manifest)
    assert viewed(catalog, "SELECT image_id, leaf_cluster_id FROM curated") == clusters
    assert "still survive" not in status(catalog)[2]
    _invoke_result(["restore"], catalog)
    assert assert_readers_agree(catalog, fresh["tmp"], stages=APPLIED_STAGES) == before


def test_a_sample_and_an_override_made_after_apply_survive_its_restore(fresh):
    """apply rotation, then sample (it must choose among the turned images too: their clusters were
    matched by version, so it never did) and override keep a turned image; restore the rotation.
    The restore deleted the override and the sample's rows of the restored images, so `apply
    sample` would then have deleted every sampled image it had restored."""
    catalog, backup = fresh["catalog"], fresh["tmp"] / "backup"
    _invoke_result(["apply", "rotation", "--threshold", "0.3", "--backup-dir", backup, "--apply"], catalog, ok=False)
    turned = set(viewed(catalog, "SELECT image_id, 1 FROM image_files WHERE version > 1"))
    assert turned
    survivors = set(viewed(catalog, "SELECT image_id, 1 FROM surviving_images"))
    _invoke_result(["sample", "--total", len(survivors)], catalog)  # every survivor: the turned ones too
    assert turned & survivors <= set(viewed(catalog, "SELECT image_id, 1 FROM sampled_images"))
    kept = min(turned & survivors)
    _invoke_result(["override", "keep", kept], catalog)
    sampled = set(viewed(catalog, "SELECT image_id, 1 FROM sampled_images"))
    deletes = set(viewed(catalog, "SELECT image_id, 1 FROM sample_actions() WHERE action = 'delete'"))

    _invoke_result(["restore"], catalog)
    assert not viewed(catalog, "SELECT image_id, 1 FROM image_files WHERE version > 1")  # back as they were
    assert set(viewed(catalog, "SELECT image_id, 1 FROM sampled_images")) == sampled
    assert set(viewed(catalog, "SELECT image_id, 1 FROM sample_actions() WHERE action = 'delete'")) == deletes
    assert viewed(catalog, "SELECT image_id, override FROM override_actions") == {kept: "keep"}
    assert viewed(catalog, "SELECT count(*), 1 FROM overrides") == {1: 1}


def test_status_counts_what_plan_counts_after_an_interrupted_apply(fresh, monkeypatch):
    """An apply stopped after its journal was written leaves operations `planned`: the next plan
    leaves those images out (apply finishes them first). Status counted them as pending as well
    (all 35 of them, while plan had none); now it counts what plan counts and lists the unfinished
    operations apart."""
    import vdc_lake.effects.engine as apply_module

    catalog = fresh["catalog"]
    calls = {"n": 0}
    real = apply_module.execute_op

    def interrupted(op):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the run
        return real(op)

    monkeypatch.setattr(apply_module, "execute_op", interrupted)
    total = len(viewed(catalog, VIEW_SQL["dedup"]))
    _invoke_result(["apply", "dedup", "--backup-dir", fresh["tmp"] / "backup", "--apply"], catalog, ok=False)
    monkeypatch.setattr(apply_module, "execute_op", real)
    unfinished = viewed(catalog, "SELECT count(*), 1 FROM journal WHERE state = 'planned'")
    assert unfinished and next(iter(unfinished)) == total
    pending, _, out = status(catalog)
    assert pending["dedup"] == Counter({"delete (unfinished)": total}) + exclusive_pending(catalog).get("dedup", Counter())
    result = _invoke_result(["plan", "dedup"], catalog)
    assert f"{total} operations of an interrupted apply are unfinished" in result.output
    report = reported(catalog, fresh["tmp"] / "report-interrupted")
    assert report["counts"]["dedup"] == total and f"{total} operations of an interrupted apply" in report["index"]
    _invoke_result(["apply", "dedup", "--backup-dir", fresh["tmp"] / "backup", "--apply"], catalog)
    pending, _, out = status(catalog)
    assert "(unfinished)" not in out and "dedup" not in pending and not planned(catalog, "dedup")


def test_status_and_plan_say_when_sanitize_findings_predate_the_settings(fresh):
    """The sanitize actions come from the newest sanitize run's rules; a stricter vdc-lake.toml
    changes nothing until `sanitize` runs again. Before, status and plan sanitize showed the old
    counts without a word; now both say which run's rules they show."""
    catalog = fresh["catalog"]
    (fresh["work"] / "vdc-lake.toml").write_text("[sanitize]\nmax_aspect_ratio = 1.2\n")
    before = viewed(catalog, VIEW_SQL["sanitize"])
    note = ("note: the sanitize actions come from sanitize run 2, which judged by other rules than the settings: "
            f"max_aspect_ratio 6.667 (settings: 1.2, {fresh['work'] / 'vdc-lake.toml'})")
    assert note in status(catalog)[2]
    assert _invoke_result(["plan", "sanitize", "--examples", 0], catalog).output.startswith(note)
    assert planned(catalog, "sanitize") == before
    _invoke_result(["sanitize"], catalog)
    assert "note: the sanitize actions" not in status(catalog)[2]
    after = assert_readers_agree(catalog, fresh["tmp"], stages=("sanitize",))["sanitize"]
    assert len(after) > len(before)  # the stricter rule found more
