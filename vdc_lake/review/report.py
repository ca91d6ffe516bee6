"""Static HTML report for reviewing decisions before `apply`: OUT/index.html, gallery pages, OUT/thumbs/.

index.html: the funnel and the planned operations per decision (the counts `status` and `plan`
give), the thresholds in force, sanitize findings by rule, rotation and pair-distance histograms,
the cluster hierarchy, the sample per top-level cluster, and the history of apply runs from the
journal. Each decision's planned operations (sanitize, rotation, dedup, examples, score, sample),
the near misses of dedup, the cluster members and each apply run's operations are on pages of
`page_size` items (at most `max_pages` pages per gallery; every capped list says "N of M shown"),
nearest the threshold first, each removed duplicate beside the image it loses to. Thumbnails are
made only for what the pages show, so the report stays quick at 10^6 images.

Pages are self-contained (inline CSS and SVG, no script, nothing fetched from the network);
every string taken from the catalog is escaped. Reads the catalog only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import math
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from vdc_lake import __version__
from vdc_lake.catalog.connection import Catalog
from vdc_lake.config.loader import Config
from vdc_lake.fileops.confine import OUTSIDE_ROOT, ReadableRoots, root_overlap, scanned_roots
from vdc_lake.errors import StageError
from vdc_lake.fileops.probe import PixelLimitError, open_image
from vdc_lake.fileops.imageops import ROTATIONS
from vdc_lake.scale.parallel import map_ordered

THUMB_SIZE = 160
PLACEHOLDERS = {"missing": "file missing", "undecodable": "cannot decode", "too_large": "too large",
                "outside": "not read (outside)"}
HISTOGRAM_BINS = 40


# -- thumbnails ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Thumb:
    """One picture to show: the file to read, and the thumbnail's name under OUT/thumbs/.

    turn: a rotation action (rotate_90 ...) applied to the thumbnail (the "after" of a rotation).
    in_root: path names a file in a scanned root (a catalog image; build_report reads it only
    where confine.ReadableRoots allows), else a file its caller checked (a backup, an example).
    """

    key: str
    path: str | None
    turn: str | None = None
    in_root: bool = True

    @property
    def name(self) -> str:
        return f"thumbs/{self.key}.jpg"


def image_thumb(image_id: int, version: int, path: str | None, turn: str | None = None) -> Thumb:
    """The thumbnail of a catalog image (at a version), optionally turned as a rotation would."""
    return Thumb(f"{int(image_id)}-{int(version)}" + (f"-{turn}" if turn else ""), path, turn)


def make_thumbnail(item: tuple[str | None, str, str | None], *, size: int = THUMB_SIZE,
                   max_pixels: int | None = None) -> str:
    """Write a `size` px JPEG thumbnail of item = (image path, thumbnail path, rotation action or
    None); an image of more than max_pixels pixels, every frame counted (None: Pillow's
    decompression-bomb limit), is not decoded, nor one whose header is not within the header
    limits (files.HeaderReader). The thumbnail is written under a temp name and renamed (a link
    planted at its name is replaced, never followed).

    Returns "ok", or the placeholder kind ("missing", "undecodable", "too_large"; "outside" for no
    path: a file the catalog names outside the folders it may be read from) when none was written.
    """
    src, dst, turn = item
    if not src:
        return "outside"
    if not os.path.isfile(src):
        return "missing"
    try:
        with open_image(src, int(max_pixels or Image.MAX_IMAGE_PIXELS or 1 << 62)) as img:
            img.draft("RGB", (size, size))
            img.thumbnail((size, size))
            rgb = _to_rgb(img)
        if turn:
            rgb = rgb.transpose(ROTATIONS[turn])
        write_new_file(Path(dst), lambda f: rgb.save(f, "JPEG", quality=85))
    except PixelLimitError:
        return "too_large"
    except Exception:  # noqa: BLE001 - any undecodable file (HeaderLimitError too) gets the placeholder
        return "undecodable"
    return "ok"


def write_new_file(dst: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file of the report: write(f) into a new temp file beside dst (O_EXCL: never an
    existing entry, never through a link), then os.replace it to dst (which replaces a link at
    dst rather than following it)."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".vdc-report-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


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


def _placeholder(out_dir: Path, kind: str, size: int, made: set[str]) -> str:
    """The placeholder picture of a kind (PLACEHOLDERS), written once per report (`made`)."""
    name = f"thumbs/_{kind}.jpg"
    if name not in made:
        img = Image.new("RGB", (size, size * 3 // 4), (220, 220, 220))
        draw = ImageDraw.Draw(img)
        draw.rectangle((0, 0, img.width - 1, img.height - 1), outline=(150, 150, 150))
        draw.text((10, img.height // 2 - 6), PLACEHOLDERS[kind], fill=(90, 90, 90))
        write_new_file(out_dir / name, lambda f: img.save(f, "JPEG", quality=85))
        made.add(name)
    return name


def write_thumbnails(out_dir: Path, thumbs: Iterable[Thumb], *, size: int, workers: int | None,
                     quiet: bool, max_pixels: int | None = None) -> dict[str, str]:
    """Thumbnail every distinct picture once; returns {key: src relative to out_dir} (a placeholder
    for a file that is missing, cannot be decoded or is too large)."""
    unique = {t.key: t for t in thumbs}
    keys = sorted(unique)
    items = [(unique[k].path, str(out_dir / unique[k].name), unique[k].turn) for k in keys]
    results = map_ordered(partial(make_thumbnail, size=size, max_pixels=max_pixels), items, workers=workers,
                          desc="thumbnails", quiet=quiet)
    made: set[str] = set()
    return {k: (unique[k].name if status == "ok" else _placeholder(out_dir, status, size, made))
            for k, status in zip(keys, results)}


# -- what the pages hold -------------------------------------------------------------------------

@dataclass
class Card:
    """One picture with its caption: file name, a link to the file, and lines of text."""

    thumb: Thumb
    lines: list[str]
    css: str = ""
    link: str | None = None  # the file the picture links to (the original, or its backup)
    label: str | None = None  # shown above the file name ("removed", "kept", ...)
    image_id: int | None = None  # the catalog image shown, if it is one
    planned: bool = False  # the image a planned operation acts on (data-planned in the HTML)


@dataclass
class Grid:
    """Items side by side; each item is one card or a pair (removed beside what it loses to)."""

    items: list[list[Card]]


@dataclass
class Paged:
    """A gallery on its own pages: OUT/{slug}-{n}.html, page_size items each, at most max_pages."""

    slug: str
    title: str
    intro: str  # HTML
    total: int  # items in the full list (the pages hold at most page_size * max_pages of them)
    items: list[list[Card]] = field(default_factory=list)
    blocks: list[tuple[int, str]] = field(default_factory=list)  # (item index, HTML) headings between items
    planned: int | None = None  # planned operations among the total, when not every item is one

    @property
    def operations(self) -> int:
        return self.total if self.planned is None else self.planned


@dataclass
class Section:
    """One part of index.html: a title, an anchor and the body (HTML strings and Grids)."""

    anchor: str
    title: str
    body: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Limits:
    """How much the report shows: examples per index block, gallery page size and page cap."""

    thumbnails: int
    page_size: int
    max_pages: int

    @property
    def per_gallery(self) -> int:
        return self.page_size * self.max_pages


def shown(n: int, total: int, noun: str = "") -> str:
    """'12 of 210 groups shown', or '12 groups' when nothing is left out (noun: singular)."""
    if noun:
        noun = " " + (noun if total == 1 else "children" if noun == "child" else noun + "s")
    return f"{n:,}{noun}" if n >= total else f"{n:,} of {total:,}{noun} shown"


def _first(gallery: Paged, limits: Limits, noun: str) -> str:
    """How many of a gallery's items the index shows (its first `thumbnails`)."""
    return shown(min(len(gallery.items), limits.thumbnails), gallery.total, noun)


def _file_name(path: str | None) -> str:
    return os.path.basename(path or "") or "(no path)"


