"""One read per file (issue 23.7): scan and sanitize read each file once for its hash, header and
decode check, and what they record is what the two-pass path (scan, then sanitize) records.

Bytes read are counted by the kernel (/proc/self/io rchar of this process, workers=1 so every
file is read in-process), on real files, Pillow and DuckDB: no mocks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import catalog_rows, default_config, noise_jpeg, ok_output
from vdc_lake.cli.pipeline import reads_for_next
from vdc_lake.catalog.connection import Catalog
from vdc_lake.fileops.probe import decode_check, inspect_header, read_file
from vdc_lake.stages.sanitize import sanitize, scan_and_sanitize
from vdc_lake.stages.scan import scan

pytestmark = pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs /proc/self/io (Linux)")


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def _config(tmp_path: Path):
    config = default_config(tmp_path)
    return config.values["scan"]["extensions"], config.section("sanitize")


def _two_passes(catalog_path: Path, root: Path, tmp_path: Path, workers: int = 1):
    extensions, rules = _config(tmp_path)
    with Catalog(catalog_path) as catalog:
        scanned = scan(catalog, [root], extensions=extensions, workers=workers, quiet=True)
        checked = sanitize(catalog, rules, workers=workers, quiet=True)
    return scanned, checked


def _fused(catalog_path: Path, root: Path, tmp_path: Path, workers: int = 1):
    extensions, rules = _config(tmp_path)
    with Catalog(catalog_path) as catalog:
        return scan_and_sanitize(catalog, [root], extensions=extensions, rules=rules, workers=workers, quiet=True)


def _recorded(catalog_path: Path) -> dict:
    """What scan and the newest sanitize run recorded, keyed by path: facts, findings, checks, vectors."""
    facts = catalog_rows(catalog_path, """
        SELECT rel_path, version, present, content_hash, size_bytes, width, height, format, mode, n_frames,
               exif_orientation, has_transparency, header_error FROM images ORDER BY rel_path""")
    newest = "(SELECT max(run_id) FROM runs WHERE stage = 'sanitize' AND status = 'done')"
    findings = catalog_rows(catalog_path, f"""
        SELECT coalesce(i.rel_path, ''), f.version, f.rule, f.detail, f.action FROM findings f
        LEFT JOIN images i USING (image_id) WHERE f.run_id = {newest} ORDER BY ALL""")
    checks = catalog_rows(catalog_path, f"""
        SELECT i.rel_path, c.version, c.decoded FROM sanitize_checks c JOIN images i USING (image_id)
        WHERE c.run_id = {newest} ORDER BY ALL""")
    vectors = {rel: np.asarray(vector, np.float32) for rel, vector in catalog_rows(catalog_path, """
        SELECT i.rel_path, e.vector FROM embeddings e JOIN images i ON i.image_id = e.image_id
        AND i.version = e.version WHERE e.set_name = 'builtin'""")}
    return {"facts": facts, "findings": findings, "checks": checks, "vectors": vectors}


def _assert_same(a: dict, b: dict) -> None:
    assert a["facts"] == b["facts"]
    assert a["findings"] == b["findings"]
    assert a["checks"] == b["checks"]
    assert sorted(a["vectors"]) == sorted(b["vectors"]) and a["vectors"]
    for rel, vector in a["vectors"].items():
        np.testing.assert_array_equal(vector, b["vectors"][rel], err_msg=rel)


def test_fused_scan_and_sanitize_records_what_two_passes_record(sample_tree, tmp_path):
    """Every planted defect, copies and clean images: same facts, findings, checks, descriptors;
    then again after a move, a new copy of a moved file's bytes, an edit and a deletion."""
    twin = tmp_path / "twin"
    shutil.copytree(sample_tree.root, twin, symlinks=True)
    two, one = tmp_path / "two.duckdb", tmp_path / "one.duckdb"
    scanned, checked = _two_passes(two, sample_tree.root, tmp_path)
    scanned_f, checked_f = _fused(one, twin, tmp_path)
    assert (scanned_f.new, scanned_f.errors) == (scanned.new, scanned.errors)
    assert (checked_f.checked, checked_f.decoded, checked_f.findings, checked_f.descriptors) == (
        checked.checked, checked.decoded, checked.findings, checked.descriptors)
    assert checked_f.run_id > scanned_f.run_id
    _assert_same(_recorded(two), _recorded(one))

    clean = sorted(sample_tree.kind("clean"))
    for root in (sample_tree.root, twin):
        os.rename(root / clean[0], root / "moved.jpg")
        shutil.copyfile(root / "moved.jpg", root / "moved_copy.jpg")
        noise_jpeg(root / clean[1], seed=7)
        os.unlink(root / clean[2])
    scanned, checked = _two_passes(two, sample_tree.root, tmp_path)
    scanned_f, checked_f = _fused(one, twin, tmp_path)
    assert scanned_f.moved == scanned.moved == 1
    assert (checked_f.checked, checked_f.decoded, checked_f.findings) == (
        checked.checked, checked.decoded, checked.findings)
    _assert_same(_recorded(two), _recorded(one))


