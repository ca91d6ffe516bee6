"""Hostile audit of the stages that read files and write facts: scan, sanitize, predict, import.

Each test sets up a situation a careful user can reach (a file swapped keeping its size and
mtime, a folder linked into another root, a tree deeper than PATH_MAX, a damaged result file)
and asserts what the catalog and the filesystem hold afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import image_rows
from vdc_lake.catalog import Catalog


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
