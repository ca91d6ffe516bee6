"""Overrides: the user's own verdict on single images, above every decision.

`keep` means no decision removes the image (sanitize, dedup, example, score and sample deletes
leave it out; in a duplicate group it is the keeper and the others still go); `drop` deletes it
through the `override` decision stage (`plan override`, `apply override`) and takes it out of
surviving_images, `curated` and `export`. The views do this themselves (sql/views/
override_actions.sql), so plan, apply, status, curated, export and the report agree.

Rows go to the append-only `overrides` table, one `override` run per command; the newest row
per image is in force ('clear' ends it). An override judges the image's current version: once
the file changes outside vdc-lake (a new version from `scan`) it lapses; the versions vdc-lake's
own apply makes from it (rotate, resize, recompress) keep it.

An image is named by its image_id, by its path relative to a scanned root, or by a path
(absolute, or relative to the current folder).
"""

from __future__ import annotations

import datetime as dt
import os
import posixpath
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import pyarrow as pa

from vdc_lake.catalog.connection import Catalog
from vdc_lake.errors import OverrideError
from vdc_lake.fileops.csv_files import csv_rows, listed

ACTIONS = ("keep", "drop")
CSV_COLUMNS = ("image", "action", "reason")

# Every image named, matched by image_id (1), full path (2) or path relative to its root (3);
# the best kind of match wins, and more than one image at that kind is ambiguous.
_RESOLVE_SQL = """
WITH files AS (
    SELECT image_id, version, root, rel_path, root || '/' || rel_path AS path, present FROM images
    WHERE present OR NOT $present_only
),

matches AS (
    SELECT w.n, 1 AS how, f.image_id, f.version, f.path FROM override_refs AS w JOIN files AS f ON f.image_id = w.as_id
    UNION ALL
    SELECT w.n, 2, f.image_id, f.version, f.path FROM override_refs AS w JOIN files AS f ON f.path = w.as_path
    UNION ALL
    SELECT w.n, 2, f.image_id, f.version, f.path FROM override_refs AS w JOIN files AS f ON f.path = w.as_real
    UNION ALL
    SELECT w.n, 3, f.image_id, f.version, f.path FROM override_refs AS w JOIN files AS f ON f.rel_path = w.as_rel
),

best AS (
    SELECT n, min(how) AS how FROM matches GROUP BY n
),

chosen AS (
    SELECT m.n, count(DISTINCT m.image_id) AS candidates, min(m.image_id) AS image_id,
           any_value(m.version ORDER BY m.image_id) AS version, list(DISTINCT m.path ORDER BY m.path) AS paths
    FROM matches AS m
    JOIN best AS b ON b.n = m.n AND b.how = m.how
    GROUP BY m.n
),

final AS (
    SELECT w.n, w.ref, c.candidates, c.image_id, c.version, c.paths
    FROM override_refs AS w
    LEFT JOIN chosen AS c ON c.n = w.n
)

SELECT * FROM final ORDER BY n
"""

# The newest override row of each image (in force or lapsed), unless it is a 'clear'.
_CURRENT_SQL = """
SELECT o.image_id, o.version, o.action, o.reason, o.run_id, o.created_at
FROM overrides AS o
QUALIFY row_number() OVER (PARTITION BY o.image_id ORDER BY o.run_id DESC, o.created_at DESC) = 1
"""


@dataclass
class OverrideSummary:
    """What one `override` command recorded. images: overrides set (or cleared) by this run;
    replaced: of them, images whose override in force said the other thing; not_overridden
    (clear): images named that had no override."""

    run_id: int | None
    command: str
    images: int = 0
    keep: int = 0
    drop: int = 0
    replaced: int = 0
    not_overridden: int = 0


# -- naming images ---------------------------------------------------------------------------------