def _image_card(row: dict, *, lines: Sequence[str], css: str = "", label: str | None = None,
                turn: str | None = None, prefix: str = "") -> Card:
    """A card for a catalog image; row holds {prefix}image_id, {prefix}version, {prefix}path."""
    image_id, version, path = row[f"{prefix}image_id"], row[f"{prefix}version"], row[f"{prefix}path"]
    thumb = image_thumb(image_id, version if version is not None else 0, path, turn)
    return Card(thumb, [f"image {image_id}", *lines], css, path, label, int(image_id))


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
              AND NOT EXISTS (SELECT 1 FROM unreadable_images AS u
                              WHERE u.image_id = p.image_id AND u.version = p.version)
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
        overridden AS (
            SELECT f.* FROM filtered AS f
            WHERE NOT EXISTS (SELECT 1 FROM override_actions AS o
                              WHERE o.image_id = f.image_id AND o.version = f.version AND o.action = 'delete')
        ),
        sampled AS (  -- as `curated`: the newest sample's selection and the images kept by override
            -- (sample_actions also keeps files the sample never judged, which curated leaves out)
            SELECT o.* FROM overridden AS o
            WHERE NOT EXISTS (SELECT 1 FROM runs WHERE stage = 'sample' AND status = 'done')
               OR EXISTS (SELECT 1 FROM sampled_images AS s WHERE s.image_id = o.image_id AND s.version = o.version)
               OR EXISTS (SELECT 1 FROM override_actions AS k
                          WHERE k.image_id = o.image_id AND k.version = o.version AND k.override = 'keep')
        )
        SELECT (SELECT count(*) FROM present), (SELECT count(*) FROM sanitized), (SELECT n FROM rotated),
               (SELECT count(*) FROM rotation_actions(threshold := $rotation) WHERE action <> 'none'),
               (SELECT count(*) FROM deduplicated), (SELECT count(*) FROM filtered),
               (SELECT count(*) FROM overridden), (SELECT count(*) FROM sampled),
               (SELECT count(*) FROM override_actions WHERE override = 'keep')
        """,
        {"rotation": float(rotation_threshold), "dedup": None if dedup_threshold is None else float(dedup_threshold)},
    )[0]
    scanned, sanitized, rotated, planned_rotations, deduplicated, filtered, overridden, sampled, kept = (
        int(v or 0) for v in row)
    # `plan rotation` also turns images that sanitize deletes: say so where the two counts differ
    elsewhere = planned_rotations - rotated
    examples_threshold = catalog.scalar("SELECT setting('filter_by_examples', 'threshold')")
    return [
        ("scanned", scanned, "present images"),
        ("sanitized ok", sanitized, "without a pending sanitize delete or an unreadable finding"),
        ("rotated", sanitized, f"{rotated:,} to be turned upright (probability > {rotation_threshold:g})"
         + (f"; `plan rotation` turns {planned_rotations:,}, also {elsewhere:,} that sanitize deletes or "
            "cannot read" if elsewhere else "")
         if has_rotation else "no rotation predictions yet: run vdc-lake predict --kind rotation"),
        ("deduplicated", deduplicated, f"duplicates removed at distance < {_describe_apply(catalog, dedup_threshold)}"),
        ("filtered", filtered, f"unwanted-example filter at threshold {examples_threshold}" if filter_run
         else "no filter run yet: run vdc-lake filter examples"),
        ("overrides", overridden, f"{filtered - overridden:,} dropped by override; {kept:,} kept by override "
                                  "(no decision removes them)"),
        ("sampled", sampled, f"in sample run {sample_run}" if sample_run
         else "no sample run yet: run vdc-lake sample --total N"),
    ]


# -- the planned operations of each decision, on gallery pages -----------------------------------

def _rows(catalog: Catalog, sql: str, params: dict[str, Any]) -> tuple[list[dict], int]:
    """(the first rows of a query that has a `total` column (count(*) OVER ()), that total)."""
    rows = catalog.arrow(sql, params).to_pylist()
    return rows, int(rows[0]["total"]) if rows else 0


def sanitize_gallery(catalog: Catalog, limits: Limits) -> Paged:
    rows, total = _rows(catalog, """
        SELECT image_id, version, path, action, rules, reason, count(*) OVER () AS total
        FROM sanitize_actions
        ORDER BY CASE action WHEN 'delete' THEN 1 WHEN 'resize' THEN 2 ELSE 3 END, rules, path, image_id
        LIMIT $n""", {"n": limits.per_gallery})
    paged = Paged("sanitize", "Sanitize: planned operations",
                  "<p>Every image a sanitize rule acts on: deletions first, then resizes and recompressions, "
                  "grouped by rule.</p>", total)
    paged.items = [[_image_card(r, lines=[r["reason"]], css="delete" if r["action"] == "delete" else "change",
                                label=r["action"])] for r in rows]
    return paged


def rotation_gallery(catalog: Catalog, threshold: float | None, limits: Limits) -> Paged:
    rows, total = _rows(catalog, """
        SELECT r.image_id, r.version, f.path, r.angle, r.confidence, r.action, r.reason, count(*) OVER () AS total
        FROM rotation_actions(threshold := $threshold) AS r JOIN image_files AS f USING (image_id, version)
        WHERE r.action <> 'none'
        ORDER BY r.confidence, r.image_id LIMIT $n""", {"threshold": threshold, "n": limits.per_gallery})
    paged = Paged("rotation", "Rotation: planned corrections",
                  "<p>Every planned rotation, least confident (nearest the threshold) first: the stored "
                  "picture beside the picture after the correction.</p>", total)
    paged.items = [[_image_card(r, lines=[r["reason"]], css="before", label=f"before: predicted {r['angle']}°"),
                    _image_card(r, lines=[f"{r['action'].replace('_', ' ')}° clockwise"], css="after",
                                label=f"after: {r['action'].replace('_', ' ')}° clockwise", turn=r["action"])]
                   for r in rows]
    return paged


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


def dedup_gallery(catalog: Catalog, threshold: float | None, apply_text: str, limits: Limits) -> Paged:
    rows, total = _rows(catalog, _DEDUP_DELETES_SQL, {"threshold": threshold, "n": limits.per_gallery})
    paged = Paged("dedup", "Duplicates: planned deletions",
                  f"<p>Every image dedup would delete at the apply threshold {_e(apply_text)}, nearest the "
                  "threshold first (exact copies last), each beside the image its group keeps.</p>", total)
    for r in rows:
        direct = (f"distance to the kept image {r['pair_distance']:.4f}" if r["pair_distance"] is not None
                  else "no direct pair with the kept image (joined through the group)")
        paged.items.append([
            _image_card(r, lines=[f"nearest duplicate at {r['nearest_distance']:.4f}", direct,
                                  f"group {r['group_id']} of {r['group_size']} images"], css="delete",
                        label="removed"),
            _image_card({"image_id": r["kept_image_id"], "version": r["kept_version"], "path": r["kept_path"]},
                        lines=["kept in its place"], css="keep", label="kept"),
        ])
    return paged


def near_miss_gallery(catalog: Catalog, threshold: float | None, report_threshold: float | None,
                      limits: Limits) -> Paged:
    """Pairs the report stored that the apply threshold keeps apart, nearest the threshold first."""
    rows, total = _rows(catalog, """
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
                  f"<p>Pairs the dedup report stored at or above the apply threshold{_e(below)}: both images "
                  "stay. Nearest the threshold first: raise the threshold if these are duplicates.</p>", total)
    for r in rows:
        text = [f"distance {r['distance']:.4f} (apply threshold {r['limit_distance']:g}, set {r['set_name']})"]
        paged.items.append([_image_card(r, lines=text, css="keep", label="kept"),
                            _image_card(r, lines=[], css="keep", label="kept", prefix="b_")])
    return paged


def _inside(path: str | None, folder: str | None) -> bool:
    """Whether path resolves inside folder (a catalog may come from someone else: it names no
    file outside the folders a run recorded)."""
    if not path or not folder:
        return False
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def examples_gallery(catalog: Catalog, limits: Limits) -> Paged:
    rows, total = _rows(catalog, """
        SELECT e.image_id, e.version, f.path, e.distance, e.example, e.reason, count(*) OVER () AS total
        FROM example_actions() AS e JOIN image_files AS f USING (image_id, version)
        WHERE e.action = 'delete'
        ORDER BY e.distance DESC, e.image_id LIMIT $n""", {"n": limits.per_gallery})
    folder = catalog.scalar("SELECT json_extract_string(params, '$.examples') FROM runs "
                            "WHERE stage = 'filter-examples' AND status = 'done' ORDER BY run_id DESC LIMIT 1")
    paged = Paged("examples", "Unwanted examples: planned deletions",
                  "<p>Every image closer than the threshold to an unwanted example, nearest the threshold "
                  "first, beside the example it resembles.</p>", total)
    for r in rows:
        removed = _image_card(r, lines=[r["reason"]], css="delete", label="removed")
        example = r["example"] or ""
        inside = _inside(example, folder)
        thumb = Thumb("example-" + hashlib.sha1(example.encode()).hexdigest()[:16], example if inside else None,
                      in_root=False)
        paged.items.append([removed, Card(thumb, [f"example {example}"], "example", example if inside else None,
                                          "unwanted example")])
    return paged


