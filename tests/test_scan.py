"""Scan: facts per file, and incremental re-scans that read only what changed."""

from __future__ import annotations

import os
import shutil

import pytest
from PIL import Image

from tests import test_bad_inputs
from tests.conftest import catalog_rows, default_config, file_hash, image_rows, noise_jpeg, ok_output
from tests.test_bad_inputs import _cli_as_user
from vdc_lake.stages import scan as scan_module
from vdc_lake.catalog.connection import Catalog
from vdc_lake.errors import StageError
from vdc_lake.stages.scan import scan


def _scan(catalog_path, root, workers=1):
    extensions = default_config(catalog_path.parent).values["scan"]["extensions"]
    with Catalog(catalog_path) as catalog:
        return scan(catalog, [root], extensions=extensions, workers=workers, quiet=True)


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Paths the scanner opens (in-process, so scans here use workers=1)."""
    opened: list[str] = []
    real = scan_module.inspect_header

    def spy(path):
        opened.append(path)
        return real(path)

    monkeypatch.setattr(scan_module, "inspect_header", spy)
    return opened


def test_first_scan_records_facts_of_every_file(sample_tree, catalog_path):
    summary = _scan(catalog_path, sample_tree.root)
    files = sample_tree.all_files()
    assert (summary.listed, summary.new, summary.changed, summary.unchanged, summary.gone) == (
        len(files), len(files), 0, 0, 0)
    assert summary.errors == 3  # empty.jpg, notes.jpg, page.png
    rows = image_rows(catalog_path)
    assert sorted(rows) == files
    for rel, row in rows.items():
        st = os.stat(sample_tree.path(rel))
        assert (row["size_bytes"], row["mtime_ns"]) == (st.st_size, st.st_mtime_ns), rel
        assert row["content_hash"] == file_hash(sample_tree.path(rel)), rel
        assert (row["version"], row["present"], row["first_run"], row["updated_run"]) == (1, True, 1, 1)
        assert row["root"] == str(sample_tree.root.resolve())
    for rel in sample_tree.kind("clean")[:6]:
        with Image.open(sample_tree.path(rel)) as img:
            assert (rows[rel]["width"], rows[rel]["height"], rows[rel]["format"], rows[rel]["mode"]) == (
                img.width, img.height, img.format, img.mode)
        assert rows[rel]["header_error"] is None
    expect = {
        "sizes/huge_3600x1400.jpg": dict(width=3600, height=1400, format="JPEG", mode="RGB", n_frames=1),
        "modes/cmyk.jpg": dict(format="JPEG", mode="CMYK"),
        "modes/depth16.png": dict(format="PNG", mode="I;16"),
        "modes/palette_alpha.png": dict(mode="P", has_transparency=True),
        "modes/anim.gif": dict(format="GIF", n_frames=3),
        "modes/anim.webp": dict(format="WEBP", n_frames=3),
        "modes/exif_orientation6.jpg": dict(width=420, height=560, exif_orientation=6),
        "broken/bomb.png": dict(width=15000, height=15000, format="PNG", mode="1"),
        "broken/empty.jpg": dict(size_bytes=0, header_error="zero_byte: the file is empty (0 bytes)"),
    }
    for rel, facts in expect.items():
        assert {k: rows[rel][k] for k in facts} == facts, rel
    assert rows["scenes/scene_0000.jpg"]["exif_orientation"] is None


def test_rescan_reads_only_new_and_changed_files(sample_tree, catalog_path, reads):
    _scan(catalog_path, sample_tree.root)
    before = image_rows(catalog_path)
    reads.clear()
    root = sample_tree.root
    new, changed, touched, gone = ("scenes/new_one.jpg", "scenes/scene_0001.jpg", "scenes/scene_0002.jpg",
                                   "scenes/scene_0003.jpg")
    shutil.copy(root / "scenes/scene_0004.jpg", root / new)
    with Image.open(root / changed) as img:
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / changed, "JPEG", quality=80)
    st = os.stat(root / touched)
    os.utime(root / touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    os.unlink(root / gone)

    summary = _scan(catalog_path, root)

    assert sorted(os.path.relpath(p, root) for p in reads) == sorted([new, changed, touched])
    assert (summary.new, summary.changed, summary.touched, summary.gone) == (1, 1, 1, 1)
    assert summary.unchanged == len(before) - 3  # all but changed, touched and gone
    after = image_rows(catalog_path)
    run = summary.run_id
    assert after[new]["version"] == 1 and after[new]["first_run"] == run
    assert after[new]["content_hash"] == before["scenes/scene_0004.jpg"]["content_hash"]
    assert after[changed]["version"] == 2 and after[changed]["updated_run"] == run
    assert after[changed]["content_hash"] == file_hash(root / changed) != before[changed]["content_hash"]
    assert after[changed]["image_id"] == before[changed]["image_id"]
    assert after[touched]["version"] == 1 and after[touched]["updated_run"] == 1
    assert after[touched]["mtime_ns"] == st.st_mtime_ns + 5_000_000_000
    assert after[gone]["present"] is False and after[gone]["version"] == 1
    for rel in set(before) - {changed, touched, gone}:
        assert after[rel] == before[rel], rel  # unchanged files: not a single fact rewritten


def test_unchanged_rescan_reads_nothing_and_a_returning_file_keeps_its_version(sample_tree, catalog_path, reads):
    _scan(catalog_path, sample_tree.root)
    before = image_rows(catalog_path)
    reads.clear()
    summary = _scan(catalog_path, sample_tree.root)
    assert reads == []
    assert (summary.unchanged, summary.new, summary.changed, summary.gone) == (len(before), 0, 0, 0)
    assert image_rows(catalog_path) == before

    rel = "scenes/scene_0005.jpg"
    stash = sample_tree.root.parent / "stash.jpg"
    os.rename(sample_tree.path(rel), stash)
    assert _scan(catalog_path, sample_tree.root).gone == 1
    os.rename(stash, sample_tree.path(rel))
    back = _scan(catalog_path, sample_tree.root)
    assert (back.new, back.changed, back.touched) == (0, 0, 1)
    assert image_rows(catalog_path)[rel] == before[rel]


def test_parallel_scan_records_the_same_facts(sample_tree, tmp_path):
    assert len(sample_tree.all_files()) > scan_module.map_ordered.__globals__["INLINE_BELOW"]
    _scan(tmp_path / "serial.duckdb", sample_tree.root, workers=1)
    _scan(tmp_path / "parallel.duckdb", sample_tree.root, workers=2)
    assert image_rows(tmp_path / "serial.duckdb") == image_rows(tmp_path / "parallel.duckdb")


def test_symlinked_folders_are_walked_once(sample_tree, catalog_path):
    os.symlink("..", sample_tree.root / "scenes" / "loop")  # a link to an ancestor
    os.symlink(sample_tree.root / "modes", sample_tree.root / "modes_link")  # a second way into modes/
    summary = _scan(catalog_path, sample_tree.root)
    assert summary.listed == len(sample_tree.all_files())
    paths = list(image_rows(catalog_path))
    assert not [p for p in paths if "/loop/" in p]
    modes = [p for p in sample_tree.all_files() if p.startswith("modes/")]
    assert sorted(p for p in paths if p.startswith(("modes/", "modes_link/"))) == modes  # the real path wins
    with Catalog(catalog_path, read_only=True) as catalog:
        findings = catalog.rows("SELECT rule, detail, action FROM findings WHERE run_id = ? ORDER BY rule",
                                [summary.run_id])
    root = sample_tree.root.resolve()
    assert findings == [
        ("duplicate_folder", f"{root}/modes_link: the same folder as {root}/modes, listed there only", "none"),
        ("symlink_loop", f"{root}/scenes/loop: the same folder as {root}, listed there only", "none"),
    ]
    assert summary.problems == 2


def test_scan_root_must_be_a_folder(tmp_path, catalog_path):
    with pytest.raises(StageError) as err:
        _scan(catalog_path, tmp_path / "missing")
    assert str(err.value) == f"scan root {tmp_path / 'missing'} is not a directory; pass folders that hold images"


def _noise(path, seed: int) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (120, 130, 3), dtype=np.uint8)).save(path, quality=90)


def test_overlapping_roots_never_register_a_file_twice(tmp_path, catalog_path, run_cli):
    """scan data/img, then data: data takes data/img's images over (same image ids), so dedup
    never plans a file as a duplicate of itself; a root inside a scanned root is refused."""
    data = tmp_path / "data"
    for i, rel in enumerate(["img/a.jpg", "img/b.jpg", "img/sub/c.jpg", "other/d.jpg"]):
        _noise(data / rel, i)
    shutil.copy2(data / "img" / "a.jpg", data / "other" / "a_copy.jpg")
    assert run_cli(["scan", data / "img"], catalog_path).exit_code == 0
    before = {rel: row["image_id"] for rel, row in image_rows(catalog_path).items()}
    result = run_cli(["scan", data / "img" / "sub"], catalog_path)
    root = (data / "img").resolve()
    assert result.exit_code == 1
    assert result.output == f"Error: {root / 'sub'} is inside the scanned root {root}; scan {root} instead\n"
    result = run_cli(["scan", data, data / "img"], catalog_path)
    assert result.exit_code == 1 and f"{root} is inside {data.resolve()}, also given" in result.output
    assert run_cli(["scan", data], catalog_path).exit_code == 0
    rows = {rel: row for rel, row in image_rows(catalog_path).items() if row["present"]}
    assert sorted(rows) == ["img/a.jpg", "img/b.jpg", "img/sub/c.jpg", "other/a_copy.jpg", "other/d.jpg"]
    assert {row["root"] for row in rows.values()} == {str(data.resolve())}
    assert {rel: rows["img/" + rel]["image_id"] for rel in before} == before
    for args in (["sanitize"], ["dedup", "report", "--set", "builtin"],
                 ["apply", "dedup", "--backup-dir", tmp_path / "bk", "--apply"]):
        result = run_cli(args, catalog_path)
        assert result.exit_code == 0, (args, result.output)
    left = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.jpg"))
    assert len(left) == 4 and {"img/b.jpg", "img/sub/c.jpg", "other/d.jpg"} < set(left), left


def test_apply_never_deletes_a_duplicate_that_is_its_keeper(tmp_path, catalog_path, run_cli):
    """A catalog that already holds one file twice (what overlapping roots used to make): dedup
    plans it as a duplicate of itself, and apply's re-check before the delete skips it."""
    import duckdb

    data = tmp_path / "data"
    for i, rel in enumerate(["img/a.jpg", "img/b.jpg"]):
        _noise(data / rel, i)
    assert run_cli(["scan", data / "img"], catalog_path).exit_code == 0
    con = duckdb.connect(str(catalog_path))
    con.execute("""INSERT INTO images
                   SELECT * REPLACE (image_id + 100 AS image_id, ? AS root, 'img/' || rel_path AS rel_path)
                   FROM images""", [str(data.resolve())])
    con.execute("""INSERT INTO runs SELECT * REPLACE (run_id + 100 AS run_id, json_object('roots', [?]) AS params)
                   FROM runs WHERE stage = 'scan'""", [str(data.resolve())])
    con.close()
    for args in (["sanitize"], ["dedup", "report", "--set", "builtin"]):
        assert run_cli(args, catalog_path).exit_code == 0, args
    result = run_cli(["apply", "dedup", "--backup-dir", tmp_path / "bk", "--apply"], catalog_path)
    assert result.exit_code == 0, result.output
    assert "0 done, 2 skipped" in result.output and "registered twice" in result.output
    assert sorted(p.name for p in (data / "img").iterdir()) == ["a.jpg", "b.jpg"]


