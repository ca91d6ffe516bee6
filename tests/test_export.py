"""Export: the curated view, and every format read back against it, with the originals untouched."""

from __future__ import annotations

import json
import os
import re
import tarfile
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from conftest import file_hash, tree_hashes
from PIL import Image
from examples.make_sample_data import make_sample_data
from tests.conftest import copy_catalog
from vdc_lake.catalog.connection import Catalog
from vdc_lake.config.loader import Config
from vdc_lake.errors import StageError
from vdc_lake.effects.export import MANIFEST_COLUMNS, export, image_key, manifest_rows, root_labels
from vdc_lake.effects.export_webdataset import _extension
from vdc_lake.stages.sanitize import sanitize
from vdc_lake.stages.scan import scan
from vdc_lake.catalog.sets import register_prediction_set, write_vectors

N_BASE = 40
FORMATS = ["manifest", "symlink", "hardlink", "copy", "webdataset"]


# -- a catalog that went through every stage -------------------------------------------------------

def _record_run(catalog: Catalog, stage: str, params: dict) -> int:
    run_id = catalog.begin_run(stage, params)
    catalog.finish_run(run_id)
    return run_id


def _fake_model_stages(catalog: Catalog, manifest: dict) -> None:
    """Stand-ins for predict / dedup report / cluster / sample, written as those stages write them.

    Rotation: rotated copies predicted at their angle (p 0.9), one base image at 90 degrees with
    p 0.6 (under the default 0.75), the rest upright. Near duplicates: resized copies at 0.05,
    recompressed at 0.15, rotated copies at 0.35 (between the apply 0.25 and report 0.5
    thresholds). Clusters: 6 leaves under 2 tops. Sample: the images whose id is not divisible by 3.
    """
    present = catalog.rows("SELECT image_id, version, rel_path FROM image_files ORDER BY image_id")
    by_path = {p: (i, v) for i, v, p in present}
    run = catalog.begin_run("predict", {"model": "fake", "kind": "rotation"})
    register_prediction_set(catalog, "rotation", kind="rotation", model="fake", class_names=["0", "90", "180", "270"],
                            preprocessing={}, run_id=run)
    probs = np.full((len(present), 4), 0.01, np.float32)
    probs[:, 0] = 0.97
    angles = {by_path[p][0]: a for p, a in manifest["rotation_ccw"].items() if p in by_path}
    unsure = by_path[manifest["clean"][1]][0]
    for row, (image_id, _, _) in enumerate(present):
        if image_id in angles:
            probs[row] = 0.03
            probs[row, angles[image_id] // 90] = 0.91
        elif image_id == unsure:
            probs[row] = [0.3, 0.6, 0.05, 0.05]
    write_vectors(catalog, "predictions", "rotation", run, np.array([p[0] for p in present]),
                  np.array([p[1] for p in present]), probs)
    catalog.finish_run(run)

    distance = {"resized_copy": 0.05, "recompressed_copy": 0.15, "rotated_copy": 0.35}
    edges = []
    for kind, d in distance.items():
        for copy in manifest[kind]:
            original = manifest["copy_of"][copy]
            if copy in by_path and original in by_path:
                (a, va), (b, vb) = sorted([by_path[copy], by_path[original]])
                edges.append((a, b, va, vb, d))
    run = _record_run(catalog, "dedup-report", {"set": "builtin", "threshold": 0.5})
    catalog.insert_arrow("dup_edges", pa.table({
        "run_id": pa.array([run] * len(edges), pa.int64()), "set_name": ["builtin"] * len(edges),
        "image_a": pa.array([e[0] for e in edges], pa.int64()), "image_b": pa.array([e[1] for e in edges], pa.int64()),
        "version_a": pa.array([e[2] for e in edges], pa.int32()),
        "version_b": pa.array([e[3] for e in edges], pa.int32()),
        "distance": pa.array([e[4] for e in edges], pa.float32())}))

    run = _record_run(catalog, "cluster", {"set": "builtin", "n_clusters": [6, 2]})
    ids = np.array([p[0] for p in present], np.int64)
    versions = np.array([p[1] for p in present], np.int32)
    leaf = (ids % 6).astype(np.int32)
    for level, labels, n, parent in ((0, leaf, 6, np.arange(6) % 2), (1, leaf % 2, 2, None)):
        catalog.insert_arrow("clusters", pa.table({
            "run_id": pa.array([run] * n, pa.int64()), "level": pa.array([level] * n, pa.int32()),
            "cluster_id": pa.array(np.arange(n, dtype=np.int32)),
            "parent_id": pa.nulls(n, pa.int32()) if parent is None else pa.array(parent.astype(np.int32)),
            "size": pa.array(np.bincount(labels, minlength=n).astype(np.int64))}))
        catalog.insert_arrow("assignments", pa.table({
            "run_id": pa.array([run] * len(ids), pa.int64()), "image_id": pa.array(ids), "version": pa.array(versions),
            "level": pa.array([level] * len(ids), pa.int32()), "cluster_id": pa.array(labels),
            "distance": pa.array((ids % 7 / 10).astype(np.float32))}))

    chosen = ids % 3 != 0
    run = _record_run(catalog, "sample", {"total": int(chosen.sum()), "cluster_run": run})
    catalog.insert_arrow("samples", pa.table({
        "run_id": pa.array([run] * int(chosen.sum()), pa.int64()),
        "image_id": pa.array(ids[chosen]), "version": pa.array(versions[chosen])}))


def build_curation_catalog(base: Path, *, model_stages: bool = True) -> tuple[Path, Path, dict]:
    """Sample data under base/data, scanned and sanitized with the defaults (and the fake model stages).

    Returns (catalog path, data root, the generator's manifest).
    """
    root = base / "data"
    manifest = make_sample_data(root, n_base=N_BASE, seed=0)
    (root / "manifest.json").unlink()
    config = Config.load(search_dir=base)
    catalog_path = base / "catalog.duckdb"
    with Catalog(catalog_path) as catalog:
        scan(catalog, [root], extensions=config.section("scan")["extensions"], workers=2, quiet=True)
        sanitize(catalog, config.section("sanitize"), workers=2, quiet=True)
        if model_stages:
            _fake_model_stages(catalog, manifest)
    return catalog_path, root, manifest


@pytest.fixture(scope="module")
def curation(tmp_path_factory) -> tuple[Path, Path, dict]:
    return build_curation_catalog(tmp_path_factory.mktemp("curation"))


def _curated(catalog_path: Path) -> list[dict]:
    with Catalog(catalog_path, read_only=True) as catalog:
        return catalog.arrow(f"SELECT {', '.join(MANIFEST_COLUMNS)} FROM curated ORDER BY image_id").to_pylist()


# -- the curated view -------------------------------------------------------------------------------

def _survivors(catalog: Catalog) -> set[int]:
    """Present images minus every delete, computed from the decision views one by one."""
    present = {r[0] for r in catalog.rows("SELECT image_id FROM image_files")}
    removed = {r[0] for r in catalog.rows("SELECT image_id FROM sanitize_actions WHERE action = 'delete'")}
    removed |= {r[0] for r in catalog.rows(
        "SELECT image_id FROM findings WHERE rule IN ('unreadable', 'broken_symlink')")}
    removed |= {r[0] for r in catalog.rows("SELECT image_id FROM dedup_actions() WHERE action = 'delete'")}
    return present - removed


def test_curated_view_applies_every_decision_and_the_newest_sample(curation, tmp_path):
    catalog_path, root, manifest = curation
    with Catalog(catalog_path, read_only=True) as catalog:
        survivors = _survivors(catalog)
        sampled = {r[0] for r in catalog.rows("SELECT image_id FROM samples")}
        sample_run = catalog.scalar("SELECT max(run_id) FROM runs WHERE stage = 'sample'")
        cluster_run = catalog.scalar("SELECT max(run_id) FROM runs WHERE stage = 'cluster'")
    rows = _curated(catalog_path)
    assert len(rows) > 20
    assert {r["image_id"] for r in rows} == survivors & sampled
    assert {r["rel_path"] for r in rows}.isdisjoint(manifest["truncated_jpeg"] + manifest["zero_byte"]
                                                    + manifest["non_image"] + manifest["tiny"])
    assert all(r["sample_run"] == sample_run for r in rows)
    assert all(r["leaf_cluster_id"] == r["image_id"] % 6 and r["top_cluster_id"] == r["image_id"] % 6 % 2
               for r in rows)
    with Catalog(catalog_path, read_only=True) as catalog:
        assert catalog.scalar("SELECT count(DISTINCT cluster_run) FROM curated") == 1
        assert catalog.scalar("SELECT any_value(cluster_run) FROM curated") == cluster_run

    # Without a finished sample run, everything that survives the decisions is curated.
    copy = tmp_path / "catalog.duckdb"
    copy_catalog(catalog_path, copy)
    with Catalog(copy) as catalog:
        catalog.execute("UPDATE runs SET status = 'failed' WHERE stage = 'sample'")
    rows = _curated(copy)
    assert {r["image_id"] for r in rows} == survivors
    assert all(r["sample_run"] is None for r in rows)


def test_curated_without_any_model_stage_keeps_clean_images_and_one_of_each_exact_copy(curation, tmp_path):
    catalog_path, root, manifest = curation
    copy = tmp_path / "catalog.duckdb"
    copy_catalog(catalog_path, copy)
    with Catalog(copy) as catalog:  # as if only scan and sanitize had run
        catalog.execute("UPDATE runs SET status = 'failed' WHERE stage IN ('dedup-report', 'cluster', 'sample')")
    rows = _curated(copy)
    paths = {r["rel_path"] for r in rows}
    assert all(r["leaf_cluster_id"] is None and r["sample_run"] is None for r in rows)
    for exact in manifest["exact_copy"]:  # exactly one of each byte-identical pair survives
        assert (exact in paths) != (manifest["copy_of"][exact] in paths)
    assert set(manifest["resized_copy"]) <= paths  # near duplicates need a dedup report first


def test_curated_leaves_out_files_that_cannot_be_read(tmp_path):
    root = tmp_path / "data"
    make_sample_data(root, n_base=2)
    (root / "gone.jpg").symlink_to(root / "no_such_file.jpg")
    config = Config.load(search_dir=tmp_path)
    with Catalog(tmp_path / "catalog.duckdb") as catalog:
        scan(catalog, [root], extensions=[".jpg"], workers=1, quiet=True)
        sanitize(catalog, config.section("sanitize"), workers=1, quiet=True)
        rule = catalog.scalar("SELECT f.rule FROM findings f JOIN images i USING (image_id) "
                              "WHERE i.rel_path = 'gone.jpg'")
        pending = catalog.scalar("SELECT count(*) FROM sanitize_actions WHERE path LIKE '%gone.jpg'")
        curated = {r[0] for r in catalog.rows("SELECT rel_path FROM curated")}
    assert rule == "broken_symlink" and pending == 0  # recorded, not an action sanitize can take
    assert "gone.jpg" not in curated and "modes/cmyk.jpg" in curated


# -- every format, read back -----------------------------------------------------------------------

def _read_manifest(to_dir: Path) -> list[dict]:
    rows = pq.read_table(to_dir / "manifest.parquet").to_pylist()
    csv_rows = pa_csv.read_csv(to_dir / "manifest.csv").to_pylist()
    assert [r["image_id"] for r in csv_rows] == [r["image_id"] for r in rows]
    assert [r["path"] for r in csv_rows] == [r["path"] for r in rows]
    return rows


def _check_tree(to_dir: Path, fmt: str, rows: list[dict]) -> None:
    exported = {p.relative_to(to_dir).as_posix() for p in to_dir.rglob("*") if p.is_file() or p.is_symlink()}
    assert exported == {r["export_path"] for r in rows} | {"manifest.parquet", "manifest.csv", "export.json"}
    for r in rows:
        target = to_dir / r["export_path"]
        assert r["export_path"] == f"{Path(r['root']).name}/{r['rel_path']}"
        if fmt == "symlink":
            assert target.is_symlink() and os.readlink(target) == r["path"]
        elif fmt == "hardlink":
            assert not target.is_symlink() and os.path.samefile(target, r["path"])
        else:
            assert not target.is_symlink() and not os.path.samefile(target, r["path"])
            assert file_hash(target) == r["content_hash"]


def _check_shards(to_dir: Path, rows: list[dict], shard_mb: float) -> None:
    shards = sorted(to_dir.glob("*.tar"))
    assert [s.name for s in shards] == [f"shard-{i:06d}.tar" for i in range(len(shards))]
    assert len(shards) > 1
    by_key = {r["key"]: r for r in rows}
    seen: dict[str, set[str]] = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = tar.getmembers()
            for m in members:
                key, ext = m.name.split(".", 1)
                data = tar.extractfile(m).read()
                seen.setdefault(key, set()).add(ext)
                row = by_key[key]
                if ext == "json":
                    assert json.loads(data) == row and row["export_path"] == shard.name
                else:
                    assert ext == Path(row["rel_path"]).suffix.lower().lstrip(".")
                    assert file_hash_bytes(data) == row["content_hash"]
        biggest = max((m.size for m in members), default=0)
        assert shard.stat().st_size <= shard_mb * 2**20 + biggest + 10 * 1024
    assert set(seen) == set(by_key) and all(len(exts) == 2 for exts in seen.values())
    assert all(key == image_key(row["image_id"]) for key, row in by_key.items())


def file_hash_bytes(data: bytes) -> str:
    import xxhash

    return xxhash.xxh3_128_hexdigest(data)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_back_as_the_curated_view(curation, tmp_path, fmt):
    catalog_path, root, _ = curation
    before = tree_hashes(root)
    to_dir = tmp_path / "export"
    with Catalog(catalog_path, read_only=True) as catalog:
        summary = export(catalog, to_dir, fmt=fmt, shard_size_mb=1.0, quiet=True)
        newest_run = catalog.scalar("SELECT max(run_id) FROM runs")
        settings = dict(catalog.rows("SELECT section || '.' || key, value FROM settings"))
    curated = _curated(catalog_path)
    rows = _read_manifest(to_dir)
    assert [{c: r[c] for c in MANIFEST_COLUMNS} for r in rows] == curated
    assert [r["key"] for r in rows] == [image_key(r["image_id"]) for r in curated]
    assert summary.images == len(curated) and summary.skipped == 0 and summary.errors == []
    record = json.loads((to_dir / "export.json").read_text())
    assert summary.record == str(to_dir / "export.json")
    assert record["summary"]["images"] == len(curated) and record["params"]["format"] == fmt
    assert record["catalog"] == str(catalog_path.resolve()) and record["catalog_run"] == newest_run
    # the decision settings the exported set was computed under, as a run's params record them
    assert record["settings"]["apply_deduplication.keep"] == settings["apply_deduplication.keep"]
    assert record["settings"]["dedup_thresholds.builtin"]["apply"] == 0.08
    if fmt == "manifest":
        assert all(r["export_path"] is None for r in rows)
        assert sorted(p.name for p in to_dir.iterdir()) == ["export.json", "manifest.csv", "manifest.parquet"]
    elif fmt == "webdataset":
        _check_shards(to_dir, rows, 1.0)
        assert summary.shards == len(list(to_dir.glob("*.tar")))
    else:
        _check_tree(to_dir, fmt, rows)
    assert tree_hashes(root) == before  # originals untouched


def test_a_view_given_as_a_query_or_macro_call_is_exported(curation, tmp_path):
    catalog_path, _, _ = curation
    with Catalog(catalog_path, read_only=True) as catalog:
        direct = manifest_rows(catalog, "curated")
        looked_up = manifest_rows(catalog, "SELECT image_id FROM curated")
        assert looked_up.to_pylist() == direct.to_pylist()  # both ways agree on every column
        summary = export(catalog, tmp_path / "dups", view="dedup_actions(threshold := 0.5)", quiet=True)
        groups = {r[0] for r in catalog.rows("SELECT image_id FROM dedup_actions(threshold := 0.5)")}
    assert summary.images == len(groups) > 0
    assert {r["image_id"] for r in _read_manifest(tmp_path / "dups")} == groups


@pytest.mark.parametrize("view, message", [
    ("runs", "--view 'runs' yields no image_id column"),
    ("no_such_view", "cannot read --view 'no_such_view'"),
])
def test_a_view_without_image_id_is_refused(curation, tmp_path, view, message):
    with Catalog(curation[0], read_only=True) as catalog, pytest.raises(StageError, match=message):
        export(catalog, tmp_path / "out", view=view)
    assert not (tmp_path / "out").exists()


def test_overwrite_replaces_an_earlier_export_and_nothing_else(curation, tmp_path):
    """A folder holding files that are not an export is refused, --overwrite or not, and keeps
    them; a finished earlier export needs --overwrite, which replaces it."""
    catalog_path, root, _ = curation
    to_dir = tmp_path / "out"
    to_dir.mkdir()
    (to_dir / "notes.txt").write_text("the user's own file")
    with Catalog(catalog_path) as catalog:
        for overwrite in (False, True):
            with pytest.raises(StageError) as err:
                export(catalog, to_dir, fmt="symlink", overwrite=overwrite)
            assert str(err.value) == (f"export destination {to_dir} is not empty (e.g. notes.txt) and holds no "
                                      "earlier export (export.json); choose an empty folder (--overwrite replaces "
                                      "only an earlier export, never other files)")
        assert sorted(p.name for p in to_dir.iterdir()) == ["notes.txt"]
        # an export.json that is not a vdc-lake record does not make the folder an export
        (to_dir / "export.json").write_text('{"something": "else"}')
        with pytest.raises(StageError, match="holds no earlier export"):
            export(catalog, to_dir, fmt="symlink", overwrite=True)
        assert (to_dir / "notes.txt").exists()

        earlier = tmp_path / "earlier"
        export(catalog, earlier, fmt="symlink", quiet=True)
        (earlier / "stale.txt").write_text("left in the earlier export")
        with pytest.raises(StageError) as err:
            export(catalog, earlier, fmt="symlink")
        assert str(err.value) == (f"export destination {earlier} holds an earlier export; choose an empty folder "
                                  "or pass --overwrite to replace it")
        assert (earlier / "stale.txt").exists()
        export(catalog, earlier, fmt="copy", overwrite=True, quiet=True)
        assert not (earlier / "stale.txt").exists() and (earlier / "manifest.parquet").exists()
        assert json.loads((earlier / "export.json").read_text())["params"]["format"] == "copy"
        with pytest.raises(StageError, match="holds catalogued images"):
            export(catalog, root, fmt="copy", overwrite=True)
        with pytest.raises(StageError, match="holds catalogued images"):
            export(catalog, root.parent, fmt="copy", overwrite=True)


def test_roots_with_the_same_name_and_files_changed_since_the_scan(tmp_path):
    roots = [tmp_path / "a" / "photos", tmp_path / "b" / "photos"]
    make_sample_data(roots[0], n_base=3)
    make_sample_data(roots[1], n_base=2, seed=1)
    with Catalog(tmp_path / "catalog.duckdb") as catalog:
        scan(catalog, roots, extensions=[".jpg"], workers=1, quiet=True)
        changed = roots[1] / "scenes" / "scene_0000.jpg"
        changed.write_bytes(changed.read_bytes() + b"\0")  # the catalog still has the old hash
        summary = export(catalog, tmp_path / "out", fmt="copy", view="image_files", quiet=True)
        n_files = catalog.scalar("SELECT count(*) FROM image_files")
    assert root_labels([str(r) for r in roots]) == {str(roots[0]): "photos", str(roots[1]): "photos-2"}
    assert summary.skipped == 1 and summary.images == n_files - 1
    assert summary.errors == [f"{changed}: changed since the last scan; run `vdc-lake scan` and export again"]
    rows = _read_manifest(tmp_path / "out")
    assert str(changed) not in {r["path"] for r in rows}
    assert {r["export_path"].split("/")[0] for r in rows} == {"photos", "photos-2"}
    assert (tmp_path / "out" / "photos-2" / "scenes" / "scene_0001.jpg").exists()
    assert not list((tmp_path / "out").rglob("*.part"))


# -- a catalog or a --view from someone else ------------------------------------------------------------

def _writable_copy(catalog_path: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "catalog.duckdb"
    copy_catalog(catalog_path, copy)
    return copy


@pytest.mark.parametrize("view, message", [
    ("SELECT image_id FROM curated; DROP TABLE findings",
     "must be exactly one SELECT statement, found 2 statements (SELECT, DROP)"),
    ("dedup_actions(threshold := 0.3)); DROP TABLE findings; SELECT (1", "--view "),
    ("curated; DROP TABLE findings", "is not a view name"),
    ("COPY (SELECT 1) TO 'stolen.csv'", "is not a view name"),
    ("curated WHERE true", "is not a view name"),
])
def test_a_view_that_is_not_one_select_is_refused_and_changes_nothing(curation, tmp_path, view, message):
    copy = _writable_copy(curation[0], tmp_path)
    with Catalog(copy) as catalog:  # even through a writer, the statement check stops it
        n_findings = catalog.scalar("SELECT count(*) FROM findings")
        with pytest.raises(StageError, match=re.escape(message)):
            export(catalog, tmp_path / "out", view=view)
    with Catalog(copy, read_only=True) as catalog:
        assert catalog.scalar("SELECT count(*) FROM findings") == n_findings
    assert not (tmp_path / "out").exists() and not (tmp_path / "stolen.csv").exists()


def test_the_export_command_reads_the_catalog_and_refuses_a_drop(curation, tmp_path, run_cli):
    copy = _writable_copy(curation[0], tmp_path)
    view = "SELECT image_id FROM curated; DROP TABLE findings"
    result = run_cli(["export", "--to", tmp_path / "out", "--view", view], copy)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output == (f"Error: --view {view!r} must be exactly one SELECT statement, found 2 statements "
                             "(SELECT, DROP); remove everything but the SELECT\n")
    with Catalog(copy, read_only=True) as catalog:
        assert catalog.scalar("SELECT count(*) FROM findings") > 0
    # A writer holding the catalog (between its batches) does not stop an export: it only reads.
    with Catalog(copy) as writer:
        writer.release()
        result = run_cli(["export", "--to", tmp_path / "out", "--format", "manifest"], copy)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "export.json").exists()


@pytest.mark.parametrize("column, value, fmt, message", [
    ("rel_path", "'../../escape.jpg'", "copy", "the catalog names 1 files outside their scanned root (e.g. image"),
    ("rel_path", "'/etc/escape.jpg'", "symlink", "the catalog names 1 files outside their scanned root"),
    ("rel_path", "'scenes/./../../escape.jpg'", "webdataset", "the catalog names 1 files outside their scanned root"),
    ("root", "root || '/../..'", "hardlink", "which is not an absolute, normalised path"),
    ("root", "'/tmp'", "copy", "the catalog names the root '/tmp', which no scan run was given"),
])
def test_an_edited_path_refuses_the_export_before_anything_is_written(curation, tmp_path, column, value, fmt,
                                                                       message):
    copy = _writable_copy(curation[0], tmp_path)
    with Catalog(copy) as catalog:
        first = catalog.scalar("SELECT min(image_id) FROM curated")
        catalog.execute(f"UPDATE images SET {column} = {value} WHERE image_id = ?", [first])
    before = sorted(p.name for p in tmp_path.iterdir())
    with Catalog(copy, read_only=True) as catalog, pytest.raises(StageError, match=re.escape(message)):
        export(catalog, tmp_path / "out" / "to", fmt=fmt, view="image_files")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no --to, no escape.jpg


def test_a_folder_link_placed_by_an_earlier_row_is_never_followed(curation, tmp_path):
    """One edited row names a folder ('scenes'), so the symlink export links TO/data/scenes to the
    original folder; a later row under it must not create anything inside the scanned root."""
    catalog_path, root, _ = curation
    copy = _writable_copy(catalog_path, tmp_path)
    with Catalog(copy) as catalog:
        a, b = [r[0] for r in catalog.rows("SELECT image_id FROM image_files ORDER BY image_id LIMIT 2")]
        catalog.execute("UPDATE images SET rel_path = 'scenes', content_hash = NULL WHERE image_id = ?", [a])
        catalog.execute("UPDATE images SET rel_path = 'scenes/made_by_export/ghost.jpg' WHERE image_id = ?", [b])
    before = sorted(str(p) for p in root.rglob("*"))
    with Catalog(copy, read_only=True) as catalog:
        summary = export(catalog, tmp_path / "out", fmt="symlink", view=f"SELECT image_id FROM image_files "
                         f"WHERE image_id IN ({a}, {b})", quiet=True)
    assert summary.skipped >= 1
    # the folder row is never linked, whichever thread gets to its row first
    assert any("scenes: not a regular file" in error for error in summary.errors), summary.errors
    placed = [os.path.join(folder, name) for folder, dirs, files in os.walk(tmp_path / "out") for name in dirs + files]
    assert not [p for p in placed if os.path.islink(p) and os.path.isdir(p)]  # no link to a folder in --to
    assert sorted(str(p) for p in root.rglob("*")) == before
    assert not (root / "scenes" / "made_by_export").exists()


def test_webdataset_member_extensions_come_only_from_safe_characters():
    assert _extension("a/b.JPG", "JPEG") == "jpg"
    assert _extension("a/noext", "PNG") == "png"
    assert _extension("a/noext", "../../evil") == "bin"  # a format from an edited catalog
    assert _extension("a/b.j/g", None) == "bin"


@pytest.mark.parametrize("fmt", ["copy", "webdataset"])
def test_a_full_destination_stops_the_export_with_one_error_and_no_half_files(curation, fmt):
    from test_catalog_damage import _small_tmpfs

    from vdc_lake.errors import DiskFullError

    with _small_tmpfs("1m") as mount, Catalog(curation[0], read_only=True) as catalog:
        with pytest.raises(DiskFullError, match=f"^no space left on {mount} \\(writing {mount}/out/"):
            export(catalog, mount / "out", fmt=fmt, shard_size_mb=0.25, quiet=True)
        assert not [p for p in mount.rglob("*") if p.name.endswith(".part")]


@pytest.mark.parametrize("fmt", ["copy", "webdataset"])
def test_a_row_without_a_content_hash_is_not_copied(curation, tmp_path, fmt):
    """An edited catalog naming a file elsewhere (a secret) with no hash to check it against:
    the export leaves it out instead of carrying it away."""
    secret_root = tmp_path / "home"
    secret_root.mkdir()
    (secret_root / "id_rsa").write_bytes(b"PRIVATE KEY")
    copy = _writable_copy(curation[0], tmp_path)
    with Catalog(copy) as catalog:
        first = catalog.scalar("SELECT min(image_id) FROM image_files")
        catalog.execute("UPDATE images SET root = ?, rel_path = 'id_rsa', content_hash = NULL WHERE image_id = ?",
                        [str(secret_root), first])
    view = f"SELECT image_id FROM image_files WHERE image_id = {first}"
    with Catalog(copy, read_only=True) as catalog, pytest.raises(StageError, match="which no scan run was given"):
        export(catalog, tmp_path / "out", fmt=fmt, view=view, quiet=True)
    with Catalog(copy) as catalog:  # a scan run edited in too: the missing hash still keeps the secret in
        _record_run(catalog, "scan", {"roots": [str(secret_root)]})
    with Catalog(copy, read_only=True) as catalog:
        summary = export(catalog, tmp_path / "out", fmt=fmt, view=f"SELECT image_id FROM image_files "
                         f"WHERE image_id = {first}", quiet=True)
    assert summary.images == 0 and summary.skipped == 1
    assert summary.errors == [f"{secret_root}/id_rsa: the catalog holds no content hash for it, so a copy cannot "
                              "be verified; run `vdc-lake scan`"]
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file() and b"PRIVATE" in p.read_bytes()]


