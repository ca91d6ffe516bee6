"""Names and paths checked before they reach the filesystem (vdc_lake.fileops.confine): the name rule,
paths resolved with their symlinks, the overlap of a folder with the scanned roots, and which roots
a catalog's runs make readable. Real folders and links under tmp_path; one real catalog."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vdc_lake.catalog.connection import Catalog
from vdc_lake.errors import InvalidNameError
from vdc_lake.fileops.confine import (NAME_RULE, ReadableRoots, check_name, is_inside, is_plain_relative,
                                      recorded_backup_dirs, recorded_roots, root_overlap)


@pytest.fixture
def tree(tmp_path) -> dict[str, Path]:
    """root/ (a.jpg, sub/b.jpg, out_link -> outside/, file_link.jpg -> outside/c.jpg), outside/c.jpg,
    and into_root -> root/sub, a link beside both."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    for path in (root / "a.jpg", root / "sub" / "b.jpg", outside / "c.jpg"):
        path.write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "out_link").symlink_to(outside)
    (root / "file_link.jpg").symlink_to(outside / "c.jpg")
    (tmp_path / "into_root").symlink_to(root / "sub")
    return {"base": tmp_path, "root": root, "outside": outside}


@pytest.mark.parametrize("name", ["builtin", "sscd_v2", "A.b-c_9", "7", "x" * 64])
def test_a_name_that_follows_the_rule_is_returned_as_it_is(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "../etc", "a/b", ".hidden", "-x", "_x", "x" * 65, "a b", "café", "a\0b",
                                  None, 5, ["builtin"]])
def test_a_name_that_could_name_a_path_is_refused_with_the_rule(name):
    with pytest.raises(InvalidNameError) as err:
        check_name(name, "score name")
    assert str(err.value) == f"score name {name!r} is not allowed: use {NAME_RULE} (e.g. builtin, sscd_v2)"


@pytest.mark.parametrize("rel_path, plain", [
    ("a.jpg", True), ("sub/b.jpg", True), ("..hidden/x..jpg", True),
    ("", False), ("/etc/passwd", False), ("../a.jpg", False), ("sub/../../a.jpg", False), ("./a.jpg", False),
    ("sub//b.jpg", False), ("sub/", False), ("a\0.jpg", False),
])
def test_a_plain_relative_path_cannot_climb_out_of_its_root(rel_path, plain):
    assert is_plain_relative(rel_path) is plain


def test_is_inside_follows_every_link(tree):
    base, root, outside = tree["base"], tree["root"], tree["outside"]
    assert is_inside(root / "a.jpg", root)
    assert is_inside(root, root)
    assert is_inside(root / "sub" / "not_yet_written.jpg", root)  # a missing tail is allowed
    assert not is_inside(root / ".." / "outside" / "c.jpg", root)
    assert not is_inside(root / "out_link" / "c.jpg", root)  # a folder link out of the root
    assert not is_inside(root / "file_link.jpg", root)  # the file itself resolves outside
    assert is_inside(base / "into_root" / "b.jpg", root)  # a link from elsewhere into the root
    assert is_inside(outside / "c.jpg", base / "root" / "out_link")  # the folder is resolved too


def test_root_overlap_says_inside_or_contains_whichever_way_it_is_written(tree, monkeypatch):
    base, root, outside = tree["base"], tree["root"], tree["outside"]
    real = Path(os.path.realpath(root))
    assert root_overlap([str(root)], root / "sub" / "backup") == ("inside", str(root), real)
    assert root_overlap([str(root)], base) == ("contains", str(root), real)
    assert root_overlap([str(root)], root) == ("inside", str(root), real)
    assert root_overlap([str(root)], base / "into_root" / "export") == ("inside", str(root), real)
    assert root_overlap([str(root / "sub")], base / "into_root") == ("inside", str(root / "sub"), real / "sub")
    assert root_overlap([str(root)], outside / "export") is None
    assert root_overlap([str(outside), str(root)], base / "elsewhere") is None
    assert root_overlap([str(base / "into_root")], root / "sub" / "x") == ("inside", str(base / "into_root"),
                                                                           real / "sub")
    monkeypatch.chdir(root)  # a relative folder is taken from the working folder
    assert root_overlap([str(root)], "backup") == ("inside", str(root), real)
    assert root_overlap([str(outside)], "../outside/x")[0] == "inside"


def test_readable_roots_read_inside_the_recorded_roots_only(tree):
    base, root, outside = tree["base"], tree["root"], tree["outside"]
    readable = ReadableRoots([str(root)])
    assert readable.error(str(root), "sub/b.jpg") is None
    assert readable.error(str(root), "file_link.jpg") is None  # the owner's own link to a file: read through
    assert readable.error(str(base / "root" / "sub" / ".."), "a.jpg") is None  # the root as written, resolved
    assert "outside every scanned root" in readable.error(str(root), "out_link/c.jpg")
    assert readable.error(str(outside), "c.jpg").startswith(f"the catalog names the root {str(outside)!r}, "
                                                           "which no scan run was given")
    assert "which no scan run was given" in readable.error(None, "a.jpg")
    assert readable.error(str(root), None) == (f"the catalog names the path None under {root}, which is not a "
                                               "plain relative path (the catalog was edited); not read")
    assert readable.path_error(str(root / "sub" / "b.jpg")) is None
    assert readable.path_error(str(root) + "_twin/a.jpg") == f"{str(root) + '_twin/a.jpg'!r} lies in no scanned root; not read"
    assert readable.path_error(None) == "None lies in no scanned root; not read"
    nested = ReadableRoots([str(root), str(root / "sub")])  # the longest root a path starts with decides
    assert nested.path_error(str(root / "sub" / "b.jpg")) is None
    assert nested.is_inside_a_root(os.path.realpath(root / "sub" / "b.jpg"))
    assert not nested.is_inside_a_root(os.path.realpath(outside / "c.jpg"))


def test_the_roots_and_backup_folders_a_catalog_trusts_are_those_its_runs_recorded(tree, tmp_path):
    root, outside = tree["root"], tree["outside"]
    with Catalog(tmp_path / "catalog.duckdb") as catalog:
        catalog.begin_run("scan", {"roots": [str(root)]})  # interrupted: its roots count too
        done = catalog.begin_run("scan", {"roots": ["relative/root", str(root / "sub"), "/nul\0root", 7]})
        catalog.finish_run(done)
        edited = catalog.begin_run("scan", {"roots": [str(outside)]})
        catalog.execute("UPDATE runs SET params = '[1, 2]' WHERE run_id = ?", [edited])
        catalog.begin_run("apply:dedup", {"backup_dir": str(tmp_path / "bk")})
        newest = catalog.begin_run("apply:sanitize", {"backup_dir": str(tmp_path / "bk")})
        catalog.begin_run("apply:rotation", {"backup_dir": "relative/bk"})
        catalog.begin_run("export", {"backup_dir": str(tmp_path / "not_an_apply")})

        assert recorded_roots(catalog) == {str(root), str(root / "sub")}
        assert recorded_backup_dirs(catalog) == {str(tmp_path / "bk"): newest}
        readable = ReadableRoots.of(catalog)
    assert readable.error(str(root), "a.jpg") is None
    assert "which no scan run was given" in readable.error(str(outside), "c.jpg")
    assert "which no scan run was given" in readable.error("relative/root", "a.jpg")
