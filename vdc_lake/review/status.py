"""Catalog summary for `vdc-lake status`: images by state, pending decisions, recent runs."""

from __future__ import annotations

from typing import Any

from vdc_lake.catalog.connection import Catalog
from vdc_lake.catalog.settings import decision_settings
from vdc_lake.review.decisions import DECISIONS, sanitize_rules_note, unsearched_dedup_warnings

# What each decision would do at the catalog's settings (its view and the actions it carries out,
# from DECISIONS; plan STAGE shows details): an image with an operation an interrupted apply left
# unfinished is in no plan (the next apply finishes that operation first); those operations are
# listed apart. Deletions are exclusive: an image several decisions remove is counted once, under
# the first of them in the registry's (funnel) order, so the rows add up to the images removed;
# `plan STAGE` counts a decision's own. Other actions (rotate, resize) are counted as plan does.
PENDING_ROWS_SQL = """
    SELECT {order} AS funnel, '{stage}' AS stage, image_id, action FROM {source}
    WHERE {actions} AND image_id NOT IN (SELECT image_id FROM journal WHERE state = 'planned')
"""
PENDING_SQL = """
    WITH pending AS ({rows}),
    first_removal AS (SELECT image_id, min(funnel) AS funnel FROM pending WHERE action = 'delete' GROUP BY image_id)
    SELECT p.stage, p.action, count(*) FROM pending AS p LEFT JOIN first_removal AS f USING (image_id)
    WHERE p.action <> 'delete' OR p.funnel = f.funnel
    GROUP BY p.funnel, p.stage, p.action ORDER BY p.funnel, p.action
"""
EXCLUSIVE_NOTE = ("deletions counted once per image, under the first decision in this order that removes it "
                  "({order}); `vdc-lake plan STAGE` counts one decision's own")
UNFINISHED_SQL = """
    SELECT replace(r.stage, 'apply:', ''), j.action || ' (unfinished)', count(*)
    FROM journal AS j JOIN runs AS r ON r.run_id = j.run_id
    WHERE j.state = 'planned'
    GROUP BY ALL ORDER BY ALL
"""


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
    pending = pending_counts(catalog)
    runs = catalog.rows(
        """
        SELECT run_id, stage, status, strftime(started_at, '%Y-%m-%d %H:%M:%S'),
               round(epoch(finished_at - started_at), 1)
        FROM runs ORDER BY run_id DESC LIMIT ?
        """,
        [recent_runs],
    )
    settings = decision_settings_in_force(catalog)
    curated = catalog.scalar("SELECT count(*) FROM curated")
    # the user's overrides in force (keep: no decision removes the image; drop: the override stage deletes it)
    overrides = overrides_in_force(catalog)
    return {"images": images, "pending": pending, "runs": runs, "settings": settings, "curated": curated,
            "overrides": overrides, "predict_failures": predict_failures(catalog),
            "stale_sample": stale_sample(catalog, curated=curated),
            "pending_note": EXCLUSIVE_NOTE.format(order=", ".join(DECISIONS)),
            "setting_notes": dedup_threshold_notes(catalog) + [n for n in [sanitize_rules_note(catalog)] if n]}