def test_an_export_inside_or_around_a_scanned_root_is_refused(curation, tmp_path, run_cli):
    """The next scan would register the copies as images (and dedup delete the originals)."""
    catalog_path, root, _ = curation
    copy = _writable_copy(catalog_path, tmp_path)
    before = tree_hashes(root)
    real = root.resolve()
    for to, expected in [(root / "exp", f"lies inside the scanned root {real}: the next scan would register"),
                         (root / "scenes" / "exp", f"lies inside the scanned root {real}"),
                         (root.parent, "choose a folder outside every scanned root")]:
        result = run_cli(["export", "--to", to, "--format", "copy"], copy)
        assert result.exit_code == 1, (to, result.output)
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
        assert expected in result.output, result.output
        assert not (root / "exp").exists() and not (root / "scenes" / "exp").exists()
    assert tree_hashes(root) == before


# Export under hostile use: destinations that hold the catalog or backups, files changed or gone
# since the scan in every format, odd and long names, names that meet on a case-insensitive
# destination, a SIGKILL mid-export then a rerun, an empty selection, hard links across filesystems.
#
# Every test reads back what the export wrote (files, manifest.parquet, manifest.csv, export.json)
# and checks it against the selection exactly. The sections above cover the formats on the curated view.


REPO = Path(__file__).resolve().parent.parent