def score_gallery(catalog: Catalog, limits: Limits) -> Paged | None:
    name = catalog.scalar("SELECT setting('filter_by_score', 'name')")
    if not name:
        return None
    rows, total = _rows(catalog, """
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
    paged.items = [[_image_card(r, lines=[r["reason"]], css="delete", label="removed")] for r in rows]
    return paged


def sample_gallery(catalog: Catalog, limits: Limits) -> Paged:
    rows, total = _rows(catalog, """
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
                                 else f"<h3>top cluster {_e(last)}</h3>"))
        paged.items.append([_image_card(r, lines=[r["reason"]], css="delete", label="not selected")])
    return paged


def override_gallery(catalog: Catalog, limits: Limits) -> Paged:
    """The user's overrides in force: drops (planned deletions of the override stage) first, then keeps."""
    rows, total = _rows(catalog, """
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
        card = _image_card(r, lines=[r["reason"]], css="delete" if dropped else "keep",
                           label="dropped by override" if dropped else "kept by override")
        card.planned = dropped
        paged.items.append([card])
    return paged


DECISION_GALLERIES = ("sanitize", "rotation", "dedup", "examples", "score", "sample", "override")


# -- history: what each apply run changed, from the journal --------------------------------------

KEPT_IN_REASON = re.compile(r"\(image (\d+), kept by ")  # dedup reasons in journals written before kept_image_id


@dataclass
class ApplyRun:
    run_id: int
    stage: str
    started: str
    status: str
    no_backup: bool
    backup_dir: str | None
    counts: list[tuple[str, str, int]]  # (action, state, operations)
    done: int
    backups_present: int
    gallery: Paged

    @property
    def restorable(self) -> str:
        if self.no_backup:
            return "no: run with --no-backup"
        if not self.done:
            return "nothing to restore (no operation is done)"
        if self.backups_present == self.done:
            return f"yes: all {self.done:,} backups present"
        return f"partly: {self.backups_present:,} of {self.done:,} backups present"


def _backups_present(backups: list[str | None], folder: str | None) -> int:
    """Backups that exist in the run's backup folder (a lexical check: counting resolves no links,
    and only the pictures shown are read, after a full check)."""
    if not folder:
        return 0
    base = os.path.normpath(folder).rstrip(os.sep) + os.sep
    return sum(1 for b in backups if b and os.path.normpath(b).startswith(base) and os.path.isfile(b))


def _history_cards(op: dict, backup_dir: str | None) -> list[Card]:
    """The picture of an operation: the original from its backup (or where it is now), with the
    result beside it when the file was changed rather than deleted."""
    backup = op["backup"] if _inside(op["backup"], backup_dir) else None
    before_path = backup if op["state"] == "done" and backup else op["src"]
    lines = [f"image {op['image_id']}", f"{op['action']} ({op['state']})", f"was {op['src']}", op["reason"] or ""]
    if op["error"]:
        lines.append(f"error: {op['error']}")
    if before_path == backup:
        lines.append("picture and link: the backup")
    before = Card(Thumb(f"op-{op['op_id']}", before_path, in_root=before_path != backup), lines,
                  "delete" if op["action"] == "delete" else "before", before_path,
                  "removed" if op["action"] == "delete" else "before", int(op["image_id"]))
    cards = [before]
    if op["action"] != "delete" and op["state"] == "done":
        cards.append(Card(Thumb(f"op-{op['op_id']}-after", op["dst"] or op["src"]), [f"after {op['action']}"],
                          "after", op["dst"] or op["src"], "after"))
    elif op["action"] == "delete" and op["kept_image_id"] is not None:
        cards.append(_image_card({"image_id": op["kept_image_id"], "version": op["kept_version"],
                                  "path": op["kept_path"]},
                                 lines=["kept in its place" if op["kept_present"] else "kept then, removed since"],
                                 css="keep", label="kept"))
    return cards


def apply_history(catalog: Catalog, limits: Limits) -> list[ApplyRun]:
    runs = catalog.rows(
        """SELECT run_id, stage, strftime(started_at, '%Y-%m-%d %H:%M:%S'), status,
                  coalesce(json_extract(params, '$.no_backup')::BOOLEAN, false),
                  json_extract_string(params, '$.backup_dir')
           FROM runs WHERE stage LIKE 'apply:%' ORDER BY run_id""")
    history = []
    for run_id, stage, started, status, no_backup, backup_dir in runs:
        counts = catalog.rows("SELECT action, state, count(*) FROM journal WHERE run_id = ? GROUP BY ALL "
                              "ORDER BY action, state", [run_id])
        backups = catalog.arrow("SELECT backup FROM journal WHERE run_id = ? AND state = 'done' AND backup IS NOT NULL",
                                [run_id]).column(0).to_pylist()
        done = sum(n for _, state, n in counts if state == "done")
        ops = catalog.arrow(
            """SELECT j.op_id, j.image_id, j.version, j.action, j.state, j.src, j.dst, j.backup, j.error,
                      json_extract_string(j.params, '$.reason') AS reason,
                      TRY_CAST(json_extract_string(j.params, '$.kept_image_id') AS BIGINT) AS kept_in_params,
                      count(*) OVER () AS total
               FROM journal AS j WHERE j.run_id = ? ORDER BY j.op_id LIMIT ?""",
            [run_id, limits.per_gallery]).to_pylist()
        kept_ids = {}
        for op in ops:
            # the journal's params name the kept image; journals written before that only say it
            # in the reason's text
            match = KEPT_IN_REASON.search(op["reason"] or "") if op["action"] == "delete" else None
            kept_in_reason = int(match.group(1)) if match else None
            kept_in_params = op.pop("kept_in_params")
            kept_ids[op["op_id"]] = kept_in_params if kept_in_params is not None else kept_in_reason
        kept = {}
        wanted = sorted({k for k in kept_ids.values() if k is not None})
        if wanted:
            kept = {i: (v, p, present) for i, v, p, present in catalog.rows(
                "SELECT image_id, version, root || '/' || rel_path, present FROM images "
                "WHERE list_contains(?, image_id)", [wanted])}
        for op in ops:
            k = kept.get(kept_ids[op["op_id"]])
            op.update(kept_image_id=kept_ids[op["op_id"]] if k else None, kept_version=k[0] if k else None,
                      kept_path=k[1] if k else None, kept_present=bool(k and k[2]))
        total = int(ops[0]["total"]) if ops else 0
        gallery = Paged(f"history-{run_id}", f"Apply run {run_id} ({stage})",
                        f"<p>Operations of apply run {run_id}, started {_e(started)}: each original as it was "
                        "(from its backup when the file was deleted or changed).</p>", total)
        gallery.items = [_history_cards(op, backup_dir) for op in ops]
        history.append(ApplyRun(run_id, stage, started, status, bool(no_backup), backup_dir, counts, done,
                                _backups_present(backups, backup_dir), gallery))
    return history


def _applied_summary(history: list[ApplyRun]) -> str:
    done = {}
    for run in history:
        for action, state, n in run.counts:
            if state == "done":
                done[action] = done.get(action, 0) + n
    if not done:
        return ""
    what = ", ".join(f"{n:,} {action}" for action, n in sorted(done.items()))
    return (f"<p>Already applied: {_e(what)} in {len(history)} apply run(s) "
            '(see <a href="#history">History</a>); the funnel starts from the images present now.</p>')


def _decisions_section(galleries: dict[str, Paged | None], limits: Limits, history: list[ApplyRun]) -> Section:
    section = Section("decisions", "Planned operations by decision")
    section.body.append("<p>What <code>vdc-lake plan STAGE</code> would do now, at the thresholds of this "
                        "report (the catalog's settings unless overridden). Each list is on its own pages.</p>")
    rows = []
    for name in DECISION_GALLERIES:
        gallery = galleries.get(name)
        applied = sum(n for r in history if r.stage == f"apply:{name}" for _, state, n in r.counts if state == "done")
        if gallery is None:
            rows.append((name, "0", "no score filter configured ([filter_by_score] name)", f"{applied:,}"))
            continue
        rows.append((name, f"{gallery.operations:,}", _pages_link(gallery, limits), f"{applied:,}"))
    section.body.append(_table(["decision", "planned", "review pages", "applied earlier (done)"], rows,
                               raw_columns={2}))
    unfinished = sum(n for r in history for _, state, n in r.counts if state == "planned")
    if unfinished:  # `plan` and `status` leave these images out of the stage's plan; this table counts them
        section.body.append(_note(f"{unfinished:,} operations of an interrupted apply are unfinished: the next "
                                  "`apply --apply` finishes them first, and `plan` / `status` count them apart "
                                  "(the numbers above include them)"))
    return section


def _thresholds_section(catalog: Catalog, dedup_threshold: float | None, report_threshold: float | None,
                        rotation_threshold: float, rotation_source: str) -> Section:
    section = Section("thresholds", "Thresholds in force")
    rows = [("rotation", "probability above", f"{rotation_threshold:g}", rotation_source)]
    for set_name, apply_at, apply_source, report_at, report_source in catalog.rows(
            "SELECT set_name, apply_threshold, apply_source, report_threshold, report_source FROM dedup_thresholds "
            "WHERE set_name IS NOT NULL ORDER BY set_name"):
        if dedup_threshold is not None:
            apply_at, apply_source = dedup_threshold, "this report's --dedup-threshold"
        rows.append((f"dedup apply, set {set_name}", "distance under", f"{apply_at:g}", apply_source))
        searched = _searched_threshold(catalog, set_name)
        rows.append((f"dedup report, set {set_name}", "pairs stored under",
                     "no report run yet" if searched is None else f"{searched:g}",
                     f"dedup report run (setting now {report_at:g}, {report_source})"))
    for section_name, key, what in (("filter_by_examples", "threshold", "distance under"),
                                    ("filter_by_score", "name", "score name"),
                                    ("filter_by_score", "min_score", "score at least"),
                                    ("filter_by_score", "max_score", "score at most")):
        value = catalog.rows("SELECT value, source FROM settings WHERE section = ? AND key = ?", [section_name, key])
        if value:
            rows.append((f"{section_name}.{key}", what, value[0][0] or "(none)", value[0][1]))
    section.body.append(_table(["decision", "rule", "value", "source"], rows))
    if report_threshold is not None:
        section.body.append(_note(f"near misses shown up to distance {report_threshold:g} (--report-threshold)"))
    return section


def _searched_threshold(catalog: Catalog, set_name: str) -> float | None:
    """The distance under which the newest finished dedup report of the set stored its pairs."""
    value = catalog.scalar("SELECT json_extract(params, '$.threshold')::DOUBLE FROM runs WHERE stage = 'dedup-report' "
                           "AND status = 'done' AND json_extract_string(params, '$.set') = ? "
                           "ORDER BY run_id DESC LIMIT 1", [set_name])
    return None if value is None else float(value)


def _sanitize_section(catalog: Catalog, limits: Limits, gallery: Paged) -> Section:
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
        {"examples": limits.thumbnails},
    ).to_pylist()
    if not rows:
        section.body.append(_note("no findings: every checked image passed every rule"))
        return section
    section.body.append(f"<p>{gallery.total:,} planned sanitize operations: {_pages_link(gallery, limits)}</p>")
    section.body.append(_table(["rule", "action", "images"], [(r["rule"], r["action"], f"{r['images']:,}")
                                                               for r in rows]))
    section.body.append('<div class="blocks">')
    for r in rows:
        section.body.append(f"<div><h3>{_e(r['rule'])} <small>({_e(r['action'])}, "
                            f"{_e(shown(len(r['examples']), r['images'], 'image'))})</small></h3>")
        section.body.append(Grid([[_image_card(e, lines=[e["detail"]])] for e in r["examples"]]))
        section.body.append("</div>")
    section.body.append("</div>")
    return section


def _rotation_section(catalog: Catalog, threshold: float, limits: Limits, gallery: Paged) -> Section:
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
    section.body.append(f"<p>{gallery.total:,} images would be turned upright at probability &gt; {threshold:g} "
                        f"({_pages_link(gallery, limits)}). Probability of the predicted angle, for images not "
                        "predicted upright:</p>")
    section.body.append(svg_histogram(turned, lo=0.0, hi=1.0, x_label="probability of the predicted (non-zero) angle",
                                      markers=[(threshold, f"threshold {threshold:g}", "#c0392b")], log_counts=True))
    if gallery.items:
        section.body.append(f"<p>Before / after, nearest the threshold first "
                            f"({_e(_first(gallery, limits, 'correction'))}"
                            "):</p>")
        section.body.append(Grid(gallery.items[:limits.thumbnails]))
    else:
        section.body.append(_note(f"no image is predicted rotated with probability above {threshold:g}"))
    return section


def _describe_apply(catalog: Catalog, dedup_threshold: float | None) -> str:
    """'0.25', or the per-set values of the catalog: '0.08 (set builtin), 0.25 (set sscd)'."""
    if dedup_threshold is not None:
        return f"{dedup_threshold:g}"
    rows = catalog.rows("SELECT DISTINCT t.set_name, t.apply_threshold FROM near_duplicate_edges AS e "
                        "JOIN dedup_thresholds AS t ON t.set_name = e.set_name ORDER BY 1")
    if not rows:  # no pairs among present images: the registered sets' thresholds, else the fallback
        rows = catalog.rows("SELECT set_name, apply_threshold FROM dedup_thresholds WHERE set_name IS NOT NULL "
                            "ORDER BY 1")
    if not rows:
        return f"{catalog.scalar('SELECT apply_threshold FROM dedup_thresholds WHERE set_name IS NULL'):g}"
    return ", ".join(f"{value:g} (set {name})" for name, value in rows)


def _distance_histograms(catalog: Catalog, dedup_threshold: float | None) -> list[str]:
    """Per embedding set: a log-count histogram of the newest report's pair distances, with the
    apply threshold in force and the distance the report searched under."""
    runs = catalog.rows("SELECT json_extract_string(params, '$.set') AS set_name, max(run_id) FROM runs "
                        "WHERE stage = 'dedup-report' AND status = 'done' GROUP BY ALL ORDER BY 1")
    if not runs:
        return [_note("no near-duplicate report yet: run vdc-lake dedup report --set builtin "
                      "(exact copies are grouped without one)")]
    body = []
    for set_name, run_id in runs:
        distances = catalog.arrow("SELECT distance FROM near_duplicate_edges WHERE set_name = ?",
                                  [set_name]).column(0).to_numpy()
        searched = _searched_threshold(catalog, set_name)
        apply_at = dedup_threshold if dedup_threshold is not None else catalog.scalar(
            "SELECT apply_threshold FROM dedup_thresholds WHERE set_name IS NOT DISTINCT FROM ? OR set_name IS NULL "
            "ORDER BY set_name NULLS LAST LIMIT 1", [set_name])
        hi = max(float(searched or 0), float(apply_at), float(distances.max(initial=0.0))) * 1.05 or 1.0
        positive = distances[distances > 0]
        # log-spaced from the decade of the smallest positive distance (exact copies get their own bar)
        lo = 10.0 ** math.floor(math.log10(max(float(positive.min()), hi * 1e-6))) if len(positive) else hi / 1000
        markers = [(float(apply_at), f"apply {apply_at:g}", "#c0392b")]
        if searched is not None:
            markers.append((searched, f"report {searched:g}", "#2471a3"))
        body.append(f"<h3>Pair distances, set {_e(set_name)} <small>(report run {run_id}: {len(distances):,} pairs "
                    f"of present images under {_e('?' if searched is None else f'{searched:g}')})</small></h3>")
        body.append(svg_histogram(distances, lo=lo, hi=hi, x_label="pair distance, log scale (bars: pairs, log scale)",
                                  markers=markers, log_counts=True, log_x=True))
    return body


def _duplicates_section(catalog: Catalog, dedup_threshold: float | None, limits: Limits, gallery: Paged,
                        near: Paged, history: list[ApplyRun]) -> Section:
    section = Section("duplicates", "Duplicates")
    section.body.extend(_distance_histograms(catalog, dedup_threshold))
    apply_text = _describe_apply(catalog, dedup_threshold)
    groups = catalog.scalar("SELECT count(DISTINCT group_id) FROM dedup_actions(threshold := ?)", [dedup_threshold])
    section.body.append(f"<p>{gallery.total:,} images would be deleted from {groups:,} duplicate groups at the apply "
                        f"threshold {_e(apply_text)}: {_pages_link(gallery, limits)}. {near.total:,} stored pairs are "
                        f"kept apart by it (near misses): {_pages_link(near, limits)}.</p>")
    for run in history:
        if run.stage == "apply:dedup":
            done = sum(n for _, state, n in run.counts if state == "done")
            section.body.append(f'<p>Apply run {run.run_id} already removed {done:,} duplicates: '
                                f'<a href="{_e(_page_name(run.gallery.slug, 1))}">its operations</a>.</p>')
    if gallery.items:
        section.body.append(f"<p>Nearest the threshold first ({_e(_first(gallery, limits, 'deletion'))}):</p>")
        section.body.append(Grid(gallery.items[:limits.thumbnails]))
    elif not any(r.stage == "apply:dedup" for r in history):
        section.body.append(_note(f"no duplicates at the apply threshold {apply_text}"))
    return section


@dataclass
class ClusterTree:
    """The newest cluster run's hierarchy: (level, id) -> size / parent / children."""

    run_id: int
    top_level: int
    size: dict[tuple[int, int], int]
    children: dict[tuple[int, int], list[tuple[int, int]]]
    parent: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)

    def tops(self) -> list[tuple[int, int]]:
        return sorted((k for k in self.size if k[0] == self.top_level), key=lambda k: (-self.size[k], k[1]))

    def leaves_under(self, node: tuple[int, int]) -> list[tuple[int, int]]:
        if node[0] == 0:
            return [node]
        return [leaf for child in self.children.get(node, []) for leaf in self.leaves_under(child)]