@pytest.fixture
def big_jpegs(tmp_path) -> tuple[Path, int]:
    """12 noise JPEGs of ~2.7 MB each: their bytes dominate what DuckDB reads of the catalog
    (~2 MB here; strace shows each image read once, in one piece)."""
    root = tmp_path / "big"
    for i in range(12):
        noise_jpeg(root / f"img_{i}.jpg", seed=i, size=(2000, 1500))
    return root, sum(p.stat().st_size for p in root.iterdir())


def _bytes_read(run, catalog_path: Path, root: Path, tmp_path: Path) -> int:
    """rchar of `run` on root, less that of the same run on an empty folder (the catalog's own reads)."""
    empty = tmp_path / f"empty-{catalog_path.stem}"
    empty.mkdir()
    before = _rchar()
    run(tmp_path / f"empty-{catalog_path.name}", empty, tmp_path)
    overhead = _rchar() - before
    before = _rchar()
    run(catalog_path, root, tmp_path)
    return _rchar() - before - overhead


def test_fused_scan_and_sanitize_reads_each_file_once(big_jpegs, tmp_path):
    root, total = big_jpegs
    fused = _bytes_read(_fused, tmp_path / "one.duckdb", root, tmp_path)
    two_passes = _bytes_read(_two_passes, tmp_path / "two.duckdb", root, tmp_path)
    assert 0.98 * total < fused < 1.1 * total, (fused / total, two_passes / total)
    assert 1.9 * total < two_passes, (fused / total, two_passes / total)  # scan's read, then sanitize's


def test_sanitize_reads_each_file_once(big_jpegs, tmp_path):
    """Sanitize alone: hashing (the bytes must be those scan recorded) and decoding share one read."""
    root, total = big_jpegs
    extensions, rules = _config(tmp_path)

    def scanned_then_sanitized(catalog_path: Path, folder: Path, _tmp: Path) -> None:
        with Catalog(catalog_path) as catalog:
            scan(catalog, [folder], extensions=extensions, workers=1, quiet=True)
            summary = sanitize(catalog, rules, workers=1, quiet=True)
        assert summary.findings == 0

    both = _bytes_read(scanned_then_sanitized, tmp_path / "c.duckdb", root, tmp_path)
    assert 1.9 * total < both < 2.1 * total, both / total  # one read in scan, one in sanitize


def _no_address(text: str | None) -> str | None:
    """An error text without object addresses (Pillow names the file object it could not identify)."""
    return None if text is None else re.sub(r" at 0x[0-9a-f]+", "", text)


def test_read_file_gives_what_the_separate_reads_give(sample_tree):
    """Hash, facts and decode check of every sample file, whole in memory or streamed (a limit of
    1 byte streams every file), equal inspect_header's and decode_check's."""
    for rel in sample_tree.all_files():
        path = str(sample_tree.path(rel))
        expected_facts = inspect_header(path)
        expected = decode_check(path, max_pixels=89478485, with_descriptor=True)
        for limit in (None, 1):
            read = read_file(path, decode=True, max_pixels=89478485, with_descriptor=True, whole_max_bytes=limit)
            assert read.facts == expected_facts, rel
            assert _no_address(read.decode.error) == _no_address(expected.error), rel
            assert (read.decode.descriptor is None) == (expected.descriptor is None), rel
            if expected.descriptor is not None:
                np.testing.assert_array_equal(read.decode.descriptor, expected.descriptor, err_msg=rel)
            assert not read.changed