# Names a user's folders do hold: spaces, quotes, a leading dash, a backslash, a tab, a line
# break, the same word in NFC and in NFD (two files on Linux), and a name of 255 bytes (the limit).
ODD_NAMES = ["with space.jpg", "quo'te\"s.jpg", "-dash.jpg", "back\\slash.jpg", "tab\there.jpg", "line\nbreak.jpg",
             "caf\u00e9.jpg", "cafe\u0301.jpg", "\u56fe\u7247/\u6d4b\u8bd5.png", "deep/a/b/c/d/e/f.png",
             "L" * 251 + ".jpg"]


def _write_images(root: Path, names: list[str], seed: int = 0) -> None:
    """A distinct small image (noise, so no two share bytes) at each relative path."""
    rng = np.random.default_rng(seed)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, format="PNG" if name.endswith(".png") else "JPEG")


def _scanned(tmp_path: Path, roots: dict[str, list[str]]) -> Path:
    """A catalog of the given roots ({folder under tmp_path: relative names}), scanned."""
    paths = []
    for i, (folder, names) in enumerate(roots.items()):
        _write_images(tmp_path / folder, names, seed=i)
        paths.append(tmp_path / folder)
    catalog_path = tmp_path / "catalog.duckdb"
    with Catalog(catalog_path) as catalog:
        scan(catalog, paths, extensions=[".jpg", ".png"], workers=1, quiet=True)
    return catalog_path


