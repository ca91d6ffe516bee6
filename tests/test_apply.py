"""Apply + restore: journaled, backed-up file operations and their exact undo."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.conftest import default_config, file_hash, image_rows, tree_hashes
import pyarrow.compute as pc

from vdc_lake.effects.apply import Plan, apply_plan, make_plan, restore
from vdc_lake.catalog.connection import Catalog
from vdc_lake.review.decisions import decision_query
from vdc_lake.errors import PlanError
from vdc_lake.stages.sanitize import sanitize
from vdc_lake.stages.scan import scan

DELETED = ["broken/bomb.png", "broken/cut_off.jpg", "broken/empty.jpg", "broken/notes.jpg", "broken/page.png",
           "sizes/panorama_1600x150.jpg", "sizes/tall_100x900.jpg", "sizes/tiny_40x60.jpg"]
RESIZED = "sizes/huge_3600x1400.jpg"
RECOMPRESSED = "sizes/scan_2000x1800.bmp"


@pytest.fixture
def sanitized(sample_tree, catalog_path):
    """The sample tree, scanned and sanitized with the default rules; returns (tree, original hashes)."""
    config = default_config(catalog_path.parent)
    with Catalog(catalog_path) as catalog:
        scan(catalog, [sample_tree.root], extensions=config.values["scan"]["extensions"], workers=2, quiet=True)
        sanitize(catalog, config.section("sanitize"), workers=2, quiet=True)
    return sample_tree, tree_hashes(sample_tree.root)


def _plan(catalog, catalog_path, *, without_recompress=False):
    source_sql, params, options = decision_query("sanitize", default_config(catalog_path.parent))
    plan = make_plan(catalog, "sanitize", source_sql, params, options)
    if without_recompress:  # WebP method 6 on 3.6 Mpx costs ~2 s; tests about other things skip it
        plan = Plan(plan.decision, plan.ops.filter(pc.not_equal(plan.ops["action"], "recompress")), plan.options)
    return plan


def _journal(catalog_path) -> list[dict]:
    with Catalog(catalog_path, read_only=True) as catalog:
        return catalog.arrow("SELECT * FROM journal ORDER BY op_id").to_pylist()


def test_plan_counts_and_examples(sanitized, catalog_path):
    tree, _ = sanitized
    with Catalog(catalog_path) as catalog:
        plan = _plan(catalog, catalog_path)
    assert plan.counts() == {"delete": 8, "recompress": 1, "resize": 1}
    assert len(plan) == 10
    by_src = {ex["src"]: ex for ex in plan.ops.to_pylist()}
    assert sorted(by_src) == sorted(str(tree.root / p) for p in DELETED + [RESIZED, RECOMPRESSED])
    assert by_src[str(tree.root / RESIZED)]["reason"] == "width_too_large: width 3600px > 3200px"
    assert plan.examples(3)[0].keys() == {"action", "src", "reason"}


def test_apply_without_backup_dir_is_refused_and_changes_nothing(sanitized, catalog_path):
    tree, original = sanitized
    with Catalog(catalog_path) as catalog:
        plan = _plan(catalog, catalog_path)
        with pytest.raises(PlanError) as err:
            apply_plan(catalog, plan, backup_dir=None, quiet=True)
    assert str(err.value) == (
        "apply needs --backup-dir DIR (or an explicit --no-backup to change files without a copy)")
    assert tree_hashes(tree.root) == original
    assert _journal(catalog_path) == []


def test_apply_with_backup_then_restore_is_byte_identical(sanitized, catalog_path, tmp_path):
    tree, original = sanitized
    backup_dir = tmp_path / "backup"
    rows_before = image_rows(catalog_path)
    with Catalog(catalog_path) as catalog:
        summary = apply_plan(catalog, _plan(catalog, catalog_path), backup_dir=backup_dir, quiet=True)
        run_id = summary.run_id
        assert len(_plan(catalog, catalog_path)) == 0  # nothing left to do
    assert (summary.planned, summary.done, summary.skipped, summary.failed, summary.errors) == (10, 10, 0, 0, [])

    root_in_backup = backup_dir / f"run-{run_id}" / str(tree.root.resolve()).lstrip("/")
    for rel in DELETED + [RESIZED, RECOMPRESSED]:
        assert file_hash(root_in_backup / rel) == original[rel], rel  # verified copy of the original
    for rel in DELETED:
        assert not tree.path(rel).exists(), rel

    with Image.open(tree.path(RESIZED)) as img, Image.open(root_in_backup / RESIZED) as old:
        assert max(img.size) <= 3200 and img.format == "JPEG"
        assert img.size == (3200, 1244)  # 3600x1400 scaled by 8/9, aspect kept
        assert img.quantization == old.quantization  # the encoder's quality is kept
    webp = RECOMPRESSED.replace(".bmp", ".webp")
    assert not tree.path(RECOMPRESSED).exists()
    with Image.open(tree.path(webp)) as img:
        assert (img.format, img.size) == ("WEBP", (2000, 1800))

    rows = image_rows(catalog_path)
    for rel in DELETED:
        assert (rows[rel]["present"], rows[rel]["updated_run"]) == (False, run_id)
    assert rows[RESIZED]["version"] == rows_before[RESIZED]["version"] + 1
    assert (rows[RESIZED]["width"], rows[RESIZED]["height"]) == (3200, 1244)
    assert rows[RESIZED]["content_hash"] == file_hash(tree.path(RESIZED))
    assert RECOMPRESSED not in rows
    assert rows[webp]["image_id"] == rows_before[RECOMPRESSED]["image_id"]
    assert (rows[webp]["format"], rows[webp]["version"], rows[webp]["present"]) == ("WEBP", 2, True)
    assert rows[webp]["content_hash"] == file_hash(tree.path(webp))

    journal = _journal(catalog_path)
    assert {j["state"] for j in journal} == {"done"}
    for j in journal:
        rel = j["src"][len(str(tree.root.resolve())) + 1:]
        assert j["checksum_before"] == original[rel]
        assert j["backup"] == str(root_in_backup / rel)
        after = None if j["action"] == "delete" else file_hash(j["dst"])
        assert j["checksum_after"] == after
    with Catalog(catalog_path, read_only=True) as catalog:
        assert catalog.scalar("SELECT status FROM runs WHERE run_id = ?", [run_id]) == "done"

    with Catalog(catalog_path) as catalog:
        dry = restore(catalog, dry_run=True, quiet=True)
        assert dry.restored == 10
        assert tree.path(RECOMPRESSED).exists() is False  # a dry run touches nothing
        back = restore(catalog, quiet=True)
    assert (back.restored, back.already_original, back.failed) == (10, 0, 0)
    assert tree_hashes(tree.root) == original
    rows = image_rows(catalog_path)
    assert sorted(rows) == sorted(rows_before)
    for rel, before in rows_before.items():
        assert rows[rel]["present"] is True, rel
        assert rows[rel]["content_hash"] == before["content_hash"], rel
        assert rows[rel]["image_id"] == before["image_id"], rel
        assert rows[rel]["version"] == before["version"], rel  # the same bytes: the same version again
    assert {j["state"] for j in _journal(catalog_path)} == {"restored"}


def test_restore_refuses_a_backup_path_outside_the_backup_root(sanitized, catalog_path, tmp_path, run_cli):
    tree, _ = sanitized
    with Catalog(catalog_path) as catalog:
        apply_plan(catalog, _plan(catalog, catalog_path, without_recompress=True), backup_dir=tmp_path / "backup",
                   quiet=True)
    after_apply = tree_hashes(tree.root)
    outside = tmp_path / "backup" / ".." / "elsewhere" / "x.jpg"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.jpg").write_bytes(b"not the original")
    op_id = _journal(catalog_path)[0]["op_id"]
    result = run_cli(["sql", "--write", f"UPDATE journal SET backup = '{outside}' WHERE op_id = {op_id}"],
                     catalog_path)
    assert result.exit_code == 0, result.output

    result = run_cli(["restore"], catalog_path)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: refusing to restore op {op_id}: backup path {outside} escapes the backup root "
        f"{(tmp_path / 'backup').resolve()}\n")
    assert tree_hashes(tree.root) == after_apply  # refused before touching anything
    assert {j["state"] for j in _journal(catalog_path)} == {"done"}


def test_no_backup_must_be_explicit_and_cannot_be_restored(sanitized, catalog_path):
    tree, original = sanitized
    with Catalog(catalog_path) as catalog:
        plan = _plan(catalog, catalog_path, without_recompress=True)
        summary = apply_plan(catalog, plan, backup_dir=None, no_backup=True, quiet=True)
        assert summary.done == 9
        assert catalog.scalar("SELECT count(*) FROM journal WHERE backup IS NOT NULL") == 0
        dry = restore(catalog, dry_run=True, quiet=True)
        back = restore(catalog, quiet=True)
    assert (dry.restored, dry.no_backup, dry.failed) == (0, 9, 0)  # the dry run tells the truth
    assert (back.restored, back.no_backup, back.failed) == (0, 9, 0)
    assert back.errors[0].endswith(": changed with --no-backup; nothing to restore from")
    assert not tree.path(DELETED[0]).exists()


def test_a_file_changed_after_scanning_is_skipped(sanitized, catalog_path, tmp_path):
    tree, original = sanitized
    victim = tree.path("sizes/tiny_40x60.jpg")
    victim.write_bytes(victim.read_bytes() + b"\0")  # changed behind the catalog's back
    with Catalog(catalog_path) as catalog:
        plan = _plan(catalog, catalog_path, without_recompress=True)
        summary = apply_plan(catalog, plan, backup_dir=tmp_path / "backup", quiet=True)
    assert (summary.done, summary.skipped) == (8, 1)
    assert summary.errors == [f"{victim} changed since it was scanned; run `vdc-lake scan` and plan again"]
    assert victim.exists()
    states = {j["src"]: j["state"] for j in _journal(catalog_path)}
    assert states[str(victim)] == "skipped"