def _ref_table(refs: Sequence[str], cwd: str) -> pa.Table:
    as_id, as_path, as_real, as_rel = [], [], [], []
    for ref in refs:
        as_id.append(int(ref) if ref.isascii() and ref.isdigit() and len(ref) < 19 else None)
        absolute = os.path.abspath(os.path.join(cwd, ref))
        as_path.append(absolute)
        # the folders resolved (scan stores resolved roots), the file itself not: it may be a symlink
        as_real.append(os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute)))
        as_rel.append(posixpath.normpath(ref) if not os.path.isabs(ref) else None)
    return pa.table({"n": pa.array(range(len(refs)), pa.int64()), "ref": pa.array(list(refs), pa.string()),
                     "as_id": pa.array(as_id, pa.int64()), "as_path": pa.array(as_path, pa.string()),
                     "as_real": pa.array(as_real, pa.string()), "as_rel": pa.array(as_rel, pa.string())})


def resolve_images(catalog: Catalog, refs: Sequence[str], *, labels: Sequence[str] | None = None,
                   present_only: bool = True, cwd: str | os.PathLike | None = None) -> pa.Table:
    """The image each of `refs` names: a table of (n, ref, image_id, version), n = position in refs.

    A ref is an image_id, a path relative to a scanned root, or a path (absolute, or relative to
    `cwd`, default the current folder). present_only: only files present at the last scan.
    Raises OverrideError naming every ref that matches no image or more than one (labels: how
    to name each ref in that message, e.g. 'line 3: x.jpg'; default the ref itself)."""
    if not refs:
        return pa.table({"n": pa.array([], pa.int64()), "ref": pa.array([], pa.string()),
                         "image_id": pa.array([], pa.int64()), "version": pa.array([], pa.int32())})
    table = _ref_table(refs, os.fspath(cwd) if cwd is not None else os.getcwd())
    with catalog.registered("override_refs", table):
        found = catalog.arrow(_RESOLVE_SQL, {"present_only": present_only})
    names = list(labels) if labels is not None else [repr(r) for r in refs]
    unknown = [names[n] for n, k in zip(found.column("n").to_pylist(), found.column("candidates").to_pylist())
               if k is None]
    ambiguous = [f"{names[n]} ({len(paths)} images: {', '.join(paths[:3])})"
                 for n, k, paths in zip(found.column("n").to_pylist(), found.column("candidates").to_pylist(),
                                        found.column("paths").to_pylist()) if k is not None and k > 1]
    problems = []
    if unknown:
        where = "present images" if present_only else "images"
        problems.append(f"{len(unknown)} of {len(refs)} named images are not among the catalog's {where}: "
                        f"{listed(unknown)}; name an image by its image_id, its path relative to a scanned "
                        "root or its absolute path (`vdc-lake scan` registers new files)")
    if ambiguous:
        problems.append(f"{len(ambiguous)} names match several images: {listed(ambiguous)}; use the absolute "
                        "path or the image_id")
    if problems:
        raise OverrideError("; ".join(problems))
    return found.select(["n", "ref", "image_id", "version"]).cast(pa.schema([
        ("n", pa.int64()), ("ref", pa.string()), ("image_id", pa.int64()), ("version", pa.int32())]))


# -- recording ---------------------------------------------------------------------------------------

def _check_action(action: str) -> str:
    if action not in ACTIONS:
        raise OverrideError(f"unknown override action {action!r}: use keep or drop")
    return action


def _write(catalog: Catalog, run_id: int, image_ids: list[int], versions: list[int], actions: list[str],
           reasons: list[str | None]) -> None:
    now = dt.datetime.now()
    catalog.insert_arrow("overrides", pa.table({
        "image_id": pa.array(image_ids, pa.int64()),
        "version": pa.array(versions, pa.int32()),
        "action": pa.array(actions, pa.string()),
        "reason": pa.array(reasons, pa.string()),
        "created_at": pa.array([now] * len(image_ids), pa.timestamp("us")),
        "run_id": pa.array([run_id] * len(image_ids), pa.int64()),
    }))


def _replaced(catalog: Catalog, image_ids: list[int], actions: list[str]) -> int:
    """How many of these images have an override in force that says the other thing."""
    if not image_ids:
        return 0
    table = pa.table({"image_id": pa.array(image_ids, pa.int64()), "action": pa.array(actions, pa.string())})
    with catalog.registered("override_new", table):
        return int(catalog.scalar(
            "SELECT count(*) FROM override_new AS n JOIN override_actions AS o ON o.image_id = n.image_id "
            "WHERE o.override <> n.action"))


