"""Typed errors. Library code raises these; only cli.py turns them into click errors."""


class VdcLakeError(Exception):
    """Base class: every message says what the user can do next."""


class CatalogLockedError(VdcLakeError):
    """Another process holds the catalog's writer lock."""


class CatalogNotFoundError(VdcLakeError):
    """The catalog file does not exist (and the command only reads)."""


class ConfigError(VdcLakeError):
    """A configuration file or value is invalid."""


class PlanError(VdcLakeError):
    """An apply or restore request cannot be planned as asked."""


class StageError(VdcLakeError):
    """A stage cannot run with the catalog's current content."""


class NotACatalogError(VdcLakeError):
    """The file is not a vdc-lake catalog (not a DuckDB file, or DuckDB without vdc-lake's tables)."""


class CatalogDamagedError(VdcLakeError):
    """The catalog file is truncated or its rows contradict each other."""


class CatalogAccessError(VdcLakeError):
    """The catalog or its folder cannot be opened or written (permissions, read-only filesystem)."""


class UnsafeCatalogError(VdcLakeError):
    """Something at or in the catalog would make vdc-lake follow a link or run the catalog's own code
    (a symbolic link beside it, a stored macro that replaces a DuckDB function, a stored trigger)."""


class DiskFullError(VdcLakeError):
    """A write failed because its device is full."""


class InvalidNameError(VdcLakeError):
    """A set, score or view name breaks the naming rule."""


class OverrideError(VdcLakeError):
    """An override names images the catalog does not hold, or its CSV file is malformed."""


def disk_full_error(error: BaseException) -> DiskFullError | None:
    """A DiskFullError for an OSError ENOSPC/EDQUOT or a DuckDB "No space left on device"; else None."""
    import errno
    import os
    import re

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        path = error.filename2 or error.filename  # shutil's copies name the destination second
    elif "No space left on device" in str(error):
        found = re.search(r'file "([^"]+)"', str(error))
        path = found.group(1) if found else None
    else:
        return None
    if path is None:
        return DiskFullError("no space left on the device: free space and re-run the command")
    mount = os.path.dirname(os.path.abspath(os.fsdecode(path)))
    while not os.path.ismount(mount) and mount != os.path.dirname(mount):
        mount = os.path.dirname(mount)
    return DiskFullError(f"no space left on {mount} (writing {os.fsdecode(path)}): "
                         "free space there and re-run the command")


class InvalidValueError(ConfigError):
    """An option, config or catalog reference is outside its valid range or set of names."""
