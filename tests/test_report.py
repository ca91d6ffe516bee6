"""Report: built from a catalog that went through every stage, then opened in headless Chromium.

The browser is driven over the DevTools protocol on a pipe (tests/browser.py), so the test needs
nothing beyond the standard library and a `chromium` binary; it is skipped only when no such
binary exists.
"""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from browser import PAGE_WIDTH, visit_all
from test_export import build_curation_catalog
from tests.conftest import copy_catalog
from vdc_lake.effects.apply import apply_plan, make_plan
from vdc_lake.catalog.connection import Catalog
from vdc_lake.config.loader import Config
from vdc_lake.review.decisions import decision_query
from vdc_lake.stages.overrides import set_overrides
from vdc_lake.review.render import svg_histogram
from vdc_lake.review.report import build_report
from vdc_lake.stages.scan import scan
from vdc_lake.review.status import catalog_status

HOSTILE_NAME = 'x<script>alert("x")\'q.png'  # a file name may hold anything but a slash
EXAMPLE_CUT = 0.2  # the bundled filter_by_examples.threshold
SCORE_CUT = 0.3


def _add_filter_runs(catalog: Catalog, examples_dir: Path) -> None:
    """Stand-ins for `filter examples` and `score` (as those stages write them), and a score setting:
    every 5th image near an unwanted example (distance 0.05 .. 0.19), every 4th under the score cut."""
    rows = catalog.rows("SELECT image_id, version FROM image_files ORDER BY image_id")
    ids = np.array([r[0] for r in rows], np.int64)
    versions = np.array([r[1] for r in rows], np.int32)
    example = examples_dir / "unwanted.png"
    Image.new("RGB", (96, 96), (10, 200, 10)).save(example)
    run = catalog.begin_run("filter-examples", {"set": "builtin", "examples": str(examples_dir), "metric": "cosine"})
    distance = np.where(ids % 5 == 0, 0.05 + (ids % 15) / 100, 0.6).astype(np.float32)
    catalog.insert_arrow("example_distances", pa.table({
        "run_id": pa.array([run] * len(ids), pa.int64()), "set_name": ["builtin"] * len(ids),
        "image_id": pa.array(ids), "version": pa.array(versions), "distance": pa.array(distance),
        "example": [str(example)] * len(ids)}))
    catalog.finish_run(run)
    run = catalog.begin_run("score", {"name": "aesthetic", "set": "builtin"})
    score = np.where(ids % 4 == 0, 0.1 + (ids % 7) / 100, 0.8).astype(np.float32)
    catalog.insert_arrow("scores", pa.table({
        "run_id": pa.array([run] * len(ids), pa.int64()), "name": ["aesthetic"] * len(ids),
        "image_id": pa.array(ids), "version": pa.array(versions), "score": pa.array(score)}))
    catalog.finish_run(run)
    catalog.execute("UPDATE settings SET value = 'aesthetic', source = 'test' "
                    "WHERE section = 'filter_by_score' AND key = 'name'")
    catalog.execute("UPDATE settings SET value = ?, source = 'test' WHERE section = 'filter_by_score' "
                    "AND key = 'min_score'", [str(SCORE_CUT)])


OVERRIDE_REASON = '<b>"mine"</b> & yours'


def _add_overrides(catalog: Catalog) -> tuple[int, int]:
    """`override keep` on an image dedup would delete, `override drop` on one every decision keeps:
    (kept id, dropped id)."""
    keep = catalog.scalar("SELECT min(image_id) FROM dedup_actions() WHERE action = 'delete'")
    drop = catalog.scalar("SELECT max(image_id) FROM curated")
    set_overrides(catalog, [str(keep)], "keep", reason=OVERRIDE_REASON)
    set_overrides(catalog, [str(drop)], "drop", reason=OVERRIDE_REASON)
    return keep, drop


@pytest.fixture(scope="module")
def curated_catalog(tmp_path_factory) -> Path:
    """The export tests' catalog (sample data through every stage, fake model stages), an example
    filter and a score filter, and an exact copy of an image under a hostile file name."""
    base = tmp_path_factory.mktemp("report")
    catalog_path, root, manifest = build_curation_catalog(base)
    shutil.copyfile(root / manifest["clean"][0], root / HOSTILE_NAME)
    (base / "examples").mkdir()
    with Catalog(catalog_path) as catalog:
        scan(catalog, [root], extensions=[".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"],
             workers=1, quiet=True)
        _add_filter_runs(catalog, base / "examples")
        _add_overrides(catalog)
    return catalog_path