def cluster_tree(catalog: Catalog) -> ClusterTree | None:
    run_id = catalog.scalar("SELECT max(run_id) FROM runs WHERE stage = 'cluster' AND status = 'done'")
    if run_id is None:
        return None
    rows = catalog.rows("SELECT level, cluster_id, parent_id, size FROM clusters WHERE run_id = ?", [run_id])
    if not rows:
        return None
    size = {(lv, cid): int(n) for lv, cid, _, n in rows}
    children: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for lv, cid, parent, _ in sorted(rows, key=lambda r: (-r[3], r[1])):
        if parent is not None:
            children.setdefault((lv + 1, parent), []).append((lv, cid))
    parent = {child: node for node, kids in children.items() for child in kids}
    return ClusterTree(run_id, max(lv for lv, *_ in rows), size, children, parent)


def cluster_gallery(catalog: Catalog, tree: ClusterTree, limits: Limits) -> tuple[Paged, dict[tuple[int, int], int]]:
    """Leaf clusters in hierarchy order (largest first), page_size leaves a page, `thumbnails`
    members each (nearest the centre first). Returns the gallery and the page of each shown leaf."""
    leaves = [leaf for top in tree.tops() for leaf in tree.leaves_under(top)]
    shown_leaves = leaves[:limits.per_gallery]
    members: dict[int, list[dict]] = {}
    if shown_leaves and limits.thumbnails:
        for r in catalog.arrow(
                """WITH ranked AS (
                       SELECT a.cluster_id, a.image_id, a.version, f.path, a.distance,
                              row_number() OVER (PARTITION BY a.cluster_id
                                                 ORDER BY a.distance NULLS LAST, a.image_id) AS rank
                       FROM assignments AS a JOIN image_files AS f ON f.image_id = a.image_id AND f.version = a.version
                       WHERE a.run_id = $run AND a.level = 0 AND list_contains($ids, a.cluster_id))
                   SELECT * FROM ranked WHERE rank <= $k ORDER BY cluster_id, rank""",
                {"run": tree.run_id, "ids": [c for _, c in shown_leaves], "k": limits.thumbnails}).to_pylist():
            members.setdefault(r["cluster_id"], []).append(r)
    # One item per leaf: its members in a row (an item is drawn as one block of cards).
    paged = Paged("clusters", f"Clusters of run {tree.run_id}: members by leaf",
                  "<p>Every level-0 cluster under its parents, largest first; members nearest the centre "
                  "first.</p>", len(leaves))
    page_of = {}
    for i, leaf in enumerate(shown_leaves):
        page_of[leaf] = i // limits.page_size + 1
        rows = members.get(leaf[1], [])
        paged.blocks.append((i, _leaf_heading(tree, leaf, len(rows))))
        paged.items.append([_image_card(r, lines=["" if r["distance"] is None else f"distance {r['distance']:.3f}"])
                            for r in rows])
    return paged, page_of