def test_decode_if_skips_other_bytes(tmp_path):
    path = tmp_path / "a.jpg"
    noise_jpeg(path, seed=1)
    digest = inspect_header(str(path))["content_hash"]
    assert read_file(path, decode=True, decode_if=lambda d: d != digest).decode is None
    decoded = read_file(path, decode=True, decode_if=lambda d: d == digest).decode
    assert decoded is not None and decoded.error is None


def test_big_file_is_streamed_not_slurped(tmp_path):
    """A 600 MB sparse file behind a JPEG signature, over the read-whole limit: the hash streams
    (memory stays far below the file's size) and the header search stops at the header limits."""
    path = tmp_path / "sparse.jpg"
    with open(path, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0")
        f.truncate(600 << 20)
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork + exec, so a child of a big pytest
    # worker would report the worker's size; VmHWM belongs to the child's own address space.
    script = ("import re, sys; from vdc_lake.fileops.probe import read_file; "
              "r = read_file(sys.argv[1], decode=True, whole_max_bytes=10 << 20); "
              "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
              "print(r.facts['header_error'].split(':')[0], r.decode.error.split(':')[0], hwm)")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True)
    header_rule, decode_rule, peak_kib = done.stdout.split()
    assert (header_rule, decode_rule) == ("header_not_found", "header_not_found")
    assert int(peak_kib) < 400 << 10  # far below the file's 600 MB


def test_file_changed_during_the_read_is_changed(tmp_path):
    """The file is rewritten (a later mtime) after its hash and before its decode: the stat after
    the read differs from the one before, so the result is `changed` (no verdict on the bytes)."""
    path = tmp_path / "a.jpg"
    noise_jpeg(path, seed=2)
    assert not read_file(path, decode=True).changed

    def rewrite(_digest: str) -> bool:
        noise_jpeg(path, seed=3)
        os.utime(path, ns=(1, 10**18))
        return True

    assert read_file(path, decode=True, decode_if=rewrite).changed


def test_scan_with_sanitize_leaves_nothing_to_decode(sample_tree, tmp_path, run_cli):
    """`scan --sanitize` records a scan and a full sanitize run; a later `sanitize` decodes nothing."""
    catalog = tmp_path / "c.duckdb"
    out = ok_output(run_cli(["scan", sample_tree.root, "--sanitize", "--workers", "1"], catalog))
    assert "scan run 1:" in out and "sanitize run 2:" in out
    assert "(0 decoded)" in ok_output(run_cli(["sanitize", "--workers", "1"], catalog))
    stages = catalog_rows(catalog, "SELECT stage, status, params::JSON->>'with_scan' FROM runs ORDER BY run_id")
    assert stages == [("scan", "done", None), ("sanitize", "done", "true"), ("sanitize", "done", None)]


def test_pipeline_scan_then_sanitize_reads_once(sample_tree, tmp_path, run_cli):
    """A scan step directly before a full sanitize step runs as `scan --sanitize`; not before --quick."""
    catalog = tmp_path / "c.duckdb"
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(f'[[step]]\ncommand = "scan"\nargs = ["{sample_tree.root}"]\nworkers = 1\n\n'
                        '[[step]]\ncommand = "sanitize"\nworkers = 1\n')
    ok_output(run_cli(["run", pipeline], catalog))
    summaries = catalog_rows(catalog, "SELECT stage, summary::JSON->>'decoded' FROM runs ORDER BY run_id")
    assert summaries[0][0] == "scan" and summaries[1][0] == summaries[2][0] == "sanitize"
    assert int(summaries[1][1]) > 0 and summaries[2][1] == "0"
    steps = [{"command": "scan", "args": ["x"]}, {"command": "sanitize", "quick": True}]
    assert not reads_for_next(steps, 1)
    assert reads_for_next([steps[0], {"command": "sanitize"}], 1) and not reads_for_next(steps, 2)
