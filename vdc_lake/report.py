"""Static HTML report for choosing thresholds: OUT/index.html plus OUT/thumbs/*.jpg.

One self-contained page (inline CSS and SVG, no script, nothing fetched from the network):
the funnel of images per stage, sanitize findings by rule with examples, rotation corrections
as before/after pairs, duplicate groups with their distances and a histogram of pair distances,
cluster sizes with example members, and the sampling allocation per top-level cluster. Every
number comes from the decision views, so the page shows what `plan`/`apply` would do.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from vdc_lake import __version__
from vdc_lake.catalog import Catalog
from vdc_lake.imageops import ROTATIONS
from vdc_lake.parallel import map_ordered

THUMB_SIZE = 160
PLACEHOLDERS = {"missing": "file missing", "undecodable": "cannot decode", "too_large": "too large"}
CLUSTERS_SHOWN = 6
DUPLICATE_GROUPS_SHOWN = 12
HISTOGRAM_BINS = 40


# -- thumbnails ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Thumb:
    """One image to show: its catalog identity, path, and the thumbnail file (relative to OUT)."""

    image_id: int
    version: int
    path: str
    src: str = ""


def _thumb_name(image_id: int, version: int, suffix: str = "") -> str:
    return f"thumbs/{image_id}-{version}{suffix}.jpg"


def make_thumbnail(item: tuple[str, str], *, size: int = THUMB_SIZE, max_pixels: int | None = None) -> str:
    """Write a `size` px JPEG thumbnail of item = (image path, thumbnail path); an image of more
    than max_pixels pixels (None: Pillow's decompression-bomb limit) is not decoded.

    Returns "ok", or the placeholder kind ("missing", "undecodable", "too_large") when none was written.
    """
    src, dst = item
    if not os.path.exists(src):
        return "missing"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(src)
    except Image.DecompressionBombError:
        return "too_large"
    except Exception:  # noqa: BLE001 - any unreadable file gets the placeholder
        return "undecodable"
    try:
        with img:
            if img.width * img.height > (max_pixels or Image.MAX_IMAGE_PIXELS or float("inf")):
                return "too_large"
            img.draft("RGB", (size, size))
            img.thumbnail((size, size))
            rgb = _to_rgb(img)
        rgb.save(dst, "JPEG", quality=85)
    except Exception:  # noqa: BLE001 - any undecodable file gets the placeholder
        return "undecodable"
    return "ok"


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        span = max(float(arr.max() - arr.min()), 1e-9)
        img = Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA", "P"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _placeholder(out_dir: Path, kind: str, size: int) -> str:
    name = f"thumbs/_{kind}.jpg"
    if not (out_dir / name).exists():
        img = Image.new("RGB", (size, size * 3 // 4), (220, 220, 220))
        draw = ImageDraw.Draw(img)
        draw.rectangle((0, 0, img.width - 1, img.height - 1), outline=(150, 150, 150))
        draw.text((10, img.height // 2 - 6), PLACEHOLDERS[kind], fill=(90, 90, 90))
        img.save(out_dir / name, "JPEG", quality=85)
    return name


def _rotated_thumbnail(out_dir: Path, before: str, action: str, image_id: int, version: int) -> str:
    """The `before` thumbnail turned as the rotation decision `action` would turn the file."""
    name = _thumb_name(image_id, version, f"-{action}")
    with Image.open(out_dir / before) as img:
        img.transpose(ROTATIONS[action]).save(out_dir / name, "JPEG", quality=85)
    return name


def write_thumbnails(out_dir: Path, thumbs: Iterable[Thumb], *, size: int, workers: int | None,
                     quiet: bool, max_pixels: int | None = None) -> dict[tuple[int, int], str]:
    """Thumbnail every distinct image once; returns {(image_id, version): src relative to out_dir}."""
    unique = {(t.image_id, t.version): t.path for t in thumbs}
    keys = sorted(unique)
    items = [(unique[k], str(out_dir / _thumb_name(*k))) for k in keys]
    results = map_ordered(partial(make_thumbnail, size=size, max_pixels=max_pixels), items, workers=workers,
                          desc="thumbnails",
                          quiet=quiet)
    return {k: (_thumb_name(*k) if status == "ok" else _placeholder(out_dir, status, size))
            for k, status in zip(keys, results)}


# -- data ----------------------------------------------------------------------------------------

@dataclass
class Section:
    """One part of the page: a title, an anchor, the HTML body and the images it shows."""

    anchor: str
    title: str
    body: list[Any] = field(default_factory=list)  # str (HTML) or Gallery, rendered in order


@dataclass
class Gallery:
    """A row of thumbnails with captions; rendered once every thumbnail exists."""

    items: list[tuple[Thumb, str, str]]  # (image, caption, css class)
    rotate: dict[int, str] = field(default_factory=dict)  # index -> rotation action for an "after" picture


def _thumbs(rows: Sequence[dict]) -> list[Thumb]:
    return [Thumb(r["image_id"], r["version"], r["path"]) for r in rows]


def _funnel(catalog: Catalog, *, dedup_threshold: float | None,
            rotation_threshold: float) -> list[tuple[str, int, str]]:
    """[(stage, images left, note)]: each stage removes from what the previous one left.
    dedup_threshold None: the catalog's per-set thresholds (as `curated`), so with no override
    the last row equals `curated`."""
    has_rotation = bool(catalog.scalar("SELECT count(*) FROM prediction_sets WHERE kind = 'rotation'"))
    sample_run = catalog.scalar("SELECT max(run_id) FROM runs WHERE stage = 'sample' AND status = 'done'")
    filter_run = catalog.scalar("SELECT max(run_id) FROM runs WHERE stage = 'filter-examples' AND status = 'done'")
    row = catalog.rows(
        """
        WITH present AS (SELECT image_id, version FROM image_files),
        sanitized AS (
            SELECT p.* FROM present AS p
            WHERE NOT EXISTS (SELECT 1 FROM sanitize_actions AS a
                              WHERE a.image_id = p.image_id AND a.version = p.version AND a.action = 'delete')
              AND NOT EXISTS (SELECT 1 FROM findings AS f
                              JOIN (SELECT image_id, version, max(run_id) AS run_id FROM sanitize_checks
                                    GROUP BY ALL) AS c USING (image_id, version, run_id)
                              WHERE f.image_id = p.image_id AND f.version = p.version
                                AND f.rule IN ('unreadable', 'broken_symlink'))
        ),
        rotated AS (
            SELECT count(*) AS n FROM rotation_actions(threshold := $rotation) AS r
            SEMI JOIN sanitized AS s ON s.image_id = r.image_id AND s.version = r.version
            WHERE r.action <> 'none'
        ),
        deduplicated AS (
            SELECT s.* FROM sanitized AS s
            WHERE NOT EXISTS (SELECT 1 FROM dedup_actions(threshold := $dedup) AS d
                              WHERE d.image_id = s.image_id AND d.version = s.version AND d.action = 'delete')
        ),
        filtered AS (
            SELECT d.* FROM deduplicated AS d
            WHERE NOT EXISTS (SELECT 1 FROM example_actions() AS e
                              WHERE e.image_id = d.image_id AND e.version = d.version AND e.action = 'delete')
              AND NOT EXISTS (SELECT 1 FROM score_actions(setting('filter_by_score', 'name')) AS e
                              WHERE e.image_id = d.image_id AND e.version = d.version AND e.action = 'delete')
        ),
        sampled AS (
            SELECT f.* FROM filtered AS f
            WHERE $sample_run IS NULL OR EXISTS (SELECT 1 FROM samples AS s WHERE s.run_id = $sample_run
                                                 AND s.image_id = f.image_id AND s.version = f.version)
        )
        SELECT (SELECT count(*) FROM present), (SELECT count(*) FROM sanitized), (SELECT n FROM rotated),
               (SELECT count(*) FROM deduplicated), (SELECT count(*) FROM filtered), (SELECT count(*) FROM sampled)
        """,
        {"rotation": float(rotation_threshold), "dedup": None if dedup_threshold is None else float(dedup_threshold),
         "sample_run": sample_run},
    )[0]
    scanned, sanitized, rotated, deduplicated, filtered, sampled = (int(v or 0) for v in row)
    examples_threshold = catalog.scalar("SELECT setting('filter_by_examples', 'threshold')")
    return [
        ("scanned", scanned, "present images"),
        ("sanitized ok", sanitized, "without a pending sanitize delete or an unreadable finding"),
        ("rotated", sanitized, f"{rotated:,} to be turned upright (probability > {rotation_threshold:g})"
         if has_rotation else "no rotation predictions yet: run vdc-lake predict --kind rotation"),
        ("deduplicated", deduplicated, f"duplicates removed at distance < {_describe_apply(catalog, dedup_threshold)}"),
        ("filtered", filtered, f"unwanted-example filter at threshold {examples_threshold}" if filter_run
         else "no filter run yet: run vdc-lake filter examples"),
        ("sampled", sampled, f"in sample run {sample_run}" if sample_run
         else "no sample run yet: run vdc-lake sample --total N"),
    ]


def _sanitize_section(catalog: Catalog, examples: int) -> Section:
    section = Section("sanitize", "Sanitize findings by rule")
    if not catalog.scalar("SELECT count(*) FROM sanitize_checks"):
        section.body.append(_note("not sanitized yet: run vdc-lake sanitize"))
        return section
    rows = catalog.arrow(
        """
        WITH latest_check AS (
            SELECT image_id, version, max(run_id) AS run_id FROM sanitize_checks GROUP BY image_id, version
        ),
        current_findings AS (
            SELECT f.rule, f.action, f.detail, i.image_id, i.version, i.path
            FROM findings AS f
            JOIN latest_check AS c ON c.image_id = f.image_id AND c.version = f.version AND c.run_id = f.run_id
            JOIN image_files AS i ON i.image_id = f.image_id AND i.version = f.version
        )
        SELECT rule, any_value(action) AS action, count(*) AS images,
               list({'image_id': image_id, 'version': version, 'path': path, 'detail': detail}
                    ORDER BY image_id)[1:$examples] AS examples
        FROM current_findings GROUP BY rule ORDER BY images DESC, rule
        """,
        {"examples": max(int(examples), 0)},
    ).to_pylist()
    if not rows:
        section.body.append(_note("no findings: every checked image passed every rule"))
        return section
    counts = [(r["rule"], r["action"], f"{r['images']:,}") for r in rows]
    section.body.append(_table(["rule", "action", "images"], counts))
    section.body.append('<div class="blocks">')
    for r in rows:
        section.body.append(f"<div><h3>{_e(r['rule'])} <small>({_e(r['action'])}, "
                            f"{_count(r['images'], 'image')})</small></h3>")
        section.body.append(Gallery([(t, e["detail"], "") for t, e in zip(_thumbs(r["examples"]), r["examples"])]))
        section.body.append("</div>")
    section.body.append("</div>")
    return section


def _rotation_section(catalog: Catalog, threshold: float, examples: int) -> Section:
    section = Section("rotation", "Rotation corrections")
    if not catalog.scalar("SELECT count(*) FROM prediction_sets WHERE kind = 'rotation'"):
        section.body.append(_note("no rotation predictions yet: run vdc-lake predict --kind rotation"))
        return section
    by_angle = catalog.rows("SELECT angle, count(*) FROM rotation_actions(threshold := ?) GROUP BY angle "
                            "ORDER BY angle", [float(threshold)])
    if not by_angle:
        section.body.append(_note("the newest rotation set has no prediction for a present image at its "
                                  "current version: run vdc-lake predict --kind rotation"))
        return section
    section.body.append(_table(["predicted angle", "images"], [(f"{a}°", f"{n:,}") for a, n in by_angle]))
    turned = catalog.arrow("SELECT confidence FROM rotation_actions(threshold := ?) WHERE angle <> 0",
                           [float(threshold)]).column(0).to_numpy()
    # counted by the view, as plan counts them (float32 probabilities compared in numpy can differ)
    n_corrections = int(catalog.scalar("SELECT count(*) FROM rotation_actions(threshold := ?) WHERE action <> 'none'",
                                       [float(threshold)]))
    section.body.append(f"<p>{n_corrections:,} images would be turned upright at probability &gt; {threshold:g}. "
                        "Probability of the predicted angle, for images not predicted upright:</p>")
    section.body.append(svg_histogram(turned, lo=0.0, hi=1.0, x_label="probability of the predicted (non-zero) angle",
                                      markers=[(threshold, f"threshold {threshold:g}", "#c0392b")]))
    if not n_corrections:
        section.body.append(_note(f"no image is predicted rotated with probability above {threshold:g}"))
        return section
    shown = catalog.arrow(
        """SELECT r.image_id, r.version, f.path, r.angle, r.confidence, r.action
           FROM rotation_actions(threshold := ?) AS r JOIN image_files AS f USING (image_id, version)
           WHERE r.action <> 'none' ORDER BY r.confidence DESC, r.image_id LIMIT ?""",
        [float(threshold), max(int(examples), 0)],
    ).to_pylist()
    items, rotate = [], {}
    for r, t in zip(shown, _thumbs(shown)):
        items.append((t, f"before: predicted {r['angle']}° ({r['confidence']:.3f})", "before"))
        rotate[len(items)] = r["action"]
        items.append((t, f"after: {r['action'].replace('_', ' ')}° clockwise", "after"))
    section.body.append("<p>Before / after pairs, most confident first:</p>")
    section.body.append(Gallery(items, rotate))
    return section


_DUPLICATE_GROUPS_SQL = """
WITH at_report AS (
    SELECT * FROM dedup_actions(threshold := $report)
),
at_apply AS (
    SELECT image_id, action FROM dedup_actions(threshold := $apply)
),
members AS (
    SELECT r.group_id, r.image_id, r.version, r.path, r.rank_in_group, r.nearest_distance,
           coalesce(a.action, 'keep') AS action_at_apply
    FROM at_report AS r LEFT JOIN at_apply AS a ON a.image_id = r.image_id
),
groups AS (
    SELECT group_id, count(*) AS group_size, max(nearest_distance) AS spread,
           count(*) FILTER (WHERE action_at_apply = 'delete') AS removed
    FROM members GROUP BY group_id
),
picked AS (
    SELECT * FROM groups ORDER BY abs(spread - $order_at), group_id LIMIT $groups
),
final AS (
    SELECT m.*, p.group_size, p.spread, (SELECT count(*) FROM groups) AS n_groups,
           (SELECT sum(removed) FROM groups) AS n_removed
    FROM members AS m JOIN picked AS p ON p.group_id = m.group_id
    WHERE m.rank_in_group <= $per_group
)
SELECT * FROM final ORDER BY abs(spread - $order_at), group_id, rank_in_group
"""


def _set_thresholds(catalog: Catalog, set_name: str | None, dedup_threshold: float | None,
                    report_threshold: float | None) -> tuple[float, float]:
    """(apply, report) for one set: the given override, else the catalog's (dedup_thresholds view)."""
    from vdc_lake.settings import dedup_thresholds

    resolved = dedup_thresholds(catalog, set_name)
    return (resolved["apply_threshold"] if dedup_threshold is None else dedup_threshold,
            resolved["report_threshold"] if report_threshold is None else report_threshold)


def _describe_apply(catalog: Catalog, dedup_threshold: float | None) -> str:
    """'0.25', or the per-set values of the catalog: '0.08 (set builtin), 0.25 (set sscd)'."""
    if dedup_threshold is not None:
        return f"{dedup_threshold:g}"
    rows = catalog.rows("SELECT DISTINCT t.set_name, t.apply_threshold FROM near_duplicate_edges AS e "
                        "JOIN dedup_thresholds AS t ON t.set_name = e.set_name ORDER BY 1")
    if not rows:
        return f"{_set_thresholds(catalog, None, None, None)[0]:g}"
    return ", ".join(f"{value:g} (set {name})" for name, value in rows)


def _distance_histograms(catalog: Catalog, dedup_threshold: float | None, report_threshold: float | None) -> list[str]:
    """Per embedding set: a histogram of the newest report's pair distances, thresholds marked
    (the given ones, else the set's own from the catalog's settings)."""
    runs = catalog.rows(
        """SELECT json_extract_string(params, '$.set') AS set_name, max(run_id), arg_max(params, run_id)
           FROM runs WHERE stage = 'dedup-report' AND status = 'done' GROUP BY ALL ORDER BY 1"""
    )
    if not runs:
        return [_note("no near-duplicate report yet: run vdc-lake dedup report --set builtin "
                      "(exact copies are grouped below without one)")]
    body = []
    for set_name, run_id, params in runs:
        distances = catalog.arrow("SELECT distance FROM near_duplicate_edges WHERE set_name = ?",
                                  [set_name]).column(0).to_numpy()
        searched = json.loads(params or "{}").get("threshold")
        apply_at, report_at = _set_thresholds(catalog, set_name, dedup_threshold, report_threshold)
        hi = max(float(searched or 0), report_at, apply_at, float(distances.max(initial=0.0))) * 1.05
        body.append(f"<h3>Pair distances, set {_e(set_name)} <small>(report run {run_id}, "
                    f"{len(distances):,} pairs under {_e(searched)})</small></h3>")
        body.append(svg_histogram(distances, lo=0.0, hi=hi, x_label="pair distance", markers=[
            (apply_at, f"apply {apply_at:g}", "#c0392b"),
            (report_at, f"report {report_at:g}", "#2471a3")]))
    return body


def _duplicates_section(catalog: Catalog, dedup_threshold: float | None, report_threshold: float | None,
                        examples: int) -> Section:
    section = Section("duplicates", "Duplicates")
    section.body.extend(_distance_histograms(catalog, dedup_threshold, report_threshold))
    if report_threshold is None:  # groups up to the largest report (or apply) threshold of the reported sets
        sets = [r[0] for r in catalog.rows("SELECT DISTINCT set_name FROM near_duplicate_edges")] or [None]
        report_threshold = max(max(_set_thresholds(catalog, name, dedup_threshold, None)) for name in sets)
    order_at = dedup_threshold if dedup_threshold is not None else _set_thresholds(catalog, None, None, None)[0]
    members = catalog.arrow(_DUPLICATE_GROUPS_SQL, {
        "report": float(report_threshold), "apply": None if dedup_threshold is None else float(dedup_threshold),
        "order_at": float(order_at), "groups": DUPLICATE_GROUPS_SHOWN,
        "per_group": max(int(examples), 2)}).to_pylist()
    apply_text = _describe_apply(catalog, dedup_threshold)
    if not members:
        section.body.append(_note(f"no duplicate groups at distance < {report_threshold:g}"))
        return section
    section.body.append(f"<p>{members[0]['n_groups']:,} groups at distance &lt; {report_threshold:g} (report "
                        f"threshold); {int(members[0]['n_removed']):,} images removed at the apply threshold "
                        f"{apply_text}. Groups whose largest distance is nearest the apply threshold come "
                        "first; a green frame is kept, a red one removed at the apply threshold.</p>")
    groups: dict[int, list[dict]] = {}
    for m in members:
        groups.setdefault(m["group_id"], []).append(m)
    section.body.append('<div class="blocks">')
    for group in groups.values():
        section.body.append(f"<div><h3>group {group[0]['group_id']} <small>({_count(group[0]['group_size'], 'image')}"
                            f", largest distance {group[0]['spread']:.4f})</small></h3>")
        section.body.append(Gallery([
            (t, f"{m['action_at_apply']} at {apply_text} · nearest {m['nearest_distance']:.4f}",
             "delete" if m["action_at_apply"] == "delete" else "keep")
            for m, t in zip(group, _thumbs(group))
        ]))
        section.body.append("</div>")
    section.body.append("</div>")
    return section


def _clusters_section(catalog: Catalog, examples: int) -> Section:
    section = Section("clusters", "Clusters")
    run_id = catalog.scalar("SELECT max(run_id) FROM runs WHERE stage = 'cluster' AND status = 'done'")
    if run_id is None:
        section.body.append(_note("no clustering yet: run vdc-lake cluster --set NAME"))
        return section
    levels = catalog.rows("SELECT level, count(*), min(size), median(size), max(size) FROM clusters "
                          "WHERE run_id = ? GROUP BY level ORDER BY level", [run_id])
    section.body.append(f"<p>Cluster run {run_id}.</p>")
    section.body.append(_table(["level", "clusters", "smallest", "median", "largest"],
                               [(lv, f"{n:,}", f"{lo:,}", f"{med:g}", f"{hi:,}") for lv, n, lo, med, hi in levels]))
    sizes = [s for (s,) in catalog.rows("SELECT size FROM clusters WHERE run_id = ? AND level = 0", [run_id])]
    section.body.append("<h3>Level-0 cluster sizes</h3>")
    lo, hi = min(sizes, default=0), max(sizes, default=0) + 1
    section.body.append(svg_histogram(sizes, lo=float(lo), hi=float(hi), bins=min(HISTOGRAM_BINS, hi - lo),
                                      x_label="images per cluster (bars: number of clusters)"))
    ranked = catalog.rows("SELECT cluster_id, size FROM clusters WHERE run_id = ? AND level = 0 "
                          "ORDER BY size DESC, cluster_id", [run_id])
    picks = sorted({int(i) for i in np.linspace(0, len(ranked) - 1, min(CLUSTERS_SHOWN, len(ranked)))})
    for index in picks:
        cluster_id, size = ranked[index]
        rows = catalog.arrow(
            """SELECT a.image_id, a.version, f.path, a.distance FROM assignments AS a
               JOIN image_files AS f ON f.image_id = a.image_id AND f.version = a.version
               WHERE a.run_id = ? AND a.level = 0 AND a.cluster_id = ?
               ORDER BY a.distance NULLS LAST, a.image_id LIMIT ?""",
            [run_id, cluster_id, max(int(examples), 0)],
        ).to_pylist()
        section.body.append(f"<h3>cluster {cluster_id} <small>({_count(size, 'image')}; nearest the centre first)"
                            "</small></h3>")
        section.body.append(Gallery([(t, "" if r["distance"] is None else f"distance {r['distance']:.3f}", "")
                                     for r, t in zip(rows, _thumbs(rows))]))
    return section


def _sampling_section(catalog: Catalog) -> Section:
    section = Section("sampling", "Sampling allocation")
    run = catalog.rows("SELECT run_id, json_extract(params, '$.cluster_run')::BIGINT FROM runs "
                       "WHERE stage = 'sample' AND status = 'done' ORDER BY run_id DESC LIMIT 1")
    if not run:
        section.body.append(_note("no sample run yet: run vdc-lake sample --total N"))
        return section
    sample_run, cluster_run = run[0]
    rows = catalog.rows(
        """
        WITH top AS (
            SELECT a.image_id, a.version, a.cluster_id FROM assignments AS a
            JOIN image_files AS f ON f.image_id = a.image_id AND f.version = a.version
            WHERE a.run_id = $cluster_run
              AND a.level = (SELECT max(level) FROM assignments WHERE run_id = $cluster_run)
        )
        SELECT t.cluster_id, count(*) AS available, count(s.image_id) AS selected
        FROM top AS t
        LEFT JOIN samples AS s ON s.run_id = $sample_run AND s.image_id = t.image_id AND s.version = t.version
        GROUP BY t.cluster_id ORDER BY t.cluster_id
        """,
        {"cluster_run": cluster_run, "sample_run": sample_run},
    )
    total = sum(r[2] for r in rows)
    section.body.append(f"<p>Sample run {sample_run} selected {total:,} images from cluster run {cluster_run}; "
                        "per top-level cluster (bar: share of the cluster selected):</p>")
    body = [(cid, f"{avail:,}", f"{sel:,}", _bar(sel / avail if avail else 0.0, f"{100 * sel / max(avail, 1):.1f}%"))
            for cid, avail, sel in rows]
    section.body.append(_table(["top cluster", "available", "selected", "share"], body, raw_last=True))
    return section


# -- rendering -----------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _bar(fraction: float, label: str) -> str:
    width = max(0.0, min(1.0, fraction)) * 100
    return f'<div class="bar"><span style="width:{width:.1f}%"></span><em>{_e(label)}</em></div>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, raw_last: bool = False) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = [_e(v) for v in row]
        if raw_last:
            cells[-1] = str(row[-1])  # already HTML (a bar)
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def svg_histogram(values: Sequence[float], *, lo: float, hi: float, x_label: str,
                  markers: Sequence[tuple[float, str, str]] = (), bins: int = HISTOGRAM_BINS,
                  width: int = 720, height: int = 220) -> str:
    """An inline SVG histogram of `values` over [lo, hi], with vertical lines at markers (x, label, colour)."""
    if not len(values):
        return _note(f"no values to plot ({x_label})")
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins, range=(lo, hi))
    left, bottom, plot_w, plot_h = 50, height - 40, width - 70, height - 70
    top = max(int(counts.max()), 1)
    x = lambda v: left + (v - lo) / ((hi - lo) or 1.0) * plot_w  # noqa: E731
    parts = [f'<svg class="hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{_e(x_label)}">']
    for count, a, b in zip(counts, edges[:-1], edges[1:]):
        h = count / top * plot_h
        parts.append(f'<rect x="{x(a):.1f}" y="{bottom - h:.1f}" width="{max(x(b) - x(a) - 1, 1):.1f}" '
                     f'height="{h:.1f}" fill="#7f8c8d"><title>{a:.4g} to {b:.4g}: {count}</title></rect>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{left + plot_w}" y2="{bottom}" stroke="#333"/>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{left}" y2="{bottom - plot_h}" stroke="#333"/>')
    for tick in np.linspace(lo, hi, 5):
        parts.append(f'<text x="{x(tick):.1f}" y="{bottom + 15}" text-anchor="middle">{tick:.3g}</text>')
    parts.append(f'<text x="{left - 6}" y="{bottom - plot_h + 4}" text-anchor="end">{top}</text>')
    parts.append(f'<text x="{left - 6}" y="{bottom}" text-anchor="end">0</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">{_e(x_label)}</text>')
    for i, (value, label, colour) in enumerate(markers):
        if lo <= value <= hi:
            parts.append(f'<line x1="{x(value):.1f}" y1="{bottom}" x2="{x(value):.1f}" y2="{bottom - plot_h - 5}" '
                         f'stroke="{colour}" stroke-width="2" stroke-dasharray="5,3"/>')
            right = x(value) > left + plot_w * 0.8  # label on the left of the line near the right edge
            parts.append(f'<text x="{x(value) + (-4 if right else 4):.1f}" y="{bottom - plot_h + 8 + 14 * i}" '
                         f'text-anchor="{"end" if right else "start"}" fill="{colour}">{_e(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _funnel_html(stages: list[tuple[str, int, str]]) -> str:
    first = max(stages[0][1], 1)
    rows = [(name, f"{n:,}", _e(note), _bar(n / first, f"{100 * n / first:.1f}%")) for name, n, note in stages]
    head = "<tr><th>stage</th><th>images</th><th>note</th><th>of scanned</th></tr>"
    body = "".join(f"<tr><td>{_e(a)}</td><td>{_e(b)}</td><td>{c}</td><td>{d}</td></tr>" for a, b, c, d in rows)
    return f"<table class=\"funnel\"><thead>{head}</thead><tbody>{body}</tbody></table>"


def _gallery_html(gallery: Gallery, sources: dict[tuple[int, int], str], out_dir: Path) -> str:
    cards = []
    for i, (thumb, caption, css) in enumerate(gallery.items):
        src = sources[(thumb.image_id, thumb.version)]
        if i in gallery.rotate and not Path(src).name.startswith("_"):
            src = _rotated_thumbnail(out_dir, src, gallery.rotate[i], thumb.image_id, thumb.version)
        cards.append(f'<figure class="card {_e(css)}"><img src="{_e(src)}" alt="image {thumb.image_id}" '
                     f'title="{_e(thumb.path)}"><figcaption>#{thumb.image_id} {_e(caption)}</figcaption></figure>')
    return f'<div class="gallery">{"".join(cards)}</div>' if cards else ""


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
h3{margin:18px 0 6px}small{color:#666;font-weight:normal}nav a{margin-right:12px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}.note{color:#666;font-style:italic}
.bar{position:relative;width:260px;height:16px;background:#eee}
.bar span{position:absolute;left:0;top:0;bottom:0;background:#5d8aa8}
.bar em{position:absolute;left:6px;top:0;font-size:11px;font-style:normal;color:#000}
.gallery{display:flex;flex-wrap:wrap;gap:8px}
.card{margin:0;width:168px;border:2px solid #ddd;padding:3px;background:#fafafa}
.card img{display:block;max-width:160px;max-height:160px;margin:auto}
.card figcaption{font-size:11px;color:#444;word-break:break-word}
.blocks{display:flex;flex-wrap:wrap;gap:0 28px}
.card.delete{border-color:#c0392b}.card.keep{border-color:#27ae60}.card.after{border-color:#2471a3}
svg.hist text{font-size:11px;fill:#333}
"""


def _page(catalog: Catalog, stages: list[tuple[str, int, str]], sections: list[Section],
          sources: dict[tuple[int, int], str], out_dir: Path) -> str:
    nav = " ".join(f'<a href="#{s.anchor}">{_e(s.title)}</a>' for s in sections)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>vdc-lake report: {_e(catalog.path.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>vdc-lake report</h1><p>catalog {_e(catalog.path)} · generated "
        f"{_e(dt.datetime.now().isoformat(timespec='seconds'))} · vdc-lake {_e(__version__)}</p>",
        f"<nav>{nav}</nav>",
        '<h2 id="funnel">Funnel</h2>', _funnel_html(stages),
    ]
    for section in sections:
        parts.append(f'<h2 id="{_e(section.anchor)}">{_e(section.title)}</h2>')
        parts.extend(_gallery_html(b, sources, out_dir) if isinstance(b, Gallery) else b for b in section.body)
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(catalog: Catalog, out_dir: str | os.PathLike, *, thumbnails: int | None = None,
                 dedup_threshold: float | None = None, report_threshold: float | None = None,
                 rotation_threshold: float | None = None, thumb_size: int = THUMB_SIZE, workers: int | None = None,
                 quiet: bool = False) -> Path:
    """Write out_dir/index.html and out_dir/thumbs/*.jpg; returns the index.html path.

    thumbnails: example images per rule, duplicate group and cluster (0: numbers only).
    dedup_threshold: the apply threshold (distance) whose deletions the funnel counts;
    report_threshold: duplicate groups are shown up to this distance; rotation_threshold:
    minimum probability of a rotation correction. None (each): the catalog's settings, the
    values `plan`, `status` and `curated` use (dedup: per embedding set). Reads the catalog only.
    """
    if thumbnails is None:
        thumbnails = int(catalog.scalar("SELECT setting('report', 'thumbnails')"))
    if rotation_threshold is None:
        rotation_threshold = float(catalog.scalar("SELECT setting('rotation_correction', 'threshold')"))
    out_dir = Path(out_dir)
    (out_dir / "thumbs").mkdir(parents=True, exist_ok=True)
    stages = _funnel(catalog, dedup_threshold=dedup_threshold, rotation_threshold=rotation_threshold)
    sections = [
        _sanitize_section(catalog, thumbnails),
        _rotation_section(catalog, rotation_threshold, thumbnails),
        _duplicates_section(catalog, dedup_threshold, report_threshold, thumbnails),
        _clusters_section(catalog, thumbnails),
        _sampling_section(catalog),
    ]
    if thumbnails <= 0:
        for section in sections:
            section.body = [b for b in section.body if not isinstance(b, Gallery)]
    wanted = [item[0] for s in sections for b in s.body if isinstance(b, Gallery) for item in b.items]
    # the decompression-bomb limit of the catalog's settings (sanitize.max_pixels), as sanitize applies it
    max_pixels = int(catalog.scalar("SELECT setting('sanitize', 'max_pixels')"))
    catalog.release()  # no open DuckDB handle across the fork of the thumbnail pool
    sources = write_thumbnails(out_dir, wanted, size=thumb_size, workers=workers, quiet=quiet, max_pixels=max_pixels)
    index = out_dir / "index.html"
    index.write_text(_page(catalog, stages, sections, sources, out_dir), encoding="utf-8")
    return index