@pytest.fixture(scope="module")
def report_dir(curated_catalog) -> Path:
    out = curated_catalog.parent / "report"
    with Catalog(curated_catalog, read_only=True) as catalog:
        build_report(catalog, out, thumbnails=6, workers=2, quiet=True)
    return out


@pytest.fixture(scope="module")
def applied_report_dir(curated_catalog, tmp_path_factory) -> Path:
    """The same catalog after `apply dedup` (with backups) and `apply examples --no-backup`."""
    base = tmp_path_factory.mktemp("applied")
    catalog_path = base / "catalog.duckdb"
    data = curated_catalog.parent / "data"
    copy_root = base / "data"
    shutil.copytree(data, copy_root, symlinks=True)
    copy_catalog(curated_catalog, catalog_path)
    with Catalog(catalog_path) as catalog:  # the copy's images live under base/data
        catalog.execute("UPDATE images SET root = ? WHERE root = ?", [str(copy_root.resolve()), str(data.resolve())])
        # apply trusts a root only if a scan run was given it: the copy's scan runs name the copy
        catalog.execute("UPDATE runs SET params = replace(params::VARCHAR, ?, ?)::JSON WHERE stage = 'scan'",
                        [str(data.resolve()), str(copy_root.resolve())])
        config = Config.load(search_dir=base)
        for stage, kwargs in (("dedup", {"backup_dir": base / "backup"}), ("examples", {"no_backup": True,
                                                                                         "backup_dir": None})):
            sql, params, options = decision_query(stage, config)
            apply_plan(catalog, make_plan(catalog, stage, sql, params, options), quiet=True, **kwargs)
    with Catalog(catalog_path, read_only=True) as catalog:
        build_report(catalog, base / "report", thumbnails=4, workers=2, quiet=True)
    return base / "report"


def _pages(report: Path) -> list[Path]:
    return [report / "index.html"] + sorted(p for p in report.glob("*.html") if p.name != "index.html")


def test_every_page_renders_in_chromium_with_every_image_and_no_errors(chromium, report_dir, applied_report_dir,
                                                                       tmp_path):
    pages = _pages(report_dir) + _pages(applied_report_dir)
    assert len(pages) > 12 and any(p.name.startswith("history-") for p in pages)
    problems, states, png = visit_all(chromium, pages, tmp_path)

    assert problems == []
    for page in pages:
        images = states[str(page)]
        assert len(images) == page.read_text(encoding="utf-8").count("<img "), page
        broken = [i["src"] for i in images if not (i["complete"] and i["naturalWidth"] > 0 and i["naturalHeight"] > 0)]
        assert broken == [], page
    assert len(states[str(report_dir / "index.html")]) > 30
    (tmp_path / "report.png").write_bytes(png)
    with Image.open(tmp_path / "report.png") as shot:
        assert PAGE_WIDTH - 20 <= shot.width <= PAGE_WIDTH and shot.height > 2000
        assert shot.convert("L").getextrema()[0] < 100  # something was drawn


def _planned_in_pages(report: Path, slug: str) -> list[int]:
    ids = []
    for page in sorted(report.glob(f"{slug}-*.html")):
        ids += [int(i) for i in re.findall(r'data-image-id="(\d+)" data-planned="1"', page.read_text(encoding="utf-8"))]
    return ids


DECISION_DELETES = {
    "sanitize": "SELECT image_id FROM sanitize_actions",
    "rotation": "SELECT image_id FROM rotation_actions() WHERE action <> 'none'",
    "dedup": "SELECT image_id FROM dedup_actions() WHERE action = 'delete'",
    "examples": "SELECT image_id FROM example_actions() WHERE action = 'delete'",
    "score": "SELECT image_id FROM score_actions(setting('filter_by_score', 'name')) WHERE action = 'delete'",
    "sample": "SELECT image_id FROM sample_actions() WHERE action = 'delete'",
    "override": "SELECT image_id FROM override_actions WHERE action = 'delete'",
}