def _ancestors(tree: ClusterTree, leaf: tuple[int, int]) -> list[tuple[int, int]]:
    chain, node = [], leaf
    while node in tree.parent:
        node = tree.parent[node]
        chain.append(node)
    return chain[::-1]


def _leaf_heading(tree: ClusterTree, leaf: tuple[int, int], n_members: int) -> str:
    path = " → ".join(f"level {lv} cluster {cid}" for lv, cid in [*_ancestors(tree, leaf), leaf])
    return (f"<h3>{_e(path)} <small>({_e(shown(n_members, tree.size[leaf], 'image'))})</small></h3>")


def _clusters_section(catalog: Catalog, tree: ClusterTree | None, gallery: Paged | None,
                      page_of: dict[tuple[int, int], int], limits: Limits) -> Section:
    section = Section("clusters", "Clusters")
    if tree is None or gallery is None:
        section.body.append(_note("no clustering yet: run vdc-lake cluster --set NAME"))
        return section
    levels = catalog.rows("SELECT level, count(*), min(size), median(size), max(size) FROM clusters "
                          "WHERE run_id = ? GROUP BY level ORDER BY level", [tree.run_id])
    section.body.append(f"<p>Cluster run {tree.run_id}; members of every level-0 cluster: "
                        f"{_pages_link(gallery, limits)}.</p>")
    section.body.append(_table(["level", "clusters", "smallest", "median", "largest"],
                               [(lv, f"{n:,}", f"{lo:,}", f"{med:g}", f"{hi:,}") for lv, n, lo, med, hi in levels]))
    sizes = [n for (lv, _), n in tree.size.items() if lv == 0]
    lo, hi = min(sizes, default=0), max(sizes, default=0) + 1
    section.body.append("<h3>Level-0 cluster sizes</h3>")
    section.body.append(svg_histogram(sizes, lo=float(lo), hi=float(hi), bins=max(1, min(HISTOGRAM_BINS, hi - lo)),
                                      x_label="images per cluster (bars: number of clusters)"))
    tops = tree.tops()
    listed = shown(min(len(tops), limits.page_size), len(tops), "top-level cluster")
    section.body.append(f"<h3>Hierarchy <small>({_e(listed)}"
                        "; open one to see its children)</small></h3>")
    section.body.append('<div class="tree">' + "".join(_tree_html(tree, top, page_of, limits.page_size)
                                                        for top in tops[:limits.page_size]) + "</div>")
    return section


def _tree_html(tree: ClusterTree, node: tuple[int, int], page_of: dict[tuple[int, int], int], cap: int) -> str:
    """A cluster and its children (at most `cap` of them; below the top level at most 10, so a
    deep tree stays a few thousand lines), as nested <details>."""
    level, cid = node
    kids = tree.children.get(node, [])
    if level == 0:
        page = page_of.get(node)
        link = (f' · <a href="{_page_name("clusters", page)}#leaf-{cid}">members</a>' if page
                else " · members not shown (page cap)")
        return f'<div class="leaf">level 0 cluster {cid} ({tree.size[node]:,} images){link}</div>'
    inner = "".join(_tree_html(tree, kid, page_of, min(cap, 10)) for kid in kids[:cap])
    return (f"<details><summary>level {level} cluster {cid} ({tree.size[node]:,} images, "
            f"{_e(shown(min(len(kids), cap), len(kids), 'child'))})</summary>{inner}</details>")


