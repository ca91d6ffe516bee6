"""Decisions: which SQL view feeds `plan`/`apply` for each stage, with its options.

Each entry returns (SQL selecting image_id, version, action, reason; bound parameters;
options the file operations need). Options left as None are passed to the decision macros
as NULL, which take the catalog's settings (the effective config recorded there, see
vdc_lake/catalog/settings.py): `plan`, `apply`, `status`, `curated` and a notebook read the same values.
The user's overrides (the `overrides` table, see vdc_lake/stages/overrides.py) are honoured inside the
views themselves: an image kept by override is in no stage's deletes, and `override` is a stage
of its own that deletes the images dropped by override.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from vdc_lake.catalog.settings import setting_text
from vdc_lake.config import rules
from vdc_lake.config.loader import Config
from vdc_lake.errors import PlanError
from vdc_lake.review.galleries import (GalleryInputs, dedup_gallery, examples_gallery, override_gallery,
                                       quality_gallery, rotation_gallery, sample_gallery, sanitize_gallery,
                                       score_gallery)
from vdc_lake.review.pages import Paged

DecisionQuery = tuple[str, list[Any], dict[str, Any]]
# The [sanitize] options a file operation needs (resize, recompress, the decode pixel limit).
SANITIZE_OP_OPTIONS = ("max_width", "max_height", "max_pixels", "recompress_format", "recompress_quality")


def sanitize_decision(config: Config, **_: Any) -> DecisionQuery:
    # Resize limits, the pixel limit (decompression bombs: what a resize may decode) and the
    # recompress format come from the sanitize run that found the image, so `sanitize --max-width
    # 2000` then `apply sanitize` resizes to 2000, whatever the config says now.
    rules = config.section("sanitize")
    options = {key: rules[key] for key in SANITIZE_OP_OPTIONS}
    sql = """
        SELECT a.image_id, a.version, a.action, a.reason,
               -- merged into {} so that a value the run did not record drops out (the config's stays)
               json_merge_patch('{}', json_object(
                   'max_width', r.params->'$.max_width', 'max_height', r.params->'$.max_height',
                   'max_pixels', r.params->'$.max_pixels',
                   'recompress_format', r.params->'$.recompress_format',
                   'recompress_quality', r.params->'$.recompress_quality')) AS params
        FROM sanitize_actions a JOIN runs r ON r.run_id = a.run_id
    """
    return sql, [], options


def _number(value: float | None) -> float | None:
    return None if value is None else float(value)


def rotation_decision(config: Config, *, threshold: float | None = None, prediction_set: str | None = None,
                      **_: Any) -> DecisionQuery:
    sql = ("SELECT image_id, version, action, reason, NULL AS params FROM rotation_actions(threshold := ?, prediction_set := ?) "
           "WHERE action <> 'none'")
    return sql, [_number(threshold), prediction_set], {"threshold": threshold}


def dedup_decision(config: Config, *, threshold: float | None = None, keep: str | None = None,
                   seed: int | None = None, embedding_set: str | None = None, **_: Any) -> DecisionQuery:
    # The kept image goes into each operation's journal params: apply checks the keeper and the
    # report pairs a removed file with it from there, not from the reason's text.
    # kept_hash: the keeper's bytes the decision compared; apply deletes nothing once they changed.
    sql = ("SELECT d.image_id, d.version, d.action, d.reason, "
           "json_object('kept_image_id', d.kept_image_id, 'kept_path', d.kept_path, 'kept_hash', k.content_hash) "
           "AS params FROM dedup_actions(threshold := ?, keep := ?, seed := ?, embedding_set := ?) d "
           "LEFT JOIN image_files k ON k.image_id = d.kept_image_id WHERE d.action = 'delete'")
    return (sql, [_number(threshold), keep, None if seed is None else int(seed), embedding_set],
            {"threshold": threshold, "keep": keep, "seed": seed})


def examples_decision(config: Config, *, threshold: float | None = None, embedding_set: str | None = None,
                      **_: Any) -> DecisionQuery:
    sql = ("SELECT image_id, version, action, reason, NULL AS params FROM example_actions(threshold := ?, embedding_set := ?) "
           "WHERE action = 'delete'")
    return sql, [_number(threshold), embedding_set], {"threshold": threshold}


def score_decision(config: Config, *, name: str | None = None, min_score: float | None = None,
                   max_score: float | None = None, **_: Any) -> DecisionQuery:
    configured = config.section("filter_by_score")
    name = name or configured["name"]
    if not name:
        raise PlanError("score decisions need --name (the score to filter on, e.g. aesthetic) "
                        "or [filter_by_score] name in vdc-lake.toml")
    if min_score is None and max_score is None and (name != configured["name"] or (
            configured["min_score"] == float("-inf") and configured["max_score"] == float("inf"))):
        raise PlanError("score decisions need --min-score and/or --max-score "
                        "(or [filter_by_score] min_score / max_score for the configured name)")
    sql = ("SELECT image_id, version, action, reason, NULL AS params FROM score_actions(?, min_score := ?, max_score := ?) "
           "WHERE action = 'delete'")
    return sql, [name, min_score, max_score], {"name": name, "min_score": min_score, "max_score": max_score}


def sample_decision(config: Config, *, run: int | None = None, **_: Any) -> DecisionQuery:
    sql = "SELECT image_id, version, action, reason, NULL AS params FROM sample_actions(sample_run := ?) WHERE action = 'delete'"
    return sql, [run], {"sample_run": run}


def override_decision(config: Config, **_: Any) -> DecisionQuery:
    # The user's `vdc-lake override drop`: the override_actions view holds only the overrides
    # still in force (the image's current bytes are the ones judged, or apply's own results of them).
    sql = "SELECT image_id, version, action, reason, NULL AS params FROM override_actions WHERE action = 'delete'"
    return sql, [], {}


# The [sanitize] rules a sanitize run judges by (its findings keep them until the next run).
SANITIZE_RULES = ("min_width", "min_height", "max_width", "max_height", "min_aspect_ratio", "max_aspect_ratio",
                  "allowed_formats", "max_file_size_mb", "max_pixels")


def sanitize_rules_note(catalog: Any) -> str | None:
    """A note (None: none) when the newest sanitize run judged by other [sanitize] rules than the
    catalog's settings (a config changed since, or the run had CLI options): sanitize_actions,
    plan, status and the report show that run's findings, not what the settings would find."""
    row = catalog.rows("SELECT run_id, params FROM newest_stage_runs WHERE stage = 'sanitize'")
    if not row:
        return None
    run_id, params = row[0][0], json.loads(row[0][1] or "{}")
    if not isinstance(params, dict):  # an edited catalog: nothing to compare
        return None
    stored = {key: (value, source) for key, value, source in catalog.rows(
        "SELECT key, value, source FROM settings WHERE section = 'sanitize'")}
    differ = [f"{key} {setting_text(params[key])} (settings: {stored[key][0]}, {stored[key][1]})"
              for key in SANITIZE_RULES
              if key in params and key in stored and setting_text(params[key]) != stored[key][0]]
    if not differ:
        return None
    return (f"note: the sanitize actions come from sanitize run {run_id}, which judged by other rules than the "
            f"settings: {'; '.join(differ)}; `vdc-lake sanitize` checks the images again by the settings")


def _shown(value: Any) -> str:
    """A threshold as the user reads it (0.25, inf); a value that is not a number as it is."""
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value) if value not in (None, "") else "(unset)"


