"""The writer lock: an exclusive flock on CATALOG.lock, opened without following a link; the
file records who holds it (PID, host, start)."""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

from vdc_lake.catalog.side_files import side_path
from vdc_lake.errors import CatalogAccessError, CatalogLockedError, disk_full_error


def write_refused(path: Path, error: OSError) -> Exception:
    """The typed error for a failed write next to the catalog: a full disk, or no permission."""
    full = disk_full_error(error)
    if full is not None:
        return full
    return CatalogAccessError(
        f"cannot write to the catalog's folder {path.parent} ({error.strerror or error}): make it writable "
        "for this user or copy the catalog to a writable folder; commands that only read (status, sql, "
        "export) work as they are"
    )


class WriterLock:
    """An exclusive flock on CATALOG.lock; the file records who holds it."""

    def __init__(self, catalog_path: Path):
        self.catalog_path = catalog_path
        self.path = catalog_path.with_name(catalog_path.name + ".lock")
        self._fd: int | None = None
        self.created = False  # this lock made the file (so a failed open may remove it)

    def _open(self) -> int | None:
        """A descriptor of the lock file (made now, or found); None when a file that was there
        vanished before it could be opened (a failed open removing its own: try again). Never
        through a link (O_EXCL, O_NOFOLLOW), and never blocking on a FIFO planted there."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644)
            self.created = True
            return fd
        except FileExistsError:
            self.created = False
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:  # a link (O_NOFOLLOW): say so, as every open does
                side_path(self.catalog_path, ".lock")
            raise
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            side_path(self.catalog_path, ".lock")  # raises: not a regular file
            return None  # it was replaced meanwhile: open again
        return fd

    def acquire(self) -> None:
        for _ in range(100):
            try:
                fd = self._open()
            except OSError as e:
                raise write_refused(self.path, e) from e
            if fd is None:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read_holder(fd)
                os.close(fd)
                raise CatalogLockedError(
                    f"catalog {self.path.with_suffix('')} is in use by PID {holder.get('pid', '?')} "
                    f"on {holder.get('host', '?')} since {holder.get('since', '?')}; "
                    "wait for that command to finish (or stop it), or open the catalog read-only"
                ) from None
            if self._is_current(fd):
                break
            os.close(fd)  # a failed open removed the file we locked: lock the one at the path now
        else:
            raise CatalogLockedError(f"catalog {self.path.with_suffix('')}: its lock file {self.path} kept "
                                     "changing while this command tried to lock it; run the command again")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": dt.datetime.now().isoformat(timespec="seconds")}
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError as e:
            self.remove()  # e.g. a full disk: the file was made, its content could not be written
            raise write_refused(self.path, OSError(e.errno, e.strerror, str(self.path))) from e

    def _is_current(self, fd: int) -> bool:
        """The locked file is still the one at the lock's path (not unlinked since we opened it)."""
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            return False
        locked = os.fstat(fd)
        return (here.st_dev, here.st_ino) == (locked.st_dev, locked.st_ino)

    def remove(self, *, made_only: bool = True) -> None:
        """Release, and delete the lock file: only when this lock created it (made_only: a failed
        open leaves nothing behind, and a file that was there before stays), or whenever it is
        still the file this lock holds (a writer closing: no stale CATALOG.lock stays). Unlinked
        while still held, so a process that opened it meanwhile finds it gone once it gets the
        flock (acquire checks the locked file is still the one at the path) and makes a new one."""
        if self._fd is not None and (self.created or not made_only) and self._is_current(self._fd):
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        self.release()

    @staticmethod
    def _read_holder(fd: int) -> dict[str, Any]:
        try:
            return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (ValueError, OSError):
            return {}

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