def _sampling_section(catalog: Catalog, limits: Limits, gallery: Paged) -> Section:
    section = Section("sampling", "Sampling allocation")
    run = catalog.rows("SELECT run_id, json_extract(params, '$.cluster_run')::BIGINT FROM runs "
                       "WHERE stage = 'sample' AND status = 'done' ORDER BY run_id DESC LIMIT 1")
    if not run:
        section.body.append(_note("no sample run yet: run vdc-lake sample --total N"))
        return section
    sample_run, cluster_run = run[0]
    rows = catalog.arrow(
        """
        WITH top AS (
            -- at the current version: an image apply changed since keeps its cluster (applied_versions)
            SELECT a.image_id, f.version, a.cluster_id, f.path FROM assignments AS a
            JOIN image_files AS f ON f.image_id = a.image_id
            LEFT JOIN applied_versions AS v ON v.image_id = f.image_id
            WHERE a.run_id = $cluster_run
              AND a.level = (SELECT max(level) FROM clusters WHERE run_id = $cluster_run)
              AND (a.version = f.version OR a.version BETWEEN v.first_version AND f.version)
        ),
        marked AS (  -- sampled_images: the newest sample run, selections carried across apply as curated does
            SELECT t.*, s.image_id IS NOT NULL AS kept FROM top AS t
            LEFT JOIN sampled_images AS s ON s.image_id = t.image_id AND s.version = t.version
        )
        SELECT cluster_id, count(*) AS available, count(*) FILTER (WHERE kept) AS selected,
               list_slice(list({'image_id': image_id, 'version': version, 'path': path} ORDER BY image_id)
                          FILTER (WHERE kept), 1, $k) AS kept_examples,
               list_slice(list({'image_id': image_id, 'version': version, 'path': path} ORDER BY image_id)
                          FILTER (WHERE NOT kept), 1, $k) AS dropped_examples
        FROM marked GROUP BY cluster_id ORDER BY cluster_id
        """,
        {"cluster_run": cluster_run, "k": limits.thumbnails},
    ).to_pylist()
    clustered = sum(r["selected"] for r in rows)
    total = catalog.scalar("SELECT count(*) FROM sampled_images")
    curated = catalog.scalar("SELECT count(*) FROM curated")
    outside = (f" ({total - clustered:,} of them in no cluster of that run: kept by override)"
               if total > clustered else "")
    differs = (f" <b>curated holds {curated:,}</b> (see status: a decision or an override changed since);"
               if curated != total else "")
    section.body.append(f"<p>Sample run {sample_run} selected {total:,} images from cluster run {cluster_run}"
                        f"{outside};{differs} {gallery.total:,} present images are not selected "
                        f"({_pages_link(gallery, limits)}). Per top-level cluster (bar: share of the cluster "
                        "selected):</p>")
    body = [(r["cluster_id"], f"{r['available']:,}", f"{r['selected']:,}",
             _bar(r["selected"] / r["available"] if r["available"] else 0.0,
                  f"{100 * r['selected'] / max(r['available'], 1):.1f}%")) for r in rows]
    section.body.append(_table(["top cluster", "available", "selected", "share"], body, raw_columns={3}))
    for r in rows[:limits.page_size]:
        dropped = r["available"] - r["selected"]
        section.body.append(f"<h3>top cluster {_e(r['cluster_id'])} <small>(kept: "
                            f"{_e(shown(len(r['kept_examples'] or []), r['selected']))}; dropped: "
                            f"{_e(shown(len(r['dropped_examples'] or []), dropped))})</small></h3>")
        kept = [[_image_card(e, lines=[], css="keep", label="kept")] for e in r["kept_examples"] or []]
        dropped = [[_image_card(e, lines=[], css="delete", label="dropped")] for e in r["dropped_examples"] or []]
        section.body.append(Grid(kept + dropped))
    if len(rows) > limits.page_size:
        section.body.append(_note(f"examples of {shown(limits.page_size, len(rows), 'top cluster')}"))
    return section


def _predict_failures_section(catalog: Catalog) -> Section:
    """Images a model could not read, per result set (the failed_predictions view, as `status`
    shows it); they are not tried again on the same bytes unless `predict --retry-failed`."""
    from vdc_lake.review.status import predict_failures

    rows = predict_failures(catalog)
    if not rows:
        return Section("predict-failures", "Predict failures", [_note("No open predict failures.")])
    return Section("predict-failures", "Predict failures", [
        _note("Files a model could not read, on their current bytes; `vdc-lake predict --retry-failed` tries "
              "them again, and a changed file is tried again by itself."),
        _table(["set", "images", "example"], rows),
    ])


def _history_section(history: list[ApplyRun], limits: Limits) -> Section:
    section = Section("history", "History: apply runs")
    if not history:
        section.body.append(_note("nothing applied yet: every decision above is still a plan "
                                  "(vdc-lake apply STAGE --backup-dir DIR --apply)"))
        return section
    rows = []
    for run in history:
        counts = "; ".join(f"{action} {state}: {n:,}" for action, state, n in run.counts) or "no operations"
        rows.append((run.run_id, run.stage, run.started, run.status, counts, run.restorable,
                     _pages_link(run.gallery, limits)))
    section.body.append(_table(["run", "stage", "started", "status", "operations", "restorable", "operations shown"],
                               rows, raw_columns={6}))
    for run in history:
        if run.gallery.items:
            section.body.append(f"<h3>apply run {run.run_id} ({_e(run.stage)}) <small>"
                                f"({_e(_first(run.gallery, limits, 'operation'))})"
                                "</small></h3>")
            section.body.append(Grid(run.gallery.items[:limits.thumbnails]))
    return section


