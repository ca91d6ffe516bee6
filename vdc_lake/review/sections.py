"""The sections of the report's index page: the funnel, planned operations per decision, thresholds,
sanitize findings, rotation, duplicates, sampling and predict failures."""

from __future__ import annotations

import math

from vdc_lake.catalog.connection import Catalog
from vdc_lake.review.decisions import DECISIONS
from vdc_lake.review.history import ApplyRun
from vdc_lake.review.pages import Grid, Limits, Paged, Section, first_shown, image_card, shown
from vdc_lake.review.render import bar_html, escape, note_html, page_name, pages_link, svg_histogram, table_html


def funnel(catalog: Catalog, *, dedup_threshold: float | None,
            rotation_threshold: float) -> list[tuple[str, int, str]]:
    """[(stage, images left, note)]: each stage removes from what the previous one left.
    dedup_threshold None: the catalog's per-set thresholds (as `curated`), so with no override
    the last row equals `curated`."""
    has_rotation = bool(catalog.scalar("SELECT count(*) FROM prediction_sets WHERE kind = 'rotation'"))
    sample_run = catalog.scalar("SELECT run_id FROM newest_stage_runs WHERE stage = 'sample'")
    filter_run = catalog.scalar("SELECT run_id FROM newest_stage_runs WHERE stage = 'filter-examples'")
    row = catalog.rows(
        """
        WITH present AS (SELECT image_id, version FROM image_files),
        removed AS (  -- each decision's removals but dedup's (its threshold may be this report's own)
            SELECT decision, image_id, version FROM filter_removals
        ),
        sanitized AS (
            SELECT p.* FROM present AS p
            WHERE NOT EXISTS (SELECT 1 FROM removed AS x WHERE x.decision IN ('sanitize', 'unreadable')
                              AND x.image_id = p.image_id AND x.version = p.version)
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
            WHERE NOT EXISTS (SELECT 1 FROM removed AS x WHERE x.decision IN ('examples', 'score')
                              AND x.image_id = d.image_id AND x.version = d.version)
        ),
        overridden AS (
            SELECT f.* FROM filtered AS f
            WHERE NOT EXISTS (SELECT 1 FROM removed AS x WHERE x.decision = 'override'
                              AND x.image_id = f.image_id AND x.version = f.version)
        ),
        sampled AS (  -- as `curated`: the newest sample's selection and the images kept by override
            -- (sample_actions also keeps files the sample never judged, which curated leaves out)
            SELECT o.* FROM overridden AS o
            WHERE NOT EXISTS (SELECT 1 FROM newest_stage_runs WHERE stage = 'sample')
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
        ("deduplicated", deduplicated, f"duplicates removed at distance < {describe_apply(catalog, dedup_threshold)}"),
        ("filtered", filtered, f"unwanted-example filter at threshold {examples_threshold}" if filter_run
         else "no filter run yet: run vdc-lake filter examples"),
        ("overrides", overridden, f"{filtered - overridden:,} dropped by override; {kept:,} kept by override "
                                  "(no decision removes them)"),
        ("sampled", sampled, f"in sample run {sample_run}" if sample_run
         else "no sample run yet: run vdc-lake sample --total N"),
    ]


def decisions_section(galleries: dict[str, Paged | None], limits: Limits, history: list[ApplyRun]) -> Section:
    section = Section("decisions", "Planned operations by decision")
    section.body.append("<p>What <code>vdc-lake plan STAGE</code> would do now, at the thresholds of this "
                        "report (the catalog's settings unless overridden). Each list is on its own pages.</p>")
    rows = []
    for name in DECISIONS:
        gallery = galleries.get(name)
        applied = sum(n for r in history if r.stage == f"apply:{name}" for _, state, n in r.counts if state == "done")
        if gallery is None:
            rows.append((name, "0", "no score filter configured ([filter_by_score] name)", f"{applied:,}"))
            continue
        rows.append((name, f"{gallery.operations:,}", pages_link(gallery, limits), f"{applied:,}"))
    section.body.append(table_html(["decision", "planned", "review pages", "applied earlier (done)"], rows,
                               raw_columns={2}))
    unfinished = sum(n for r in history for _, state, n in r.counts if state == "planned")
    if unfinished:  # `plan` and `status` leave these images out of the stage's plan; this table counts them
        section.body.append(note_html(f"{unfinished:,} operations of an interrupted apply are unfinished: the next "
                                  "`apply --apply` finishes them first, and `plan` / `status` count them apart "
                                  "(the numbers above include them)"))
    return section


def thresholds_section(catalog: Catalog, dedup_threshold: float | None, report_threshold: float | None,
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
    section.body.append(table_html(["decision", "rule", "value", "source"], rows))
    if report_threshold is not None:
        section.body.append(note_html(f"near misses shown up to distance {report_threshold:g} (--report-threshold)"))
    return section


def _searched_threshold(catalog: Catalog, set_name: str) -> float | None:
    """The distance under which the newest finished dedup report of the set stored its pairs."""
    value = catalog.scalar("SELECT max(json_extract(params, '$.threshold')::DOUBLE) FROM newest_runs "
                           "WHERE stage = 'dedup-report' AND set_name = ?", [set_name])  # (one row: no name)
    return None if value is None else float(value)


def sanitize_section(catalog: Catalog, limits: Limits, gallery: Paged) -> Section:
    section = Section("sanitize", "Sanitize findings by rule")
    if not catalog.scalar("SELECT count(*) FROM sanitize_checks"):
        section.body.append(note_html("not sanitized yet: run vdc-lake sanitize"))
        return section
    rows = catalog.arrow(
        """
        WITH current_findings AS (
            SELECT f.rule, f.action, f.detail, i.image_id, i.version, i.path
            FROM findings AS f
            JOIN latest_sanitize_checks AS c
                ON c.image_id = f.image_id AND c.version = f.version AND c.run_id = f.run_id
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
        section.body.append(note_html("no findings: every checked image passed every rule"))
        return section
    section.body.append(f"<p>{gallery.total:,} planned sanitize operations: {pages_link(gallery, limits)}</p>")
    section.body.append(table_html(["rule", "action", "images"], [(r["rule"], r["action"], f"{r['images']:,}")
                                                               for r in rows]))
    section.body.append('<div class="blocks">')
    for r in rows:
        section.body.append(f"<div><h3>{escape(r['rule'])} <small>({escape(r['action'])}, "
                            f"{escape(shown(len(r['examples']), r['images'], 'image'))})</small></h3>")
        section.body.append(Grid([[image_card(e, lines=[e["detail"]])] for e in r["examples"]]))
        section.body.append("</div>")
    section.body.append("</div>")
    return section


def rotation_section(catalog: Catalog, threshold: float, limits: Limits, gallery: Paged) -> Section:
    section = Section("rotation", "Rotation corrections")
    if not catalog.scalar("SELECT count(*) FROM prediction_sets WHERE kind = 'rotation'"):
        section.body.append(note_html("no rotation predictions yet: run vdc-lake predict --kind rotation"))
        return section
    by_angle = catalog.rows("SELECT angle, count(*) FROM rotation_actions(threshold := ?) GROUP BY angle "
                            "ORDER BY angle", [float(threshold)])
    if not by_angle:
        section.body.append(note_html("the newest rotation set has no prediction for a present image at its "
                                  "current version: run vdc-lake predict --kind rotation"))
        return section
    section.body.append(table_html(["predicted angle", "images"], [(f"{a}°", f"{n:,}") for a, n in by_angle]))
    turned = catalog.arrow("SELECT confidence FROM rotation_actions(threshold := ?) WHERE angle <> 0",
                           [float(threshold)]).column(0).to_numpy()
    section.body.append(f"<p>{gallery.total:,} images would be turned upright at probability &gt; {threshold:g} "
                        f"({pages_link(gallery, limits)}). Probability of the predicted angle, for images not "
                        "predicted upright:</p>")
    section.body.append(svg_histogram(turned, lo=0.0, hi=1.0, x_label="probability of the predicted (non-zero) angle",
                                      markers=[(threshold, f"threshold {threshold:g}", "#c0392b")], log_counts=True))
    if gallery.items:
        section.body.append(f"<p>Before / after, nearest the threshold first "
                            f"({escape(first_shown(gallery, limits, 'correction'))}"
                            "):</p>")
        section.body.append(Grid(gallery.items[:limits.thumbnails]))
    else:
        section.body.append(note_html(f"no image is predicted rotated with probability above {threshold:g}"))
    return section


def describe_apply(catalog: Catalog, dedup_threshold: float | None) -> str:
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
    runs = catalog.rows("SELECT set_name, max(run_id) FROM newest_runs "
                        "WHERE stage = 'dedup-report' GROUP BY set_name ORDER BY 1")
    if not runs:
        return [note_html("no near-duplicate report yet: run vdc-lake dedup report --set builtin "
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
        body.append(f"<h3>Pair distances, set {escape(set_name)} <small>(report run {run_id}: {len(distances):,} pairs "
                    f"of present images under {escape('?' if searched is None else f'{searched:g}')})</small></h3>")
        body.append(svg_histogram(distances, lo=lo, hi=hi, x_label="pair distance, log scale (bars: pairs, log scale)",
                                  markers=markers, log_counts=True, log_x=True))
    return body


def duplicates_section(catalog: Catalog, dedup_threshold: float | None, limits: Limits, gallery: Paged,
                        near: Paged, history: list[ApplyRun]) -> Section:
    section = Section("duplicates", "Duplicates")
    section.body.extend(_distance_histograms(catalog, dedup_threshold))
    apply_text = describe_apply(catalog, dedup_threshold)
    groups = catalog.scalar("SELECT count(DISTINCT group_id) FROM dedup_actions(threshold := ?)", [dedup_threshold])
    section.body.append(f"<p>{gallery.total:,} images would be deleted from {groups:,} duplicate groups at the apply "
                        f"threshold {escape(apply_text)}: {pages_link(gallery, limits)}. {near.total:,} stored pairs "
                        f"are kept apart by it (near misses): {pages_link(near, limits)}.</p>")
    for run in history:
        if run.stage == "apply:dedup":
            done = sum(n for _, state, n in run.counts if state == "done")
            section.body.append(f'<p>Apply run {run.run_id} already removed {done:,} duplicates: '
                                f'<a href="{escape(page_name(run.gallery.slug, 1))}">its operations</a>.</p>')
    if gallery.items:
        section.body.append(f"<p>Nearest the threshold first ({escape(first_shown(gallery, limits, 'deletion'))}):</p>")
        section.body.append(Grid(gallery.items[:limits.thumbnails]))
    elif not any(r.stage == "apply:dedup" for r in history):
        section.body.append(note_html(f"no duplicates at the apply threshold {apply_text}"))
    return section


def sampling_section(catalog: Catalog, limits: Limits, gallery: Paged) -> Section:
    section = Section("sampling", "Sampling allocation")
    run = catalog.rows("SELECT run_id, json_extract(params, '$.cluster_run')::BIGINT FROM newest_stage_runs "
                       "WHERE stage = 'sample'")
    if not run:
        section.body.append(note_html("no sample run yet: run vdc-lake sample --total N"))
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
                        f"({pages_link(gallery, limits)}). Per top-level cluster (bar: share of the cluster "
                        "selected):</p>")
    body = [(r["cluster_id"], f"{r['available']:,}", f"{r['selected']:,}",
             bar_html(r["selected"] / r["available"] if r["available"] else 0.0,
                  f"{100 * r['selected'] / max(r['available'], 1):.1f}%")) for r in rows]
    section.body.append(table_html(["top cluster", "available", "selected", "share"], body, raw_columns={3}))
    for r in rows[:limits.page_size]:
        dropped = r["available"] - r["selected"]
        section.body.append(f"<h3>top cluster {escape(r['cluster_id'])} <small>(kept: "
                            f"{escape(shown(len(r['kept_examples'] or []), r['selected']))}; dropped: "
                            f"{escape(shown(len(r['dropped_examples'] or []), dropped))})</small></h3>")
        kept = [[image_card(e, lines=[], css="keep", label="kept")] for e in r["kept_examples"] or []]
        dropped = [[image_card(e, lines=[], css="delete", label="dropped")] for e in r["dropped_examples"] or []]
        section.body.append(Grid(kept + dropped))
    if len(rows) > limits.page_size:
        section.body.append(note_html(f"examples of {shown(limits.page_size, len(rows), 'top cluster')}"))
    return section


def predict_failures_section(catalog: Catalog) -> Section:
    """Images a model could not read, per result set (the failed_predictions view, as `status`
    shows it); they are not tried again on the same bytes unless `predict --retry-failed`."""
    from vdc_lake.review.status import predict_failures

    rows = predict_failures(catalog)
    if not rows:
        return Section("predict-failures", "Predict failures", [note_html("No open predict failures.")])
    return Section("predict-failures", "Predict failures", [
        note_html("Files a model could not read, on their current bytes; `vdc-lake predict --retry-failed` tries "
              "them again, and a changed file is tried again by itself."),
        table_html(["set", "images", "example"], rows),
    ])
