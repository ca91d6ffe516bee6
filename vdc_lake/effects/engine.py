"""The apply engine's run: journal a plan, carry out its operations (locally or as Ray tasks),
commit their journal updates and catalog rows in batches, and finish what a killed run left
`planned` first (see apply.py for the whole protocol)."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from vdc_lake.catalog.connection import Catalog
from vdc_lake.effects.confinement import check_backup_folder, confinement_error, journal_ops, recorded_backup_root
from vdc_lake.effects.leftovers import UNFINISHED_STATES, remove_leftovers_of
from vdc_lake.effects.operation import execute_op
from vdc_lake.effects.plan import Plan, journal_rows
from vdc_lake.errors import PlanError, disk_full_error
from vdc_lake.fileops.confine import scanned_roots
from vdc_lake.fileops.facts import fact_arrays, fact_assignments
from vdc_lake.fileops.probe import errno_text
from vdc_lake.progress import progress_bar
from vdc_lake.scale.parallel import get_mapper

FLUSH_EVERY_OPS = 256
FLUSH_EVERY_SECONDS = 2.0


@dataclass
class ApplySummary:
    run_id: int | None
    planned: int = 0
    done: int = 0
    resumed: int = 0
    skipped: int = 0
    refused: int = 0        # paths outside their scanned root (an edited catalog): journal 'refused'
    failed: int = 0
    rewritten: int = 0      # done ops that wrote a new version (resize, recompress, rotate): not sanitized yet
    errors: list[str] = field(default_factory=list)


def _flush(catalog: Catalog, run_id: int, results: list[dict[str, Any]], ops: dict[int, dict]) -> None:
    if not results:
        return
    updates = pa.table({
        "op_id": pa.array([r["op_id"] for r in results], pa.int64()),
        "state": [r["state"] for r in results],
        "error": pa.array([r.get("error") for r in results], pa.string()),
        "checksum_after": pa.array([r.get("checksum_after") for r in results], pa.string()),
    })
    done = [r for r in results if r["state"] == "done"]
    changed = [r for r in done if "facts" in r]
    with catalog.registered("journal_updates", updates), catalog.transaction():
        catalog.execute(
            """UPDATE journal SET state = u.state, error = u.error, checksum_after = u.checksum_after, ts = now()
               FROM journal_updates u WHERE journal.op_id = u.op_id"""
        )
        deleted = [ops[r["op_id"]]["image_id"] for r in done if "facts" not in r]
        if deleted:
            catalog.execute("UPDATE images SET present = false, updated_run = ? WHERE list_contains(?, image_id)",
                        [run_id, deleted])
        if changed:
            _update_changed_images(catalog, run_id, changed, ops)
        rescan = [ops[r["op_id"]]["image_id"] for r in results if r.get("rescan")]
        if rescan:  # mtime NULL never matches the listing (sanitize does the same for bytes it found changed)
            catalog.execute("UPDATE images SET mtime_ns = NULL WHERE list_contains(?, image_id)", [rescan])


def _update_changed_images(catalog: Catalog, run_id: int, changed: list[dict], ops: dict[int, dict]) -> None:
    columns: dict[str, Any] = {
        "image_id": pa.array([ops[r["op_id"]]["image_id"] for r in changed], pa.int64()),
        "dst": [ops[r["op_id"]]["dst"] for r in changed],
    }
    columns.update(fact_arrays([r["facts"] for r in changed]))
    assignments = fact_assignments("f")
    with catalog.registered("changed_facts", pa.table(columns)):
        catalog.execute(
            f"""UPDATE images SET {assignments}, version = images.version + 1, updated_run = ?,
                       rel_path = substr(f.dst, length(images.root) + 2)
                FROM changed_facts f WHERE images.image_id = f.image_id""",
            [run_id],
        )
    from vdc_lake.stages.predict import carry_rotated_results  # results a predict pass computed on these turned pixels

    carry_rotated_results(catalog, [ops[r["op_id"]] for r in changed])


def _run_ops(catalog: Catalog, run_id: int, ops: list[dict], summary: ApplySummary, quiet: bool,
             backend: str = "local"):
    by_id = {op["op_id"]: op for op in ops}
    pending: list[dict[str, Any]] = []
    last_flush = time.monotonic()
    catalog.release()
    if backend == "local":
        results = map(execute_op, ops)
    else:  # shards of ops as Ray tasks; execute_op is idempotent, so a retried task is safe
        results = get_mapper(backend, catalog_path=catalog.path)(execute_op, ops, desc="apply", quiet=True)
    with progress_bar(len(ops), "apply", quiet=quiet) as bar:
        for result in results:
            pending.append(result)
            _count(summary, result)
            bar.update()
            if len(pending) >= FLUSH_EVERY_OPS or time.monotonic() - last_flush > FLUSH_EVERY_SECONDS:
                _flush(catalog, run_id, pending, by_id)
                catalog.release()
                pending, last_flush = [], time.monotonic()
    _flush(catalog, run_id, pending, by_id)


def _count(summary: ApplySummary, result: dict[str, Any]) -> None:
    state = result["state"]
    if state == "done":
        summary.done += 1
        summary.resumed += int(result.get("resumed", False))
        summary.rewritten += int("facts" in result)
    elif state == "skipped":
        summary.skipped += 1
    elif state == "refused":
        summary.refused += 1
    else:  # failed, or left planned for the next apply
        summary.failed += 1
    if result.get("error") and len(summary.errors) < 20:
        summary.errors.append(result["error"])


def unfinished_count(catalog: Catalog) -> int:
    """Operations a killed apply left `planned` (the next apply finishes them first)."""
    return int(catalog.scalar("SELECT count(*) FROM journal WHERE state = 'planned'") or 0)


def resume_unfinished(catalog: Catalog, *, quiet: bool = False, backend: str = "local") -> ApplySummary:
    """Finish every operation left `planned` by a killed apply, in its own run."""
    summary = ApplySummary(run_id=None)
    roots = scanned_roots(catalog)
    _remove_unfinished_leftovers(catalog, roots)  # temp files a killed or failed apply left next to its files
    runs = catalog.rows("SELECT DISTINCT run_id FROM journal WHERE state = 'planned' ORDER BY run_id")
    for (run_id,) in runs:
        ops = sorted(journal_ops(catalog, "j.run_id = ? AND j.state = 'planned'", [run_id]), key=lambda o: o["op_id"])
        recorded = ops[0]["backup_root"] if ops else None
        if recorded is not None:  # checked only: the journal's backup paths were made from it as recorded
            recorded_backup_root(catalog, roots, recorded, run_id, {})
        summary.planned += len(ops)
        _run_ops(catalog, run_id, ops, summary, quiet, backend)
        catalog.execute("UPDATE runs SET status = 'done', finished_at = now() WHERE run_id = ?", [run_id])
    return summary


def _remove_unfinished_leftovers(catalog: Catalog, roots: list[str]) -> list[str]:
    """Remove the temp files unfinished operations (planned or failed) left (leftovers.py), of the
    operations that pass the checks the operation itself gets: its run's recorded backup folder
    accepted (recorded_backup_root), then confinement_error. An edited journal row is refused
    as an operation, and so are its temp names: they may be someone else's files."""
    checked: dict[str, str] = {}
    refused: set[str | None] = set()
    confined = []
    for op in journal_ops(catalog, "list_contains(?, j.state)", [list(UNFINISHED_STATES)]):
        if op["backup"] is not None:
            if op["backup_root"] in refused:
                continue
            try:
                recorded_backup_root(catalog, roots, op["backup_root"], op["run_id"], checked)
            except PlanError:
                refused.add(op["backup_root"])
                continue
        if confinement_error(op, op["backup_root"]) is None:
            confined.append(op)
    return remove_leftovers_of(confined)