def test_apply_never_deletes_the_file_its_keeper_links_to(tmp_path, catalog_path, run_cli):
    """a_link.jpg -> z.jpg: the link sorts first and is kept; deleting z.jpg would leave it broken."""
    data = tmp_path / "data"
    _noise(data / "z.jpg", 0)
    (data / "a_link.jpg").symlink_to("z.jpg")
    for args in (["scan", data], ["sanitize"], ["dedup", "report", "--set", "builtin"]):
        assert run_cli(args, catalog_path).exit_code == 0, args
    result = run_cli(["apply", "dedup", "--keep", "alphabetical", "--backup-dir", tmp_path / "bk", "--apply"],
                     catalog_path)
    assert result.exit_code == 0, result.output
    assert "0 done, 1 skipped" in result.output and "the keeper links to it" in result.output
    assert (data / "z.jpg").is_file() and (data / "a_link.jpg").exists()


# -- scan: moves, extension changes, links between roots, paths too long, folders it must not read --

nobody_dir = test_bad_inputs.nobody_dir  # the fixture: a folder the permission checks' user owns





def test_a_moved_file_keeps_its_image_its_results_and_its_override(tmp_path, run_cli):
    """Old code: a renamed file was a new image and the old one gone, silently dropping the
    user's override (a 'keep' that no longer protected the file) and every result."""
    images, catalog = tmp_path / "images", tmp_path / "catalog.duckdb"
    for i in range(3):
        noise_jpeg(images / "a" / f"photo_{i}.jpg", i)
    (images / "a" / "copy_x.jpg").write_bytes((images / "a" / "photo_0.jpg").read_bytes())
    (images / "a" / "copy_y.jpg").write_bytes((images / "a" / "photo_0.jpg").read_bytes())
    ok_output(run_cli(["scan", images], catalog))
    ok_output(run_cli(["sanitize"], catalog))
    ok_output(run_cli(["override", "keep", "a/photo_1.jpg", "--reason", "mine"], catalog))
    before = {rel: row["image_id"] for rel, row in image_rows(catalog).items()}

    (images / "b").mkdir()
    for name in ("photo_1.jpg", "copy_x.jpg", "copy_y.jpg"):
        os.rename(images / "a" / name, images / "b" / name)
    os.rename(images / "a" / "photo_2.jpg", images / "a" / "renamed.jpg")
    out = ok_output(run_cli(["scan", images], catalog))
    assert "0 new" in out and "0 gone" in out and "4 moved" in out

    rows = {rel: row for rel, row in image_rows(catalog).items()}
    assert sorted(rows) == ["a/photo_0.jpg", "a/renamed.jpg", "b/copy_x.jpg", "b/copy_y.jpg", "b/photo_1.jpg"]
    assert all(row["present"] and row["version"] == 1 for row in rows.values())
    moved = {"b/photo_1.jpg": "a/photo_1.jpg", "b/copy_x.jpg": "a/copy_x.jpg", "b/copy_y.jpg": "a/copy_y.jpg",
             "a/renamed.jpg": "a/photo_2.jpg"}
    assert {new: rows[new]["image_id"] for new in moved} == {new: before[old] for new, old in moved.items()}
    assert catalog_rows(catalog, "SELECT image_id FROM override_actions WHERE override = 'keep'") == [
        (before["a/photo_1.jpg"],)]
    out = ok_output(run_cli(["predict", "--model", "builtin", "--kind", "descriptor", "--num-workers", "0"], catalog))
    assert "0 of 0 images written" in out  # the descriptors sanitize computed still belong to them