# -- rendering -----------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _bar(fraction: float, label: str) -> str:
    width = max(0.0, min(1.0, fraction)) * 100
    return f'<div class="bar"><span style="width:{width:.1f}%"></span><em>{_e(label)}</em></div>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, raw_columns: set[int] = frozenset()) -> str:
    """An HTML table; every cell is escaped except the columns in raw_columns (HTML we made)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = [str(v) if i in raw_columns else _e(v) for i, v in enumerate(row)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


PAGE_NAME = re.compile(r"(sanitize|rotation|dedup|near|examples|score|sample|override|clusters|history-\d+)-\d+\.html")


def _page_name(slug: str, page: int) -> str:
    return f"{slug}-{page}.html"


def _page_count(gallery: Paged, limits: Limits) -> int:
    return max(1, math.ceil(len(gallery.items) / limits.page_size))


def _pages_link(gallery: Paged, limits: Limits) -> str:
    """'<a>43 items on 1 page</a>' or '500 of 1,200 shown on 10 pages' (links to each page)."""
    if not gallery.total:
        return "none"
    pages = _page_count(gallery, limits)
    links = " ".join(f'<a href="{_e(_page_name(gallery.slug, p))}">{p}</a>' for p in range(1, pages + 1))
    return f"{_e(shown(len(gallery.items), gallery.total))} on {pages} page{'s' if pages > 1 else ''}: {links}"


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / max(ticks, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def _tick_label(value: float) -> str:
    return np.format_float_positional(float(value), precision=6, trim="-")


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten in [lo, hi], with 2x and 5x between them when the range spans few decades."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    steps = (1, 2, 5) if len(decades) <= 4 else (1,)
    return [m * 10.0 ** d for d in decades for m in steps if lo <= m * 10.0 ** d <= hi * (1 + 1e-9)]


def svg_histogram(values: Sequence[float], *, lo: float, hi: float, x_label: str,
                  markers: Sequence[tuple[float, str, str]] = (), bins: int = HISTOGRAM_BINS,
                  log_counts: bool = False, log_x: bool = False, width: int = 720, height: int = 220) -> str:
    """An inline SVG histogram of `values` over [lo, hi], with vertical lines at markers (x, label,
    colour) and round-numbered ticks. log_counts: bar heights on a log scale (1, 10, 100, ...), so
    one huge bar does not hide the rest. log_x: bins evenly spaced in log(x) from lo > 0; the
    values under lo (exact copies at distance 0) get a bar of their own at the left."""
    if not len(values):
        return _note(f"no values to plot ({x_label})")
    data = np.asarray(values, dtype=np.float64)
    left, bottom, plot_w, plot_h = 60, height - 40, width - 80, height - 70
    under = 0
    if log_x:
        edges = np.geomspace(lo, hi, bins + 1)
        counts, _ = np.histogram(np.clip(data, lo, hi), bins=edges)
        under = int((data < lo).sum())
        counts[0] -= under
        gap = 36  # the "under lo" bar
        x = lambda v: left + gap + math.log(max(v, lo) / lo) / math.log(hi / lo) * (plot_w - gap)  # noqa: E731
    else:
        counts, edges = np.histogram(data, bins=bins, range=(lo, hi))
        x = lambda v: left + (v - lo) / ((hi - lo) or 1.0) * plot_w  # noqa: E731
    top = max(int(counts.max()), under, 1)
    if log_counts:  # 1 -> one step above the axis, each power of ten one more step
        decades = math.ceil(math.log10(top)) + 1
        y = lambda c: 0.0 if c <= 0 else (math.log10(c) + 1) / decades * plot_h  # noqa: E731
        y_ticks = [10 ** k for k in range(decades)]
    else:
        y = lambda c: c / top * plot_h  # noqa: E731
        y_ticks = [0, top]
    parts = [f'<svg class="hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{_e(x_label)}">']
    for count, a, b in zip(counts, edges[:-1], edges[1:]):
        h = y(count)
        parts.append(f'<rect x="{x(a):.1f}" y="{bottom - h:.1f}" width="{max(x(b) - x(a) - 1, 1):.1f}" '
                     f'height="{h:.1f}" fill="#7f8c8d"><title>{a:.4g} to {b:.4g}: {count:,}</title></rect>')
    if log_x:
        h = y(under)
        parts.append(f'<rect x="{left + 4}" y="{bottom - h:.1f}" width="24" height="{h:.1f}" fill="#566573">'
                     f"<title>under {_tick_label(lo)}: {under:,}</title></rect>")
        parts.append(f'<text x="{left + 16}" y="{bottom + 28}" text-anchor="middle">&lt;{_tick_label(lo)}</text>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{left + plot_w}" y2="{bottom}" stroke="#333"/>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{left}" y2="{bottom - plot_h}" stroke="#333"/>')
    if log_x:
        ticks = _log_ticks(lo, hi)
    else:
        step = _nice_step(hi - lo)
        ticks = [k * step for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]
    for tick in ticks:
        parts.append(f'<line x1="{x(tick):.1f}" y1="{bottom}" x2="{x(tick):.1f}" y2="{bottom + 4}" stroke="#333"/>')
        parts.append(f'<text x="{x(tick):.1f}" y="{bottom + 16}" text-anchor="middle">{_tick_label(tick)}</text>')
    for count in y_ticks:
        parts.append(f'<text x="{left - 6}" y="{bottom - y(count) + 4:.1f}" text-anchor="end">{count:,}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">{_e(x_label)}</text>')
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


def _file_link(path: str | None) -> str | None:
    """A file:// URL for an absolute path, else None."""
    if not path or not os.path.isabs(path):
        return None
    try:
        return Path(path).as_uri()
    except ValueError:
        return None


def _card_html(card: Card, sources: dict[str, str]) -> str:
    src = sources[card.thumb.key]
    url = _file_link(card.link)
    name = _e(_file_name(card.link or card.thumb.path))
    picture = f'<img src="{_e(src)}" alt="{name}" title="{_e(card.link or card.thumb.path or "")}" loading="lazy">'
    if url:
        picture = f'<a href="{_e(url)}">{picture}</a>'
        name = f'<a href="{_e(url)}">{name}</a>'
    label = f"<b>{_e(card.label)}</b><br>" if card.label else ""
    lines = "".join(f"<br>{_e(line)}" for line in card.lines if line)
    data = "" if card.image_id is None else f' data-image-id="{card.image_id}"'
    data += ' data-planned="1"' if card.planned else ""
    return (f'<figure class="card {_e(card.css)}"{data} data-image-path="{_e(card.link or card.thumb.path or "")}">'
            f"{picture}<figcaption>{label}{name}{lines}</figcaption></figure>")


def _item_html(item: list[Card], sources: dict[str, str]) -> str:
    cards = "".join(_card_html(c, sources) for c in item)
    return f'<div class="item">{cards}</div>' if len(item) > 1 else cards


