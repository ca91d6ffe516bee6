"""Temp files an interrupted apply or restore left behind (a kill, a full disk), removed on the next run.

apply writes BACKUP.vdc-tmp before renaming a backup into place (restore --force writes the
user's version aside through it too) and .NAME.vdc-tmp next to a file it rewrites or a new name
it writes; restore writes NAME.vdc-restore next to the file it puts back. Each is renamed over
its target when complete, so one that is still there is garbage. The journal names every file an
operation touched, so the candidates are found without walking the trees: exactly those names,
each a regular file inside the operation's scanned root (or its backup folder).

A journal row may have been edited: the caller passes only operations that passed the same
confinement checks the operation itself gets (confinement.confinement_error), so the clean-up never
touches a file the operation would be refused for.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Iterable

from vdc_lake.fileops.confine import is_inside
from vdc_lake.fileops.imageops import RESTORE_SUFFIX, TMP_SUFFIX

# Operations that may have stopped half-way: a killed apply leaves them planned, a failed write failed.
UNFINISHED_STATES = ("planned", "failed")


def leftover_candidates(op: dict[str, Any]) -> list[tuple[Path, str | None]]:
    """(temp file, the folder it must lie in) for each temp name apply and restore use for the
    journal row op: .SRC.vdc-tmp and SRC.vdc-restore in its root, .DST.vdc-tmp (a new name) in its
    root, BACKUP.vdc-tmp in its backup folder."""
    out: list[tuple[Path, str | None]] = []
    if op.get("src"):
        src = Path(op["src"])
        out += [(src.with_name("." + src.name + TMP_SUFFIX), op.get("root")),
                (src.with_name(src.name + RESTORE_SUFFIX), op.get("root"))]
    if op.get("dst") and op["dst"] != op.get("src"):
        dst = Path(op["dst"])
        out.append((dst.with_name("." + dst.name + TMP_SUFFIX), op.get("root")))
    if op.get("backup"):
        backup = Path(op["backup"])
        out.append((backup.with_name(backup.name + TMP_SUFFIX), op.get("backup_root")))
    return out


def _removable(candidate: Path, folder: str | None) -> bool:
    if not folder or not is_inside(candidate.parent, folder):
        return False
    try:
        return stat.S_ISREG(os.lstat(candidate).st_mode)
    except OSError:
        return False


def remove_leftovers_of(ops: Iterable[dict[str, Any]]) -> list[str]:
    """Remove the leftovers of journal rows (src, dst, backup, plus `root`: the image's scanned
    root and `backup_root`: the run's checked backup folder); returns the paths removed. Pass only
    rows that passed their operation's confinement checks (see the module's docstring)."""
    removed = []
    for op in ops:
        for candidate, folder in leftover_candidates(op):
            if _removable(candidate, folder):
                try:
                    candidate.unlink()
                except OSError:  # gone, or a folder made read-only since: harmless garbage
                    continue     # (scan skips it) that must not stop an apply or a restore
                removed.append(str(candidate))
    return removed
