"""Overrides (issue 14): `vdc-lake override keep|drop|import|list|clear`, honoured by every
decision view, `plan`, `apply`, `status`, `curated`, `export` and `sample`; an override lapses
when the file changes outside vdc-lake but survives apply's own rewrites."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vdc_lake.effects.apply import make_plan
from vdc_lake.catalog.connection import Catalog
from vdc_lake.config.loader import Config
from vdc_lake.review.decisions import decision_query

# name -> (width, height); copies of a.png are written as b.png and c.png (exact duplicates)
SIZES = {"a.png": (120, 100), "d.png": (110, 100), "e.png": (100, 100), "small.png": (40, 40),
         "wide.png": (160, 100)}


def _ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def _error(result) -> str:
    """The one `Error:` line of a failed command (no traceback)."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def _noise(path, size, seed) -> None:
    w, h = size
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def lake(tmp_path, run_cli):
    """data/ with a.png and its exact copies b.png, c.png, clean d.png, e.png, a too-small
    small.png and wide.png; scanned and sanitized. Returns (catalog, data root, {name: image_id})."""
    data = tmp_path / "data"
    data.mkdir()
    for seed, (name, size) in enumerate(SIZES.items()):
        _noise(data / name, size, seed)
    shutil.copyfile(data / "a.png", data / "b.png")
    shutil.copyfile(data / "a.png", data / "c.png")
    catalog = tmp_path / "catalog.duckdb"
    _ok(run_cli(["scan", data], catalog))
    _ok(run_cli(["sanitize", "--max-width", 150, "--max-pixels", 5_000_000], catalog))
    with Catalog(catalog, read_only=True) as c:
        ids = dict(c.rows("SELECT rel_path, image_id FROM images"))
    return catalog, data, ids


def _rows(catalog, sql, params=None) -> list[tuple]:
    with Catalog(catalog, read_only=True) as c:
        return c.rows(sql, params)


def _names(catalog, sql, params=None) -> set[str]:
    """rel_paths of the image_ids the query returns."""
    return {r[0] for r in _rows(catalog, f"SELECT i.rel_path FROM ({sql}) q JOIN images i USING (image_id)", params)}


def _planned(catalog, stage: str) -> dict[str, str]:
    """{rel_path: reason} of what `plan STAGE` / `apply STAGE` would delete."""
    with Catalog(catalog, read_only=True) as c:
        sql, params, options = decision_query(stage, Config.bundled())
        ops = make_plan(c, stage, sql, params, options).ops.to_pylist()
    return {r["rel_path"]: r["reason"] for r in ops if r["action"] == "delete"}


def _cluster(catalog) -> None:
    """A finished two-level cluster run over every present image (leaf = id % 4, top = leaf % 2)."""
    with Catalog(catalog) as c:
        ids, versions = map(np.array, zip(*c.rows("SELECT image_id, version FROM image_files ORDER BY image_id")))
        run = c.begin_run("cluster", {"set": "builtin", "n_clusters": [4, 2]})
        leaf = (ids % 4).astype(np.int32)
        for level, labels, n, parent in ((0, leaf, 4, np.arange(4) % 2), (1, leaf % 2, 2, None)):
            c.insert_arrow("clusters", pa.table({
                "run_id": pa.array([run] * n, pa.int64()), "level": pa.array([level] * n, pa.int32()),
                "cluster_id": pa.array(np.arange(n, dtype=np.int32)),
                "parent_id": pa.nulls(n, pa.int32()) if parent is None else pa.array(parent.astype(np.int32)),
                "size": pa.array(np.bincount(labels, minlength=n).astype(np.int64))}))
            c.insert_arrow("assignments", pa.table({
                "run_id": pa.array([run] * len(ids), pa.int64()), "image_id": pa.array(ids.astype(np.int64)),
                "version": pa.array(versions.astype(np.int32)), "level": pa.array([level] * len(ids), pa.int32()),
                "cluster_id": pa.array(labels), "distance": pa.array(np.zeros(len(ids), np.float32))}))
        c.finish_run(run)