def _setting(catalog: Any, section: str, key: str) -> tuple[str, str]:
    """(value text, source) of one catalog setting; ('', 'unset') when the catalog has none."""
    rows = catalog.rows("SELECT value, source FROM settings WHERE section = ? AND key = ?", [section, key])
    return rows[0] if rows else ("", "unset")


def describe_sanitize(catalog: Any, **_: Any) -> str | None:
    return sanitize_rules_note(catalog)


def describe_rotation(catalog: Any, *, threshold: float | None = None, **_: Any) -> str:
    value, source = (threshold, "--threshold") if threshold is not None else _setting(
        catalog, "rotation_correction", "threshold")
    return f"rotation at probability > {_shown(value)} ({source})"


def describe_examples(catalog: Any, *, threshold: float | None = None, **_: Any) -> str:
    value, source = (threshold, "--threshold") if threshold is not None else _setting(
        catalog, "filter_by_examples", "threshold")
    return f"examples at distance < {_shown(value)} ({source})"


def describe_dedup(catalog: Any, *, threshold: float | None = None, keep: str | None = None,
                   embedding_set: str | None = None, **_: Any) -> str:
    """Dedup's values per embedding set, as dedup_actions() takes them."""
    keep_value, keep_source = (keep, "--keep") if keep is not None else _setting(
        catalog, "apply_deduplication", "keep")
    if threshold is not None:
        at = f"distance < {_shown(threshold)} (--threshold)"
    else:
        sets = catalog.rows(
            """
            SELECT e.set_name, coalesce(t.apply_threshold, f.apply_threshold),
                   coalesce(t.apply_source, f.apply_source)
            FROM (SELECT DISTINCT set_name FROM newest_runs
                  WHERE stage = 'dedup-report') AS e  -- near_duplicate_edges' sets
            LEFT JOIN dedup_thresholds AS t ON t.set_name = e.set_name
            CROSS JOIN (SELECT apply_threshold, apply_source FROM dedup_thresholds WHERE set_name IS NULL) AS f
            WHERE ? IS NULL OR e.set_name = ?
            ORDER BY e.set_name
            """, [embedding_set, embedding_set])
        at = ", ".join(f"distance < {_shown(value)} in set {set_name} "
                       f"({f'set {set_name}' + chr(39) + 's own' if source == f'set {set_name}' else source})"
                       for set_name, value, source in sets)
    return (f"dedup at {at}" if at else "dedup of exact copies only (no near-duplicate report yet)") + (
        f"; keep {keep_value} ({keep_source})")


