"""Sanitize: VDC's validation rules plus a full reduced-scale decode, as findings in the catalog.

Header rules (dimensions, aspect ratio, file size, format, mode, frames, bombs) are one
set-based SQL statement over the facts scan recorded. The decode check (skipped by --quick)
reads each file once in a process pool and, in the same pass, computes the built-in
descriptor, so near-exact copy detection costs no extra read.

Actions follow VDC's priority, decided per image by sql/views/sanitize_actions.sql:
delete > resize > recompress; findings with action 'none' are recorded only.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa

from vdc_lake.catalog import Catalog
from vdc_lake.files import UNUSUAL_MODES, decode_check
from vdc_lake.parallel import batched, get_mapper
from vdc_lake.sets import BUILTIN_SET, register_builtin_set, write_vectors

COMMIT_EVERY = 5000

# Header-fact rules: (rule, action, SQL condition over `t`, SQL detail expression).
HEADER_RULES = [
    ("header_error", "delete", "t.header_error IS NOT NULL AND t.header_error NOT LIKE 'unreadable%' "
     "AND t.header_error NOT LIKE 'broken_symlink%'", "t.header_error"),
    ("unreadable", "none", "t.header_error LIKE 'unreadable%' OR t.header_error LIKE 'broken_symlink%'",
     "t.header_error"),
    ("decompression_bomb", "delete", "t.width::BIGINT * t.height > $max_pixels",
     "format('{:,} pixels ({}x{}) exceed the limit of {:,}', t.width::BIGINT * t.height, t.width, t.height, $max_pixels)"),
    ("format_not_allowed", "delete", "t.format IS NOT NULL AND NOT list_contains($allowed_formats, t.format)",
     "format('format {} is not in the allowed formats', t.format)"),
    ("width_too_small", "delete", "t.width < $min_width", "format('width {}px < {}px', t.width, $min_width)"),
    ("height_too_small", "delete", "t.height < $min_height", "format('height {}px < {}px', t.height, $min_height)"),
    ("width_too_large", "resize", "t.width > $max_width", "format('width {}px > {}px', t.width, $max_width)"),
    ("height_too_large", "resize", "t.height > $max_height", "format('height {}px > {}px', t.height, $max_height)"),
    ("aspect_too_small", "delete", "t.width::DOUBLE / nullif(t.height, 0) < $min_aspect_ratio",
     "format('aspect ratio {:.3f} < {}', t.width::DOUBLE / t.height, $min_aspect_ratio)"),
    ("aspect_too_large", "delete", "t.width::DOUBLE / nullif(t.height, 0) > $max_aspect_ratio",
     "format('aspect ratio {:.3f} > {}', t.width::DOUBLE / t.height, $max_aspect_ratio)"),
    ("file_too_large", "recompress", "t.size_bytes > $max_bytes",
     "format('file is {:.2f} MB > {} MB', t.size_bytes / 1048576.0, $max_file_size_mb)"),
    ("unusual_mode", "none", "list_contains($unusual_modes, t.mode) OR (t.mode = 'P' AND t.has_transparency)",
     "format('mode {}{}', t.mode, CASE WHEN t.has_transparency THEN ' with transparency' ELSE '' END)"),
    ("animated", "none", "t.n_frames > 1", "format('{} frames; only the first is used for training', t.n_frames)"),
    ("exif_orientation", "none", "t.exif_orientation IS NOT NULL AND t.exif_orientation <> 1",
     "format('EXIF orientation {}: pixels are stored rotated/flipped', t.exif_orientation)"),
]


@dataclass
class SanitizeSummary:
    run_id: int
    checked: int = 0
    decoded: int = 0
    findings: int = 0
    images_with_findings: int = 0
    descriptors: int = 0


def _rules_sql() -> str:
    parts = []
    for rule, action, condition, detail in HEADER_RULES:
        rule_expr = "split_part(t.header_error, ':', 1)" if rule in ("header_error", "unreadable") else f"'{rule}'"
        detail_expr = (
            "trim(substr(t.header_error, strpos(t.header_error, ':') + 1))"
            if rule in ("header_error", "unreadable") else detail
        )
        parts.append(
            f"SELECT $run_id AS run_id, t.image_id, t.version, {rule_expr} AS rule, {detail_expr} AS detail, "
            f"'{action}' AS action FROM sanitize_targets t WHERE ({condition})"
        )
    return "INSERT INTO findings BY NAME " + "\nUNION ALL\n".join(parts)


def _targets(catalog: Catalog, *, quick: bool, recheck: bool) -> pa.Table:
    already = "" if recheck else (
        "AND NOT EXISTS (SELECT 1 FROM sanitize_checks c WHERE c.image_id = i.image_id "
        f"AND c.version = i.version {'' if quick else 'AND c.decoded'})"
    )
    return catalog.arrow(
        f"""
        SELECT i.image_id, i.version, i.root, i.rel_path, i.width, i.height, i.format, i.mode,
               i.size_bytes, i.n_frames, i.exif_orientation, i.has_transparency, i.header_error,
               EXISTS (SELECT 1 FROM embeddings e WHERE e.set_name = '{BUILTIN_SET}'
                       AND e.image_id = i.image_id AND e.version = i.version) AS has_descriptor
        FROM images i WHERE i.present {already}
        ORDER BY i.image_id
        """
    )


def _header_findings(catalog: Catalog, run_id: int, rules: dict[str, Any]) -> int:
    params = {
        "run_id": run_id,
        "max_pixels": int(rules["max_pixels"]),
        "allowed_formats": [f.upper() for f in rules["allowed_formats"]],
        "min_width": int(rules["min_width"]), "min_height": int(rules["min_height"]),
        "max_width": int(rules["max_width"]), "max_height": int(rules["max_height"]),
        "min_aspect_ratio": float(rules["min_aspect_ratio"]), "max_aspect_ratio": float(rules["max_aspect_ratio"]),
        "max_bytes": int(float(rules["max_file_size_mb"]) * 1024 * 1024),
        "max_file_size_mb": float(rules["max_file_size_mb"]),
        "unusual_modes": sorted(UNUSUAL_MODES),
    }
    return int(catalog.execute(_rules_sql(), params)[0][0])


def _decode_one(item: tuple[str, int, bool], *, max_pixels: int):
    """Decode check of (path, version, with_descriptor); the version is unused here but keys
    the Ray backend's staging (a hash of the items), so a changed file is never taken from it."""
    path, _, with_descriptor = item
    return decode_check(path, max_pixels=max_pixels, with_descriptor=with_descriptor)