def test_narrowed_extensions_leave_files_out_without_calling_them_gone(tmp_path, run_cli):
    images, catalog = tmp_path / "images", tmp_path / "catalog.duckdb"
    noise_jpeg(images / "a.jpg", 0)
    Image.new("RGB", (100, 90), (10, 20, 30)).save(images / "b.png")
    ok_output(run_cli(["scan", images], catalog))
    ids = {rel: row["image_id"] for rel, row in image_rows(catalog).items()}
    png_only = tmp_path / "png.toml"
    png_only.write_text('[scan]\nextensions = [".png"]\n')
    out = ok_output(run_cli(["scan", images], catalog, config=png_only))
    assert "0 gone" in out and "1 no longer match scan.extensions .png: not present now" in out
    assert {rel: row["present"] for rel, row in image_rows(catalog).items()} == {"a.jpg": False, "b.png": True}
    assert (images / "a.jpg").is_file()
    out = ok_output(run_cli(["scan", images], catalog))  # the default extensions again: the same image is back
    rows = image_rows(catalog)
    assert rows["a.jpg"]["present"] and (rows["a.jpg"]["image_id"], rows["a.jpg"]["version"]) == (ids["a.jpg"], 1)


def test_a_folder_linked_into_another_root_of_the_scan_is_one_image_per_file(tmp_path, run_cli):
    """Old code: scan A B with A/link -> B/sub registered B/sub's files twice (A/link/x, B/sub/x),
    exact duplicates of themselves for dedup."""
    catalog = tmp_path / "catalog.duckdb"
    noise_jpeg(tmp_path / "A" / "a.jpg", 0)
    noise_jpeg(tmp_path / "B" / "sub" / "b.jpg", 1)
    os.symlink(tmp_path / "B" / "sub", tmp_path / "A" / "link")
    out = ok_output(run_cli(["scan", tmp_path / "A", tmp_path / "B"], catalog))
    assert "1 path(s) not listed" in out
    assert sorted((r["root"], rel) for rel, r in image_rows(catalog).items()) == [
        (str(tmp_path / "A"), "a.jpg"), (str(tmp_path / "B"), "sub/b.jpg")]
    assert catalog_rows(catalog, "SELECT rule, detail FROM findings") == [
        ("duplicate_folder", f"{tmp_path / 'A' / 'link'}: a link into {tmp_path / 'B'}, another scanned root; "
                             "its files are listed there only")]
    # the same when B was scanned first and A comes alone
    catalog2 = tmp_path / "catalog2.duckdb"
    ok_output(run_cli(["scan", tmp_path / "B"], catalog2))
    ok_output(run_cli(["scan", tmp_path / "A"], catalog2))
    assert sorted(image_rows(catalog2)) == ["a.jpg", "sub/b.jpg"]


