"""The apply engine: the only code in vdc-lake that changes, moves or deletes image files.

Protocol for each planned operation (rows of a decision view):

1. plan: every operation is written to `journal` as `planned` (with the expected checksum and
   the backup path) in one transaction before any file is touched;
2. backup: copy to BACKUP_DIR/run-N/<root>/<rel_path> through a temp file, fsync, rename,
   then re-read and verify the checksum;
3. act: write the result to a temp file in the same directory and `os.replace` it over the
   original (atomic on POSIX), or unlink for delete;
4. journal `done` and the catalog row (version bump, new facts) are committed in batches.

The filesystem plus the plan is enough to tell where a killed run stopped: an operation is
done when its backup verifies and the source no longer has the planned checksum (or is gone).
So a crash at any moment leaves each file untouched or done with a verified backup, and
re-running `apply` finishes the interrupted operations first. `restore` copies backups back
and refuses any backup path that escapes the run's backup root.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from vdc_lake.catalog import Catalog
from vdc_lake.errors import PlanError
from vdc_lake.files import content_hash, inspect_header
from vdc_lake.imageops import ACTIONS
from vdc_lake.parallel import get_mapper, progress_bar

FLUSH_EVERY_OPS = 256
FLUSH_EVERY_SECONDS = 2.0


@dataclass
class Plan:
    """What a decision would do: one row per operation (image_id, version, action, params, src, checksum)."""

    decision: str
    ops: pa.Table
    options: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for action in self.ops.column("action").to_pylist():
            counts[action] = counts.get(action, 0) + 1
        return dict(sorted(counts.items()))

    def examples(self, n: int = 5) -> list[dict[str, Any]]:
        return self.ops.slice(0, n).select(["action", "src", "reason"]).to_pylist()

    def __len__(self) -> int:
        return self.ops.num_rows


@dataclass
class ApplySummary:
    run_id: int | None
    planned: int = 0
    done: int = 0
    resumed: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class RestoreSummary:
    restored: int = 0
    already_original: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


# -- planning ---------------------------------------------------------------------------------

def make_plan(catalog: Catalog, decision: str, source_sql: str, params: list[Any], options: dict[str, Any]) -> Plan:
    """Turn a decision query (image_id, version, action, reason, params) into operations.

    `params` (JSON or NULL) holds per-operation options, e.g. the resize limits of the
    sanitize run that found the image too large; they override the plan's options.

    Images with an unfinished operation from an earlier run are left out: resume handles them.
    """
    ops = catalog.arrow(
        f"""
        WITH decision AS ({source_sql})
        SELECT d.image_id, d.version, d.action, i.root, i.rel_path, i.root || '/' || i.rel_path AS src,
               i.content_hash AS checksum, coalesce(CAST(d.reason AS VARCHAR), '') AS reason,
               CAST(d.params AS VARCHAR) AS op_params
        FROM decision d
        JOIN images i ON i.image_id = d.image_id AND i.version = d.version AND i.present
        WHERE d.action IS NOT NULL AND d.action <> 'none'
          AND NOT EXISTS (SELECT 1 FROM journal j WHERE j.image_id = d.image_id AND j.state = 'planned')
        ORDER BY d.image_id
        """,
        params,
    )
    unknown = set(ops.column("action").to_pylist()) - set(ACTIONS)
    if unknown:
        raise PlanError(f"decision {decision!r} asks for unknown actions {sorted(unknown)}")
    return Plan(decision, ops, options)


def _backup_path(backup_root: Path, run_id: int, root: str, rel_path: str) -> Path:
    return backup_root / f"run-{run_id}" / root.lstrip("/") / rel_path


def _journal_rows(plan: Plan, run_id: int, backup_root: Path | None, op_ids) -> pa.Table:
    rows = plan.ops.to_pylist()
    now = dt.datetime.now()
    params = [dict(plan.options, **json.loads(r["op_params"] or "{}")) for r in rows]
    return pa.table({
        "op_id": pa.array(op_ids, pa.int64()),
        "run_id": pa.array([run_id] * len(rows), pa.int64()),
        "image_id": pa.array([r["image_id"] for r in rows], pa.int64()),
        "version": pa.array([r["version"] for r in rows], pa.int32()),
        "action": [r["action"] for r in rows],
        "params": [json.dumps(p, default=str) for p in params],
        "src": [r["src"] for r in rows],
        "dst": [ACTIONS[r["action"]].destination(r["src"], p) for r, p in zip(rows, params)],
        "backup": [
            str(_backup_path(backup_root, run_id, r["root"], r["rel_path"])) if backup_root else None for r in rows
        ],
        "checksum_before": [r["checksum"] for r in rows],
        "state": ["planned"] * len(rows),
        "ts": pa.array([now] * len(rows), pa.timestamp("us")),
    })


# -- one operation -----------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _verified(path: Path, checksum: str) -> bool:
    try:
        return content_hash(path) == checksum
    except OSError:
        return False


def make_backup(src: Path, backup: Path, checksum: str) -> None:
    """Copy src to backup (temp + fsync + rename) and verify the copy's checksum."""
    backup.parent.mkdir(parents=True, exist_ok=True)
    tmp = backup.with_name(backup.name + ".vdc-tmp")
    shutil.copy2(src, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, backup)
    _fsync_dir(backup.parent)
    if not _verified(backup, checksum):
        raise OSError(f"backup {backup} does not match the original's checksum")