def _write_decode_batch(catalog: Catalog, run_id: int, batch: list, summary: SanitizeSummary) -> None:
    bad = [(row, r.error) for row, r in batch if r.error]
    good = [(row, r.descriptor) for row, r in batch if r.descriptor is not None]
    with catalog.transaction():
        if bad:
            catalog.insert_arrow("findings", pa.table({
                "run_id": pa.array([run_id] * len(bad), pa.int64()),
                "image_id": pa.array([row["image_id"] for row, _ in bad], pa.int64()),
                "version": pa.array([row["version"] for row, _ in bad], pa.int32()),
                "rule": [err.split(":", 1)[0] for _, err in bad],
                "detail": [err.split(":", 1)[1].strip() for _, err in bad],
                "action": ["delete"] * len(bad),
            }))
        if good:
            register_builtin_set(catalog, run_id)
            write_vectors(catalog, "embeddings", BUILTIN_SET, run_id,
                          np.array([row["image_id"] for row, _ in good]), np.array([row["version"] for row, _ in good]),
                          np.stack([d for _, d in good]))
    summary.findings += len(bad)
    summary.decoded += len(batch)
    summary.descriptors += len(good)


def _decode_pass(catalog: Catalog, run_id: int, targets: pa.Table, rules: dict, summary, workers, quiet,
                 backend: str = "local") -> None:
    max_pixels = int(rules["max_pixels"])
    rows = [
        r for r in targets.to_pylist()
        if r["header_error"] is None and (r["width"] or 0) * (r["height"] or 0) <= max_pixels
    ]
    want_descriptor = bool(rules["builtin_descriptor"])
    items = [(os.path.join(r["root"], r["rel_path"]), r["version"], want_descriptor and not r["has_descriptor"])
             for r in rows]
    catalog.release()
    mapper = get_mapper(backend, catalog_path=catalog.path)
    results = mapper(partial(_decode_one, max_pixels=max_pixels), items, workers=workers, desc="decode", quiet=quiet)
    for batch in batched(zip(rows, results), COMMIT_EVERY):
        _write_decode_batch(catalog, run_id, batch, summary)
        catalog.release()


def sanitize(
    catalog: Catalog,
    rules: dict[str, Any],
    *,
    quick: bool = False,
    recheck: bool = False,
    workers: int | None = None,
    quiet: bool = False,
    backend: str = "local",
) -> SanitizeSummary:
    """Check present images not yet checked at their current version; write findings.

    `rules` is the effective [sanitize] config section. `quick` uses header facts only.
    """
    params = dict(rules, quick=quick, recheck=recheck)
    with catalog.run("sanitize", params) as run_id:
        summary = SanitizeSummary(run_id)
        targets = _targets(catalog, quick=quick, recheck=recheck)
        summary.checked = targets.num_rows
        with catalog.registered("sanitize_targets", targets), catalog.transaction():
            summary.findings += _header_findings(catalog, run_id, rules)
        if not quick and rules.get("check_corruption", True):
            _decode_pass(catalog, run_id, targets, rules, summary, workers, quiet, backend)
        with catalog.transaction():
            catalog.insert_arrow("sanitize_checks", pa.table({
                "run_id": pa.array([run_id] * targets.num_rows, pa.int64()),
                "image_id": targets.column("image_id"),
                "version": targets.column("version"),
                "decoded": pa.array([not quick] * targets.num_rows, pa.bool_()),
            }))
        summary.images_with_findings = int(catalog.scalar(
            "SELECT count(DISTINCT image_id) FROM findings WHERE run_id = ?", [run_id]))
        catalog.finish_run(run_id, summary=asdict(summary))
    return summary