def test_keep_and_drop_through_plan_apply_status_curated_and_export(lake, run_cli, tmp_path):
    catalog, data, ids = lake
    # Exact copies: a.png is kept (the path breaks the tie), b and c go.
    assert set(_planned(catalog, "dedup")) == {"b.png", "c.png"}

    out = _ok(run_cli(["override", "keep", "c.png", "--reason", "the one I labelled"], catalog))
    assert out.startswith("override run ")
    # c.png is kept and becomes its group's keeper; the other copies still go.
    planned = _planned(catalog, "dedup")
    assert set(planned) == {"a.png", "b.png"}
    assert f"(image {ids['c.png']}, kept by override)" in planned["a.png"]
    kept = _rows(catalog, "SELECT action, reason FROM dedup_actions() WHERE image_id = ?", [ids["c.png"]])
    assert kept == [("keep", kept[0][1])] and kept[0][1].startswith("kept by override: the one I labelled")

    _ok(run_cli(["override", "drop", data / "d.png", "--reason", "blurry"], catalog))
    planned = _planned(catalog, "override")
    assert set(planned) == {"d.png"} and planned["d.png"].startswith("dropped by override: blurry")
    assert _names(catalog, "SELECT image_id FROM curated") == {"c.png", "e.png", "wide.png"}  # small: sanitize
    status = _ok(run_cli(["status"], catalog))
    assert "override  delete  1" in status and "overrides in force: 1 drop, 1 keep" in status

    # apply dedup leaves the kept copy; apply override deletes the dropped image.
    backup = tmp_path / "backup"
    _ok(run_cli(["apply", "dedup", "--backup-dir", backup, "--apply"], catalog))
    _ok(run_cli(["apply", "override", "--backup-dir", backup, "--apply"], catalog))
    assert sorted(p.name for p in data.iterdir()) == ["c.png", "e.png", "small.png", "wide.png"]
    assert _names(catalog, "SELECT image_id FROM curated") == {"c.png", "e.png", "wide.png"}
    assert _rows(catalog, "SELECT j.action, j.state FROM journal j WHERE j.image_id = ?", [ids["d.png"]]) == [
        ("delete", "done")]

    out = tmp_path / "out"
    _ok(run_cli(["export", "-o", out, "--format", "manifest"], catalog))
    assert set(pq.read_table(out / "manifest.parquet").column("rel_path").to_pylist()) == {"c.png", "e.png", "wide.png"}

    listed = _ok(run_cli(["override", "list"], catalog)).splitlines()
    assert any(line.startswith(f"{ids['c.png']} ") and "in force" in line for line in listed)
    assert any(line.startswith(f"{ids['d.png']} ") and "file gone" in line for line in listed)


def test_kept_images_leave_sanitize_example_score_and_sample_deletes(lake, run_cli):
    catalog, data, ids = lake
    assert set(_planned(catalog, "sanitize")) == {"small.png"}
    with Catalog(catalog) as c:  # an example filter and a score run, as those stages write them
        run = c.begin_run("filter-examples", {"set": "builtin"})
        for name in ("d.png", "e.png"):
            c.execute("INSERT INTO example_distances VALUES (?, 'builtin', ?, 1, 0.01, 'cat.jpg')", [run, ids[name]])
        c.finish_run(run)
        run = c.begin_run("score", {"name": "quality"})
        for name in ("d.png", "e.png"):
            c.execute("INSERT INTO scores VALUES (?, 'quality', ?, 1, 0.1)", [run, ids[name]])
        c.finish_run(run)
    _ok(run_cli(["override", "keep", "small.png", ids["e.png"]], catalog))
    (run,) = _rows(catalog, "SELECT run_id FROM runs WHERE stage = 'override'")[0]

    assert _planned(catalog, "sanitize") == {}
    assert _names(catalog, "SELECT image_id FROM example_actions() WHERE action = 'delete'") == {"d.png"}
    assert _names(catalog, "SELECT image_id FROM score_actions('quality', min_score := 0.5) "
                           "WHERE action = 'delete'") == {"d.png"}
    reason = _rows(catalog, "SELECT reason FROM example_actions() WHERE image_id = ?", [ids["e.png"]])[0][0]
    assert reason.endswith(f"; kept by override: no reason given (override run {run})")
    survivors = _names(catalog, "SELECT image_id FROM surviving_images")
    assert {"small.png", "e.png"} <= survivors and "d.png" not in survivors

    # Sampling: the kept images count toward the total and are always selected.
    _cluster(catalog)
    _ok(run_cli(["sample", "--total", 3], catalog))
    sampled = _names(catalog, "SELECT image_id FROM sampled_images")
    assert len(sampled) == 3 and {"small.png", "e.png"} <= sampled
    assert _names(catalog, "SELECT image_id FROM curated") == sampled
    # One kept after the sampling run is kept all the same: not deleted by `apply sample`, curated.
    (late,) = {"a.png", "wide.png"} - sampled
    _ok(run_cli(["override", "keep", late], catalog))
    assert late not in _planned(catalog, "sample")
    assert _names(catalog, "SELECT image_id FROM curated") == sampled | {late}
    assert "3 images are kept by override, more than --total 2" in _error(run_cli(["sample", "--total", 2], catalog))