def test_every_planned_operation_of_every_decision_is_in_the_pages(curated_catalog, report_dir):
    with Catalog(curated_catalog, read_only=True) as catalog:
        planned = {stage: sorted(r[0] for r in catalog.rows(sql)) for stage, sql in DECISION_DELETES.items()}
        deletes = {stage: {r[0] for r in catalog.rows(sql + (" WHERE action = 'delete'" if stage == "sanitize" else ""))}
                   for stage, sql in DECISION_DELETES.items() if stage != "rotation"}
        pending = catalog_status(catalog)["pending"]
        kept = dict(catalog.rows("SELECT image_id, kept_image_id FROM dedup_actions() WHERE action = 'delete'"))
        dedup_order = [r[0] for r in catalog.rows("SELECT image_id FROM dedup_actions() WHERE action = 'delete' "
                                                  "ORDER BY nearest_distance DESC, group_id, image_id")]
        curated = catalog.scalar("SELECT count(*) FROM curated")
    assert all(planned.values())  # every decision plans something in this catalog
    index = (report_dir / "index.html").read_text(encoding="utf-8")
    funnel = re.search(r'<table class="funnel">.*?</table>', index, re.S).group(0)
    assert int(re.findall(r"<tr><td>[^<]+</td><td>([\d,]+)</td>", funnel)[-1].replace(",", "")) == curated
    earlier: set[int] = set()
    for stage, ids in planned.items():
        assert sorted(_planned_in_pages(report_dir, stage)) == ids, stage
        # the index's count is the count `plan` gives; `status` counts an image that several
        # decisions remove once, under the first of them in the registry's order
        assert sum(n for s, _, n in pending if s == stage) == len(ids) - len(deletes.get(stage, set()) & earlier)
        earlier |= deletes.get(stage, set())
        assert re.search(rf"<tr><td>{stage}</td><td>{len(ids):,}</td>", index), stage
    # each removed duplicate beside the image its group keeps, nearest the threshold first
    dedup_html = "".join(p.read_text(encoding="utf-8") for p in sorted(report_dir.glob("dedup-*.html")))
    pairs = re.findall(r'<div class="item"><figure class="card delete" data-image-id="(\d+)" data-planned="1".*?'
                       r'<figure class="card keep" data-image-id="(\d+)"', dedup_html)
    assert {int(a): int(b) for a, b in pairs} == kept
    assert [int(a) for a, _ in pairs] == dedup_order
    # file names and links to the originals, reasons, escaped
    assert "file://" in dedup_html and "nearest duplicate at" in dedup_html
    rotation_html = (report_dir / "rotation-1.html").read_text(encoding="utf-8")
    assert "before: predicted 90°" in rotation_html and "after: rotate 90° clockwise" in rotation_html
    examples_html = (report_dir / "examples-1.html").read_text(encoding="utf-8")
    assert "unwanted.png" in examples_html and "to unwanted example" in examples_html
    # overrides: the drop is a planned operation, the keep is shown too (and dedup no longer deletes it)
    with Catalog(curated_catalog, read_only=True) as catalog:
        kept = catalog.scalar("SELECT image_id FROM override_actions WHERE override = 'keep'")
    override_html = (report_dir / "override-1.html").read_text(encoding="utf-8")
    assert "kept by override" in override_html and f'data-image-id="{kept}"' in override_html
    assert kept not in planned["dedup"]


def test_index_shows_every_section_and_the_catalogs_thresholds(report_dir):
    page = (report_dir / "index.html").read_text(encoding="utf-8")
    for heading in ("Funnel", "Planned operations by decision", "Thresholds in force", "Sanitize findings by rule",
                    "Rotation corrections", "Duplicates", "Clusters", "Sampling allocation", "History: apply runs"):
        assert f">{heading}</h2>" in page
    for stage in ("scanned", "sanitized ok", "rotated", "deduplicated", "filtered", "sampled"):
        assert f"<td>{stage}</td>" in page
    assert "truncated" in page and "decompression_bomb" in page
    assert 'class="card delete"' in page and 'class="card keep"' in page
    assert page.count("<svg ") >= 3  # rotation confidence, pair distances, cluster sizes
    # the builtin set's apply threshold (no config sets it); the report threshold the report run searched under
    assert "apply 0.08" in page and "report 0.5" in page and "threshold 0.75" in page
    assert "report 0.16" not in page
    assert "Sample run" in page and "no sample run yet" not in page
    assert "nothing applied yet" in page
    # the hierarchy: top-level clusters with their children, members on the cluster pages
    assert page.count("<details><summary>level 1 cluster") == 2 and 'href="clusters-1.html#leaf-' in page
    clusters = (report_dir / "clusters-1.html").read_text(encoding="utf-8")
    assert all(f'id="leaf-{c}"' in clusters for c in range(6)) and "level 1 cluster 0 → level 0 cluster 0" in clusters
    # sampling: kept and dropped thumbnails per top cluster
    sampling = page[page.index('id="sampling"'):page.index('id="history"')]
    assert 'class="card keep"' in sampling and 'class="card delete"' in sampling and "dropped" in sampling
    thumbs = set()
    for p in report_dir.glob("*.html"):
        text = p.read_text(encoding="utf-8")
        thumbs |= set(re.findall(r'src="(thumbs/[^"]+)"', text))
        assert not re.search(r"<script|https?://(?!www\.w3\.org/2000/svg)", text), p.name  # self-contained, escaped
    assert thumbs and all((report_dir / t).is_file() for t in thumbs)
    assert {"thumbs/_undecodable.jpg", "thumbs/_too_large.jpg"} <= thumbs  # placeholders: not an image, bomb