def _already_done(op: dict[str, Any], src: Path, dst: Path) -> bool:
    """After a crash: has this operation's atomic step already happened?"""
    backup_ok = op["backup"] is None or _verified(Path(op["backup"]), op["checksum_before"])
    if not backup_ok:
        return False
    if op["action"] == "delete" or dst != src:
        return not src.exists() and (op["action"] == "delete" or dst.exists())
    return src.exists() and not _verified(src, op["checksum_before"])


def execute_op(op: dict[str, Any]) -> dict[str, Any]:
    """Carry out one journaled operation (options from its journal row); returns the journal update."""
    src, dst = Path(op["src"]), Path(op["dst"] or op["src"])
    options = json.loads(op["params"] or "{}")
    try:
        if _already_done(op, src, dst):
            return _finished(op, dst, resumed=True)
        if not src.exists():
            return {"op_id": op["op_id"], "state": "skipped", "error": f"{src} no longer exists; run `vdc-lake scan`"}
        if op["backup"] is not None:
            backup = Path(op["backup"])
            if not _verified(backup, op["checksum_before"]):
                if content_hash(src) != op["checksum_before"]:
                    return {"op_id": op["op_id"], "state": "skipped",
                            "error": f"{src} changed since it was scanned; run `vdc-lake scan` and plan again"}
                make_backup(src, backup, op["checksum_before"])
        elif content_hash(src) != op["checksum_before"]:
            return {"op_id": op["op_id"], "state": "skipped",
                    "error": f"{src} changed since it was scanned; run `vdc-lake scan` and plan again"}
        ACTIONS[op["action"]].run(src, dst, options)
        return _finished(op, dst, resumed=False)
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the run; it is journaled
        return {"op_id": op["op_id"], "state": "failed", "error": f"{type(e).__name__}: {e}"}


def _finished(op: dict[str, Any], dst: Path, *, resumed: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"op_id": op["op_id"], "state": "done", "error": None, "resumed": resumed}
    if op["action"] != "delete":
        result["facts"] = inspect_header(str(dst))
        result["checksum_after"] = result["facts"]["content_hash"]
    return result


# -- journal + catalog updates -------------------------------------------------------------------

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


def _update_changed_images(catalog: Catalog, run_id: int, changed: list[dict], ops: dict[int, dict]) -> None:
    from vdc_lake.scan import fact_arrays, fact_assignments

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
    elif state == "skipped":
        summary.skipped += 1
    else:
        summary.failed += 1
    if result.get("error") and len(summary.errors) < 20:
        summary.errors.append(result["error"])


def unfinished_count(catalog: Catalog) -> int:
    """Operations a killed apply left `planned` (the next apply finishes them first)."""
    return int(catalog.scalar("SELECT count(*) FROM journal WHERE state = 'planned'") or 0)


def resume_unfinished(catalog: Catalog, *, quiet: bool = False, backend: str = "local") -> ApplySummary:
    """Finish every operation left `planned` by a killed apply, in its own run."""
    summary = ApplySummary(run_id=None)
    runs = catalog.rows("SELECT DISTINCT run_id FROM journal WHERE state = 'planned' ORDER BY run_id")
    for (run_id,) in runs:
        ops = catalog.arrow("SELECT * FROM journal WHERE run_id = ? AND state = 'planned' ORDER BY op_id",
                            [run_id]).to_pylist()
        summary.planned += len(ops)
        _run_ops(catalog, run_id, ops, summary, quiet, backend)
        catalog.execute("UPDATE runs SET status = 'done', finished_at = now() WHERE run_id = ?", [run_id])
    return summary


def apply_plan(
    catalog: Catalog,
    plan: Plan,
    *,
    backup_dir: str | os.PathLike | None,
    no_backup: bool = False,
    quiet: bool = False,
    backend: str = "local",
) -> ApplySummary:
    """Carry out a plan with the journaled protocol. Unfinished earlier operations run first."""
    if backup_dir is None and not no_backup:
        raise PlanError("apply needs --backup-dir DIR (or an explicit --no-backup to change files without a copy)")
    backup_root = None if no_backup else Path(backup_dir).expanduser().resolve()
    resumed = resume_unfinished(catalog, quiet=quiet, backend=backend)
    if len(plan) == 0:
        return ApplySummary(None, resumed=resumed.done, skipped=resumed.skipped, failed=resumed.failed,
                            errors=resumed.errors)
    options = dict(plan.options, backup_dir=str(backup_root) if backup_root else None, no_backup=no_backup)
    with catalog.run(f"apply:{plan.decision}", options) as run_id:
        summary = ApplySummary(run_id, planned=len(plan))
        summary.resumed = resumed.done
        with catalog.transaction():
            op_ids = catalog.next_ids("op_id_seq", len(plan))
            catalog.insert_arrow("journal", _journal_rows(plan, run_id, backup_root, op_ids))
        ops = catalog.arrow("SELECT * FROM journal WHERE run_id = ? ORDER BY op_id", [run_id]).to_pylist()
        _run_ops(catalog, run_id, ops, summary, quiet, backend)
        summary.errors = resumed.errors + summary.errors
        catalog.finish_run(run_id, summary=asdict(summary), status="done")
    return summary


