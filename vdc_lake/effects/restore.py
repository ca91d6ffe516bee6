"""Restore: undo apply runs from their verified backups, newest first, as a `restore` run (see
apply.py's docstring for what it gives back and what it refuses)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vdc_lake.catalog.connection import Catalog
from vdc_lake.effects.backups import fsync_dir, fsync_file, holds_bytes, make_link, private_files, set_metadata, verified
from vdc_lake.effects.confinement import (backup_path, check_backup_dir, confinement_error, journal_ops,
                                          recorded_backup_root, root_path_problem)
from vdc_lake.effects.leftovers import remove_leftovers_of
from vdc_lake.effects.operation import backup_ok, failure_text, is_own_output
from vdc_lake.effects.restore_journal import RestoreJournal
from vdc_lake.errors import PlanError
from vdc_lake.fileops.confine import relative_in_root, scanned_roots
from vdc_lake.fileops.imageops import RESTORE_SUFFIX, TMP_SUFFIX
from vdc_lake.fileops.probe import place_new
from vdc_lake.progress import progress_bar

USER_COPY_INFIX = ".vdc-user-"


@dataclass
class RestoreSummary:
    """Outcome counts of a restore (or, with dry_run, what it would do)."""

    restored: int = 0
    already_original: int = 0
    no_backup: int = 0      # changed by a --no-backup run: cannot be restored
    conflicts: int = 0      # changed by the user since apply: left alone (restore --force)
    failed: int = 0
    kept_aside: list[str] = field(default_factory=list)  # the user's versions that --force kept
    errors: list[str] = field(default_factory=list)


def _restore_ops(catalog: Catalog, run_id: int | None, backup_dir: str | os.PathLike | None) -> list[dict[str, Any]]:
    """The operations to undo, newest first, each with the backup path to restore from.

    Refuses (PlanError, before any file is touched) an operation whose paths leave the image's
    scanned root, or whose backup is not where apply puts it inside the backup folder: the
    folder given (`backup_dir`, the user's word) or else the run's recorded one, which must lie
    outside every scanned root."""
    if run_id is not None and not catalog.scalar("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]):
        raise PlanError(f"there is no run {run_id}; list runs with `vdc-lake sql \"SELECT * FROM runs\"`")
    where = "j.state IN ('done', 'planned', 'failed')" + (" AND j.run_id = ?" if run_id is not None else "")
    ops = sorted(journal_ops(catalog, where, [run_id] if run_id is not None else []),
                 key=lambda o: o["op_id"], reverse=True)
    roots = scanned_roots(catalog)
    given = check_backup_dir(roots, backup_dir, existing_in=catalog) if backup_dir is not None else None
    checked: dict[str, str] = {}
    for op in ops:
        if op["backup"] is not None and given is not None:
            recorded, op["backup_root"] = op["backup"], str(given)
            rel = relative_in_root(op["src"], op["root"] or "")
            tail = str(backup_path(Path("/"), op["run_id"], op["root"] or "", rel or ""))
            if rel is not None and recorded.endswith(tail):
                op["backup"] = str(backup_path(given, op["run_id"], op["root"], rel))
            else:
                op["backup"] = recorded  # not apply's layout: refused below
        elif op["backup"] is not None:
            op["backup_root"] = recorded_backup_root(catalog, roots, op["backup_root"], op["run_id"], checked)
        refused = confinement_error(op, op["backup_root"])
        if refused:
            raise PlanError(f"refusing to restore {refused}")
    return ops


def _user_changed(op: dict[str, Any], meta: dict[str, Any]) -> list[Path]:
    """Paths where the bytes are not what apply left (the user's later edits, or a new file where
    apply deleted one); an interrupted operation (no checksum_after) counts as apply's own."""
    src, dst = Path(op["src"]), Path(op["dst"] or op["src"])
    changed = []
    if op["action"] == "delete" or dst != src:
        if os.path.lexists(src) and not holds_bytes(src, op["checksum_before"], meta):
            changed.append(src)
    if op["action"] != "delete" and os.path.lexists(dst) and op["checksum_after"] is not None:
        if dst.is_symlink() or not verified(dst, op["checksum_after"]):
            changed.append(dst)
    return changed


def _classify(op: dict[str, Any], force: bool) -> tuple[str, str | None]:
    """What restore would do with op: original | cleanup | untouched | restore | no_backup | conflict |
    failed, and why. `untouched`: a failed operation (it changes nothing: its output is removed
    when it fails) whose file was changed since by a later run or the user; nothing to undo. An
    image whose scanned root is missing fails: restore makes folders below a root, never the root."""
    src, dst = Path(op["src"]), Path(op["dst"] or op["src"])
    meta = (json.loads(op["params"] or "{}").get("file")) or {"link": None}
    if holds_bytes(src, op["checksum_before"], meta):
        if dst == src or not os.path.lexists(dst):
            return "original", None
        if op["state"] != "done":  # an interrupted recompress: its output is left to remove, if it is its own
            return ("cleanup" if is_own_output(op, src, dst) else "original"), None
    if not os.path.isdir(op["root"]):  # never made again: the files would land on the disk below the mount point
        return "failed", (f"{src}: its scanned root {op['root']} is missing (a disk not mounted?); nothing was "
                          "restored there; mount it and run restore again")
    if op["state"] == "failed":
        return "untouched", None  # a failed operation changed nothing: what is there now is another's doing
    if op["backup"] is None:
        return "no_backup", f"{src}: changed with --no-backup; nothing to restore from"
    if not backup_ok(op, meta):
        return "failed", f"{src}: backup {op['backup']} is missing or does not match the original checksum"
    changed = _user_changed(op, meta)
    if changed and not force:
        return "conflict", (f"{', '.join(map(str, changed))}: changed since apply run {op['run_id']}; not restored "
                            "(`vdc-lake restore --force` restores it and keeps your version next to the backup)")
    return "restore", None


def _keep_aside(path: Path, backup: Path, stamp: str) -> Path:
    """Copy the user's version of path next to the backup (the backup folder is outside every root),
    through BACKUP.vdc-tmp (a killed restore's is removed by the next run): the copy under the new
    name is complete, and never written through whatever holds a name (a link would be followed)."""
    aside, n = backup.with_name(f"{path.name}{USER_COPY_INFIX}{stamp}"), 1
    while os.path.lexists(aside):
        aside, n = backup.with_name(f"{path.name}{USER_COPY_INFIX}{stamp}-{n}"), n + 1
    tmp = backup.with_name(backup.name + TMP_SUFFIX)
    tmp.unlink(missing_ok=True)
    try:
        shutil.copy2(path, tmp, follow_symlinks=False)
        if not tmp.is_symlink():
            fsync_file(tmp)
        place_new(tmp, aside)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(aside.parent)
    return aside


def _link_sibling(op: dict[str, Any], meta: dict[str, Any]) -> str | None:
    """A catalogued hard link of the original (same root) that still holds the original bytes."""
    for path in meta.get("hardlinks") or []:
        if root_path_problem(path, op["root"], True) is not None:
            continue
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_dev == meta.get("dev") and verified(Path(path), op["checksum_before"]):
            return path
    return None


def _put_back(op: dict[str, Any], meta: dict[str, Any]) -> None:
    """Make src what it was (the link, a hard link to its sibling, or a copy of the backup with
    the recorded owner, mode and times) through a temp entry + os.replace; remove dst if it moved."""
    src, dst = Path(op["src"]), Path(op["dst"] or op["src"])
    src.parent.mkdir(parents=True, exist_ok=True)
    tmp = src.with_name(src.name + RESTORE_SUFFIX)
    tmp.unlink(missing_ok=True)
    sibling = _link_sibling(op, meta) if meta.get("link") is None else None
    try:
        if meta.get("link") is not None:
            make_link(tmp, meta)
        elif sibling is not None:
            os.link(sibling, tmp)
        else:
            with private_files():
                shutil.copy2(op["backup"], tmp)
            set_metadata(tmp, meta)
            fsync_file(tmp)
        os.replace(tmp, src)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half a copy behind
        raise
    if dst != src and os.path.lexists(dst):
        dst.unlink()
    fsync_dir(src.parent)


def restore(catalog: Catalog, *, run_id: int | None = None, dry_run: bool = False, quiet: bool = False,
            force: bool = False, backup_dir: str | os.PathLike | None = None) -> RestoreSummary:
    """Undo one apply run (or every run, newest first) from its verified backups, as a `restore` run.

    A file the user changed since apply is left alone unless `force` (then the user's version is
    kept next to the backup as NAME.vdc-user-STAMP). `backup_dir` names the backup folder (when
    the catalog's record is not to be trusted, or the folder moved). With dry_run nothing changes
    and the summary says what would happen.

    The work is journaled as it goes (RestoreJournal), so a killed restore is finished by the
    next one, as a killed apply is by the next apply: each operation it put back but had not
    recorded holds the bytes it was planned on, which the next restore finds `original` and records."""
    ops = _restore_ops(catalog, run_id, backup_dir)
    if dry_run:
        summary = RestoreSummary()
        for op in ops:
            outcome, error = _classify(op, force)
            _tally(summary, "original" if outcome == "cleanup" else outcome, error)
        return summary
    params = {"run": run_id, "force": force, "backup_dir_given": os.fspath(backup_dir) if backup_dir else None}
    with catalog.run("restore", params) as restore_run:
        summary = _undo(catalog, ops, force, quiet)
        catalog.finish_run(restore_run, summary=asdict(summary), status="done")
    return summary


def _undo(catalog: Catalog, ops: list[dict[str, Any]], force: bool, quiet: bool) -> RestoreSummary:
    """Put back what ops (newest first, confined by _restore_ops) changed; journal it in batches."""
    summary = RestoreSummary()
    catalog.release()  # readers get in while files are copied; journaling opens the connection again
    remove_leftovers_of(ops)  # temp files a killed or failed apply or restore left next to these files
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    journal = RestoreJournal(catalog)
    with progress_bar(len(ops), "restore", quiet=quiet) as bar:
        for op in ops:
            journal.make_room(op)
            outcome, error = _classify(op, force)
            if outcome == "cleanup":
                Path(op["dst"]).unlink(missing_ok=True)
                outcome = "original"
            elif outcome == "restore":
                outcome, error = _restore_one(op, summary, stamp)
            if outcome in ("restore", "original"):
                journal.add(op)
            _tally(summary, outcome, error)
            bar.update()
    journal.flush()
    return summary


def _restore_one(op: dict[str, Any], summary: RestoreSummary, stamp: str) -> tuple[str, str | None]:
    meta = (json.loads(op["params"] or "{}").get("file")) or {"link": None}
    try:
        for path in _user_changed(op, meta):
            summary.kept_aside.append(str(_keep_aside(path, Path(op["backup"]), stamp)))
        _put_back(op, meta)
    except OSError as e:
        return "failed", failure_text(op, e, "restore")
    return "restore", None


def _tally(summary: RestoreSummary, outcome: str, error: str | None) -> None:
    if outcome == "untouched":
        return
    if outcome == "restore":
        summary.restored += 1
    elif outcome == "original":
        summary.already_original += 1
    elif outcome == "no_backup":
        summary.no_backup += 1
    elif outcome == "conflict":
        summary.conflicts += 1
    else:
        summary.failed += 1
    if error:
        summary.errors.append(error)
