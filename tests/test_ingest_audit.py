"""Hostile audit of the stages that read files and write facts: scan, sanitize, predict, import.

Each test sets up a situation a careful user can reach (a file swapped keeping its size and
mtime, a folder linked into another root, a tree deeper than PATH_MAX, a damaged result file)
and asserts what the catalog and the filesystem hold afterwards.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import image_rows
from tests import test_hostile_inputs
from tests.test_hostile_inputs import _cli_as_user
from vdc_lake.catalog.connection import Catalog

nobody_dir = test_hostile_inputs.nobody_dir  # the fixture: a folder the permission checks' user owns


def _noise(path: Path, seed: int, size: tuple[int, int] = (130, 120)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


def _ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def _rows(catalog_path: Path, sql: str, params: list | None = None) -> list[tuple]:
    with Catalog(catalog_path, read_only=True) as catalog:
        return catalog.rows(sql, params or [])


def _latest_findings(catalog_path: Path, rel_path: str) -> dict[str, str]:
    """{rule: action} of the newest sanitize check of rel_path's current version."""
    return dict(_rows(catalog_path, """
        SELECT f.rule, f.action FROM findings f JOIN images i USING (image_id, version)
        WHERE i.rel_path = ? AND f.run_id = (SELECT max(run_id) FROM sanitize_checks c
                                             WHERE c.image_id = i.image_id AND c.version = i.version)""",
                      [rel_path]))


# -- sanitize: a verdict belongs to the bytes scan recorded ------------------------------------

def _swap_keeping_stat(path: Path, data: bytes) -> None:
    """Replace path's bytes with data (same length), then put its mtime back: scan cannot tell."""
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_recheck_of_a_file_swapped_keeping_size_and_mtime_sends_it_back_to_scan(tmp_path, run_cli):
    """Old code: --recheck judged the new bytes 'corrupt' on the old version; apply then skipped
    the delete ("changed since it was scanned; run scan") and scan, seeing the same size and
    mtime, never read the file again: plan said delete forever, apply never did."""
    images, catalog = tmp_path / "images", tmp_path / "catalog.duckdb"
    for i in range(3):
        _noise(images / f"photo_{i}.jpg", i)
    _ok(run_cli(["scan", images], catalog))
    _ok(run_cli(["sanitize"], catalog))
    victim = images / "photo_1.jpg"
    _swap_keeping_stat(victim, b"x" * victim.stat().st_size)
    assert "3 unchanged" in _ok(run_cli(["scan", images], catalog))

    out = _ok(run_cli(["sanitize", "--recheck"], catalog))
    assert "1 file(s) changed since the scan" in out
    assert _latest_findings(catalog, "photo_1.jpg") == {"changed": "none"}
    assert "0 operations" in _ok(run_cli(["plan", "sanitize"], catalog))

    assert "1 changed" in _ok(run_cli(["scan", images], catalog))  # read again: a new version
    _ok(run_cli(["sanitize"], catalog))
    assert _latest_findings(catalog, "photo_1.jpg") == {"not_an_image": "delete"}
    _ok(run_cli(["apply", "sanitize", "--backup-dir", tmp_path / "bk", "--apply"], catalog))
    assert sorted(p.name for p in images.iterdir()) == ["photo_0.jpg", "photo_2.jpg"]
    assert image_rows(catalog)["photo_1.jpg"]["present"] is False


