"""Markers vdc-lake leaves in the folders it writes, so that every scan (of any catalog) leaves
them out: an export's record and running mark, an apply run's backup-folder marker.

Each marker is a small JSON file checked by content, never only by name, and never through a link.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path

RECORD_NAME = "export.json"
# Present from the start of an export until export.json is written: its folder holds an interrupted export.
RUNNING_NAME = ".vdc-export-running"


def _json_object(path: Path, limit: int) -> dict | None:
    """The JSON object in the regular file `path` (never through a link), read up to `limit`
    bytes; None when it is not one."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(limit))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_export_record(record: Path) -> bool:
    """Whether `record` is an export.json export wrote: a regular file holding a JSON object
    that names the tool version, the catalog and the params (scan leaves such a folder out)."""
    data = _json_object(record, 1 << 20)
    return data is not None and {"tool_version", "catalog", "params"} <= data.keys()


# -- backup folders of apply runs ---------------------------------------------------------------------------------

BACKUP_MARKER = "vdc-lake-backups.json"
_BACKUP_KIND = "vdc-lake backup folder"


def is_backup_marker(path: str | os.PathLike) -> bool:
    """Whether `path` is a marker mark_backup_folder wrote: a regular file (not a link) holding a
    JSON object whose kind is a vdc-lake backup folder."""
    data = _json_object(Path(path), 1 << 16)
    return data is not None and data.get("kind") == _BACKUP_KIND


def backup_folder_at_or_above(path: str | os.PathLike) -> Path | None:
    """The folder holding a backup marker that `path` (resolved) is or lies inside, else None."""
    folder = Path(os.path.realpath(path))
    for candidate in (folder, *folder.parents):
        if is_backup_marker(candidate / BACKUP_MARKER):
            return candidate
    return None


def mark_backup_folder(folder: str | os.PathLike) -> None:
    """Write BACKUP_MARKER into the (existing) folder unless a marker is there already (another
    catalog's backups may share the folder). OSError when something else has its name (FileExistsError)
    or the folder cannot be written; the marker is complete or absent, never half written."""
    from vdc_lake import __version__
    from vdc_lake.fileops.probe import place_new

    marker = Path(folder) / BACKUP_MARKER
    if is_backup_marker(marker):
        return
    if os.path.lexists(marker):
        raise FileExistsError(f"{marker} exists and is not a vdc-lake backup marker; move it away")
    record = {"kind": _BACKUP_KIND, "tool_version": __version__,
              "created_at": dt.datetime.now().isoformat(timespec="seconds"),
              "about": "copies of originals that vdc-lake apply changed or deleted (vdc-lake restore puts them "
                       "back); every vdc-lake scan leaves this folder out"}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".vdc-marker-", suffix=".vdc-tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        try:
            place_new(tmp, marker)
        except FileExistsError:
            if not is_backup_marker(marker):  # another apply wrote one just now: fine; anything else is not
                raise FileExistsError(f"{marker} exists and is not a vdc-lake backup marker; move it away") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