def describe_score(catalog: Any, *, name: str | None = None, min_score: float | None = None,
                   max_score: float | None = None, **_: Any) -> str:
    configured, _source = _setting(catalog, "filter_by_score", "name")
    name = name or configured
    bounds = []
    for bound, key, flag in ((min_score, "min_score", "--min-score"), (max_score, "max_score", "--max-score")):
        if bound is not None:
            bounds.append((bound, flag))
        elif name == configured:
            bounds.append(_setting(catalog, "filter_by_score", key))
        else:
            bounds.append(("-inf" if key == "min_score" else "inf", "open"))
    (low, low_source), (high, high_source) = bounds
    return f"score {name} kept within [{_shown(low)} ({low_source}), {_shown(high)} ({high_source})]"


def quality_decision(config: Config, **_: Any) -> DecisionQuery:
    # One operation per image, naming its issues (the deleting ones first).
    sql = ("SELECT image_id, version, action, 'quality ' || reason AS reason, NULL AS params "
           "FROM quality_image_actions() WHERE action = 'delete'")
    return sql, [], {}


QUALITY_ISSUES = ("dark", "bright", "blurry", "low_information", "grayscale")
QUALITY_SETTINGS = tuple(("quality", key) for issue in QUALITY_ISSUES for key in (issue, f"delete_{issue}"))


def describe_quality(catalog: Any, **_: Any) -> str:
    """The findings per issue (reported, deleted), and how to list them or make them delete."""
    counts = dict(((issue, action), n) for issue, action, n in catalog.rows(
        "SELECT issue, action, count(*) FROM quality_actions() GROUP BY ALL"))
    found = [f"{issue} {counts.get((issue, 'none'), 0) + counts.get((issue, 'delete'), 0)}"
             + (f" ({counts[(issue, 'delete')]} deleted)" if counts.get((issue, "delete")) else "")
             for issue in QUALITY_ISSUES]
    deletes = any(action == "delete" for _, action in counts)
    return (f"quality findings: {', '.join(found)}; " + ("" if deletes else "report only (set delete_* in [quality] "
            "of vdc-lake.toml to delete); ") + "list them: `vdc-lake sql \"SELECT * FROM quality_actions()\"`")


def quality_inputs(catalog: Any, **_: Any) -> str | None:
    return None if catalog.scalar("SELECT count(*) FROM (SELECT 1 FROM image_quality LIMIT 1)") else (
        "no quality values yet: `vdc-lake sanitize` computes them in its decode pass (`sanitize --recheck` for "
        "images it decoded before)")


def describe_sample(catalog: Any, *, run: int | None = None, **_: Any) -> str:
    explicit_run = run is not None
    run = run if explicit_run else catalog.scalar("SELECT run_id FROM newest_stage_runs WHERE stage = 'sample'")
    if run is None:
        return "no sample run yet: nothing to apply; run `vdc-lake sample --total N` first"
    return f"sample run {run} ({'--run' if explicit_run else 'the newest'})"