def test_a_file_swapped_before_its_first_decode_gets_no_verdict_for_the_scanned_bytes(tmp_path, run_cli):
    """A truncated file scanned, then replaced by a good one keeping size and mtime: the clean
    decode must not be cached as the verdict on the truncated bytes (the old code did)."""
    images, catalog = tmp_path / "images", tmp_path / "catalog.duckdb"
    _noise(images / "good.jpg", 0)
    _noise(images / "cut.jpg", 1)
    whole = (images / "cut.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    _ok(run_cli(["scan", images], catalog))
    repaired = whole[: len(whole) // 2 - 2] + b"\xff\xd9"  # same length, decodes as far as it goes
    _swap_keeping_stat(images / "cut.jpg", repaired)
    _ok(run_cli(["sanitize"], catalog))
    assert _latest_findings(catalog, "cut.jpg") == {"changed": "none"}
    assert _rows(catalog, "SELECT decoded FROM sanitize_checks s JOIN images i USING (image_id, version) "
                          "WHERE i.rel_path = 'cut.jpg'") == [(False,)]


# -- import: the whole file or nothing; rows that cannot be used are counted, never stored -----

def _images_for_import(tmp_path: Path, n: int = 6) -> tuple[Path, list[str]]:
    images = tmp_path / "images"
    for i in range(n):
        _noise(images / f"img_{i}.jpg", i, size=(96, 96))
    return images, [str(images / f"img_{i}.jpg") for i in range(n)]


def test_an_import_that_breaks_half_way_leaves_no_partial_set(tmp_path, run_cli):
    """Old code committed every batch: a parquet file damaged in its third row group left a set
    with the first 8 of 12 vectors (and a failed run), which dedup and cluster read as complete."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vdc_lake.stages.predict import import_results
    from vdc_lake.stages.scan import scan

    images, samples = _images_for_import(tmp_path, 12)
    vectors = np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32)
    path = tmp_path / "x_rope_i_vit_b16_pn_aps_c1_pe-core_0_224px_crop1.0_12_embeddings.parquet"
    pq.write_table(pa.table({"sample": samples,
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 8)}),
                   path, row_group_size=4, compression="none")
    offset = pq.ParquetFile(path).metadata.row_group(2).column(1).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset:offset + 40] = b"\xa5" * 40
    path.write_bytes(bytes(data))
    catalog_path = tmp_path / "catalog.duckdb"
    with Catalog(catalog_path, scale={"vector_batch_rows": 4}) as catalog:
        scan(catalog, [images], extensions=[".jpg"], workers=1, quiet=True)
        try:
            import_results(catalog, str(path), set_name="pe")
        except Exception as e:  # noqa: BLE001 - the type and text are checked below
            error = e
    from vdc_lake.errors import VdcLakeError

    assert isinstance(error, VdcLakeError) and "\n" not in str(error) and "damaged or incomplete" in str(error)
    assert _rows(catalog_path, "SELECT count(*) FROM embeddings") == [(0,)]
    assert _rows(catalog_path, "SELECT count(*) FROM embedding_sets WHERE name = 'pe'") == [(0,)]
    assert _rows(catalog_path, "SELECT status FROM runs WHERE stage = 'import'") == [("failed",)]
    result = run_cli(["import", path, "--set", "pe"], catalog_path)
    assert result.exit_code == 1 and result.output.count("\n") == 1 and result.output.startswith("Error: ")


def test_import_counts_duplicated_unknown_and_non_finite_rows(tmp_path, run_cli):
    images, samples = _images_for_import(tmp_path, 4)
    catalog = tmp_path / "catalog.duckdb"
    _ok(run_cli(["scan", images], catalog))
    lines = ["sample,0,1,2,3"]
    lines += [f"{s},{i},1,2,3" for i, s in enumerate(samples[:3])]
    lines += [f"{samples[0]},9,9,9,9", "img_1.jpg,8,8,8,8", "/elsewhere/img_9.jpg,1,2,3,4",
              f"{samples[3]},nan,1,2,3"]
    path = tmp_path / "resnet_v1_50_c1_sscd_4_320px_crop1.0_7_logits.csv"
    path.write_text("\n".join(lines) + "\n")

    result = run_cli(["import", path], catalog)
    assert result.exit_code == 0, result.output
    assert "5 of 7 rows imported, 1 unmatched" in result.output
    assert "2 row(s) name an image an earlier row named: the last of them counts" in result.output
    assert f"1 row(s) hold NaN or infinite values, not imported (first ones): {samples[3]}" in result.output
    from vdc_lake.catalog.sets import read_vectors

    with Catalog(catalog, read_only=True) as cat:
        vs = read_vectors(cat, "embeddings", "resnet_v1_50_c1_sscd")
        paths = dict(cat.rows("SELECT image_id, rel_path FROM images"))
    got = {paths[int(i)]: v[0] for i, v in zip(vs.image_ids, vs.vectors)}
    assert got == {"img_0.jpg": 9.0, "img_1.jpg": 8.0, "img_2.jpg": 2.0}  # no NaN vector for img_3


# -- scan: moves, extension changes, links between roots, paths too long ----------------------

def test_a_moved_file_keeps_its_image_its_results_and_its_override(tmp_path, run_cli):
    """Old code: a renamed file was a new image and the old one gone, silently dropping the
    user's override (a 'keep' that no longer protected the file) and every result."""
    images, catalog = tmp_path / "images", tmp_path / "catalog.duckdb"
    for i in range(3):
        _noise(images / "a" / f"photo_{i}.jpg", i)
    (images / "a" / "copy_x.jpg").write_bytes((images / "a" / "photo_0.jpg").read_bytes())
    (images / "a" / "copy_y.jpg").write_bytes((images / "a" / "photo_0.jpg").read_bytes())
    _ok(run_cli(["scan", images], catalog))
    _ok(run_cli(["sanitize"], catalog))
    _ok(run_cli(["override", "keep", "a/photo_1.jpg", "--reason", "mine"], catalog))
    before = {rel: row["image_id"] for rel, row in image_rows(catalog).items()}

    (images / "b").mkdir()
    for name in ("photo_1.jpg", "copy_x.jpg", "copy_y.jpg"):
        os.rename(images / "a" / name, images / "b" / name)
    os.rename(images / "a" / "photo_2.jpg", images / "a" / "renamed.jpg")
    out = _ok(run_cli(["scan", images], catalog))
    assert "0 new" in out and "0 gone" in out and "4 moved" in out

    rows = {rel: row for rel, row in image_rows(catalog).items()}
    assert sorted(rows) == ["a/photo_0.jpg", "a/renamed.jpg", "b/copy_x.jpg", "b/copy_y.jpg", "b/photo_1.jpg"]
    assert all(row["present"] and row["version"] == 1 for row in rows.values())
    moved = {"b/photo_1.jpg": "a/photo_1.jpg", "b/copy_x.jpg": "a/copy_x.jpg", "b/copy_y.jpg": "a/copy_y.jpg",
             "a/renamed.jpg": "a/photo_2.jpg"}
    assert {new: rows[new]["image_id"] for new in moved} == {new: before[old] for new, old in moved.items()}
    assert _rows(catalog, "SELECT image_id FROM override_actions WHERE override = 'keep'") == [
        (before["a/photo_1.jpg"],)]
    out = _ok(run_cli(["predict", "--model", "builtin", "--kind", "descriptor", "--num-workers", "0"], catalog))
    assert "0 of 0 images written" in out  # the descriptors sanitize computed still belong to them


def test_narrowed_extensions_leave_files_out_without_calling_them_gone(tmp_path, run_cli):
    images, catalog = tmp_path / "images", tmp_path / "catalog.duckdb"
    _noise(images / "a.jpg", 0)
    Image.new("RGB", (100, 90), (10, 20, 30)).save(images / "b.png")
    _ok(run_cli(["scan", images], catalog))
    ids = {rel: row["image_id"] for rel, row in image_rows(catalog).items()}
    png_only = tmp_path / "png.toml"
    png_only.write_text('[scan]\nextensions = [".png"]\n')
    out = _ok(run_cli(["scan", images], catalog, config=png_only))
    assert "0 gone" in out and "1 no longer match scan.extensions .png: not present now" in out
    assert {rel: row["present"] for rel, row in image_rows(catalog).items()} == {"a.jpg": False, "b.png": True}
    assert (images / "a.jpg").is_file()
    out = _ok(run_cli(["scan", images], catalog))  # the default extensions again: the same image is back
    rows = image_rows(catalog)
    assert rows["a.jpg"]["present"] and (rows["a.jpg"]["image_id"], rows["a.jpg"]["version"]) == (ids["a.jpg"], 1)


def test_a_folder_linked_into_another_root_of_the_scan_is_one_image_per_file(tmp_path, run_cli):
    """Old code: scan A B with A/link -> B/sub registered B/sub's files twice (A/link/x, B/sub/x),
    exact duplicates of themselves for dedup."""
    catalog = tmp_path / "catalog.duckdb"
    _noise(tmp_path / "A" / "a.jpg", 0)
    _noise(tmp_path / "B" / "sub" / "b.jpg", 1)
    os.symlink(tmp_path / "B" / "sub", tmp_path / "A" / "link")
    out = _ok(run_cli(["scan", tmp_path / "A", tmp_path / "B"], catalog))
    assert "1 path(s) not listed" in out
    assert sorted((r["root"], rel) for rel, r in image_rows(catalog).items()) == [
        (str(tmp_path / "A"), "a.jpg"), (str(tmp_path / "B"), "sub/b.jpg")]
    assert _rows(catalog, "SELECT rule, detail FROM findings") == [
        ("duplicate_folder", f"{tmp_path / 'A' / 'link'}: a link into {tmp_path / 'B'}, another scanned root; "
                             "its files are listed there only")]
    # the same when B was scanned first and A comes alone
    catalog2 = tmp_path / "catalog2.duckdb"
    _ok(run_cli(["scan", tmp_path / "B"], catalog2))
    _ok(run_cli(["scan", tmp_path / "A"], catalog2))
    assert sorted(image_rows(catalog2)) == ["a.jpg", "sub/b.jpg"]


def test_a_folder_deeper_than_the_system_allows_is_a_finding_not_a_silent_gap(tmp_path, run_cli):
    images, catalog = tmp_path / "images", tmp_path / "catalog.duckdb"
    _noise(images / "top.jpg", 0)
    fd = os.open(images, os.O_RDONLY)
    try:
        for _ in range(24):  # 24 x 201 bytes: past PATH_MAX (4096); made with *at calls, relative to fd
            os.mkdir("d" * 200, dir_fd=fd)
            child = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    out = _ok(run_cli(["scan", images], catalog))
    assert "1 path(s) not listed" in out
    [(rule, detail)] = _rows(catalog, "SELECT rule, detail FROM findings")
    assert rule == "unreadable_folder" and "ENAMETOOLONG" in detail and detail.startswith(str(images / ("d" * 200)))
    assert sorted(image_rows(catalog)) == ["top.jpg"]


# -- predict: a mistyped invocation is one Error line naming the fix; a kill loses nothing ----

def test_predict_mistakes_are_one_error_line_naming_the_fix(tmp_path, run_cli):
    """Old code ignored --tag/--size for builtin (a silently different set than asked for) and
    answered a checkpoint path with 'not a birder pretrained name'."""
    images, catalog = tmp_path / "images", tmp_path / "catalog.duckdb"
    _noise(images / "a.jpg", 0)
    _ok(run_cli(["scan", images], catalog))
    cases = [
        (["--model", "builtin", "--kind", "descriptor", "--tag", "x"],
         "Error: the builtin descriptor takes no --tag (it has no weights and a fixed thumbnail size): leave --tag "
         "out, or give '' for it in a pass with other models\n"),
        (["--model", "builtin", "--kind", "descriptor", "--size", "64"], "the builtin descriptor takes no --size"),
        (["--model", "models/resnet_v1_50_c1_sscd.pt", "--kind", "descriptor"],
         "Error: --model takes a weights name, not a file: use --model resnet_v1_50_c1_sscd --models-dir models "
         "(the checkpoint is MODELS_DIR/NAME.pt)\n"),
    ]
    for args, expected in cases:
        result = run_cli(["predict", *args], catalog)
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
        assert expected in result.output and result.output.startswith("Error: ")
    assert _rows(catalog, "SELECT count(*) FROM runs WHERE stage = 'predict'") == [(0,)]
    assert _rows(catalog, "SELECT count(*) FROM embeddings") == [(0,)]


def test_a_killed_builtin_predict_resumes_with_no_duplicate_and_none_missing(tmp_path):
    import subprocess
    import sys
    import textwrap

    from vdc_lake.stages.scan import scan

    images, catalog_path = tmp_path / "images", tmp_path / "catalog.duckdb"
    for i in range(10):
        _noise(images / f"img_{i}.jpg", i, size=(96, 96))
    with Catalog(catalog_path) as catalog:
        scan(catalog, [images], extensions=[".jpg"], workers=1, quiet=True)
    script = textwrap.dedent(f"""
        import os, signal
        import vdc_lake.stages.predict as p
        from vdc_lake.catalog.connection import Catalog
        original, commits = p._commit, []
        def commit_then_die(*args):
            original(*args)
            commits.append(1)
            if len(commits) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        p._commit = commit_then_die
        with Catalog({str(catalog_path)!r}) as catalog:
            p.predict(catalog, model="builtin", kind="descriptor", num_workers=0, commit_every=3, quiet=True)
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parent.parent)
    assert child.returncode == -9, child.stderr
    assert _rows(catalog_path, "SELECT count(*) FROM embeddings") == [(6,)]
    from vdc_lake.stages.predict import predict

    with Catalog(catalog_path) as catalog:
        summary = predict(catalog, model="builtin", kind="descriptor", num_workers=0, quiet=True)
    assert (summary.todo, summary.written) == (4, 4)
    assert _rows(catalog_path, "SELECT count(*), count(DISTINCT image_id) FROM embeddings") == [(10, 10)]


def test_a_models_dir_under_home_in_a_config_file_is_found(tmp_path, run_cli, monkeypatch):
    """Old code: `models_dir = "~/models"` in vdc-lake.toml (no shell to expand it) was looked
    up as ./~/models: "models directory .../~/models does not exist"."""
    from tests.tiny_models import SSCD, make_tiny_models

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    make_tiny_models(tmp_path / "home" / "models")
    images, catalog = tmp_path / "images", tmp_path / "catalog.duckdb"
    for i in range(2):
        _noise(images / f"img_{i}.jpg", i, size=(80, 80))
    config = tmp_path / "models.toml"
    config.write_text('[predict]\nmodels_dir = "~/models"\ndevice = "cpu"\nnum_workers = 0\n')
    _ok(run_cli(["scan", images], catalog))
    out = _ok(run_cli(["predict", "--model", SSCD, "--kind", "descriptor"], catalog, config=config))
    assert "2 of 2 images written" in out


def test_widening_a_root_over_an_export_never_registers_the_exported_copies(tmp_path, run_cli):
    """export refuses a destination inside a scanned root, but `scan data` after exporting
    data/img to data/export registered every copy as a new image (old code): exact duplicates
    of the originals, and `alphabetical`/path ties made dedup keep export/... and delete img/..."""
    data, catalog = tmp_path / "data", tmp_path / "catalog.duckdb"
    for i in range(3):
        _noise(data / "img" / f"photo_{i}.jpg", i)
    _ok(run_cli(["scan", data / "img"], catalog))
    _ok(run_cli(["sanitize"], catalog))
    _ok(run_cli(["export", "--to", data / "export", "--format", "copy"], catalog))
    assert len(list((data / "export").rglob("*.jpg"))) == 3
    out = _ok(run_cli(["scan", data], catalog))
    assert f"skipped {data / 'export'}: it holds a vdc-lake export" in out
    assert sorted(image_rows(catalog)) == ["img/photo_0.jpg", "img/photo_1.jpg", "img/photo_2.jpg"]


def test_a_report_inside_a_root_is_refused_and_never_scanned_as_images(tmp_path, run_cli, sample_tree):
    """report --out inside a scanned root is refused, as export's destination is; a report that
    lies in a root anyway (written before, or the root widened over it) is skipped by scan. Old
    code wrote it and registered its thumbnails at the next scan: downscaled near-duplicates of
    the originals ('alphabetical' keeps report/...)."""
    catalog = tmp_path / "catalog.duckdb"
    _ok(run_cli(["scan", sample_tree.root], catalog))
    _ok(run_cli(["sanitize", "--quick"], catalog))
    refused = run_cli(["report", "--out", sample_tree.root / "report"], catalog)
    root = sample_tree.root.resolve()
    assert refused.exit_code == 1 and refused.output == (
        f"Error: report folder {sample_tree.root / 'report'} lies inside the scanned root {root}: the next scan "
        f"would register its thumbnails as images; choose a folder outside every scanned root "
        f"(e.g. {root.parent / (root.name + '-report')})\n"), refused.output
    assert not (sample_tree.root / "report").exists()
    _ok(run_cli(["report", "--out", tmp_path / "report"], catalog))
    shutil.move(tmp_path / "report", sample_tree.root / "report")
    assert list((sample_tree.root / "report" / "thumbs").glob("*.jpg"))
    out = _ok(run_cli(["scan", sample_tree.root], catalog))
    assert "0 new" in out and f"skipped {sample_tree.root.resolve() / 'report'}: it holds a vdc-lake report" in out
    assert not [rel for rel in image_rows(catalog) if rel.startswith("report/")]


def test_images_in_a_folder_that_cannot_be_listed_now_are_not_called_gone(nobody_dir):
    """Old code marked every image under a folder it could not list (permissions, a flaky mount)
    as gone, dropping it from curated and export; its state is unknown, so it stays as it was."""
    images = nobody_dir / "images"
    _noise(images / "top.jpg", 0)
    _noise(images / "private" / "inner.jpg", 1)
    _cli_as_user(nobody_dir, "scan", str(images))
    (images / "private").chmod(0)
    out = _cli_as_user(nobody_dir, "scan", str(images)).stdout
    assert "0 gone" in out and "1 path(s) not listed" in out
    assert {rel: r["present"] for rel, r in image_rows(nobody_dir / "catalog.duckdb").items()} == {
        "top.jpg": True, "private/inner.jpg": True}