def test_csv_import_records_every_row_or_nothing(lake, run_cli, tmp_path):
    catalog, data, ids = lake
    good = tmp_path / "good.csv"
    good.write_text("image,action,reason\n"
                    f"{ids['b.png']},keep,labelled\n"
                    "c.png,drop,\n"
                    "\n"
                    f"{data / 'e.png'}, DROP ,\"soft, blurry\"\n"
                    f"{ids['b.png']},keep,labelled twice\n", encoding="utf-8")
    out = _ok(run_cli(["override", "import", good], catalog))
    assert "3 images from" in out and "1 kept, 2 dropped" in out
    rows = _rows(catalog, "SELECT i.rel_path, o.action, o.reason FROM overrides o JOIN images i USING (image_id) "
                          "ORDER BY 1")
    assert rows == [("b.png", "keep", "labelled twice"), ("c.png", "drop", None), ("e.png", "drop", "soft, blurry")]
    assert set(_planned(catalog, "override")) == {"c.png", "e.png"}
    assert _rows(catalog, "SELECT count(*) FROM runs WHERE stage = 'override' AND status = 'done'") == [(1,)]

    cases = {
        "image,action\na.png,delete\n,keep\n": "2 rows are not valid: line 2: action 'delete', line 3: no image",
        "image,action\na.png,keep\nnope.png,drop\n": "1 of 2 named images are not among the catalog's present "
                                                     "images: line 3: 'nope.png'",
        "image,action\na.png,keep\n" + f"{ids['a.png']},drop\n": "1 images are both kept and dropped: "
                                                                 "line 2: 'a.png' and line 3:",
        "name,verdict\na.png,keep\n": "the header row lacks the column(s) image, action",
    }
    for text, fragment in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text, encoding="utf-8")
        assert fragment in _error(run_cli(["override", "import", bad], catalog)), text
    assert _rows(catalog, "SELECT count(*) FROM overrides") == [(3,)]  # nothing more recorded


def test_unknown_or_ambiguous_images_are_one_error_and_record_nothing(lake, run_cli, tmp_path):
    catalog, data, ids = lake
    line = _error(run_cli(["override", "keep", "a.png", "nope.png", "999", tmp_path / "x.png"], catalog))
    assert line.startswith("Error: 3 of 4 named images are not among the catalog's present images: "
                           f"'nope.png', '999', '{tmp_path / 'x.png'}'; name an image by its image_id")
    other = tmp_path / "other"
    other.mkdir()
    shutil.copyfile(data / "d.png", other / "a.png")
    _ok(run_cli(["scan", data, other], catalog))
    line = _error(run_cli(["override", "drop", "a.png"], catalog))
    assert "1 names match several images: 'a.png' (2 images:" in line and "use the absolute path" in line
    assert _rows(catalog, "SELECT count(*) FROM overrides") == [(0,)]
    assert _rows(catalog, "SELECT count(*) FROM runs WHERE stage = 'override'") == [(0,)]
    _ok(run_cli(["override", "drop", other / "a.png"], catalog))  # the absolute path names one
    assert set(_planned(catalog, "override")) == {"a.png"}
    assert _names(catalog, "SELECT image_id FROM override_actions") == {"a.png"}
    assert _rows(catalog, "SELECT path FROM override_actions") == [(os.path.realpath(other / "a.png"),)]


