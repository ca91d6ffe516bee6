"""The tree formats of an export (symlink, hardlink, copy) and the manifest format's check: each
file is checked against the catalog (gone, not a regular file, changed) and placed inside TO,
never over another file; a copy is verified against the catalog's content hash."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from vdc_lake.effects.export_rows import CATALOG_MTIME, TARGET
from vdc_lake.errors import StageError, disk_full_error
from vdc_lake.fileops.confine import ReadableRoots, is_inside
from vdc_lake.fileops.probe import content_hash, place_new


def in_order(func: Callable[[Any], Any], items: Iterable[Any], pool: ThreadPoolExecutor, window: int) -> Iterator[Any]:
    """Yield func(item) in order from a thread pool, at most `window` in flight (I/O bound work)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(func, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _source_error(row: dict) -> str | None:
    """Why the file of a manifest row cannot be exported as the catalog describes it, or None.

    Gone, not a regular file, or changed: its size or mtime differ from the catalog's (what scan
    compares) and so do its bytes (a file only touched is still the same image)."""
    src = row["path"]
    try:
        st = os.stat(src)
    except FileNotFoundError:
        return f"{src}: the original is gone; run `vdc-lake scan` again"
    except OSError as e:
        return f"{src}: {e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):
        # Only regular files (or links to one) are placed: a link to a folder (a row of an edited
        # catalog naming a folder) would let a later row, in another thread, write through it.
        return not_a_file(src)
    if st.st_size == row["size_bytes"] and st.st_mtime_ns == row.get(CATALOG_MTIME):
        return None
    if row["content_hash"] is None:
        return unverifiable(src)
    try:
        same = content_hash(src) == row["content_hash"]
    except OSError as e:
        return f"{src}: {e.strerror or e}"
    return None if same else f"{src}: changed since the last scan; run `vdc-lake scan` and export again"


def _place(row: dict, dst: Path, fmt: str, to_dir: Path) -> str | None:
    """Link or copy one file to dst (inside to_dir); returns an error text, or None when done (and verified).

    Nothing is written over: a name already taken (on a destination that matches names loosely,
    say) is an error for this file."""
    src = row["path"]
    if fmt != "copy":  # a copy checks the bytes it wrote instead
        error = _source_error(row)
        if error is not None:
            return error
    elif not os.path.isfile(src):
        return _source_error(row)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not is_inside(dst.parent, to_dir):  # checked again once the folders exist
        return f"{src}: refused, {dst} lies outside --to {to_dir}"
    try:
        if fmt == "symlink":
            os.symlink(src, dst)
        elif fmt == "hardlink":
            os.link(src, dst, follow_symlinks=True)
        else:
            return _verified_copy(src, dst, row["content_hash"], row["key"])
    except FileExistsError:
        return _taken(src, dst)
    except OSError as e:
        if e.errno == errno.EXDEV:
            raise StageError(f"cannot hard-link {src} into {dst.parent}: another filesystem; "
                             "use --format symlink or --format copy") from e
        full = disk_full_error(e)
        if full is not None:  # every later file would fail the same way: stop here
            raise full from e
        return f"{src}: {e.strerror or e}"
    return None


def not_a_file(src: str) -> str:
    return f"{src}: not a regular file, so it is not exported (check the catalog's images row)"


def _taken(src: str, dst: Path) -> str:
    return (f"{src}: not exported, {dst} exists already (another image's name, matched ignoring case or "
            "Unicode normalisation by the destination's filesystem)")


def unverifiable(src: str) -> str:
    # Only bytes the catalog vouches for are copied: a row with no hash (say, an edited catalog
    # naming a file it never scanned) cannot make the export carry some other file away.
    return f"{src}: the catalog holds no content hash for it, so a copy cannot be verified; run `vdc-lake scan`"


def _part_name(dst: Path, key: str) -> Path:
    # Short and fixed-length: `.NAME.part` would exceed the 255-byte name limit for a long NAME.
    return dst.with_name(f".vdc-{key}.part")


def _verified_copy(src: str, dst: Path, expected_hash: str | None, key: str) -> str | None:
    if expected_hash is None:
        return unverifiable(src)
    tmp = _part_name(dst, key)
    try:
        shutil.copy2(src, tmp)
        mode = os.stat(tmp).st_mode
        if mode & 0o7000:  # a set-user-ID "image" copied by root would be a root-owned set-user-ID file
            os.chmod(tmp, mode & 0o777)
        written = content_hash(tmp)
        if written != expected_hash:
            tmp.unlink()
            if content_hash(src) != expected_hash:
                return f"{src}: changed since the last scan; run `vdc-lake scan` and export again"
            return f"{src}: the copy does not match the original (hash {written}); check the destination disk"
        place_new(tmp, dst)  # never over a file: the export's names are unique, a loose filesystem may merge two
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half copy (say, on a full disk) is not left in --to
        raise
    return None


def unreadable(row: dict, readable: ReadableRoots) -> str | None:
    """Why the file of a manifest row may not be read into the export (confine.ReadableRoots: a link
    out of every scanned root, say), or None."""
    why = readable.error(row["root"], row["rel_path"])
    return None if why is None else f"{row['path']}: not exported, {why}"


class TreeWriter:
    """Links or copies each image to TO/<its target> (see export_targets). A copy or a hard link
    carries the file's bytes: only a file ReadableRoots allows is placed."""

    def __init__(self, to_dir: Path, fmt: str, readable: ReadableRoots):
        self.to_dir, self.fmt, self.readable = to_dir, fmt, readable

    def write(self, row: dict) -> tuple[str | None, str | None, int]:
        """(export path, error, bytes) for one manifest row; runs in a worker thread."""
        if self.fmt != "symlink" and (refused := unreadable(row, self.readable)) is not None:
            return None, refused, 0
        target = row[TARGET]
        dst = self.to_dir / target
        # Resolved before any folder is made: a symlink on the way (say, a link to a folder that an
        # earlier row of an edited catalog placed) must not lead outside --to. Nothing is replaced.
        if not is_inside(dst.parent, self.to_dir):
            return None, f"{row['path']}: refused, {dst} lies outside --to {self.to_dir}", 0
        if os.path.lexists(dst):
            return None, _taken(row["path"], dst), 0
        error = _place(row, dst, self.fmt, self.to_dir)
        return (None, error, 0) if error else (target, None, row["size_bytes"] or 0)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class SourceChecker:
    """The manifest format: checks each file is still the one the catalog describes; writes nothing."""

    def write(self, row: dict) -> tuple[str | None, str | None, int]:
        error = _source_error(row)
        return (None, error, 0) if error else (None, None, row["size_bytes"] or 0)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass
