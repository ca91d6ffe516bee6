"""The report's galleries of planned operations: one per decision (each named by its entry in
vdc_lake.review.decisions.DECISIONS), plus dedup's near misses."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from vdc_lake.catalog.connection import Catalog
from vdc_lake.review.pages import Card, Limits, Paged, image_card, inside_folder, query_rows
from vdc_lake.review.render import escape
from vdc_lake.review.thumbnails import Thumb


@dataclass(frozen=True)
class GalleryInputs:
    """What a decision's gallery shows its operations at: the report's page limits and thresholds
    (None: the catalog's settings), and the dedup apply threshold as the report words it."""

    limits: Limits
    rotation_threshold: float | None = None
    dedup_threshold: float | None = None
    apply_text: str = ""


def planned(paged: Paged | None) -> Paged | None:
    """The gallery with each item's first card marked as a planned operation."""
    for item in paged.items if paged else []:
        item[0].planned = True
    return paged


def sanitize_gallery(catalog: Catalog, inputs: GalleryInputs) -> Paged:
    limits = inputs.limits
    rows, total = query_rows(catalog, """
        SELECT image_id, version, path, action, rules, reason, count(*) OVER () AS total
        FROM sanitize_actions
        ORDER BY CASE action WHEN 'delete' THEN 1 WHEN 'resize' THEN 2 ELSE 3 END, rules, path, image_id
        LIMIT $n""", {"n": limits.per_gallery})
    paged = Paged("sanitize", "Sanitize: planned operations",
                  "<p>Every image a sanitize rule acts on: deletions first, then resizes and recompressions, "
                  "grouped by rule.</p>", total)
    paged.items = [[image_card(r, lines=[r["reason"]], css="delete" if r["action"] == "delete" else "change",
                                label=r["action"])] for r in rows]
    return planned(paged)


def quality_gallery(catalog: Catalog, inputs: GalleryInputs) -> Paged | None:
    """Every image with a quality finding (quality_image_actions()): deletions first, then the ones
    only reported, by issue; None when sanitize computed no quality values yet."""
    if not catalog.scalar("SELECT count(*) FROM (SELECT 1 FROM image_quality LIMIT 1)"):
        return None
    rows, total = query_rows(catalog, """
        SELECT image_id, version, path, action, reason, count(*) OVER () AS total
        FROM quality_image_actions()
        ORDER BY action = 'delete' DESC, first_issue, path, image_id
        LIMIT $n""", {"n": inputs.limits.per_gallery})
    paged = Paged("quality", "Quality: findings",
                  "<p>Every image with a quality finding (dark, bright, blurry, low_information, grayscale) at "
                  "the [quality] thresholds: the ones a delete_* threshold deletes first, then those only "
                  "reported.</p>", total)
    paged.items = [[image_card(r, lines=[r["reason"]], css="delete" if r["action"] == "delete" else "change",
                               label="removed" if r["action"] == "delete" else "reported")] for r in rows]
    for item, r in zip(paged.items, rows):
        item[0].planned = r["action"] == "delete"
    return paged


def rotation_gallery(catalog: Catalog, inputs: GalleryInputs) -> Paged:
    threshold, limits = inputs.rotation_threshold, inputs.limits
    rows, total = query_rows(catalog, """
        SELECT r.image_id, r.version, f.path, r.angle, r.confidence, r.action, r.reason, count(*) OVER () AS total
        FROM rotation_actions(threshold := $threshold) AS r JOIN image_files AS f USING (image_id, version)
        WHERE r.action <> 'none'
        ORDER BY r.confidence, r.image_id LIMIT $n""", {"threshold": threshold, "n": limits.per_gallery})
    paged = Paged("rotation", "Rotation: planned corrections",
                  "<p>Every planned rotation, least confident (nearest the threshold) first: the stored "
                  "picture beside the picture after the correction.</p>", total)
    paged.items = [[image_card(r, lines=[r["reason"]], css="before", label=f"before: predicted {r['angle']}°"),
                    image_card(r, lines=[f"{r['action'].replace('_', ' ')}° clockwise"], css="after",
                                label=f"after: {r['action'].replace('_', ' ')}° clockwise", turn=r["action"])]
                   for r in rows]
    return planned(paged)


_DEDUP_DELETES_SQL = """
WITH deletes AS (
    SELECT * FROM dedup_actions(threshold := $threshold) WHERE action = 'delete'
),
pairs AS (  -- the direct edge between a deletion and its keeper, when there is one
    SELECT least(image_a, image_b) AS a, greatest(image_a, image_b) AS b, min(distance) AS distance
    FROM (SELECT image_a, image_b, distance FROM near_duplicate_edges
          UNION ALL SELECT image_a, image_b, distance FROM exact_duplicate_edges)
    GROUP BY ALL
)
SELECT d.image_id, d.version, d.path, d.group_id, d.group_size, d.nearest_distance, d.reason,
       p.distance AS pair_distance, d.kept_image_id, k.version AS kept_version, d.kept_path,
       count(*) OVER () AS total
FROM deletes AS d
LEFT JOIN pairs AS p ON p.a = least(d.image_id, d.kept_image_id) AND p.b = greatest(d.image_id, d.kept_image_id)
LEFT JOIN image_files AS k ON k.image_id = d.kept_image_id
ORDER BY d.nearest_distance DESC, d.group_id, d.image_id
LIMIT $n
"""


def dedup_gallery(catalog: Catalog, inputs: GalleryInputs) -> Paged:
    threshold, apply_text, limits = inputs.dedup_threshold, inputs.apply_text, inputs.limits
    rows, total = query_rows(catalog, _DEDUP_DELETES_SQL, {"threshold": threshold, "n": limits.per_gallery})
    paged = Paged("dedup", "Duplicates: planned deletions",
                  f"<p>Every image dedup would delete at the apply threshold {escape(apply_text)}, nearest the "
                  "threshold first (exact copies last), each beside the image its group keeps.</p>", total)
    for r in rows:
        direct = (f"distance to the kept image {max(0.0, r['pair_distance']):.4f}" if r["pair_distance"] is not None
                  else "no direct pair with the kept image (joined through the group)")
        item = [
            image_card(r, lines=[f"nearest duplicate at {max(0.0, r['nearest_distance']):.4f}", direct,
                                  f"group {r['group_id']} of {r['group_size']} images"], css="delete",
                        label="removed"),
            image_card({"image_id": r["kept_image_id"], "version": r["kept_version"], "path": r["kept_path"]},
                        lines=["kept in its place"], css="keep", label="kept"),
        ]
        for card in item:
            card.group = int(r["group_id"])
        paged.items.append(item)
    return planned(paged)


def near_miss_gallery(catalog: Catalog, threshold: float | None, report_threshold: float | None,
                      limits: Limits) -> Paged:
    """Pairs the report stored that the apply threshold keeps apart, nearest the threshold first."""
    rows, total = query_rows(catalog, """
        WITH fallback AS (SELECT apply_threshold FROM dedup_thresholds WHERE set_name IS NULL),
        near AS (
            SELECT e.set_name, e.image_a, e.image_b, e.distance,
                   coalesce($threshold, t.apply_threshold, f.apply_threshold) AS limit_distance
            FROM near_duplicate_edges AS e CROSS JOIN fallback AS f
            LEFT JOIN dedup_thresholds AS t ON t.set_name = e.set_name
        )
        SELECT n.set_name, n.distance, n.limit_distance, a.image_id, a.version, a.path,
               b.image_id AS b_image_id, b.version AS b_version, b.path AS b_path, count(*) OVER () AS total
        FROM near AS n
        JOIN image_files AS a ON a.image_id = n.image_a
        JOIN image_files AS b ON b.image_id = n.image_b
        WHERE n.distance >= n.limit_distance AND ($report IS NULL OR n.distance < $report)
        ORDER BY n.distance, n.image_a, n.image_b LIMIT $n""",
        {"threshold": threshold, "report": report_threshold, "n": limits.per_gallery})
    below = f" and under {report_threshold:g}" if report_threshold is not None else ""
    paged = Paged("near", "Duplicates: near misses (kept)",
                  f"<p>Pairs the dedup report stored at or above the apply threshold{escape(below)}: both images "
                  "stay. Nearest the threshold first: raise the threshold if these are duplicates.</p>", total)
    for r in rows:
        text = [f"distance {max(0.0, r['distance']):.4f} (apply threshold {r['limit_distance']:g}, set {r['set_name']})"]
        paged.items.append([image_card(r, lines=text, css="keep", label="kept"),
                            image_card(r, lines=[], css="keep", label="kept", prefix="b_")])
    return paged


def examples_gallery(catalog: Catalog, inputs: GalleryInputs) -> Paged:
    limits = inputs.limits
    rows, total = query_rows(catalog, """
        SELECT e.image_id, e.version, f.path, e.distance, e.example, e.reason, count(*) OVER () AS total
        FROM example_actions() AS e JOIN image_files AS f USING (image_id, version)
        WHERE e.action = 'delete'
        ORDER BY e.distance DESC, e.image_id LIMIT $n""", {"n": limits.per_gallery})
    folder = catalog.scalar("SELECT json_extract_string(params, '$.examples') FROM newest_stage_runs "
                            "WHERE stage = 'filter-examples'")
    paged = Paged("examples", "Unwanted examples: planned deletions",
                  "<p>Every image closer than the threshold to an unwanted example, nearest the threshold "
                  "first, beside the example it resembles.</p>", total)
    for r in rows:
        removed = image_card(r, lines=[r["reason"]], css="delete", label="removed")
        example = r["example"] or ""
        inside = inside_folder(example, folder)
        thumb = Thumb("example-" + hashlib.sha1(example.encode()).hexdigest()[:16], example if inside else None,
                      in_root=False)
        paged.items.append([removed, Card(thumb, [f"example {example}"], "example", example if inside else None,
                                          "unwanted example")])
    return planned(paged)


def score_gallery(catalog: Catalog, inputs: GalleryInputs) -> Paged | None:
    limits = inputs.limits
    name = catalog.scalar("SELECT setting('filter_by_score', 'name')")
    if not name:
        return None
    rows, total = query_rows(catalog, """
        WITH bounds AS (
            SELECT coalesce(setting('filter_by_score', 'min_score')::DOUBLE, '-inf'::DOUBLE) AS low,
                   coalesce(setting('filter_by_score', 'max_score')::DOUBLE, 'inf'::DOUBLE) AS high
        )
        SELECT s.image_id, s.version, f.path, s.score, s.reason, count(*) OVER () AS total
        FROM score_actions($name) AS s JOIN image_files AS f USING (image_id, version) CROSS JOIN bounds AS b
        WHERE s.action = 'delete'
        ORDER BY greatest(b.low - s.score, s.score - b.high), s.image_id LIMIT $n""",
        {"name": name, "n": limits.per_gallery})
    paged = Paged("score", f"Score {name}: planned deletions",
                  "<p>Every image whose score falls outside the configured range, nearest the bound first.</p>",
                  total)
    paged.items = [[image_card(r, lines=[r["reason"]], css="delete", label="removed")] for r in rows]
    return planned(paged)


def sample_gallery(catalog: Catalog, inputs: GalleryInputs) -> Paged:
    limits = inputs.limits
    rows, total = query_rows(catalog, """
        SELECT s.image_id, s.version, f.path, s.reason, c.top_cluster_id, count(*) OVER () AS total
        FROM sample_actions() AS s JOIN image_files AS f USING (image_id, version)
        LEFT JOIN image_clusters AS c USING (image_id, version)
        WHERE s.action = 'delete'
        ORDER BY c.top_cluster_id NULLS LAST, s.image_id LIMIT $n""", {"n": limits.per_gallery})
    paged = Paged("sample", "Sample: planned deletions",
                  "<p>Every present image the newest sample run did not select, by top-level cluster.</p>", total)
    last = object()
    for r in rows:
        if r["top_cluster_id"] != last:
            last = r["top_cluster_id"]
            paged.blocks.append((len(paged.items), "<h3>not clustered</h3>" if last is None
                                 else f"<h3>top cluster {escape(last)}</h3>"))
        paged.items.append([image_card(r, lines=[r["reason"]], css="delete", label="not selected")])
    return planned(paged)


def override_gallery(catalog: Catalog, inputs: GalleryInputs) -> Paged:
    limits = inputs.limits
    """The user's overrides in force: drops (planned deletions of the override stage) first, then keeps."""
    rows, total = query_rows(catalog, """
        SELECT image_id, version, path, override, action, reason, count(*) OVER () AS total,
               count(*) FILTER (WHERE action = 'delete') OVER () AS drops
        FROM override_actions
        ORDER BY CASE action WHEN 'delete' THEN 0 ELSE 1 END, created_at DESC, image_id LIMIT $n""",
        {"n": limits.per_gallery})
    paged = Paged("override", "Overrides in force",
                  "<p>Your own verdicts (<code>vdc-lake override keep|drop</code>): images dropped by override "
                  "(the override stage deletes them) first, then images kept by override (no decision removes "
                  "them).</p>", total, planned=int(rows[0]["drops"]) if rows else 0)
    for r in rows:
        dropped = r["action"] == "delete"
        card = image_card(r, lines=[r["reason"]], css="delete" if dropped else "keep",
                           label="dropped by override" if dropped else "kept by override")
        card.planned = dropped
        paged.items.append([card])
    return paged