def _view_rows(catalog_path: Path, view: str = "image_files") -> list[dict]:
    """The manifest rows of `view` (test_export checks them against the curated view column by column)."""
    with Catalog(catalog_path, read_only=True) as catalog:
        return manifest_rows(catalog, view).to_pylist()


def _read_manifest_any_names(to_dir: Path) -> list[dict]:
    """manifest.parquet, checked equal to manifest.csv (line breaks in names included)."""
    rows = pq.read_table(to_dir / "manifest.parquet").to_pylist()
    csv = pa_csv.read_csv(to_dir / "manifest.csv", parse_options=pa_csv.ParseOptions(newlines_in_values=True),
                          convert_options=pa_csv.ConvertOptions(column_types={"key": pa.string()}))
    assert csv.column("path").to_pylist() == [r["path"] for r in rows]
    assert csv.column("key").to_pylist() == [r["key"] for r in rows]
    return rows


def _check_export(to_dir: Path, fmt: str, expected: list[dict]) -> list[dict]:
    """What TO holds is exactly `expected` (the selection's manifest rows, by image_id), as `fmt`."""
    rows = _read_manifest_any_names(to_dir)
    assert [{c: r[c] for c in MANIFEST_COLUMNS} for r in rows] == expected
    assert [r["key"] for r in rows] == [image_key(r["image_id"]) for r in expected]
    record = json.loads((to_dir / "export.json").read_text())
    assert record["summary"]["images"] == len(expected) and record["params"]["format"] == fmt
    files = {os.path.relpath(os.path.join(d, n), to_dir) for d, _, names in os.walk(to_dir) for n in names}
    files |= {os.path.relpath(os.path.join(d, n), to_dir) for d, dirs, _ in os.walk(to_dir) for n in dirs
              if os.path.islink(os.path.join(d, n))}
    written = files - {"manifest.parquet", "manifest.csv", "export.json"}
    if fmt == "manifest":
        assert written == set() and all(r["export_path"] is None for r in rows)
    elif fmt == "webdataset":
        assert written == {r["export_path"] for r in rows}
        members: dict[str, bytes] = {}
        for shard in written:
            with tarfile.open(to_dir / shard) as tar:
                members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
        assert len(members) == 2 * len(rows)
        for r in rows:
            data = members[f"{r['key']}.{Path(r['rel_path']).suffix.lstrip('.').lower()}"]
            assert file_hash_bytes(data) == r["content_hash"]
            assert json.loads(members[f"{r['key']}.json"]) == r
    else:
        assert written == {r["export_path"] for r in rows}
        assert len({r["export_path"] for r in rows}) == len(rows)
        for r in rows:
            target = to_dir / r["export_path"]
            if fmt == "symlink":
                assert os.readlink(target) == r["path"]
            elif fmt == "hardlink":
                assert not target.is_symlink() and os.path.samefile(target, r["path"])
            else:
                assert not target.is_symlink() and not os.path.samefile(target, r["path"])
            assert file_hash(target) == r["content_hash"]
    return rows


