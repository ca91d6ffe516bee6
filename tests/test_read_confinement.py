"""Every stage that opens an image file reads only inside the scanned roots (issue 24, defect 4),
and the report never writes through a link planted in its folder (defect 2, report part).

A catalog may come from someone else: an edited images row (`root = '/elsewhere'`) or a symlink
in an image tree from elsewhere must not make sanitize, report, predict or export read a file
outside the roots a scan was given. One rule decides (confine.ReadableRoots); apply already
refused such rows. Real catalogs, real files written by Pillow, the real CLI.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import duckdb
import pytest

from tests.conftest import catalog_rows, random_image, tree_hashes
from vdc_lake.fileops.confine import OUTSIDE_ROOT, ReadableRoots
from vdc_lake.fileops.probe import content_hash




def _edit(catalog_path, sql, params=None) -> None:
    """Change the catalog as someone else could: plain DuckDB, no vdc-lake code."""
    con = duckdb.connect(str(catalog_path))
    try:
        con.execute(sql, params)
    finally:
        con.close()


@pytest.fixture
def tree(tmp_path, run_cli):
    """data/ (scanned, sanitized): ok_*.jpg, tiny.jpg (width_too_small: a planned delete, so the
    report shows it) and link.jpg, a symlink to elsewhere/private.jpg (the owner's link: read
    through, as scan and apply do); elsewhere/secret.jpg is a picture nobody scanned. Returns
    (tmp_path, catalog, ids by name)."""
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    for i in range(3):
        random_image(data / f"ok_{i}.jpg", seed=i)
    random_image(data / "tiny.jpg", size=(40, 40), seed=7)
    random_image(elsewhere / "secret.jpg", size=(90, 90), seed=8)
    (data / "link.jpg").symlink_to(random_image(elsewhere / "private.jpg", size=(40, 40), seed=9))
    catalog = tmp_path / "catalog.duckdb"
    assert run_cli(["scan", data], catalog).exit_code == 0
    ids = dict(catalog_rows(catalog, "SELECT rel_path, image_id FROM images"))
    return tmp_path, catalog, ids


def _point_at_secret(base: Path, catalog: Path, image_id: int) -> Path:
    """The edit of issue 24: the row names /elsewhere/secret.jpg (with its hash, so nothing but
    the path gives it away)."""
    secret = base / "elsewhere" / "secret.jpg"
    _edit(catalog, "UPDATE images SET root = ?, rel_path = 'secret.jpg', content_hash = ? WHERE image_id = ?",
          [str(secret.parent), content_hash(secret), image_id])
    return secret


# -- the one rule -------------------------------------------------------------------------------------

def test_one_rule_decides_which_catalog_files_may_be_read(tmp_path):
    root, other, outside = tmp_path / "root", tmp_path / "other", tmp_path / "outside"
    random_image(root / "a.jpg")
    random_image(other / "b.jpg")
    random_image(outside / "c.jpg")
    (root / "to_other.jpg").symlink_to(other / "b.jpg")
    (root / "to_outside.jpg").symlink_to(outside / "c.jpg")
    (root / "sub").symlink_to(outside)
    readable = ReadableRoots([str(root), str(other)])

    assert readable.error(str(root), "a.jpg") is None
    assert readable.error(str(root), "missing.jpg") is None  # the reader says it is gone
    assert readable.error(str(root), "to_other.jpg") is None  # a link into another scanned root
    assert "which no scan run was given" in readable.error(str(outside), "c.jpg")
    assert "not a plain relative path" in readable.error(str(root), "../outside/c.jpg")
    assert "not a plain relative path" in readable.error(str(root), "/etc/passwd")
    assert readable.error(str(root), "to_outside.jpg") is None  # the owner's link: read through, as apply does
    assert "outside every scanned root" in readable.error(str(root), "sub/c.jpg")  # a folder link out
    assert readable.path_error(str(root / "a.jpg")) is None
    assert "lies in no scanned root" in readable.path_error(str(outside / "c.jpg"))
    assert "not a plain relative path" in readable.path_error(f"{root}/../outside/c.jpg")



def test_apply_acts_by_the_same_rule_in_the_image_s_own_root(tmp_path):
    """apply's confinement check asks the read rule (confine.root_entry_problem) of the image's own
    root: the same verdicts as ReadableRoots with that root alone, and its own messages."""
    from vdc_lake.effects.confinement import confinement_error

    root, outside = tmp_path / "root", tmp_path / "outside"
    random_image(root / "a.jpg")
    random_image(outside / "c.jpg")
    (root / "to_outside.jpg").symlink_to(outside / "c.jpg")
    (root / "sub").symlink_to(outside)
    readable = ReadableRoots([str(root)])

    def apply_error(rel: str, recorded: bool = True) -> str | None:
        op = {"op_id": 1, "image_id": 2, "root": str(root), "root_recorded": recorded, "src": f"{root}/{rel}",
              "dst": None, "action": "delete", "backup": None, "run_id": 3, "params": None}
        return confinement_error(op, None)

    for rel in ("a.jpg", "missing.jpg", "to_outside.jpg", "sub/c.jpg", "../outside/c.jpg", "./a.jpg"):
        assert (apply_error(rel) is None) == (readable.error(str(root), rel) is None), rel
    assert "lies outside the scanned root" in apply_error("sub/c.jpg")
    assert "which no scan run was given" in apply_error("a.jpg", recorded=False)

# -- sanitize -------------------------------------------------------------------------------------------

def test_sanitize_recheck_never_decodes_a_file_outside_the_roots(tree, run_cli):
    base, catalog, ids = tree
    _point_at_secret(base, catalog, ids["ok_0.jpg"])

    result = run_cli(["sanitize", "--recheck"], catalog)

    assert result.exit_code == 0, result.output
    run_id = catalog_rows(catalog, "SELECT max(run_id) FROM runs WHERE stage = 'sanitize'")[0][0]
    findings = {(image_id, rule): (action, detail) for image_id, rule, action, detail in catalog_rows(
        catalog, "SELECT image_id, rule, action, detail FROM findings WHERE run_id = ?", [run_id])}
    action, detail = findings[(ids["ok_0.jpg"], OUTSIDE_ROOT)]
    assert action == "none" and "which no scan run was given" in detail
    assert (ids["link.jpg"], OUTSIDE_ROOT) not in findings
    described = {i for (i,) in catalog_rows(catalog, "SELECT image_id FROM embeddings WHERE set_name = 'builtin'")}
    assert ids["ok_0.jpg"] not in described
    assert {ids["ok_1.jpg"], ids["ok_2.jpg"], ids["tiny.jpg"], ids["link.jpg"]} <= described  # the others are decoded
    unread = {i for (i,) in catalog_rows(catalog, "SELECT image_id FROM unreadable_images")}
    assert unread == {ids["ok_0.jpg"]}  # so never curated, exported or kept over a copy
    assert catalog_rows(catalog, "SELECT decoded FROM sanitize_checks WHERE run_id = ? AND image_id = ?",
                 [run_id, ids["ok_0.jpg"]]) == [(False,)]  # no verdict: the next run checks it again


# -- report ---------------------------------------------------------------------------------------------

def test_report_neither_thumbnails_nor_links_a_file_outside_the_roots(tree, run_cli):
    base, catalog, ids = tree
    assert run_cli(["sanitize"], catalog).exit_code == 0
    secret = _point_at_secret(base, catalog, ids["tiny.jpg"])  # a planned delete: on the sanitize page
    out = base / "report"

    result = run_cli(["report", "--out", out], catalog)

    assert result.exit_code == 0, result.output
    pages = "\n".join(p.read_text() for p in out.glob("*.html"))
    assert 'data-image-id="%d"' % ids["tiny.jpg"] in pages  # the card is there ...
    assert not list((out / "thumbs").glob(f"{ids['tiny.jpg']}-*.jpg"))  # ... without a picture of the file
    assert (out / "thumbs" / "_outside.jpg").is_file()
    assert secret.as_uri() not in pages and f'data-image-path="{secret}"' not in pages
    assert f"not read ({OUTSIDE_ROOT})" in pages


# -- predict --------------------------------------------------------------------------------------------

def test_predict_skips_a_file_outside_the_roots(tree, run_cli):
    base, catalog, ids = tree
    _point_at_secret(base, catalog, ids["ok_0.jpg"])

    result = run_cli(["predict", "--model", "builtin", "--kind", "descriptor", "--set", "probe"], catalog)

    assert result.exit_code == 0, result.output
    embedded = {i for (i,) in catalog_rows(catalog, "SELECT image_id FROM embeddings WHERE set_name = 'probe'")}
    assert ids["ok_0.jpg"] not in embedded
    assert {ids["ok_1.jpg"], ids["ok_2.jpg"], ids["link.jpg"]} <= embedded
    summary = catalog_rows(catalog, "SELECT summary FROM runs WHERE stage = 'predict' ORDER BY run_id DESC")[0][0]
    assert f'"{OUTSIDE_ROOT}": 1' in summary


# -- export ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["copy", "hardlink", "webdataset"])
def test_export_never_carries_the_bytes_of_a_file_outside_the_roots(tree, run_cli, fmt):
    base, catalog, ids = tree
    secret = _point_at_secret(base, catalog, ids["ok_0.jpg"])
    out = base / "out"

    result = run_cli(["export", "--to", out, "--format", fmt, "--view", "image_files"], catalog)

    assert secret.name in result.output or str(secret.parent) in result.output, result.output  # refused, named
    exported = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in exported if p.suffix == ".jpg" and p.read_bytes() == secret.read_bytes()]
    assert not [p for p in exported if os.path.samefile(p, secret)]
    if fmt == "webdataset":
        import tarfile

        for shard in out.glob("shard-*.tar"):
            with tarfile.open(shard) as tar:
                assert all(tar.extractfile(m).read() != secret.read_bytes() for m in tar.getmembers() if m.isfile())


# -- report --out: no writing through links ----------------------------------------------------------

@pytest.mark.parametrize("planted", ["index.html", "thumbs", "thumbs/_outside.jpg", "sanitize-1.html"])
def test_report_refuses_a_link_planted_where_it_writes(tree, run_cli, planted):
    base, catalog, ids = tree
    assert run_cli(["sanitize"], catalog).exit_code == 0
    _point_at_secret(base, catalog, ids["tiny.jpg"])
    victim = base / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine")
    out = base / "report"
    (out / "thumbs").mkdir(parents=True)
    link = out / planted
    if planted == "thumbs":
        link.rmdir()
        link.symlink_to(victim)
    else:
        link.symlink_to(victim / "notes.txt")
    before = tree_hashes(victim)

    result = run_cli(["report", "--out", out], catalog)

    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: report folder {out} holds a symbolic link at {link} (to {os.readlink(link)}), where the report "
        "writes; remove it or choose another --out")
    assert tree_hashes(victim) == before and os.listdir(victim) == ["notes.txt"]


def test_a_report_written_twice_is_written_anew_not_through_its_old_files(tree, run_cli):
    """Files are replaced by rename: a hard link to a report file elsewhere keeps its bytes."""
    base, catalog, _ = tree
    assert run_cli(["sanitize"], catalog).exit_code == 0
    out = base / "report"
    assert run_cli(["report", "--out", out], catalog).exit_code == 0
    kept = base / "kept-index.html"
    os.link(out / "index.html", kept)
    saved = kept.read_bytes()
    assert run_cli(["report", "--out", out], catalog).exit_code == 0
    assert kept.read_bytes() == saved and not os.path.samefile(kept, out / "index.html")
    assert re.search(r"<title>vdc-lake report", (out / "index.html").read_text())
    assert not [p for p in out.rglob("*.part")]
