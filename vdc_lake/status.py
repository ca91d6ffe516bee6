"""Catalog summary for `vdc-lake status`: images by state, pending decisions, recent runs."""

from __future__ import annotations

from typing import Any

from vdc_lake.catalog import Catalog

# What each stage's decision would do at the catalog's settings (plan STAGE shows details).
PENDING_VIEWS = {
    "sanitize": "SELECT action, count(*) FROM sanitize_actions GROUP BY action ORDER BY action",
    "rotation": "SELECT action, count(*) FROM rotation_actions() WHERE action <> 'none' GROUP BY action ORDER BY action",
    "dedup": "SELECT action, count(*) FROM dedup_actions() WHERE action = 'delete' GROUP BY action",
    "examples": "SELECT action, count(*) FROM example_actions() WHERE action = 'delete' GROUP BY action",
    "score": "SELECT action, count(*) FROM score_actions(setting('filter_by_score', 'name')) "
             "WHERE action = 'delete' GROUP BY action",
    "sample": "SELECT action, count(*) FROM sample_actions() WHERE action = 'delete' GROUP BY action",
    "override": "SELECT action, count(*) FROM override_actions WHERE action = 'delete' GROUP BY action",
}


def catalog_status(catalog: Catalog, *, recent_runs: int = 10) -> dict[str, list[tuple[Any, ...]]]:
    images = catalog.rows(
        """
        SELECT 'present', count(*) FILTER (WHERE present) FROM images
        UNION ALL SELECT 'gone (not present)', count(*) FILTER (WHERE NOT present) FROM images
        UNION ALL SELECT 'never sanitized', count(*) FROM images i WHERE present
            AND NOT EXISTS (SELECT 1 FROM sanitize_checks c WHERE c.image_id = i.image_id AND c.version = i.version)
        UNION ALL SELECT 'with findings', count(DISTINCT f.image_id) FROM findings f
            JOIN images i ON i.image_id = f.image_id AND i.version = f.version AND i.present
        """
    )
    # A catalog written by an older vdc-lake and opened read-only has no override views until a
    # writing command migrates it: it has no overrides either.
    has_overrides = bool(catalog.scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'override_actions'"))
    pending = []
    for stage, sql in PENDING_VIEWS.items():
        if stage != "override" or has_overrides:
            pending.extend((stage, action, n) for action, n in catalog.rows(sql))
    runs = catalog.rows(
        """
        SELECT run_id, stage, status, strftime(started_at, '%Y-%m-%d %H:%M:%S'),
               round(epoch(finished_at - started_at), 1)
        FROM runs ORDER BY run_id DESC LIMIT ?
        """,
        [recent_runs],
    )
    settings = catalog.rows(
        """
        SELECT section || '.' || key, value, source FROM settings
        WHERE section IN ('rotation_correction', 'apply_deduplication', 'filter_by_examples', 'filter_by_score')
          AND key NOT IN ('metric')
        UNION ALL
        SELECT 'dedup apply threshold, set ' || set_name, apply_threshold::VARCHAR, apply_source
        FROM dedup_thresholds WHERE set_name IS NOT NULL
        ORDER BY 1
        """
    )
    curated = catalog.scalar("SELECT count(*) FROM curated")
    # the user's overrides in force (keep: no decision removes the image; drop: the override stage deletes it)
    overrides = catalog.rows("SELECT override, count(*) FROM override_actions GROUP BY override ORDER BY override"
                             ) if has_overrides else []
    return {"images": images, "pending": pending, "runs": runs, "settings": settings, "curated": curated,
            "overrides": overrides, "predict_failures": predict_failures(catalog),
            "stale_sample": stale_sample(catalog)}


def stale_sample(catalog: Catalog) -> str | None:
    """A warning when the newest sample no longer holds its total: some images it selected are
    now removed by a decision (a threshold changed after `sample`), so curated and export hold
    fewer than asked. None when the sample still holds (or there is none)."""
    row = catalog.rows(
        """
        WITH newest AS (SELECT max(run_id) AS run_id FROM runs WHERE stage = 'sample' AND status = 'done')
        SELECT n.run_id, count(*), count(v.image_id)
        FROM samples AS s
        JOIN newest AS n ON n.run_id = s.run_id
        LEFT JOIN surviving_images AS v ON v.image_id = s.image_id AND v.version = s.version
        GROUP BY n.run_id
        """
    )
    if not row or row[0][1] == row[0][2]:
        return None
    run_id, selected, surviving = row[0]
    return (f"warning: sample run {run_id} selected {selected} images but only {surviving} still survive the "
            f"current decisions (a setting changed or files changed since); run `vdc-lake sample` again for "
            f"an exact total")


def predict_failures(catalog: Catalog) -> list[tuple[Any, ...]]:
    """(set, images, example "path: reason") per set whose predict failed on present images'
    current bytes (failed_predictions); none in a catalog older than that view."""
    if not catalog.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'failed_predictions'"):
        return []
    return catalog.rows(
        """
        SELECT set_name, count(*), arg_min(path || ': ' || error, image_id)
        FROM failed_predictions GROUP BY set_name ORDER BY set_name
        """
    )