def test_a_hostile_file_name_is_escaped_everywhere(report_dir):
    texts = "".join(p.read_text(encoding="utf-8") for p in report_dir.glob("*.html"))
    assert HOSTILE_NAME not in texts and "<script>" not in texts
    assert OVERRIDE_REASON not in texts and html.escape(OVERRIDE_REASON, quote=True) in texts
    assert html.escape(HOSTILE_NAME, quote=True) in texts  # shown, as text
    assert quote(HOSTILE_NAME) in texts  # and linked (file:// URL, percent-encoded)


def test_rotation_after_thumbnail_is_turned_by_the_decided_angle(report_dir):
    page = (report_dir / "rotation-1.html").read_text(encoding="utf-8")
    pairs = re.findall(r'src="(thumbs/(\d+)-(\d+)\.jpg)".*?src="(thumbs/\2-\3-rotate_(\d+)\.jpg)"', page, re.S)
    assert pairs
    for before, _, _, after, angle in pairs:
        with Image.open(report_dir / before) as b, Image.open(report_dir / after) as a:
            assert a.size == (b.size if angle == "180" else b.size[::-1])


def test_pages_are_capped_and_say_how_many_are_shown(curated_catalog, tmp_path):
    with Catalog(curated_catalog, read_only=True) as catalog:
        n_sample = catalog.scalar("SELECT count(*) FROM sample_actions() WHERE action = 'delete'")
        n_dedup = catalog.scalar("SELECT count(*) FROM dedup_actions() WHERE action = 'delete'")
        index = build_report(catalog, tmp_path / "report", thumbnails=0, page_size=5, max_pages=2, workers=1,
                             quiet=True)
    assert n_sample > 10 and n_dedup > 10
    page = index.read_text(encoding="utf-8")
    assert f"10 of {n_sample:,} shown on 2 pages" in page and f"10 of {n_dedup:,} shown on 2 pages" in page
    assert "6 on 2 pages" in page  # the 6 leaf clusters: all shown, no "of"
    assert "<img " not in page  # thumbnails 0: numbers only on the index
    for slug, expected in (("sample", 10), ("dedup", 10), ("clusters", 6)):
        names = sorted(p.name for p in (tmp_path / "report").glob(f"{slug}-*.html"))
        assert names == [f"{slug}-1.html", f"{slug}-2.html"], slug
        assert f'href="{slug}-1.html"' in page and f'href="{slug}-2.html"' in page
        held = 0
        for name in names:
            text = (tmp_path / "report" / name).read_text(encoding="utf-8")
            assert 'href="index.html"' in text and all(f'href="{n}"' in text for n in names)
            held += len(re.findall(r'data-planned="1"', text)) if slug != "clusters" else text.count('id="leaf-')
        assert held == expected, slug
    first_page = (tmp_path / "report" / "sample-1.html").read_text(encoding="utf-8")
    assert f"10 of {n_sample:,} shown in all pages" in first_page