# -- the destination (under hostile use) ---------------------------------------------------------

def test_overwrite_never_empties_a_folder_that_holds_the_catalog(curation, tmp_path, run_cli):
    """`--to .` with --overwrite, run where the catalog lives, deleted the catalog."""
    project = tmp_path / "project"
    project.mkdir()
    catalog_path = _writable_copy(curation[0], project)
    (project / "notes.txt").write_text("mine")
    before = tree_hashes(project)
    for to in (project, tmp_path):
        result = run_cli(["export", "--to", to, "--overwrite", "--format", "copy"], catalog_path)
        assert result.exit_code == 1, result.output
        assert result.output == (f"Error: export destination {to.resolve()} holds the catalog "
                                 f"{catalog_path.resolve()}; choose a folder that does not "
                                 f"(e.g. {to.resolve() / 'export'})\n"), result.output
    assert tree_hashes(project) == before
    result = run_cli(["export", "--to", project / "export", "--format", "manifest"], catalog_path)
    assert result.exit_code == 0, result.output  # a folder beside the catalog is fine


def test_an_apply_backup_folder_is_never_an_export_destination(tmp_path, run_cli):
    catalog_path = tmp_path / "catalog.duckdb"
    backups = tmp_path / "backups"
    _write_images(tmp_path / "data", ["a.jpg", "b.jpg"])
    (tmp_path / "data" / "empty.jpg").write_bytes(b"")  # sanitize deletes it; apply backs it up
    for args in (["scan", tmp_path / "data"], ["sanitize"], ["apply", "sanitize", "--backup-dir", backups, "--apply"]):
        result = run_cli(args, catalog_path)
        assert result.exit_code == 0, (args, result.output)
    saved = tree_hashes(backups)
    assert saved  # sanitize's deletions were backed up there
    for to, relation in [(backups, "contains"), (backups / "sub", "lies inside"), (tmp_path, "contains")]:
        result = run_cli(["export", "--to", to, "--overwrite", "--format", "copy"], catalog_path)
        assert result.exit_code == 1, result.output
        assert result.output.startswith(f"Error: export destination {to.resolve()} "), result.output
        if to != tmp_path:  # tmp_path holds the catalog too, which is named first
            assert f"{relation} the backup folder {backups.resolve()} of an apply run" in result.output
    assert tree_hashes(backups) == saved and not (backups / "sub").exists()