def test_an_override_lapses_when_the_file_changes_but_not_when_apply_rewrites_it(lake, run_cli, tmp_path):
    catalog, data, ids = lake
    _ok(run_cli(["override", "drop", "d.png", "--reason", "blurry"], catalog))
    _ok(run_cli(["override", "keep", "wide.png"], catalog))
    _noise(data / "d.png", (110, 100), seed=99)  # the user replaced the file: not what they judged
    _ok(run_cli(["scan", data], catalog))
    assert _planned(catalog, "override") == {}
    assert "d.png" in _names(catalog, "SELECT image_id FROM curated")
    listed = _ok(run_cli(["override", "list"], catalog))
    assert "lapsed: the file changed since" in listed

    # wide.png: sanitize found it wider than --max-width 150; apply's resize makes version 2 from
    # the judged version 1, so the keep still holds. The resize decodes under the sanitize run's
    # pixel limit, not that of a newer run that failed.
    with Catalog(catalog) as c:
        run = c.begin_run("sanitize", {"max_pixels": 6_000_000})
        c.finish_run(run, status="failed", error="interrupted")
    options = decision_query("sanitize", Config.bundled())[2]
    assert options["max_pixels"] == Config.bundled().section("sanitize")["max_pixels"]
    _ok(run_cli(["apply", "sanitize", "--backup-dir", tmp_path / "backup", "--apply"], catalog))
    params = _rows(catalog, "SELECT params FROM journal WHERE image_id = ? AND action = 'resize'", [ids["wide.png"]])
    assert json.loads(params[0][0])["max_pixels"] == 5_000_000
    assert Image.open(data / "wide.png").width == 150
    assert _rows(catalog, "SELECT version, override, judged_version FROM override_actions") == [(2, "keep", 1)]

    # clear ends it: the decisions judge the image again; the history stays
    out = _ok(run_cli(["override", "clear", "wide.png", "e.png"], catalog))
    assert "1 overrides cleared; 1 of the images named had none" in out
    assert _rows(catalog, "SELECT count(*) FROM override_actions") == [(0,)]
    assert _rows(catalog, "SELECT action FROM overrides WHERE image_id = ? ORDER BY run_id", [ids["wide.png"]]) == [
        ("keep",), ("clear",)]
    assert "pass --all" in _error(run_cli(["override", "clear"], catalog))
    assert _ok(run_cli(["override", "clear", "--all"], catalog)).endswith("1 overrides cleared\n")  # the lapsed drop
    assert _ok(run_cli(["override", "list"], catalog)) == "no overrides\n"


def test_a_dropped_keeper_hands_its_group_to_the_next_copy(lake, run_cli):
    catalog, data, ids = lake
    _ok(run_cli(["override", "drop", "a.png"], catalog))
    planned = _planned(catalog, "dedup")
    assert set(planned) == {"a.png", "c.png"}  # b.png keeps the group; a.png goes both ways
    assert f"(image {ids['b.png']}, kept by largest-resolution)" in planned["c.png"]
    assert set(_planned(catalog, "override")) == {"a.png"}
    assert _names(catalog, "SELECT image_id FROM curated") == {"b.png", "d.png", "e.png", "wide.png"}


def test_a_file_missing_when_sanitize_read_it_is_not_curated_even_when_kept(lake, run_cli):
    catalog, data, ids = lake
    with Catalog(catalog) as c:  # what sanitize records for a file gone between scan and decode
        run = c.scalar("SELECT max(run_id) FROM sanitize_checks")
        c.execute("INSERT INTO findings VALUES (?, ?, 1, 'missing', 'the file is gone (ENOENT)', 'none')",
                  [run, ids["e.png"]])
    _ok(run_cli(["override", "keep", "e.png"], catalog))
    assert "e.png" not in _names(catalog, "SELECT image_id FROM curated")
    assert "e.png" not in _planned(catalog, "sanitize")