def unsearched_dedup_warnings(catalog: Any, *, threshold: float | None = None,
                              embedding_set: str | None = None) -> list[str]:
    """One warning per embedding set whose dedup apply threshold (threshold, else the catalog's
    per-set value, as dedup_actions() takes it) lies above the distance its newest dedup report
    searched: pairs in between were never stored, so the decision acts as if at the smaller one."""
    warnings = []
    for name, apply_at, searched in catalog.rows(
            """
            SELECT n.set_name, coalesce(?, t.apply_threshold, f.apply_threshold),
                   TRY_CAST(json_extract(n.params, '$.threshold') AS DOUBLE)
            FROM newest_runs AS n  -- the newest dedup report of each set (a report has no name)
            LEFT JOIN dedup_thresholds AS t ON t.set_name = n.set_name
            CROSS JOIN (SELECT apply_threshold FROM dedup_thresholds WHERE set_name IS NULL) AS f
            WHERE n.stage = 'dedup-report' AND (? IS NULL OR n.set_name = ?)
            ORDER BY n.set_name
            """, [_number(threshold), embedding_set, embedding_set]):
        if searched is not None and apply_at is not None and apply_at > searched:
            warnings.append(f"warning: the dedup apply threshold of set {name} ({apply_at:g}) is above the distance "
                            f"its newest dedup report searched ({searched:g}): pairs in between were not stored, so "
                            f"dedup acts as if at {searched:g}; run `vdc-lake dedup report --set {name} "
                            f"--report-threshold {apply_at:g}` to find them")
    return warnings


# -- what a decision has nothing to decide on without: one line naming the command that makes it --

def _ran(catalog: Any, stage: str) -> bool:
    return bool(catalog.scalar("SELECT count(*) FROM newest_runs WHERE stage = ?", [stage]))


def sanitize_inputs(catalog: Any, **_: Any) -> str | None:
    return None if _ran(catalog, "sanitize") else "no sanitize run yet: `vdc-lake sanitize` checks the images"


def rotation_inputs(catalog: Any, **_: Any) -> str | None:
    if catalog.scalar("SELECT count(*) FROM prediction_sets WHERE kind = 'rotation'"):
        return None
    return ("no rotation predictions yet, so nothing to turn: `vdc-lake predict --model MODEL --kind rotation` "
            "makes them (a birder rotnet checkpoint; `vdc-lake models list`), or `vdc-lake import` reads birder's "
            "result files")


def dedup_inputs(catalog: Any, **_: Any) -> str | None:
    if _ran(catalog, "dedup-report"):
        return None
    sets = [name for (name,) in catalog.rows("SELECT name FROM embedding_sets ORDER BY name = 'builtin' DESC, name")]
    if sets:
        return (f"only exact copies are looked for: no near-duplicate report yet; `vdc-lake dedup report --set "
                f"{sets[0]}` finds near duplicates")
    return ("only exact copies are looked for: no embedding set yet; `vdc-lake sanitize` computes the built-in "
            "descriptor (set builtin), then `vdc-lake dedup report --set builtin` finds near duplicates")


def examples_inputs(catalog: Any, **_: Any) -> str | None:
    return None if _ran(catalog, "filter-examples") else (
        "no distances to unwanted examples yet: `vdc-lake filter examples --set SET --examples FOLDER` "
        "computes them")


def score_inputs(catalog: Any, **_: Any) -> str | None:
    return None if catalog.scalar("SELECT count(*) FROM (SELECT 1 FROM scores LIMIT 1)") else (
        "no scores yet: `vdc-lake score --head HEAD.pt --set SET --name NAME` computes them")


def check_rotation_names(catalog: Any, *, prediction_set: str | None = None, **_: Any) -> None:
    rules.check_set(catalog, "predictions", prediction_set)


def check_embedding_set(catalog: Any, *, embedding_set: str | None = None, **_: Any) -> None:
    rules.check_set(catalog, "embeddings", embedding_set)


def check_score_name(catalog: Any, *, name: str | None = None, **_: Any) -> None:
    rules.check_score_name(catalog, name)


def check_sample_run(catalog: Any, *, run: int | None = None, **_: Any) -> None:
    rules.check_run(catalog, run, "sample")


@dataclass(frozen=True)
class Decision:
    """One decision, defined once: plan, apply, status, the report, validation and the CLI read
    it from DECISIONS (its SQL is one file in sql/views/20_decisions)."""

    name: str  # the STAGE of `plan/apply STAGE`, status' pending rows, the journal's `apply:NAME` runs
    view: str  # its rows at the catalog's settings, as SQL: a view, or a macro call
    acts: str  # SQL condition on those rows: the ones `apply` carries out (status counts them)
    query: Callable[..., DecisionQuery]  # plan/apply's rows for the options given (see above)
    options: tuple[str, ...] = ()  # the plan/apply options it takes (decision_options in cli/decide.py)
    settings: tuple[tuple[str, str], ...] = ()  # the config keys its view reads from the catalog (status lists them)
    threshold_setting: tuple[str, str] | None = None  # the config key whose rule checks --threshold
    check_names: Callable[..., None] | None = None  # its named options (set, score, run) against the catalog
    describe: Callable[..., str | None] | None = None  # one line: the values a plan uses and where they come from
    gallery: Callable[[Any, GalleryInputs], Paged | None] | None = None  # the report's page of its operations
    removes: bool = False  # its deletes are rows of the `removals` view (surviving_images leaves them out)
    inputs: Callable[..., str | None] | None = None  # a hint when what it decides on is missing (None: present)


