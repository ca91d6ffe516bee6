"""Sanitize: every planted defect becomes a finding with a readable reason and the right action."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path


from tests.conftest import catalog_rows, default_config, image_rows, noise_jpeg, ok_output
from vdc_lake.fileops import probe as files
from vdc_lake.catalog.connection import Catalog
from vdc_lake.fileops.probe import decode_check, inspect_header
from vdc_lake.stages.sanitize import sanitize
from vdc_lake.stages.scan import scan

# Per planted kind: {path: {rule: (action, detail pattern)}} for every finding the file must
# get, and nothing else; the image's action in sanitize_actions is the strongest one.
EXPECTED = {
    "truncated_jpeg": {"broken/cut_off.jpg": {
        "truncated": ("delete", r"decoding failed \(image file is truncated \(\d+ bytes not processed\)\)")}},
    "zero_byte": {"broken/empty.jpg": {"zero_byte": ("delete", r"the file is empty \(0 bytes\)")}},
    "non_image": {
        "broken/notes.jpg": {"not_an_image": ("delete", r"the bytes are text, not a known image format")},
        "broken/page.png": {
            "not_an_image": ("delete", r"the bytes are an HTML/XML document, not a known image format")},
    },
    "tiny": {"sizes/tiny_40x60.jpg": {"width_too_small": ("delete", r"width 40px < 80px"),
                                      "height_too_small": ("delete", r"height 60px < 80px")}},
    "panoramic": {
        "sizes/panorama_1600x150.jpg": {"aspect_too_large": ("delete", r"aspect ratio 10\.667 > 6\.667")},
        "sizes/tall_100x900.jpg": {"aspect_too_small": ("delete", r"aspect ratio 0\.111 < 0\.15")},
    },
    "oversized_pixels": {"sizes/huge_3600x1400.jpg": {"width_too_large": ("resize", r"width 3600px > 3200px")}},
    "oversized_file": {"sizes/scan_2000x1800.bmp": {
        "file_too_large": ("recompress", r"file is 10\.\d\d MB > 10\.0 MB")}},
    "cmyk": {"modes/cmyk.jpg": {"unusual_mode": ("none", r"mode CMYK")}},
    "sixteen_bit": {"modes/depth16.png": {"unusual_mode": ("none", r"mode I;16")}},
    "palette_transparency": {"modes/palette_alpha.png": {"unusual_mode": ("none", r"mode P with transparency")}},
    "animated": {
        "modes/anim.gif": {"animated": ("none", r"3 frames; only the first is used for training")},
        "modes/anim.webp": {"animated": ("none", r"3 frames; only the first is used for training")},
    },
    "decompression_bomb": {"broken/bomb.png": {
        "decompression_bomb": ("delete", r"225,000,000 pixels \(15000x15000\) exceed the limit of 89,478,485"),
        "width_too_large": ("resize", r"width 15000px > 3200px"),
        "height_too_large": ("resize", r"height 15000px > 3200px"),
        "unusual_mode": ("none", r"mode 1"),
    }},
    "exif_rotated": {"modes/exif_orientation6.jpg": {
        "exif_orientation": ("none", r"EXIF orientation 6: pixels are stored rotated/flipped")}},
}
ACTION_RANK = {"delete": 0, "resize": 1, "recompress": 2}


def _run(catalog_path, root, **kwargs):
    config = default_config(catalog_path.parent)
    rules = config.section("sanitize", **{k: kwargs.pop(k) for k in list(kwargs) if k in config.values["sanitize"]})
    with Catalog(catalog_path) as catalog:
        scan(catalog, [root], extensions=config.values["scan"]["extensions"], workers=2, quiet=True)
        return sanitize(catalog, rules, workers=2, quiet=True, **kwargs)


def _findings(catalog_path) -> dict[str, dict[str, tuple[str, str]]]:
    """{rel_path: {rule: (action, detail)}} from the latest check of each present image."""
    with Catalog(catalog_path, read_only=True) as catalog:
        rows = catalog.rows(
            """SELECT i.rel_path, f.rule, f.action, f.detail FROM findings f
               JOIN images i ON i.image_id = f.image_id AND i.version = f.version AND i.present
               WHERE f.run_id = (SELECT max(run_id) FROM sanitize_checks c WHERE c.image_id = f.image_id)""")
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for rel, rule, action, detail in rows:
        assert rule not in out.setdefault(rel, {}), (rel, rule)
        out[rel][rule] = (action, detail)
    return out


def _actions(catalog_path) -> dict[str, str]:
    with Catalog(catalog_path, read_only=True) as catalog:
        return dict(catalog.rows("SELECT i.rel_path, a.action FROM sanitize_actions a JOIN images i USING (image_id)"))


def test_every_planted_defect_is_a_finding_with_reason_and_action(sample_tree, catalog_path):
    root = sample_tree.root
    os.symlink(root / "gone" / "target.jpg", root / "broken" / "dangling.jpg")
    os.mkfifo(root / "broken" / "pipe.jpg")  # reading it would block forever
    os.mkdir(root / "broken" / "folder.jpg")  # a folder with an image name is walked, not read
    (root / "broken" / "folder.jpg" / "inner.jpg").write_bytes(sample_tree.path("scenes/scene_0000.jpg").read_bytes())
    extra = {
        "broken/dangling.jpg": {"broken_symlink": ("none", r"the link's target does not exist")},
        "broken/pipe.jpg": {"unreadable": ("none", r"not a regular file \(a named pipe\)")},
    }
    if os.geteuid() != 0:  # root reads files whatever their permission bits say
        locked = root / "broken" / "locked.jpg"
        locked.write_bytes(sample_tree.path("scenes/scene_0001.jpg").read_bytes())
        locked.chmod(0)
        extra["broken/locked.jpg"] = {"unreadable": ("none", r"cannot read the file \(Permission denied\)")}

    summary = _run(catalog_path, root)

    expected = {rel: rules for kind in EXPECTED.values() for rel, rules in kind.items()} | extra
    assert set(EXPECTED) == {k for k in sample_tree.manifest if k not in (
        "clean", "copy_of", "rotation_ccw", "exact_copy", "resized_copy", "recompressed_copy", "rotated_copy")}
    for kind, paths in EXPECTED.items():
        assert sorted(paths) == sorted(sample_tree.kind(kind)), kind
    found = _findings(catalog_path)
    assert sorted(found) == sorted(expected)  # clean images, copies and broken/folder.jpg/inner.jpg: none
    for rel, rules in expected.items():
        assert set(found[rel]) == set(rules), rel
        for rule, (action, pattern) in rules.items():
            got_action, detail = found[rel][rule]
            assert got_action == action, (rel, rule)
            assert re.fullmatch(pattern, detail), (rel, rule, detail)
            assert "Traceback" not in detail and "\n" not in detail
    actions = _actions(catalog_path)
    for rel, rules in expected.items():
        acted = sorted((a for a, _ in rules.values() if a != "none"), key=ACTION_RANK.get)
        assert actions.get(rel) == (acted[0] if acted else None), rel
    assert summary.images_with_findings == len(expected)
    with Catalog(catalog_path, read_only=True) as catalog:
        assert catalog.rows("SELECT DISTINCT stage, status FROM runs ORDER BY 1") == [
            ("sanitize", "done"), ("scan", "done")]


def test_quick_misses_the_truncated_jpeg_and_full_mode_catches_it(sample_tree, catalog_path):
    truncated = sample_tree.kind("truncated_jpeg")[0]
    quick = _run(catalog_path, sample_tree.root, quick=True)
    assert quick.decoded == 0
    assert truncated not in _findings(catalog_path)
    assert "broken/empty.jpg" in _findings(catalog_path)  # header problems are found either way
    with Catalog(catalog_path, read_only=True) as catalog:
        assert catalog.scalar("SELECT bool_and(NOT decoded) FROM sanitize_checks")

    full = _run(catalog_path, sample_tree.root)  # not --recheck: only the undecoded checks are redone
    assert full.checked == quick.checked and full.decoded > 0
    assert _findings(catalog_path)[truncated]["truncated"][0] == "delete"
    assert _actions(catalog_path)[truncated] == "delete"
    found, actions = _findings(catalog_path), _actions(catalog_path)

    again = _run(catalog_path, sample_tree.root)  # header rules judged again; decode verdicts cached
    assert (again.checked, again.decoded, again.cached) == (full.checked, 0, full.decoded)
    assert (_findings(catalog_path), _actions(catalog_path)) == (found, actions)
    quick_again = _run(catalog_path, sample_tree.root, quick=True)  # --quick keeps the cached verdicts
    assert (quick_again.decoded, quick_again.cached) == (0, full.decoded)
    assert (_findings(catalog_path), _actions(catalog_path)) == (found, actions)
    recheck = _run(catalog_path, sample_tree.root, recheck=True)
    assert (recheck.checked, recheck.decoded, recheck.cached) == (full.checked, full.decoded, 0)
    assert (_findings(catalog_path), _actions(catalog_path)) == (found, actions)


def test_rules_come_from_the_given_section(sample_tree, catalog_path):
    _run(catalog_path, sample_tree.root, min_width=700, max_file_size_mb=50.0)
    found = _findings(catalog_path)
    assert "sizes/scan_2000x1800.bmp" not in found  # 10.3 MB is under the 50 MB given
    narrow = [rel for rel, rules in found.items() if "width_too_small" in rules]
    assert len(narrow) > 5
    for rel in narrow:
        assert re.fullmatch(r"width \d+px < 700px", found[rel]["width_too_small"][1])
    with Catalog(catalog_path, read_only=True) as catalog:
        params = catalog.scalar("SELECT params FROM runs WHERE stage = 'sanitize'")
    assert '"min_width": 700' in params


def test_unreadable_file_reason(sample_tree, monkeypatch):
    """Permission denial, simulated (tests may run as root, who can read anything)."""
    target = str(sample_tree.path("scenes/scene_0000.jpg"))
    real_open = open

    def deny(path, *args, **kwargs):
        if str(path) == target:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(files, "open", deny, raising=False)
    facts = inspect_header(target)
    assert facts["header_error"] == "unreadable: cannot read the file (Permission denied)"
    assert facts["content_hash"] is None


def test_decode_check_reasons(sample_tree):
    truncated = decode_check(str(sample_tree.path("broken/cut_off.jpg")), max_pixels=10**8, with_descriptor=False)
    assert truncated.error.startswith("truncated: decoding failed (image file is truncated")
    good = decode_check(str(sample_tree.path("scenes/scene_0000.jpg")), max_pixels=10**8, with_descriptor=False)
    assert (good.error, good.descriptor) == (None, None)
    bomb = decode_check(str(sample_tree.path("broken/bomb.png")), max_pixels=10**6, with_descriptor=False)
    assert bomb.error is None  # not decoded: it is a decompression_bomb finding already


def test_header_of_a_png_bomb_is_read_without_decoding(sample_tree, monkeypatch):
    from PIL import PngImagePlugin

    loads = []
    real_load = PngImagePlugin.PngImageFile.load
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", lambda self: loads.append(1) or real_load(self))
    facts = inspect_header(str(sample_tree.path("broken/bomb.png")))
    assert (facts["width"], facts["height"], facts["header_error"]) == (15000, 15000, None)
    assert loads == []  # decoding its 225 Mpx would take half a second or more per scan


# -- sanitize: a verdict belongs to the bytes scan recorded ------------------------------------




def _latest_findings(catalog_path: Path, rel_path: str) -> dict[str, str]:
    """{rule: action} of the newest sanitize check of rel_path's current version."""
    return dict(catalog_rows(catalog_path, """
        SELECT f.rule, f.action FROM findings f JOIN images i USING (image_id, version)
        WHERE i.rel_path = ? AND f.run_id = (SELECT max(run_id) FROM sanitize_checks c
                                             WHERE c.image_id = i.image_id AND c.version = i.version)""",
                      [rel_path]))


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
        noise_jpeg(images / f"photo_{i}.jpg", i)
    ok_output(run_cli(["scan", images], catalog))
    ok_output(run_cli(["sanitize"], catalog))
    victim = images / "photo_1.jpg"
    _swap_keeping_stat(victim, b"x" * victim.stat().st_size)
    assert "3 unchanged" in ok_output(run_cli(["scan", images], catalog))

    out = ok_output(run_cli(["sanitize", "--recheck"], catalog))
    assert "1 file(s) changed since the scan" in out
    assert _latest_findings(catalog, "photo_1.jpg") == {"changed": "none"}
    assert "0 operations" in ok_output(run_cli(["plan", "sanitize"], catalog))

    assert "1 changed" in ok_output(run_cli(["scan", images], catalog))  # read again: a new version
    ok_output(run_cli(["sanitize"], catalog))
    assert _latest_findings(catalog, "photo_1.jpg") == {"not_an_image": "delete"}
    ok_output(run_cli(["apply", "sanitize", "--backup-dir", tmp_path / "bk", "--apply"], catalog))
    assert sorted(p.name for p in images.iterdir()) == ["photo_0.jpg", "photo_2.jpg"]
    assert image_rows(catalog)["photo_1.jpg"]["present"] is False


def test_a_file_swapped_before_its_first_decode_gets_no_verdict_for_the_scanned_bytes(tmp_path, run_cli):
    """A truncated file scanned, then replaced by a good one keeping size and mtime: the clean
    decode must not be cached as the verdict on the truncated bytes (the old code did)."""
    images, catalog = tmp_path / "images", tmp_path / "catalog.duckdb"
    noise_jpeg(images / "good.jpg", 0)
    noise_jpeg(images / "cut.jpg", 1)
    whole = (images / "cut.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    ok_output(run_cli(["scan", images], catalog))
    repaired = whole[: len(whole) // 2 - 2] + b"\xff\xd9"  # same length, decodes as far as it goes
    _swap_keeping_stat(images / "cut.jpg", repaired)
    ok_output(run_cli(["sanitize"], catalog))
    assert _latest_findings(catalog, "cut.jpg") == {"changed": "none"}
    assert catalog_rows(catalog, "SELECT decoded FROM sanitize_checks s JOIN images i USING (image_id, version) "
                          "WHERE i.rel_path = 'cut.jpg'") == [(False,)]