def _has_overrides(catalog: Catalog) -> bool:
    # A catalog written by an older vdc-lake and opened read-only has no override views until a
    # writing command migrates it: it has no overrides either.
    return bool(catalog.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'override_actions'"))


def pending_counts(catalog: Catalog) -> list[tuple[str, str, int]]:
    """(stage, action, images) each decision would do at the catalog's settings (PENDING_SQL),
    then the operations an interrupted apply left unfinished: status' "pending" rows."""
    has_overrides = _has_overrides(catalog)
    pending = catalog.rows(PENDING_SQL.format(rows=" UNION ALL ".join(
        PENDING_ROWS_SQL.format(order=order, stage=stage, source=decision.view, actions=decision.acts)
        for order, (stage, decision) in enumerate(DECISIONS.items()) if stage != "override" or has_overrides)))
    return pending + catalog.rows(UNFINISHED_SQL)


def overrides_in_force(catalog: Catalog) -> list[tuple[str, int]]:
    """(override, images) of the user's overrides in force (keep: no decision removes the image;
    drop: the override stage deletes it)."""
    if not _has_overrides(catalog):
        return []
    return catalog.rows("SELECT override, count(*) FROM override_actions GROUP BY override ORDER BY override")


DEDUP_THRESHOLD = ("apply_deduplication", "threshold")
DEDUP_THRESHOLD_KEY = "apply_deduplication.threshold"
# The settings rows `status` lists: the decisions' settings in their order (the dedup threshold
# per set, below, after the first).
SHOWN_SETTINGS = [key for d in DECISIONS.values() for key in d.settings if key != DEDUP_THRESHOLD]


def decision_settings_in_force(catalog: Catalog) -> list[tuple[str, str, str]]:
    """(setting, value, source) of every value the decision views use when no CLI option is
    given. The dedup apply threshold is listed per embedding set, as `dedup_actions()` uses it
    (the dedup_thresholds view: a configured value, else the set's own, else the default), and
    once more for sets without a row ("other sets") only when edges of such a set exist or no
    set is registered: a bare apply_deduplication.threshold beside a set's own value would not
    say which one applies. (Reported sets are read from the runs, not from the edges: cheap at
    any scale.)"""
    stored = {(s, k): (v, src) for s, k, v, src in catalog.rows("SELECT section, key, value, source FROM settings")}
    rows = [(f"{s}.{k}", *stored[(s, k)]) for s, k in SHOWN_SETTINGS if (s, k) in stored]
    per_set = catalog.rows(
        """
        SELECT set_name, apply_threshold, apply_source FROM dedup_thresholds
        WHERE set_name IS NOT NULL
           OR NOT EXISTS (SELECT 1 FROM embedding_sets)
           OR EXISTS (SELECT 1 FROM newest_runs  -- a dedup report of a set that is not registered
                      WHERE stage = 'dedup-report' AND set_name NOT IN (SELECT name FROM embedding_sets))
        ORDER BY set_name NULLS LAST
        """
    )
    registered = any(name is not None for name, _, _ in per_set)
    dedup = []
    for name, value, source in per_set:
        label = f"{DEDUP_THRESHOLD_KEY} (set {name})" if name is not None else (
            f"{DEDUP_THRESHOLD_KEY} (other sets)" if registered else DEDUP_THRESHOLD_KEY)
        own = name is not None and source == f"set {name}"
        dedup.append((label, "(unset)" if value is None else f"{value:g}", f"set {name}'s own" if own else source))
    return rows[:1] + dedup + rows[1:]


def settings_in_force(catalog: Catalog) -> dict[str, Any]:
    """{'section.key': value} of the decision settings in force, for the record of what an output
    was computed under (export.json): the catalog's decision settings (catalog.settings), with the
    dedup thresholds per embedding set as `status` lists them, e.g. 'apply_deduplication.threshold
    (set builtin)': 0.08, the set's own, rather than a configured default of 0.25 that no set
    uses; the default appears (for "other sets") only where status shows it."""
    record = decision_settings(catalog)
    per_set = {key[len("dedup_thresholds."):]: entry for key, entry in record.items()
               if key.startswith("dedup_thresholds.")}
    shown = {label for label, _, _ in decision_settings_in_force(catalog)}
    other = (f"{DEDUP_THRESHOLD_KEY} (other sets)" in shown or DEDUP_THRESHOLD_KEY in shown)
    for key, field in ((DEDUP_THRESHOLD_KEY, "apply"), ("dedup.report_threshold", "report")):
        value = record.pop(key, None)
        for name, entry in per_set.items():
            record[f"{key} (set {name})"] = entry[field]
        if other and value is not None:
            record[f"{key} (other sets)" if per_set else key] = value
    return record


def dedup_threshold_notes(catalog: Catalog) -> list[str]:
    """Lines that explain the dedup thresholds: where a set's own value comes from, and each
    set whose apply threshold lies beyond the distance its newest dedup report searched (pairs
    in between were never stored, so dedup_actions() cannot find them)."""
    notes = []
    if catalog.scalar("SELECT count(*) FROM dedup_thresholds WHERE apply_source = 'set ' || set_name"):
        notes.append("a set's own dedup threshold (recorded from its model or descriptor) applies unless "
                     "[apply_deduplication] threshold is set in vdc-lake.toml or --config; "
                     "`plan/apply dedup --threshold` overrides both for that one command")
    return notes + unsearched_dedup_warnings(catalog)


def stale_sample(catalog: Catalog, *, curated: int | None = None) -> str | None:
    """A warning when the newest sample no longer holds its total: some images it selected are
    now removed by a decision (a threshold changed after `sample`), so curated and export hold
    fewer than asked, or images kept by override since are added, so they hold more. None when
    the sample still holds (or there is none)."""
    row = catalog.rows(
        """
        WITH newest AS (SELECT run_id FROM newest_stage_runs WHERE stage = 'sample')
        -- a selected image vdc-lake's apply changed since is still selected (sampled_images)
        SELECT n.run_id, count(*),
               (SELECT count(*) FROM sampled_images AS s JOIN surviving_images AS v
                    ON v.image_id = s.image_id AND v.version = s.version)
        FROM samples AS s
        JOIN newest AS n ON n.run_id = s.run_id
        GROUP BY n.run_id
        """
    )
    if not row:
        return None
    run_id, selected, surviving = row[0]
    if surviving < selected:
        return (f"warning: sample run {run_id} selected {selected} images but only {surviving} still survive the "
                f"current decisions (a setting changed or files changed since); run `vdc-lake sample` again for "
                f"an exact total")
    if curated is None:  # the caller's count of curated, when it has one
        curated = catalog.scalar("SELECT count(*) FROM curated")
    if curated > selected:
        return (f"warning: curated holds {curated} images, {curated - selected} more than the {selected} sample run "
                f"{run_id} selected (images kept by override since); run `vdc-lake sample` again for an exact "
                f"total")
    return None


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