def test_an_applied_catalog_shows_what_apply_removed(applied_report_dir):
    page = (applied_report_dir / "index.html").read_text(encoding="utf-8")
    with Catalog(applied_report_dir.parent / "catalog.duckdb", read_only=True) as catalog:
        runs = dict(catalog.rows("SELECT stage, run_id FROM runs WHERE stage LIKE 'apply:%'"))
        removed = {stage: sorted(r[0] for r in catalog.rows(
            "SELECT image_id FROM journal WHERE run_id = ? AND state = 'done'", [run])) for stage, run in runs.items()}
        assert catalog.scalar("SELECT count(*) FROM dedup_actions() WHERE action = 'delete'") == 0
        # the journal names the image each removed duplicate was kept against
        kept_for = dict(catalog.rows(
            "SELECT image_id, CAST(json_extract_string(params, '$.kept_image_id') AS BIGINT) FROM journal "
            "WHERE run_id = ?", [runs["apply:dedup"]]))
    assert removed["apply:dedup"] and removed["apply:examples"]
    assert sorted(kept_for) == removed["apply:dedup"] and None not in kept_for.values()
    assert not set(kept_for.values()) & set(kept_for)  # a kept image is never one of the removed
    history = page[page.index('id="history"'):]
    n_dedup, n_examples = len(removed["apply:dedup"]), len(removed["apply:examples"])
    assert f"<td>delete done: {n_dedup}</td><td>yes: all {n_dedup} backups present</td>" in history
    assert f"<td>delete done: {n_examples}</td><td>no: run with --no-backup</td>" in history
    assert f"Apply run {runs['apply:dedup']} already removed {n_dedup} duplicates" in page
    assert "no duplicates at the apply threshold" not in page
    assert "Already applied:" in page
    for stage, run in runs.items():
        shown_ids = sorted(_planned_in_history(applied_report_dir, run))
        assert shown_ids == removed[stage], stage
    dedup_page = (applied_report_dir / f"history-{runs['apply:dedup']}-1.html").read_text(encoding="utf-8")
    thumbs = re.findall(r'src="(thumbs/op-[^"]+)"', dedup_page)
    assert len(thumbs) == n_dedup  # pictures from the backups (a placeholder has another name)
    assert all((applied_report_dir / t).is_file() for t in thumbs)
    # beside the image each one lost to (which the examples run may have removed since)
    assert dedup_page.count('class="card keep"') == n_dedup and "removed since" in dedup_page
    shown = re.findall(r'<figure class="card delete" data-image-id="(\d+)".*?<figure class="card keep[^"]*" '
                       r'data-image-id="(\d+)"', dedup_page, re.S)
    assert {int(a): int(b) for a, b in shown} == kept_for
    assert "backup" in dedup_page and "file://" in dedup_page


def _planned_in_history(report: Path, run_id: int) -> list[int]:
    ids = []
    for page in report.glob(f"history-{run_id}-*.html"):
        ids += [int(i) for i in re.findall(r'<figure class="card delete" data-image-id="(\d+)"',
                                           page.read_text(encoding="utf-8"))]
    return ids


def test_an_early_catalog_says_which_command_fills_each_section(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    weird = root / 'a<b>&"c.png'
    Image.new("RGB", (120, 90), (200, 40, 40)).save(weird)
    shutil.copyfile(weird, root / "copy.png")  # an exact duplicate, so the odd name is shown
    with Catalog(tmp_path / "catalog.duckdb") as catalog:
        scan(catalog, [root], extensions=[".png"], workers=1, quiet=True)
        (root / "copy.png").unlink()  # gone since the scan
        index = build_report(catalog, tmp_path / "report", quiet=True)
    page = index.read_text(encoding="utf-8")
    for note in ("not sanitized yet: run vdc-lake sanitize",
                 "no rotation predictions yet: run vdc-lake predict --kind rotation",
                 "no near-duplicate report yet: run vdc-lake dedup report --set builtin",
                 "no clustering yet: run vdc-lake cluster --set NAME",
                 "no sample run yet: run vdc-lake sample --total N"):
        assert note in page
    assert 'a<b>&"c.png' not in page and "a&lt;b&gt;&amp;&quot;c.png" in page
    assert 'src="thumbs/_missing.jpg"' in page and (tmp_path / "report" / "thumbs" / "_missing.jpg").is_file()


def test_svg_histogram_marks_thresholds_inside_its_range():
    svg = svg_histogram([0.1, 0.2, 0.2, 0.45], lo=0.0, hi=0.5, x_label="distance",
                        markers=[(0.25, "apply 0.25", "#c00"), (0.9, "outside", "#00c")])
    assert svg.startswith("<svg ") and svg.endswith("</svg>")
    assert svg.count("<rect ") == 40 and "apply 0.25" in svg and "outside" not in svg
    assert re.findall(r">([\d.]+)</text>", svg)[:6] == ["0", "0.1", "0.2", "0.3", "0.4", "0.5"]  # round ticks


def test_log_histogram_keeps_small_bars_visible_and_counts_exact_copies_apart():
    values = [0.0] * 5 + [0.0005] * 20000 + [0.02, 0.03, 0.09]
    svg = svg_histogram(values, lo=0.0001, hi=0.1, x_label="pair distance", log_counts=True, log_x=True,
                        markers=[(0.08, "apply 0.08", "#c00"), (0.1, "report 0.1", "#00c")])
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)"', svg)]
    assert len(heights) == 41 and sum(h > 0 for h in heights) == 5  # 4 bins + the exact-copy bar
    assert max(heights) < 6 * min(h for h in heights if h > 0)  # one bar of 20,000 does not flatten the others
    ticks = re.findall(r">([\d.,]+)</text>", svg)
    assert {"0.0001", "0.001", "0.01", "0.1", "1", "10", "100", "1,000", "10,000"} <= set(ticks)
    assert "under 0.0001: 5" in svg and "apply 0.08" in svg and "report 0.1" in svg
