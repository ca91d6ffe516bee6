"""Export: the curated view, and every format read back against it, with the originals untouched."""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from conftest import file_hash, tree_hashes
from examples.make_sample_data import make_sample_data
from vdc_lake.catalog.connection import Catalog
from vdc_lake.config.loader import Config
from vdc_lake.errors import StageError
from vdc_lake.effects.export import MANIFEST_COLUMNS, _extension, export, image_key, manifest_rows, root_labels
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
    shutil.copyfile(catalog_path, copy)
    with Catalog(copy) as catalog:
        catalog.execute("UPDATE runs SET status = 'failed' WHERE stage = 'sample'")
    rows = _curated(copy)
    assert {r["image_id"] for r in rows} == survivors
    assert all(r["sample_run"] is None for r in rows)


def test_curated_without_any_model_stage_keeps_clean_images_and_one_of_each_exact_copy(curation, tmp_path):
    catalog_path, root, manifest = curation
    copy = tmp_path / "catalog.duckdb"
    shutil.copyfile(catalog_path, copy)
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
    shutil.copyfile(catalog_path, copy)
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
    from test_hostile_catalogs import _small_tmpfs

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