# -- restore ------------------------------------------------------------------------------------

def _restore_ops(catalog: Catalog, run_id: int | None) -> list[dict[str, Any]]:
    where = "AND j.run_id = ?" if run_id is not None else ""
    ops = catalog.arrow(
        f"""SELECT j.*, json_extract_string(r.params, '$.backup_dir') AS backup_root
            FROM journal j JOIN runs r USING (run_id)
            WHERE j.state IN ('done', 'planned', 'failed') {where}
            ORDER BY j.op_id DESC""",
        [run_id] if run_id is not None else [],
    ).to_pylist()
    if run_id is not None and not catalog.scalar("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]):
        raise PlanError(f"there is no run {run_id}; list runs with `vdc-lake sql \"SELECT * FROM runs\"`")
    for op in ops:
        if op["backup"] is None:
            continue
        root = Path(op["backup_root"] or "/nonexistent").resolve()
        if not Path(op["backup"]).resolve().is_relative_to(root):
            raise PlanError(
                f"refusing to restore op {op['op_id']}: backup path {op['backup']} escapes the backup root {root}"
            )
    return ops


def _restore_one(op: dict[str, Any]) -> tuple[str, str | None]:
    """Returns (outcome, error): outcome is restored | original | failed."""
    src, dst = Path(op["src"]), Path(op["dst"] or op["src"])
    if src.exists() and _verified(src, op["checksum_before"]) and (dst == src or not dst.exists()):
        return "original", None
    if op["backup"] is None:
        return "failed", f"{src}: changed with --no-backup; nothing to restore from"
    backup = Path(op["backup"])
    if not _verified(backup, op["checksum_before"]):
        if src.exists() and _verified(src, op["checksum_before"]):
            if dst != src and dst.exists():
                dst.unlink()
            return "original", None
        return "failed", f"{src}: backup {backup} is missing or does not match the original checksum"
    tmp = src.with_name(src.name + ".vdc-restore")
    src.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(backup, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, src)
    if dst != src and dst.exists():
        dst.unlink()
    return "restored", None


def restore(catalog: Catalog, *, run_id: int | None = None, dry_run: bool = False, quiet: bool = False):
    """Undo one apply run (or every run, newest first) from its verified backups."""
    ops = _restore_ops(catalog, run_id)
    summary = RestoreSummary()
    if dry_run:
        summary.restored = len(ops)
        return summary
    catalog.release()
    outcomes: list[tuple[dict, str]] = []
    with progress_bar(len(ops), "restore", quiet=quiet) as bar:
        for op in ops:
            outcome, error = _restore_one(op)
            outcomes.append((op, outcome))
            if outcome == "restored":
                summary.restored += 1
            elif outcome == "original":
                summary.already_original += 1
            else:
                summary.failed += 1
                summary.errors.append(error)
            bar.update()
    _record_restore(catalog, [(op, o) for op, o in outcomes if o != "failed"])
    return summary


def _record_restore(catalog: Catalog, outcomes: list[tuple[dict, str]]) -> None:
    from vdc_lake.scan import fact_arrays, fact_assignments

    if not outcomes:
        return
    facts = [inspect_header(op["src"]) for op, _ in outcomes]
    columns: dict[str, Any] = {
        "op_id": pa.array([op["op_id"] for op, _ in outcomes], pa.int64()),
        "image_id": pa.array([op["image_id"] for op, _ in outcomes], pa.int64()),
        "src": [op["src"] for op, _ in outcomes],
    }
    columns.update(fact_arrays(facts))
    assignments = fact_assignments("r")
    with catalog.registered("restored_facts", pa.table(columns)), catalog.transaction():
        catalog.execute("UPDATE journal SET state = 'restored', ts = now() FROM restored_facts r "
                    "WHERE journal.op_id = r.op_id")
        # The newest op per image decides the row; bytes changed back, so the version moves on.
        catalog.execute(
            f"""UPDATE images SET {assignments}, present = true, version = images.version + 1,
                       rel_path = substr(r.src, length(images.root) + 2)
                FROM (SELECT * FROM restored_facts QUALIFY row_number() OVER (PARTITION BY image_id ORDER BY op_id) = 1) r
                WHERE images.image_id = r.image_id"""
        )

