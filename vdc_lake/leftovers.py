"""Temp files an interrupted apply or restore left behind (a kill, a full disk), removed on the next run.

apply writes BACKUP.vdc-tmp before renaming a backup into place and .NAME.vdc-tmp next to a
file it rewrites; restore writes NAME.vdc-restore next to the file it puts back. Each is renamed
over its target when complete, so one that is still there is garbage. The journal names every
file an operation touched, so the candidates are found without walking the trees, and only a
regular file inside the operation's scanned root (or its backup folder) is removed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Iterable

from vdc_lake.catalog import Catalog
from vdc_lake.confine import is_inside
from vdc_lake.imageops import RESTORE_SUFFIX, TMP_SUFFIX

# Operations that may have stopped half-way: a killed apply leaves them planned, a failed write failed.
UNFINISHED_STATES = ("planned", "failed")


def leftover_candidates(path: str | os.PathLike) -> list[Path]:
    """The temp-file names apply and restore use for `path`."""
    p = Path(path)
    return [p.with_name(p.name + TMP_SUFFIX), p.with_name("." + p.name + TMP_SUFFIX),
            p.with_name(p.name + RESTORE_SUFFIX)]


def _removable(candidate: Path, folder: str | None) -> bool:
    if not folder or not is_inside(candidate.parent, folder):
        return False
    try:
        return stat.S_ISREG(os.lstat(candidate).st_mode)
    except OSError:
        return False


def remove_leftovers_of(ops: Iterable[dict[str, Any]]) -> list[str]:
    """Remove the leftovers of journal rows (src, dst, backup, plus `root`: the image's scanned
    root and `backup_root`: the run's backup folder); returns the paths removed."""
    removed = []
    for op in ops:
        places = [(op.get("src"), op.get("root")), (op.get("dst"), op.get("root")),
                  (op.get("backup"), op.get("backup_root"))]
        for path, folder in places:
            if not path:
                continue
            for candidate in leftover_candidates(path):
                if _removable(candidate, folder):
                    try:
                        candidate.unlink()
                    except OSError:  # gone, or a folder made read-only since: harmless garbage
                        continue     # (scan skips it) that must not stop an apply or a restore
                    removed.append(str(candidate))
    return removed


def remove_leftovers(catalog: Catalog) -> list[str]:
    """Remove what unfinished operations (planned or failed) left; returns the paths removed.

    Call it at the start of a run that changes files (apply, resume); restore passes its own
    operations to remove_leftovers_of, since a killed restore leaves its rows `done`.
    """
    ops = catalog.arrow(
        """SELECT j.src, j.dst, j.backup, i.root, json_extract_string(r.params, '$.backup_dir') AS backup_root
           FROM journal j JOIN runs r USING (run_id)
           LEFT JOIN (SELECT image_id, any_value(root) AS root FROM images GROUP BY image_id) i USING (image_id)
           WHERE j.state IN (SELECT unnest(?))""",
        [list(UNFINISHED_STATES)],
    ).to_pylist()
    return remove_leftovers_of(ops)
