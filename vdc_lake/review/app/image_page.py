"""One image: its facts, sanitize findings, predictions, duplicate pairs, journal history and overrides."""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import HTMLResponse

from vdc_lake.catalog.connection import Catalog
from vdc_lake.errors import PlanError
from vdc_lake.stages.overrides import list_overrides
from vdc_lake.review.app import web
from vdc_lake.review.app.thumbs import SIZES

# (title, SQL with $image, columns shown): each a table on the page.
PARTS = (
    ("Sanitize findings", """SELECT f.run_id, f.version, f.rule, f.detail, f.action FROM findings AS f
        WHERE f.image_id = $image ORDER BY f.run_id DESC, f.rule"""),
    ("Predictions", """SELECT p.set_name, p.version, p.run_id, s.kind,
        list_transform(list_zip(coalesce(s.class_names, []), p.probs), x -> x[1] || ' ' || round(x[2], 3)::VARCHAR)[:5]
            AS top_probabilities
        FROM predictions AS p LEFT JOIN prediction_sets AS s ON s.name = p.set_name
        WHERE p.image_id = $image ORDER BY p.set_name, p.run_id DESC"""),
    ("Duplicate pairs", """SELECT e.set_name, CASE WHEN e.image_a = $image THEN e.image_b ELSE e.image_a END AS other,
        e.distance FROM (SELECT set_name, image_a, image_b, distance FROM near_duplicate_edges
                         UNION ALL SELECT 'exact copy', image_a, image_b, distance FROM exact_duplicate_edges) AS e
        WHERE e.image_a = $image OR e.image_b = $image ORDER BY e.distance LIMIT 200"""),
    ("Journal", """SELECT j.run_id, r.stage, j.version, j.action, j.state, j.src, j.backup, j.error,
        strftime(j.ts, '%Y-%m-%d %H:%M:%S') AS at
        FROM journal AS j JOIN runs AS r ON r.run_id = j.run_id WHERE j.image_id = $image ORDER BY j.op_id"""),
    ("Override history", """SELECT o.run_id, o.version, o.action, o.reason,
        strftime(o.created_at, '%Y-%m-%d %H:%M:%S') AS at FROM overrides AS o
        WHERE o.image_id = $image ORDER BY o.run_id, o.created_at"""),
)


def _table(catalog: Catalog, title: str, sql: str, image_id: int) -> dict[str, Any]:
    try:
        table = catalog.arrow(sql, {"image": image_id})
    except Exception as e:  # noqa: BLE001 - a catalog older than a table: the part says so, the page stays
        return {"title": title, "columns": [], "rows": [], "note": f"not available: {str(e).splitlines()[0]}"}
    return {"title": title, "columns": table.column_names, "rows": [list(r.values()) for r in table.to_pylist()],
            "note": None}


def removed_by(request: Request, catalog: Catalog, image_id: int) -> list[tuple[str]]:
    """[(decision,)] of every decision that removes the image (the removals view), from the whole
    view read once per catalog state (it runs every decision): an image page after the first
    looks its image up instead of running them again."""
    def read() -> tuple[np.ndarray, list[str]]:
        table = catalog.arrow("SELECT DISTINCT image_id, decision FROM removals ORDER BY image_id, decision")
        return (table.column("image_id").to_numpy(zero_copy_only=False).astype(np.int64),
                table.column("decision").to_pylist())
    ids, names = web.remembered(request, "removals", read)
    start, stop = np.searchsorted(ids, image_id, "left"), np.searchsorted(ids, image_id, "right")
    return [(name,) for name in names[start:stop]]


def image_page(request: Request, catalog: Catalog, image_id: int) -> HTMLResponse:
    facts = catalog.arrow("SELECT * EXCLUDE (root, rel_path), root || '/' || rel_path AS path FROM images "
                          "WHERE image_id = $image", {"image": image_id}).to_pylist()
    if not facts:
        raise PlanError(f"no image {image_id} in the catalog")
    fact = facts[0]
    override = [r for r in list_overrides(catalog).to_pylist() if r["image_id"] == image_id]
    decisions = removed_by(request, catalog, image_id)
    parts = [_table(catalog, title, sql, image_id) for title, sql in PARTS]
    return web.page(request, "image.html", title=f"Image {image_id}", fact=fact,
                    override=override[0] if override else None,
                    removals=decisions, parts=parts, picture=f"/thumb/{image_id}/{fact['version']}?size={SIZES[1]}")
