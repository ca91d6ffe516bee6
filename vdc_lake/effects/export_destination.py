"""Where an export writes: the destination's checks (never a scanned root, the catalog or a
backup folder, nor a folder another export is writing) and its overwrite rules (an earlier,
finished export only with --overwrite; an interrupted one always), and the running mark."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

from vdc_lake.catalog.connection import Catalog
from vdc_lake.errors import StageError
from vdc_lake.fileops.confine import recorded_backup_dirs, root_overlap, scanned_roots
from vdc_lake.fileops.markers import RECORD_NAME, RUNNING_NAME, is_export_record


def prepare_destination(catalog: Catalog, to_dir: Path, overwrite: bool, params: dict) -> tuple[str | None, int]:
    """Create `to_dir`, or empty it (with `overwrite`, or when it holds an interrupted export), and
    mark it as holding a running export; never a folder that holds catalogued images, lies inside a
    scanned root (the next scan would register the exports) or contains one, or holds the catalog or
    a backup folder, nor one another export is writing. Returns (a note when an interrupted export
    was replaced, the descriptor that holds the running mark's lock: close it when done)."""
    if to_dir.exists() and not to_dir.is_dir():
        raise StageError(f"export destination {to_dir} is a file; pass a folder")
    prefix = str(to_dir).rstrip("/") + "/"
    inside = catalog.scalar(
        "SELECT path FROM image_files WHERE starts_with(path, ?) OR starts_with(root || '/', ?) LIMIT 1",
        [prefix, prefix],
    )
    if inside is not None:
        raise StageError(f"export destination {to_dir} holds catalogued images (e.g. {inside}); "
                         "choose a folder outside every scanned root")
    overlap = root_overlap(scanned_roots(catalog), to_dir)
    if overlap is not None:
        relation, root, real = overlap
        if relation == "inside":
            raise StageError(f"export destination {to_dir} lies inside the scanned root {root}: the next scan would "
                             f"register the exported files as images; choose a folder outside every scanned root "
                             f"(e.g. {real.parent / (real.name + '-export')})")
        raise StageError(f"export destination {to_dir} contains the scanned root {root}; choose a folder "
                         "outside every scanned root")
    _check_catalog_and_backups(catalog, to_dir)
    note = None
    if to_dir.is_dir() and any(to_dir.iterdir()):
        holder = _running_export(to_dir)
        if holder is not None:
            raise StageError(f"export destination {to_dir} is being written by another export (PID {holder}); "
                             "wait for it to finish or choose another folder")
        interrupted = _is_interrupted(to_dir)
        if not interrupted and not _earlier_export(to_dir):
            example = sorted(e.name for e in to_dir.iterdir())[0]
            raise StageError(f"export destination {to_dir} is not empty (e.g. {example}) and holds no earlier "
                             f"export ({RECORD_NAME}); choose an empty folder (--overwrite replaces only an "
                             "earlier export, never other files)")
        if not overwrite and not interrupted:
            raise StageError(f"export destination {to_dir} holds an earlier export; choose an empty folder "
                             "or pass --overwrite to replace it")
        if interrupted:
            note = (f"{to_dir} held an export that was interrupted (no {RECORD_NAME}); "
                    "it was removed and the export started again")
        lock = _mark_running(to_dir, params)  # from here on, an interruption leaves a folder the next export empties
        _empty_folder(to_dir, keep=RUNNING_NAME)
    else:
        to_dir.mkdir(parents=True, exist_ok=True)
        lock = _mark_running(to_dir, params)
    return note, lock


def _earlier_export(to_dir: Path) -> bool:
    """Whether to_dir holds a finished vdc-lake export (is_export_record of its export.json)."""
    return is_export_record(to_dir / RECORD_NAME)


def _is_interrupted(to_dir: Path) -> bool:
    """Whether to_dir holds an export that started and never wrote export.json."""
    marker = to_dir / RUNNING_NAME
    return marker.is_file() and not marker.is_symlink() and not os.path.lexists(to_dir / RECORD_NAME)


def _running_export(to_dir: Path) -> str | None:
    """The PID of the export writing to_dir now (it holds a lock on the running mark), else None."""
    marker = to_dir / RUNNING_NAME
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        fd = os.open(marker, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it: that export is over (finished or killed)
    except BlockingIOError:
        try:
            return str(json.loads(os.read(fd, 65536)).get("pid", "?"))
        except (ValueError, AttributeError, OSError):
            return "?"
    finally:
        os.close(fd)


def _mark_running(to_dir: Path, params: dict) -> int:
    """Write the running mark and lock it for this export's lifetime (the lock goes with the process,
    so a killed export leaves a mark nobody holds); returns the locked descriptor."""
    marker = to_dir / RUNNING_NAME
    if os.path.lexists(marker):
        _remove_entry(marker)  # an interrupted export's (checked unlocked above)
    record = {"pid": os.getpid(), "started_at": dt.datetime.now().isoformat(timespec="seconds"), "params": params}
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise StageError(f"export destination {to_dir} is being written by another export that started just now; "
                         "wait for it to finish or choose another folder") from None
    except OSError as e:  # the first file written: name the folder the user gave, not the hidden file
        raise OSError(e.errno, e.strerror, str(to_dir)) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, (json.dumps(record, indent=1) + "\n").encode())
        os.fsync(fd)
        # the record of an earlier, finished export goes first: a folder is never both running and finished
        if os.path.lexists(to_dir / RECORD_NAME):
            _remove_entry(to_dir / RECORD_NAME)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_entry(path: Path) -> None:
    """Remove a file, a link (never followed) or a folder tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _empty_folder(to_dir: Path, keep: str) -> None:
    for entry in to_dir.iterdir():
        if entry.name != keep:
            _remove_entry(entry)


def _check_catalog_and_backups(catalog: Catalog, to_dir: Path) -> None:
    """Refuse a destination that holds the catalog (its folder would be emptied with it) or lies
    inside or around a backup folder of an apply run (restore needs every backup)."""
    catalog_file = Path(os.path.realpath(catalog.path))
    if catalog_file.is_relative_to(to_dir):
        raise StageError(f"export destination {to_dir} holds the catalog {catalog.path}; choose a folder that "
                         f"does not (e.g. {to_dir / 'export'})")
    overlap = root_overlap(sorted(recorded_backup_dirs(catalog)), to_dir)  # the check of a folder against roots
    if overlap is not None:
        _, backup, real = overlap
        relation = "contains" if Path(backup).is_relative_to(to_dir) or real.is_relative_to(to_dir) else "lies inside"
        raise StageError(f"export destination {to_dir} {relation} the backup folder {backup} of an apply "
                         "run (restore needs every backup there); choose a folder apart from it")


def check_one_filesystem(roots: Iterable[str], to_dir: Path) -> None:
    """Refuse a hard-link export across filesystems before anything is written (every link would fail)."""
    existing = to_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    device = os.stat(existing).st_dev
    for root in roots:
        try:
            other = os.stat(root).st_dev
        except OSError:
            continue  # its files are reported as gone, one by one
        if other != device:
            raise StageError(f"cannot hard-link the files of {root} into {to_dir}: another filesystem; "
                             "use --format symlink or --format copy, or a destination on the same filesystem")


def ignores_case(folder: Path) -> bool:
    """Whether names in `folder` are matched ignoring case (a macOS, Windows or FAT/exFAT volume)."""
    probe = folder / ".vdc-case-Probe"
    fd = os.open(probe, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    try:
        return os.path.lexists(folder / ".vdc-case-probe")
    finally:
        probe.unlink()