DECISIONS: dict[str, Decision] = {d.name: d for d in (
    Decision("sanitize", "sanitize_actions", "action <> 'none'", sanitize_decision,
             describe=describe_sanitize, gallery=sanitize_gallery, removes=True, inputs=sanitize_inputs),
    Decision("rotation", "rotation_actions()", "action <> 'none'", rotation_decision,
             options=("threshold", "prediction_set"), settings=(("rotation_correction", "threshold"),),
             threshold_setting=("rotation_correction", "threshold"), check_names=check_rotation_names,
             describe=describe_rotation, gallery=rotation_gallery, inputs=rotation_inputs),
    Decision("dedup", "dedup_actions()", "action = 'delete'", dedup_decision,
             options=("threshold", "keep", "seed", "embedding_set"),
             settings=(("apply_deduplication", "threshold"), ("apply_deduplication", "keep"),
                       ("apply_deduplication", "seed")),
             threshold_setting=("apply_deduplication", "threshold"), check_names=check_embedding_set,
             describe=describe_dedup, gallery=dedup_gallery, removes=True, inputs=dedup_inputs),
    Decision("examples", "example_actions()", "action = 'delete'", examples_decision,
             options=("threshold", "embedding_set"), settings=(("filter_by_examples", "threshold"),),
             threshold_setting=("filter_by_examples", "threshold"), check_names=check_embedding_set,
             describe=describe_examples, gallery=examples_gallery, removes=True, inputs=examples_inputs),
    Decision("score", "score_actions(setting('filter_by_score', 'name'))", "action = 'delete'", score_decision,
             options=("name", "min_score", "max_score"),
             settings=(("filter_by_score", "name"), ("filter_by_score", "min_score"), ("filter_by_score", "max_score")),
             check_names=check_score_name, describe=describe_score, gallery=score_gallery, removes=True,
             inputs=score_inputs),
    Decision("quality", "quality_image_actions()", "action = 'delete'", quality_decision,
             settings=QUALITY_SETTINGS, describe=describe_quality, gallery=quality_gallery, removes=True,
             inputs=quality_inputs),
    Decision("sample", "sample_actions()", "action = 'delete'", sample_decision, options=("run",),
             check_names=check_sample_run, describe=describe_sample, gallery=sample_gallery),
    Decision("override", "override_actions", "action = 'delete'", override_decision,
             gallery=override_gallery, removes=True),
)}


def decision(stage: str) -> Decision:
    """The registered decision named stage (PlanError naming the choices when there is none)."""
    if stage not in DECISIONS:
        raise PlanError(f"unknown stage {stage!r}; choose one of: {', '.join(sorted(DECISIONS))}")
    return DECISIONS[stage]


def check_decision_values(stage: str, **options: Any) -> None:
    """The values given to `plan/apply STAGE` by their config rules (the CLI's and the config file's)."""
    known = DECISIONS.get(stage)
    rules.check_decision_values(known.threshold_setting if known else None,
                                score_bounds=known is not None and "min_score" in known.options, **options)


def check_decision_options(catalog: Any, stage: str, **options: Any) -> None:
    """The options of `plan/apply STAGE`: values by their rules, names and runs against the catalog."""
    check_decision_values(stage, **options)
    known = DECISIONS.get(stage)
    if known is not None and known.check_names is not None:
        known.check_names(catalog, **options)


def decision_query(stage: str, config: Config, **options: Any) -> DecisionQuery:
    chosen = decision(stage)
    check_decision_values(stage, **options)  # the same rules as the CLI and the config file
    return chosen.query(config, **options)


def missing_inputs(catalog: Any, stage: str, **options: Any) -> str | None:
    """One line naming the command that makes what a stage decides on, when the catalog has
    none of it (no rotation predictions, no dedup report, ...); None when it has."""
    known = DECISIONS.get(stage)
    return known.inputs(catalog, **options) if known is not None and known.inputs is not None else None


def decision_values(catalog: Any, stage: str, **options: Any) -> str | None:
    """One line naming the values a stage's plan uses and where each comes from (a CLI option,
    else the catalog's setting and its source), or None for stages without such values."""
    known = DECISIONS.get(stage)
    return known.describe(catalog, **options) if known is not None and known.describe is not None else None
