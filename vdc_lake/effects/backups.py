"""What a file was, and its verified copy: the metadata restore gives back (link, owner, mode,
times, hard links), the checks that a path still holds those bytes, and the backup apply makes
before it changes a file (temp file, fsync, rename, verify)."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from vdc_lake.fileops.probe import content_hash


def file_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """What restore needs to give back besides the bytes: the symlink target (`link`, None for a
    regular file) with the link's own times (link_atime_ns, link_mtime_ns), and mode, uid, gid,
    atime_ns, mtime_ns, dev, ino, nlink (of what a link points to; absent for a broken link)."""
    meta: dict[str, Any] = {"link": None}
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            meta.update(link=os.readlink(path), link_atime_ns=st.st_atime_ns, link_mtime_ns=st.st_mtime_ns)
            st = os.stat(path)
    except OSError:
        return meta
    meta.update(mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid, atime_ns=st.st_atime_ns,
                mtime_ns=st.st_mtime_ns, dev=st.st_dev, ino=st.st_ino, nlink=st.st_nlink)
    return meta


def set_metadata(path: Path, meta: dict[str, Any]) -> None:
    """Give a regular file the recorded owner, group, mode and times, as far as the OS allows
    (chown needs root or the same owner; an EPERM leaves the owner as it is)."""
    if "mode" not in meta or os.path.islink(path):  # never through a link: its target is not ours
        return
    with contextlib.suppress(OSError):
        os.chown(path, meta["uid"], meta["gid"])
    with contextlib.suppress(OSError):  # after chown, which may clear set-id bits
        os.chmod(path, meta["mode"])
    with contextlib.suppress(OSError):
        os.utime(path, ns=(meta["atime_ns"], meta["mtime_ns"]))


def make_link(path: Path, meta: dict[str, Any]) -> None:
    """Make the symlink meta records at path, with the link's own recorded times (journals written
    before they were recorded give none: the link gets the current time)."""
    os.symlink(meta["link"], path)
    if "link_mtime_ns" in meta:
        with contextlib.suppress(OSError, NotImplementedError):  # a platform without lutimes
            os.utime(path, ns=(meta["link_atime_ns"], meta["link_mtime_ns"]), follow_symlinks=False)


@contextlib.contextmanager
def private_files():
    """New files (temp outputs) are readable by their owner only until their mode is set."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def current_checksum(path: Path) -> str | None:
    """Checksum of what path holds now (through a symlink); None for a broken symlink.
    Raises OSError when it cannot be read, ValueError for something that is not a regular file."""
    if path.is_symlink() and not path.exists():
        return None
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path} is not a regular file")
    return content_hash(path)


def holds_bytes(path: Path, checksum: str | None, meta: dict[str, Any]) -> bool:
    """Whether path is what the journal says it was: the same symlink, or a regular file with checksum."""
    try:
        if meta.get("link") is not None:
            return path.is_symlink() and os.readlink(path) == meta["link"]
        return not path.is_symlink() and current_checksum(path) == checksum
    except (OSError, ValueError):
        return False


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a read-only copy (mode 0444) can be fsynced this way too
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verified(path: Path, checksum: str) -> bool:
    try:
        return content_hash(path) == checksum
    except OSError:
        return False


def make_backup(src: Path, backup: Path, checksum: str | None, meta: dict[str, Any] | None = None) -> None:
    """Copy src to backup (temp + fsync + rename) and verify the copy: the same bytes, owner,
    mode and times, or for a symlink the link itself (its target is not copied)."""
    meta = meta or {"link": None}
    backup.parent.mkdir(parents=True, exist_ok=True)
    tmp = backup.with_name(backup.name + ".vdc-tmp")
    tmp.unlink(missing_ok=True)
    try:
        if meta.get("link") is not None:
            make_link(tmp, meta)
        else:
            shutil.copy2(src, tmp)
            set_metadata(tmp, meta)
            fsync_file(tmp)
        os.replace(tmp, backup)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half a copy behind
        raise
    fsync_dir(backup.parent)
    if not holds_bytes(backup, checksum, meta):
        raise OSError(f"backup {backup} does not match the original's checksum")
