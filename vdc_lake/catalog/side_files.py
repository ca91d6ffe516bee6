"""The files vdc-lake and DuckDB keep beside a catalog (CATALOG.lock, .wal, .tmp, .indexes, .staging, .kmeans,
.spill, .vectors): checked with lstat and made without following a link (see the trust rule in
vdc_lake.catalog.connection)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from vdc_lake.errors import UnsafeCatalogError


# The files and folders made beside CATALOG (CATALOG + suffix), and what each is for. None of
# them may be a symbolic link (see the module docstring).
SIDE_FILES = {".lock": "writer lock", ".wal": "DuckDB write-ahead log"}


SIDE_FOLDERS = {".tmp": "DuckDB spill folder", ".indexes": "ANN index folder", ".staging": "Ray staging folder",
                ".kmeans": "k-means checkpoint folder", ".spill": "vector spill folder",
                ".vectors": "vector files folder"}


SIDE_PATHS = (*SIDE_FILES, *SIDE_FOLDERS)


_KINDS = ((stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"), (stat.S_ISREG, "regular file"))


def file_kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "special file")


def side_path(catalog_path: str | os.PathLike, suffix: str) -> Path:
    """CATALOG + suffix beside the catalog, after refusing a symbolic link there (UnsafeCatalogError)."""
    catalog_path = Path(catalog_path)
    path = catalog_path.with_name(catalog_path.name + suffix)
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # not there (a missing folder is said by the caller)
        return path
    if stat.S_ISLNK(mode):
        raise UnsafeCatalogError(f"{path} is a symbolic link (to {os.readlink(path)}); vdc-lake never writes "
                                 f"through links beside a catalog: remove it (rm {path}) and run the command again")
    want_folder = suffix in SIDE_FOLDERS
    if stat.S_ISDIR(mode) != want_folder or not (want_folder or stat.S_ISREG(mode)):
        what = SIDE_FOLDERS.get(suffix) or SIDE_FILES.get(suffix, "file")
        raise UnsafeCatalogError(f"{path} is a {file_kind(mode)}, where vdc-lake keeps the catalog's {what} "
                                 f"(a {'folder' if want_folder else 'regular file'}): move it away and run the "
                                 "command again")
    return path


def side_folder(catalog_path: str | os.PathLike, suffix: str, *, create: bool = False) -> Path:
    """The folder CATALOG + suffix (a SIDE_FOLDERS suffix), refusing a link or a non-folder there;
    create: make it when missing, with mkdir, which never follows a link (one planted meanwhile
    is refused by the check after it)."""
    path = side_path(catalog_path, suffix)
    if create:
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        side_path(catalog_path, suffix)
    return path