@pytest.mark.parametrize("how", ["link into a root", "path climbing into a root"])
def test_a_destination_reaching_a_root_through_a_link_or_dots_is_refused(curation, tmp_path, how):
    catalog_path, root, _ = curation
    before = tree_hashes(root)
    if how == "link into a root":
        (tmp_path / "link").symlink_to(root / "scenes")
        to = tmp_path / "link" / "out"
    else:
        to = Path(str(tmp_path / "elsewhere" / ".." / ".." / os.path.relpath(root, tmp_path.parent) / "out"))
    with Catalog(catalog_path, read_only=True) as catalog, pytest.raises(StageError, match="lies inside the scanned"):
        export(catalog, to, fmt="copy", quiet=True)
    assert tree_hashes(root) == before


def test_overwrite_removes_a_link_inside_the_destination_never_its_target(curation, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    to_dir = tmp_path / "out"
    with Catalog(curation[0], read_only=True) as catalog:
        export(catalog, to_dir, fmt="manifest", quiet=True)  # an earlier export: what --overwrite replaces
        (to_dir / "data").symlink_to(precious)  # where the tree of the root `data` goes
        (to_dir / "manifest.csv").unlink()
        (to_dir / "manifest.csv").symlink_to(precious / "thesis.txt")
        export(catalog, to_dir, fmt="copy", overwrite=True, quiet=True)
    assert (precious / "thesis.txt").read_text() == "years of work" and os.listdir(precious) == ["thesis.txt"]
    _check_export(to_dir, "copy", _view_rows(curation[0], "curated"))


def test_hardlinks_to_another_filesystem_are_refused_before_anything_is_written(curation):
    from test_catalog_damage import _small_tmpfs

    with _small_tmpfs("1m") as mount, Catalog(curation[0], read_only=True) as catalog:
        with pytest.raises(StageError, match=f"^cannot hard-link the files of {curation[1]} into {mount}/out: "
                                             "another filesystem; use --format symlink or --format copy"):
            export(catalog, mount / "out", fmt="hardlink", quiet=True)
        assert os.listdir(mount) == []  # no half tree to clear before the next try


# -- the files ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_files_changed_or_gone_since_the_scan_are_left_out_in_every_format(tmp_path, fmt):
    """The manifest, symlink and hard-link formats used to list or link them as they were scanned."""
    names = [f"im{i}.jpg" for i in range(8)]
    catalog_path = _scanned(tmp_path, {"photos": names})
    root = tmp_path / "photos"
    (root / "im1.jpg").unlink()  # gone
    with open(root / "im2.jpg", "ab") as f:  # grown
        f.write(b"\0")
    data = bytearray((root / "im3.jpg").read_bytes())  # same size, other bytes, other mtime
    data[-3] ^= 0xFF
    (root / "im3.jpg").write_bytes(bytes(data))
    os.utime(root / "im3.jpg", ns=(2, 2))  # a rewrite within the clock's tick keeps the mtime: not this one
    os.utime(root / "im4.jpg", ns=(1, 1))  # only touched: the same image
    expected = [r for r in _view_rows(catalog_path)
                if r["rel_path"] not in ("im1.jpg", "im2.jpg", "im3.jpg")]
    with Catalog(catalog_path, read_only=True) as catalog:
        summary = export(catalog, tmp_path / "out", fmt=fmt, view="image_files", shard_size_mb=0.01, quiet=True)
    assert summary.images == len(expected) == 5 and summary.skipped == 3
    assert sorted(summary.errors) == sorted([
        f"{root}/im1.jpg: the original is gone; run `vdc-lake scan` again",
        f"{root}/im2.jpg: changed since the last scan; run `vdc-lake scan` and export again",
        f"{root}/im3.jpg: changed since the last scan; run `vdc-lake scan` and export again"])
    _check_export(tmp_path / "out", fmt, expected)


def test_the_cli_names_every_skipped_file_and_does_not_guess_why(tmp_path, run_cli):
    catalog_path = _scanned(tmp_path, {"photos": ["a.jpg", "b.jpg"]})
    (tmp_path / "photos" / "a.jpg").unlink()
    result = run_cli(["export", "--to", tmp_path / "out", "--format", "symlink", "--view", "image_files"],
                     catalog_path)
    assert result.exit_code == 1
    assert result.output.splitlines()[-2:] == [
        f"  {tmp_path}/photos/a.jpg: the original is gone; run `vdc-lake scan` again",
        "Error: 1 files were skipped and left out of the manifest (the reason for each is above); fix them (a file "
        "changed or gone since the last scan: run `vdc-lake scan`) and export again"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_odd_and_longest_names_reach_every_format_intact(tmp_path, fmt):
    """Copies of a 255-byte name failed: the temp name `.NAME.part` was over the limit."""
    catalog_path = _scanned(tmp_path, {"photos": ODD_NAMES})
    expected = _view_rows(catalog_path)
    assert len(expected) == len(ODD_NAMES)
    with Catalog(catalog_path, read_only=True) as catalog:
        summary = export(catalog, tmp_path / "out", fmt=fmt, view="image_files", shard_size_mb=0.01, quiet=True)
    assert summary.errors == [] and summary.images == len(ODD_NAMES)
    rows = _check_export(tmp_path / "out", fmt, expected)
    if fmt in ("symlink", "hardlink", "copy"):
        assert {r["export_path"] for r in rows} == {f"photos/{n}" for n in ODD_NAMES}


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_empty_selection_exports_an_empty_manifest(curation, tmp_path, fmt):
    with Catalog(curation[0], read_only=True) as catalog:
        summary = export(catalog, tmp_path / "out", fmt=fmt, view="SELECT image_id FROM curated WHERE false",
                         quiet=True)
    assert (summary.images, summary.skipped, summary.shards, summary.bytes) == (0, 0, 0, 0)
    assert sorted(os.listdir(tmp_path / "out")) == ["export.json", "manifest.csv", "manifest.parquet"]
    table = pq.read_table(tmp_path / "out" / "manifest.parquet")
    assert table.num_rows == 0 and table.column_names == MANIFEST_COLUMNS + ["key", "export_path"]
    _check_export(tmp_path / "out", fmt, [])


# -- names that meet -----------------------------------------------------------------------------------

def test_roots_whose_names_differ_only_in_case_get_apart_folders(tmp_path):
    """Photos/ and photos/ are one folder on macOS or a FAT stick: the two trees would merge."""
    catalog_path = _scanned(tmp_path, {"a/Photos": ["x.jpg", "y.jpg"], "b/photos": ["x.jpg"]})
    assert root_labels([str(tmp_path / "a/Photos"), str(tmp_path / "b/photos")]) == {
        str(tmp_path / "a/Photos"): "Photos", str(tmp_path / "b/photos"): "photos-2"}
    with Catalog(catalog_path, read_only=True) as catalog:
        export(catalog, tmp_path / "out", fmt="copy", view="image_files", quiet=True)
    rows = _check_export(tmp_path / "out", "copy", _view_rows(catalog_path))
    assert sorted(r["export_path"] for r in rows) == ["Photos/x.jpg", "Photos/y.jpg", "photos-2/x.jpg"]


def test_paths_equal_but_for_case_get_their_own_names_on_a_case_insensitive_destination():
    from vdc_lake.effects.export import export_targets

    roots = pa.array(["/d/photos"] * 5)
    rel = pa.array(["IMG.jpg", "img.jpg", "img~000000000002.jpg", "caf\u00e9.jpg", "CAFE\u0301.jpg"])
    keys = pa.array([image_key(i) for i in (1, 2, 3, 4, 5)])
    assert export_targets(roots, rel, keys, ignore_case=False).to_pylist() == [
        f"photos/{r}" for r in rel.to_pylist()]
    # image 2 + its key is image 3's real name: image 2 gets its key twice
    assert export_targets(roots, rel, keys, ignore_case=True).to_pylist() == [
        "photos/IMG.jpg", "photos/img~000000000002~000000000002.jpg", "photos/img~000000000002.jpg",
        "photos/caf\u00e9.jpg", "photos/CAFE\u0301~000000000005.jpg"]


@pytest.mark.parametrize("fmt", ["symlink", "hardlink", "copy"])
def test_nothing_is_written_over_a_name_that_is_taken(tmp_path, fmt):
    """Where the destination matches names loosely, a second file must not replace the first."""
    from vdc_lake.effects.export_tree import _place

    catalog_path = _scanned(tmp_path, {"photos": ["a.jpg"]})
    row = _view_rows(catalog_path)[0]
    with Catalog(catalog_path, read_only=True) as catalog:
        row["_catalog_mtime_ns"] = catalog.scalar("SELECT mtime_ns FROM images")
    row["key"] = image_key(row["image_id"])
    to_dir = tmp_path / "out"
    (to_dir / "photos").mkdir(parents=True)
    (to_dir / "photos" / "A.jpg").write_bytes(b"the first image")
    error = _place(row, to_dir / "photos" / "A.jpg", fmt, to_dir)
    assert error is not None and "exists already" in error
    assert (to_dir / "photos" / "A.jpg").read_bytes() == b"the first image"
    assert os.listdir(to_dir / "photos") == ["A.jpg"]  # no temp file left either


# -- interrupted ---------------------------------------------------------------------------------------

_KILLER = r"""
import os, signal, sys
from pathlib import Path
catalog_path, to_dir, fmt, event, nth, root, action = sys.argv[1:8]
nth, seen = int(nth), [0]

def hook(name, args):
    if name == "open":
        path, mode, flags = str(args[0]), args[1], args[2] or 0  # open(): a mode; os.open(): flags only
        writes = any(c in mode for c in "wax+") if mode else bool(flags & (os.O_WRONLY | os.O_RDWR))
        if event == "read" and path.startswith(root) and not writes:
            pass
        elif event == "record" and "export.json" in os.path.basename(path) and writes:
            pass
        else:
            return
    elif name != event:
        return
    seen[0] += 1
    if seen[0] == nth and action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif seen[0] == nth:  # pause: say so, and go on once stdin is closed
        print("paused", flush=True)
        sys.stdin.read()

from vdc_lake.catalog.connection import Catalog
from vdc_lake.effects.export import export
sys.addaudithook(hook)
with Catalog(catalog_path, read_only=True) as catalog:
    export(catalog, to_dir, fmt=fmt, shard_size_mb=0.5, quiet=True)
print("finished without being killed")
"""


def _check_nothing_looks_complete_that_is_not(to_dir: Path, curated: list[dict]) -> None:
    """After a kill: no export.json (or a whole one); every file under its final name is whole."""
    record = to_dir / "export.json"
    if record.exists():
        json.loads(record.read_text())["summary"]  # a whole record, not a truncated one
    by_target = {f"data/{r['rel_path']}": r["content_hash"] for r in curated}
    for folder, dirs, names in os.walk(to_dir):
        for name in names:
            path = Path(folder) / name
            rel = path.relative_to(to_dir).as_posix()
            if name.startswith("."):
                continue  # a temp name: never taken for a finished file
            if rel in by_target and not path.is_symlink():
                assert file_hash(path) == by_target[rel], rel
            elif rel.endswith(".tar"):
                with tarfile.open(path) as tar:
                    assert all(tar.extractfile(m).read() is not None for m in tar.getmembers())
            elif rel == "manifest.parquet":
                pq.read_table(path)
            elif rel == "manifest.csv":
                _read_manifest_any_names(to_dir)  # whole, and the same rows as manifest.parquet


@pytest.mark.parametrize("fmt, event, nth", [
    ("copy", "read", 20),            # mid-copy: other threads hold half copies
    ("webdataset", "read", 25),      # mid-shard
    ("symlink", "os.symlink", 10),
    ("copy", "record", 1),           # everything written, the record being written
    ("manifest", "record", 1),
])
def test_a_killed_export_leaves_nothing_that_looks_complete_and_the_rerun_finishes(curation, tmp_path, fmt, event,
                                                                                   nth):
    catalog_path, root, _ = curation
    to_dir = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", _KILLER, str(catalog_path), str(to_dir), fmt, event, str(nth),
                           str(root), "kill"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stdout + done.stderr
    curated = _view_rows(catalog_path, "curated")
    _check_nothing_looks_complete_that_is_not(to_dir, curated)
    assert not (to_dir / "export.json").exists()

    with Catalog(catalog_path, read_only=True) as catalog:  # the same export again, no --overwrite
        summary = export(catalog, to_dir, fmt=fmt, shard_size_mb=0.5, quiet=True)
    assert summary.notes == [f"{to_dir} held an export that was interrupted (no export.json); it was removed "
                             "and the export started again"]
    _check_export(to_dir, fmt, curated)
    assert not [n for _, _, names in os.walk(to_dir) for n in names if n.startswith(".")]

    with Catalog(catalog_path, read_only=True) as catalog, pytest.raises(StageError, match="holds an earlier export"):
        export(catalog, to_dir, fmt=fmt, quiet=True)  # a finished export is replaced only with --overwrite


def test_an_export_running_into_the_folder_is_never_taken_for_an_interrupted_one(curation, tmp_path):
    """The rerun empties an interrupted export's folder; one still running must be left alone."""
    catalog_path, root, _ = curation
    to_dir = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    first = subprocess.Popen([sys.executable, "-c", _KILLER, str(catalog_path), str(to_dir), "copy", "read", "10",
                              str(root), "pause"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "paused\n"
        placed = tree_hashes(to_dir)
        for overwrite in (False, True):
            with Catalog(catalog_path, read_only=True) as catalog, pytest.raises(
                    StageError, match=f"^export destination {to_dir} is being written by another export "
                                      f"\\(PID {first.pid}\\); wait for it to finish or choose another folder$"):
                export(catalog, to_dir, fmt="copy", overwrite=overwrite, quiet=True)
        # (its other threads go on copying meanwhile: what was there is still there)
        finished = {k: v for k, v in placed.items() if not os.path.basename(k).startswith(".vdc-")}
        assert finished.items() <= tree_hashes(to_dir).items()
        assert (to_dir / ".vdc-export-running").exists()
    finally:
        first.stdin.close()
        assert first.wait(timeout=300) == 0
    assert first.stdout.read() == "finished without being killed\n"
    _check_export(to_dir, "copy", _view_rows(catalog_path, "curated"))


@pytest.mark.parametrize("fmt", ["manifest", "copy", "webdataset"])  # symlink, hardlink: manifest's check
def test_a_named_pipe_in_a_files_place_is_refused_without_hanging(tmp_path, fmt):
    """Opening a FIFO for reading blocks until a writer comes: the WebDataset export hung for good."""
    catalog_path = _scanned(tmp_path, {"photos": ["a.jpg", "b.jpg"]})
    pipe = tmp_path / "photos" / "b.jpg"
    pipe.unlink()
    os.mkfifo(pipe)
    script = ("import sys, json\nfrom vdc_lake.catalog.connection import Catalog\nfrom vdc_lake.effects.export import export\n"
              "with Catalog(sys.argv[1], read_only=True) as c:\n"
              "    s = export(c, sys.argv[2], fmt=sys.argv[3], view='image_files', quiet=True)\n"
              "print(json.dumps([s.images, s.errors]))\n")
    done = subprocess.run([sys.executable, "-c", script, str(catalog_path), str(tmp_path / "out"), fmt],
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [1, [f"{pipe}: not a regular file, so it is not exported (check the "
                                           "catalog's images row)"]]
    _check_export(tmp_path / "out", fmt, [r for r in _view_rows(catalog_path) if r["rel_path"] == "a.jpg"])


@pytest.mark.parametrize("fmt", ["symlink", "manifest"])
def test_a_view_cannot_name_the_file_to_export(curation, tmp_path, fmt):
    """A view with every manifest column was taken as it was: its `path` (or a `curated` view edited
    in a catalog from someone else) could point the export at any file, say a key outside the roots."""
    secret = tmp_path / "home" / ".ssh" / "id_rsa"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(b"PRIVATE KEY")
    view = f"SELECT * REPLACE ('{secret}' AS path, 11 AS size_bytes) FROM curated"
    with Catalog(curation[0], read_only=True) as catalog:
        summary = export(catalog, tmp_path / "out", fmt=fmt, view=view, quiet=True)
    assert summary.errors == []
    rows = _check_export(tmp_path / "out", fmt, _view_rows(curation[0], "curated"))
    assert str(secret) not in {r["path"] for r in rows}
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_symlink() and os.readlink(p) == str(secret)]


def test_an_edited_image_files_view_cannot_name_the_file_to_export(curation, tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"PRIVATE")
    copy = _writable_copy(curation[0], tmp_path)
    with Catalog(copy) as catalog:
        first = catalog.scalar("SELECT min(image_id) FROM image_files")
        sql = catalog.scalar("SELECT sql FROM duckdb_views() WHERE view_name = 'image_files'")
        catalog.execute(sql.replace("CREATE VIEW", "CREATE OR REPLACE VIEW").replace(
            "((root || '/') || rel_path) AS path", f"CASE WHEN image_id = {first} THEN '{secret}' "
                                                   "ELSE root || '/' || rel_path END AS path"))
    # A reader queries the installed package's image_files, never the edited one (vdc_lake.catalog.connection):
    # the export is the one of the unedited catalog.
    with Catalog(copy, read_only=True) as catalog:
        assert catalog.scalar(f"SELECT path FROM image_files WHERE image_id = {first}") != str(secret)
        for fmt in ("symlink", "manifest"):
            export(catalog, tmp_path / fmt, fmt=fmt, view="image_files", quiet=True)
            rows = _check_export(tmp_path / fmt, fmt, _view_rows(curation[0]))
            assert str(secret) not in {r["path"] for r in rows}


def test_a_json_file_never_takes_the_name_of_its_samples_record():
    from vdc_lake.effects.export_webdataset import _extension

    assert _extension("notes/x.json", "JSON") == "bin" and _extension("x.JSON", None) == "bin"
    assert _extension("x.json", "PNG") == "png"


def test_a_copy_drops_set_user_id_bits(tmp_path):
    catalog_path = _scanned(tmp_path, {"photos": ["a.jpg", "b.jpg"]})
    os.chmod(tmp_path / "photos" / "a.jpg", 0o4755)
    os.utime(tmp_path / "photos" / "a.jpg", ns=(1, 1))
    with Catalog(catalog_path, read_only=True) as catalog:
        export(catalog, tmp_path / "out", fmt="copy", view="image_files", quiet=True)
    _check_export(tmp_path / "out", "copy", _view_rows(catalog_path))
    assert os.stat(tmp_path / "out" / "photos" / "a.jpg").st_mode & 0o7777 == 0o755
    assert os.stat(tmp_path / "out" / "photos" / "a.jpg").st_mtime_ns == 1  # the rest of its stat is kept
