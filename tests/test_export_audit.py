"""Export under hostile use: destinations that hold the catalog or backups, files changed or gone
since the scan in every format, odd and long names, names that meet on a case-insensitive
destination, a SIGKILL mid-export then a rerun, an empty selection, hard links across filesystems.

Every test reads back what the export wrote (files, manifest.parquet, manifest.csv, export.json)
and checks it against the selection exactly. test_export.py covers the formats on the curated view.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import file_hash, tree_hashes
from test_export import _writable_copy, build_curation_catalog
from vdc_lake.catalog.connection import Catalog
from vdc_lake.errors import StageError
from vdc_lake.effects.export import MANIFEST_COLUMNS, export, image_key, manifest_rows, root_labels
from vdc_lake.stages.scan import scan

FORMATS = ["manifest", "symlink", "hardlink", "copy", "webdataset"]
REPO = Path(__file__).resolve().parent.parent
# Names a user's folders do hold: spaces, quotes, a leading dash, a backslash, a tab, a line
# break, the same word in NFC and in NFD (two files on Linux), and a name of 255 bytes (the limit).
ODD_NAMES = ["with space.jpg", "quo'te\"s.jpg", "-dash.jpg", "back\\slash.jpg", "tab\there.jpg", "line\nbreak.jpg",
             "caf\u00e9.jpg", "cafe\u0301.jpg", "\u56fe\u7247/\u6d4b\u8bd5.png", "deep/a/b/c/d/e/f.png",
             "L" * 251 + ".jpg"]


@pytest.fixture(scope="module")
def curation(tmp_path_factory) -> tuple[Path, Path, dict]:
    return build_curation_catalog(tmp_path_factory.mktemp("curation"))


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


def _read_manifest(to_dir: Path) -> list[dict]:
    """manifest.parquet, checked equal to manifest.csv (line breaks in names included)."""
    rows = pq.read_table(to_dir / "manifest.parquet").to_pylist()
    csv = pa_csv.read_csv(to_dir / "manifest.csv", parse_options=pa_csv.ParseOptions(newlines_in_values=True),
                          convert_options=pa_csv.ConvertOptions(column_types={"key": pa.string()}))
    assert csv.column("path").to_pylist() == [r["path"] for r in rows]
    assert csv.column("key").to_pylist() == [r["key"] for r in rows]
    return rows


def _check_export(to_dir: Path, fmt: str, expected: list[dict]) -> list[dict]:
    """What TO holds is exactly `expected` (the selection's manifest rows, by image_id), as `fmt`."""
    rows = _read_manifest(to_dir)
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


def file_hash_bytes(data: bytes) -> str:
    import xxhash

    return xxhash.xxh3_128_hexdigest(data)


# -- the destination -------------------------------------------------------------------------------

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
    from test_hostile_catalogs import _small_tmpfs

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
    from vdc_lake.effects.export import _place

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
                _read_manifest(to_dir)  # whole, and the same rows as manifest.parquet


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
    from vdc_lake.effects.export import _extension

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