def _record(catalog: Catalog, command: str, params: dict, image_ids: list[int], versions: list[int],
            actions: list[str], reasons: list[str | None]) -> OverrideSummary:
    with catalog.run("override", dict(params, command=command)) as run_id:
        summary = OverrideSummary(run_id, command, images=len(image_ids), keep=actions.count("keep"),
                                  drop=actions.count("drop"), replaced=_replaced(catalog, image_ids, actions))
        with catalog.transaction():
            _write(catalog, run_id, image_ids, versions, actions, reasons)
        catalog.finish_run(run_id, summary=asdict(summary))
    return summary


def _unique(found: pa.Table) -> tuple[list[int], list[int]]:
    """image_ids and versions, each image once (a name given twice, or two names of one image)."""
    seen: dict[int, int] = {}
    for image_id, version in zip(found.column("image_id").to_pylist(), found.column("version").to_pylist()):
        seen[image_id] = version
    return list(seen), list(seen.values())


def set_overrides(catalog: Catalog, refs: Sequence[str], action: str, *, reason: str | None = None,
                  cwd: str | os.PathLike | None = None) -> OverrideSummary:
    """Keep or drop the named images (see resolve_images), at their current version; one run."""
    _check_action(action)
    if not refs:
        raise OverrideError(f"name at least one image to {action}: an image_id or a path")
    image_ids, versions = _unique(resolve_images(catalog, refs, cwd=cwd))
    params = {"images": len(image_ids), "reason": reason}
    return _record(catalog, action, params, image_ids, versions, [action] * len(image_ids),
                   [reason] * len(image_ids))


def record_overrides(catalog: Catalog, image_ids: Sequence[int], actions: Sequence[str],
                     reasons: Sequence[str | None], *, command: str) -> OverrideSummary:
    """Give each image its own override (keep, drop, or clear: none in force) in one run, e.g. the
    review app's undo, which gives every image of an action back the override it had before.
    image_ids are image ids (each once), at their current version."""
    bad = sorted({a for a in actions if a not in (*ACTIONS, "clear")})
    if bad or len(set(image_ids)) != len(image_ids) or not len(image_ids) == len(actions) == len(reasons):
        raise OverrideError(f"one keep, drop or clear per image, each image once (got {', '.join(bad) or 'repeats'})")
    versions = dict(catalog.rows("SELECT image_id, version FROM images WHERE list_contains(?, image_id)",
                                 [list(image_ids)]))
    missing = [i for i in image_ids if i not in versions]
    if missing:
        raise OverrideError(f"no image with id {missing[0]} in the catalog")
    params = {"images": len(image_ids)}
    return _record(catalog, command, params, list(image_ids), [versions[i] for i in image_ids], list(actions),
                   list(reasons))


def _read_csv(path: Path) -> tuple[list[str], list[str], list[str], list[str | None]]:
    """(refs, labels 'line N: ref', actions, reasons) of an override CSV; OverrideError when malformed."""
    refs, labels, actions, reasons, bad = [], [], [], [], []
    columns = f"an override CSV has the columns {', '.join(CSV_COLUMNS)} (reason may be empty)"
    for line, row in csv_rows(path, ("image", "action"), OverrideError, columns):
        image = (row.get("image") or "").strip()
        action = (row.get("action") or "").strip().lower()
        if not image and not action and not (row.get("reason") or "").strip():
            continue  # a blank line
        if not image or action not in ACTIONS:
            bad.append(f"line {line}" + (": no image" if not image else f": action {action!r}"))
            continue
        refs.append(image)
        labels.append(f"line {line}: {image!r}")
        actions.append(action)
        reasons.append((row.get("reason") or "").strip() or None)
    if bad:
        raise OverrideError(f"{path}: {len(bad)} rows are not valid: {listed(bad)}; each row needs an image "
                            "(image_id or path) and an action keep or drop")
    return refs, labels, actions, reasons