def test_a_folder_deeper_than_the_system_allows_is_a_finding_not_a_silent_gap(tmp_path, run_cli):
    images, catalog = tmp_path / "images", tmp_path / "catalog.duckdb"
    noise_jpeg(images / "top.jpg", 0)
    fd = os.open(images, os.O_RDONLY)
    try:
        for _ in range(24):  # 24 x 201 bytes: past PATH_MAX (4096); made with *at calls, relative to fd
            os.mkdir("d" * 200, dir_fd=fd)
            child = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    out = ok_output(run_cli(["scan", images], catalog))
    assert "1 path(s) not listed" in out
    [(rule, detail)] = catalog_rows(catalog, "SELECT rule, detail FROM findings")
    assert rule == "unreadable_folder" and "ENAMETOOLONG" in detail and detail.startswith(str(images / ("d" * 200)))
    assert sorted(image_rows(catalog)) == ["top.jpg"]
    shutil.rmtree(images / ("d" * 200))  # a tree past PATH_MAX would trip a later walk of the session's temp folders


def test_widening_a_root_over_an_export_never_registers_the_exported_copies(tmp_path, run_cli):
    """export refuses a destination inside a scanned root, but `scan data` after exporting
    data/img to data/export registered every copy as a new image (old code): exact duplicates
    of the originals, and `alphabetical`/path ties made dedup keep export/... and delete img/..."""
    data, catalog = tmp_path / "data", tmp_path / "catalog.duckdb"
    for i in range(3):
        noise_jpeg(data / "img" / f"photo_{i}.jpg", i)
    ok_output(run_cli(["scan", data / "img"], catalog))
    ok_output(run_cli(["sanitize"], catalog))
    ok_output(run_cli(["export", "--to", data / "export", "--format", "copy"], catalog))
    assert len(list((data / "export").rglob("*.jpg"))) == 3
    out = ok_output(run_cli(["scan", data], catalog))
    assert f"skipped {data / 'export'}: it holds a vdc-lake export" in out
    assert sorted(image_rows(catalog)) == ["img/photo_0.jpg", "img/photo_1.jpg", "img/photo_2.jpg"]