def apply_plan(
    catalog: Catalog,
    plan: Plan,
    *,
    backup_dir: str | os.PathLike | None,
    no_backup: bool = False,
    quiet: bool = False,
    backend: str = "local",
) -> ApplySummary:
    """Carry out a plan with the journaled protocol. Unfinished earlier operations run first.

    The backup folder must lie outside every scanned root (PlanError otherwise)."""
    if backup_dir is None and not no_backup:
        raise PlanError("apply needs --backup-dir DIR (or an explicit --no-backup to change files without a copy)")
    backup_root = None if no_backup else check_backup_folder(catalog, backup_dir)
    if backup_root is not None and len(plan):
        _check_writable(backup_root)
    resumed = resume_unfinished(catalog, quiet=quiet, backend=backend)
    if len(plan) == 0:
        return ApplySummary(None, resumed=resumed.done, skipped=resumed.skipped, refused=resumed.refused,
                            failed=resumed.failed, rewritten=resumed.rewritten, errors=resumed.errors)
    options = dict(plan.options, backup_dir=str(backup_root) if backup_root else None, no_backup=no_backup)
    with catalog.run(f"apply:{plan.decision}", options) as run_id:
        summary = ApplySummary(run_id, planned=len(plan))
        summary.resumed, summary.refused, summary.rewritten = resumed.done, resumed.refused, resumed.rewritten
        rows = journal_rows(catalog, plan, run_id, backup_root, _sanitize_pixel_limit(catalog))
        with catalog.transaction():
            op_ids = catalog.next_ids("op_id_seq", len(plan))
            catalog.insert_arrow("journal", rows.set_column(0, "op_id", pa.array(op_ids, pa.int64())))
        ops = sorted(journal_ops(catalog, "j.run_id = ?", [run_id]), key=lambda o: o["op_id"])
        _run_ops(catalog, run_id, ops, summary, quiet, backend)
        summary.errors = resumed.errors + summary.errors
        catalog.finish_run(run_id, summary=asdict(summary), status="done")
    return summary


def _check_writable(backup_root: Path) -> None:
    """Make the backup folder, write a file in it and mark it as a backup folder (markers.BACKUP_MARKER,
    which every scan of any catalog honours: it leaves the folder out), before any operation is
    journaled: a folder that cannot be written is one error, not a failed operation per file."""
    from vdc_lake.fileops.markers import mark_backup_folder

    try:
        backup_root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=backup_root, prefix=".vdc-probe-")
        os.close(fd)
        os.unlink(probe)
        mark_backup_folder(backup_root)
    except FileExistsError as e:  # something else has the marker's name
        raise PlanError(f"cannot mark {backup_root} as a backup folder: {e}") from e
    except OSError as e:
        full = disk_full_error(e)
        if full is not None:
            raise full from e
        where = f" at {os.fsdecode(e.filename)}" if e.filename and os.fsdecode(e.filename) != str(backup_root) else ""
        raise PlanError(f"cannot write backups to {backup_root} ({errno_text(e)}{where}); choose a folder you can "
                        "write to, outside every scanned root") from e


def _sanitize_pixel_limit(catalog: Catalog) -> int | None:
    """The decompression-bomb limit of the newest sanitize run (decode checks before a delete use it)."""
    value = catalog.scalar("SELECT json_extract_string(params, '$.max_pixels') FROM runs "
                           "WHERE stage = 'sanitize' ORDER BY run_id DESC LIMIT 1")
    return int(value) if value else None