def _grid_html(grid: Grid, sources: dict[str, str]) -> str:
    return f'<div class="gallery">{"".join(_item_html(i, sources) for i in grid.items)}</div>' if grid.items else ""


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
h3{margin:18px 0 6px}small{color:#666;font-weight:normal}nav a{margin-right:12px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}.note{color:#666;font-style:italic}
.bar{position:relative;width:260px;height:16px;background:#eee}
.bar span{position:absolute;left:0;top:0;bottom:0;background:#5d8aa8}
.bar em{position:absolute;left:6px;top:0;font-size:11px;font-style:normal;color:#000}
.gallery{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
.item{display:flex;gap:2px;padding:3px;background:#eee}
.card{margin:0;width:168px;border:2px solid #ddd;padding:3px;background:#fafafa}
.card img{display:block;max-width:160px;max-height:160px;margin:auto}
.card figcaption{font-size:11px;color:#444;word-break:break-word}
.blocks{display:flex;flex-wrap:wrap;gap:0 28px}
.card.delete{border-color:#c0392b}.card.keep{border-color:#27ae60}.card.after{border-color:#2471a3}
.card.change{border-color:#d68910}.card.example{border-color:#8e44ad}
.tree details{margin-left:18px}.tree .leaf{margin-left:36px}.pager a{margin-right:6px}
svg.hist text{font-size:11px;fill:#333}
"""


def _document(title: str, body: Iterable[str]) -> str:
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>", *body, "</body></html>"])


def _write_pages(out_dir: Path, gallery: Paged, sources: dict[str, str], limits: Limits, catalog_name: str) -> None:
    """OUT/{slug}-1.html ...: page_size items each, a pager linking every page and the index."""
    pages = _page_count(gallery, limits)
    pager = ('<p class="pager"><a href="index.html">index</a> · page: '
             + " ".join(f'<a href="{_e(_page_name(gallery.slug, p))}">{p}</a>' for p in range(1, pages + 1)) + "</p>")
    for page in range(1, pages + 1):
        first = (page - 1) * limits.page_size
        items = gallery.items[first:first + limits.page_size]
        blocks = {i - first: text for i, text in gallery.blocks if first <= i < first + len(items)}
        body = [f"<h1>{_e(gallery.title)}</h1>",
                f"<p>{_e(catalog_name)} · page {page} of {pages} · items {first + 1 if items else 0:,}–"
                f"{first + len(items):,} · {_e(shown(len(gallery.items), gallery.total))} in all pages"
                + (f" (at most {limits.max_pages} pages of {limits.page_size})"
                   if len(gallery.items) < gallery.total else "") + "</p>",
                gallery.intro, pager]
        if gallery.slug == "clusters":  # one block per leaf: heading, then its members
            for i, item in enumerate(items):
                leaf_anchor = re.search(r"level 0 cluster (\d+)", blocks.get(i, ""))
                anchor = f' id="leaf-{leaf_anchor.group(1)}"' if leaf_anchor else ""
                body.append(f"<div{anchor}>{blocks.get(i, '')}{_grid_html(Grid([[c] for c in item]), sources)}</div>")
        else:
            grid: list[list[Card]] = []
            for i, item in enumerate(items):
                if i in blocks:
                    body.append(_grid_html(Grid(grid), sources))
                    grid = []
                    body.append(blocks[i])
                grid.append(item)
            body.append(_grid_html(Grid(grid), sources))
            if not items:
                body.append(_note("nothing planned"))
        body.append(pager)
        text = _document(gallery.title, body).encode("utf-8")
        write_new_file(out_dir / _page_name(gallery.slug, page), lambda f: f.write(text))


def _index_html(catalog: Catalog, stages: list[tuple[str, int, str]], applied: str, sections: list[Section],
                sources: dict[str, str]) -> str:
    nav = " ".join(f'<a href="#{s.anchor}">{_e(s.title)}</a>' for s in sections)
    body = [
        f"<h1>vdc-lake report</h1><p>catalog {_e(catalog.path)} · generated "
        f"{_e(dt.datetime.now().isoformat(timespec='seconds'))} · vdc-lake {_e(__version__)}</p>",
        f'<nav><a href="#funnel">Funnel</a> {nav}</nav>',
        '<h2 id="funnel">Funnel</h2>', applied, _funnel_html(stages),
    ]
    for section in sections:
        body.append(f'<h2 id="{_e(section.anchor)}">{_e(section.title)}</h2>')
        body.extend(_grid_html(b, sources) if isinstance(b, Grid) else b for b in section.body)
    return _document(f"vdc-lake report: {catalog.path.name}", body)


# -- the report ----------------------------------------------------------------------------------

def _setting(catalog: Catalog, section: str, key: str) -> Any:
    """The catalog's setting, else the bundled default (a catalog from before the option existed)."""
    value = catalog.scalar("SELECT setting(?, ?)", [section, key])
    return Config.bundled().section(section)[key] if value is None else value


def build_report(catalog: Catalog, out_dir: str | os.PathLike, *, thumbnails: int | None = None,
                 page_size: int | None = None, max_pages: int | None = None,
                 dedup_threshold: float | None = None, report_threshold: float | None = None,
                 rotation_threshold: float | None = None, thumb_size: int = THUMB_SIZE, workers: int | None = None,
                 quiet: bool = False) -> Path:
    """Write out_dir/index.html, the gallery pages and out_dir/thumbs/*.jpg; returns the index.html path.

    thumbnails: example images per block of index.html (rule, cluster, top cluster; 0: numbers
    only); page_size / max_pages: items per gallery page and pages per gallery. dedup_threshold:
    the apply threshold (distance); report_threshold: near misses are shown up to this distance;
    rotation_threshold: minimum probability of a correction. None (each): the catalog's settings,
    the values `plan`, `status` and `curated` use (dedup: per embedding set; near misses: every
    stored pair). Reads the catalog only.
    """
    limits = Limits(int(thumbnails if thumbnails is not None else _setting(catalog, "report", "thumbnails")),
                    int(page_size if page_size is not None else _setting(catalog, "report", "page_size")),
                    int(max_pages if max_pages is not None else _setting(catalog, "report", "max_pages")))
    rotation_source = "this report's --rotation-threshold" if rotation_threshold is not None else catalog.scalar(
        "SELECT source FROM settings WHERE section = 'rotation_correction' AND key = 'threshold'") or "settings"
    if rotation_threshold is None:
        rotation_threshold = float(catalog.scalar("SELECT setting('rotation_correction', 'threshold')"))
    if not os.fspath(out_dir).strip():  # an unset shell variable: it would mean the current folder
        raise StageError("--out is empty; give the folder to write the report into (e.g. --out report)")
    out_dir = Path(out_dir)
    overlap = root_overlap(scanned_roots(catalog), out_dir)
    if overlap is not None and overlap[0] == "inside":
        _, root, real = overlap
        raise StageError(f"report folder {out_dir} lies inside the scanned root {root}: the next scan would "
                         f"register its thumbnails as images; choose a folder outside every scanned root "
                         f"(e.g. {real.parent / (real.name + '-report')})")
    _make_folders(out_dir)
    stages = _funnel(catalog, dedup_threshold=dedup_threshold, rotation_threshold=rotation_threshold)
    apply_text = _describe_apply(catalog, dedup_threshold)
    galleries: dict[str, Paged | None] = {
        "sanitize": sanitize_gallery(catalog, limits),
        "rotation": rotation_gallery(catalog, rotation_threshold, limits),
        "dedup": dedup_gallery(catalog, dedup_threshold, apply_text, limits),
        "examples": examples_gallery(catalog, limits),
        "score": score_gallery(catalog, limits),
        "sample": sample_gallery(catalog, limits),
    }
    for gallery in galleries.values():
        for item in gallery.items if gallery else []:
            item[0].planned = True
    galleries["override"] = override_gallery(catalog, limits)  # marks its drops itself (keeps are no operation)
    near = near_miss_gallery(catalog, dedup_threshold, report_threshold, limits)
    history = apply_history(catalog, limits)
    tree = cluster_tree(catalog)
    clusters, page_of = cluster_gallery(catalog, tree, limits) if tree else (None, {})
    sections = [
        _decisions_section(galleries, limits, history),
        _thresholds_section(catalog, dedup_threshold, report_threshold, rotation_threshold, rotation_source),
        _sanitize_section(catalog, limits, galleries["sanitize"]),
        _rotation_section(catalog, rotation_threshold, limits, galleries["rotation"]),
        _duplicates_section(catalog, dedup_threshold, limits, galleries["dedup"], near, history),
        _clusters_section(catalog, tree, clusters, page_of, limits),
        _sampling_section(catalog, limits, galleries["sample"]),
        _predict_failures_section(catalog),
        _history_section(history, limits),
    ]
    if limits.thumbnails <= 0:
        for section in sections:
            section.body = [b for b in section.body if not isinstance(b, Grid)]
    paged = [g for g in [*galleries.values(), near, clusters, *(r.gallery for r in history)] if g is not None]
    cards = [c for g in paged for item in g.items for c in item]
    cards += [c for s in sections for b in s.body if isinstance(b, Grid) for item in b.items for c in item]
    _confine(cards, ReadableRoots.of(catalog))
    wanted = [c.thumb for c in cards]
    pages = [_page_name(g.slug, n) for g in paged for n in range(1, _page_count(g, limits) + 1)]
    _refuse_links(out_dir, ["index.html", *pages, *(t.name for t in wanted),
                            *(f"thumbs/_{kind}.jpg" for kind in PLACEHOLDERS)])
    for old in out_dir.glob("*-[0-9]*.html"):  # pages of an earlier report that this one may not rewrite
        if PAGE_NAME.fullmatch(old.name):
            old.unlink()
    max_pixels = int(_setting(catalog, "sanitize", "max_pixels"))  # sanitize's decompression-bomb limit
    applied = _applied_summary(history)
    catalog.release()  # no open DuckDB handle across the fork of the thumbnail pool
    sources = write_thumbnails(out_dir, wanted, size=thumb_size, workers=workers, quiet=quiet, max_pixels=max_pixels)
    for gallery in paged:
        _write_pages(out_dir, gallery, sources, limits, catalog.path.name)
    index_html = _index_html(catalog, stages, applied, sections, sources).encode("utf-8")
    index = out_dir / "index.html"
    write_new_file(index, lambda f: f.write(index_html))
    return index


def _confine(cards: list[Card], readable: ReadableRoots) -> None:
    """Cards whose picture is a catalog image that may not be read (confine.ReadableRoots: an
    edited root or rel_path, a link out of the scanned roots) show the "outside" placeholder,
    link to nothing and say why."""
    refused: dict[str, str | None] = {}
    for card in cards:
        path = card.thumb.path
        if not card.thumb.in_root or path is None:
            continue
        if path not in refused:
            refused[path] = readable.path_error(path)
        if refused[path] is not None:
            card.thumb = replace(card.thumb, path=None)
            card.link = None if card.link == path else card.link
            card.lines.append(f"not read ({OUTSIDE_ROOT}): {refused[path]}")


def _make_folders(out_dir: Path) -> None:
    """Make OUT and OUT/thumbs; a link at OUT/thumbs is refused (OUT itself is the user's word)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    thumbs = out_dir / "thumbs"
    _refuse_links(out_dir, ["thumbs"])
    try:
        thumbs.mkdir()
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(thumbs).st_mode):
            raise StageError(f"report folder {out_dir} holds a file named thumbs, where the report puts its "
                             "thumbnails; move it away or choose another --out") from None


def _refuse_links(out_dir: Path, names: Iterable[str]) -> None:
    """StageError naming the first of `names` (relative to OUT) that is a symbolic link: the
    report writes there, and never through a link someone put in its folder."""
    for name in names:
        if os.path.islink(out_dir / name):
            raise StageError(f"report folder {out_dir} holds a symbolic link at {out_dir / name} (to "
                             f"{os.readlink(out_dir / name)}), where the report writes; remove it or choose "
                             "another --out")