def test_a_report_inside_a_root_is_refused_and_never_scanned_as_images(tmp_path, run_cli, sample_tree):
    """report --out inside a scanned root is refused, as export's destination is; a report that
    lies in a root anyway (written before, or the root widened over it) is skipped by scan. Old
    code wrote it and registered its thumbnails at the next scan: downscaled near-duplicates of
    the originals ('alphabetical' keeps report/...)."""
    catalog = tmp_path / "catalog.duckdb"
    ok_output(run_cli(["scan", sample_tree.root], catalog))
    ok_output(run_cli(["sanitize", "--quick"], catalog))
    refused = run_cli(["report", "--out", sample_tree.root / "report"], catalog)
    root = sample_tree.root.resolve()
    assert refused.exit_code == 1 and refused.output == (
        f"Error: report folder {sample_tree.root / 'report'} lies inside the scanned root {root}: the next scan "
        f"would register its thumbnails as images; choose a folder outside every scanned root "
        f"(e.g. {root.parent / (root.name + '-report')})\n"), refused.output
    assert not (sample_tree.root / "report").exists()
    ok_output(run_cli(["report", "--out", tmp_path / "report"], catalog))
    shutil.move(tmp_path / "report", sample_tree.root / "report")
    assert list((sample_tree.root / "report" / "thumbs").glob("*.jpg"))
    out = ok_output(run_cli(["scan", sample_tree.root], catalog))
    assert "0 new" in out and f"skipped {sample_tree.root.resolve() / 'report'}: it holds a vdc-lake report" in out
    assert not [rel for rel in image_rows(catalog) if rel.startswith("report/")]


def test_images_in_a_folder_that_cannot_be_listed_now_are_not_called_gone(nobody_dir):
    """Old code marked every image under a folder it could not list (permissions, a flaky mount)
    as gone, dropping it from curated and export; its state is unknown, so it stays as it was."""
    images = nobody_dir / "images"
    noise_jpeg(images / "top.jpg", 0)
    noise_jpeg(images / "private" / "inner.jpg", 1)
    _cli_as_user(nobody_dir, "scan", str(images))
    (images / "private").chmod(0)
    out = _cli_as_user(nobody_dir, "scan", str(images)).stdout
    assert "0 gone" in out and "1 path(s) not listed" in out
    assert {rel: r["present"] for rel, r in image_rows(nobody_dir / "catalog.duckdb").items()} == {
        "top.jpg": True, "private/inner.jpg": True}