def import_overrides(catalog: Catalog, csv_path: str | os.PathLike, *,
                     cwd: str | os.PathLike | None = None) -> OverrideSummary:
    """Keep or drop every image a CSV file lists: columns image (image_id or path), action (keep
    or drop), reason (optional). One run for the whole file; nothing is recorded when any row
    is invalid, names an unknown image, or contradicts another row about the same image."""
    path = Path(csv_path)
    if not path.is_file():
        raise OverrideError(f"{path} is not a file; give the override CSV (columns {', '.join(CSV_COLUMNS)})")
    refs, labels, actions, reasons = _read_csv(path)
    if not refs:
        raise OverrideError(f"{path} lists no overrides; add rows with the columns {', '.join(CSV_COLUMNS)}")
    found = resolve_images(catalog, refs, labels=labels, cwd=cwd)
    chosen: dict[int, tuple[int, int]] = {}  # image_id -> (row, version); the last row of an image wins
    conflicts = []
    for n, image_id, version in zip(found.column("n").to_pylist(), found.column("image_id").to_pylist(),
                                    found.column("version").to_pylist()):
        if image_id in chosen and actions[chosen[image_id][0]] != actions[n]:
            conflicts.append(f"{labels[chosen[image_id][0]]} and {labels[n]} (image {image_id})")
        chosen[image_id] = (n, version)
    if conflicts:
        raise OverrideError(f"{path}: {len(conflicts)} images are both kept and dropped: {listed(conflicts)}; "
                            "keep one row per image")
    rows = [n for n, _ in chosen.values()]
    params = {"file": str(path.resolve()), "rows": len(refs), "images": len(chosen)}
    return _record(catalog, "import", params, list(chosen), [v for _, v in chosen.values()],
                   [actions[n] for n in rows], [reasons[n] for n in rows])


def clear_overrides(catalog: Catalog, refs: Sequence[str] | None = None, *, all_images: bool = False,
                    cwd: str | os.PathLike | None = None) -> OverrideSummary:
    """End the overrides of the named images (or of every image with all_images): the decisions
    judge them again. History stays in `overrides` (a 'clear' row). Images named without an
    override are counted in not_overridden."""
    if all_images == bool(refs):
        raise OverrideError("name the images whose overrides to clear, or pass --all (not both)")
    current = catalog.arrow(f"SELECT image_id FROM ({_CURRENT_SQL}) WHERE action IN ('keep', 'drop')")
    overridden = set(current.column("image_id").to_pylist())
    named = None
    if refs:
        named, _ = _unique(resolve_images(catalog, refs, present_only=False, cwd=cwd))
        targets = [i for i in named if i in overridden]
    else:
        targets = sorted(overridden)
    versions = dict(catalog.rows("SELECT image_id, version FROM images WHERE list_contains(?, image_id)", [targets]))
    params = {"images": len(targets), "all": all_images}
    with catalog.run("override", dict(params, command="clear")) as run_id:
        summary = OverrideSummary(run_id, "clear", images=len(targets),
                                  not_overridden=len(named) - len(targets) if named is not None else 0)
        with catalog.transaction():
            _write(catalog, run_id, targets, [versions[i] for i in targets], ["clear"] * len(targets),
                   [None] * len(targets))
        catalog.finish_run(run_id, summary=asdict(summary))
    return summary


def list_overrides(catalog: Catalog) -> pa.Table:
    """Every image's newest override (clear ones left out), with whether it is in force:
    image_id, path, override, reason, judged_version, current_version, state, run_id, created_at.
    state: 'in force', 'lapsed: the file changed since' (a new version not made by apply), or
    'file gone' (not present at the last scan or deleted by apply). A catalog that an older
    vdc-lake wrote (opened read-only, not migrated yet) has none."""
    if not catalog.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'override_actions'"):
        return pa.table({"image_id": pa.array([], pa.int64())})
    return catalog.arrow(
        f"""
        WITH current AS ({_CURRENT_SQL}),

        final AS (
            SELECT c.image_id, i.root || '/' || i.rel_path AS path, c.action AS override, c.reason,
                   c.version AS judged_version, i.version AS current_version,
                   CASE WHEN o.image_id IS NOT NULL THEN 'in force'
                        WHEN NOT i.present THEN 'file gone'
                        ELSE 'lapsed: the file changed since' END AS state,
                   c.run_id, c.created_at
            FROM current AS c
            JOIN images AS i ON i.image_id = c.image_id
            LEFT JOIN override_actions AS o ON o.image_id = c.image_id
            WHERE c.action IN ('keep', 'drop')
        )

        SELECT * FROM final ORDER BY image_id
        """
    )
