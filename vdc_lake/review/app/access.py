"""The catalog, opened per request (read-only for pages, the writer for actions), so CLI commands
run between requests; and which command holds the writer lock while one does."""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from vdc_lake.catalog.connection import Catalog
from vdc_lake.errors import CatalogLockedError

WAIT_STEP = 0.1  # seconds between tries for the writer lock
# One catalog connection at a time in this process: DuckDB shares one database instance between the
# connections of a process to a file, and a second open while one is in use fails on its settings.
ONE_AT_A_TIME = threading.Lock()


def lock_holder(catalog_path: Path) -> str | None:
    """'`vdc-lake dedup report --set builtin` (PID 123, since 2026-12-06T10:00:00)' when another
    live process holds the catalog's writer lock, else None. Read from CATALOG.lock (a writer
    removes it when it closes) and the holder's command line; never locks anything itself."""
    path = catalog_path.with_name(catalog_path.name + ".lock")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        holder = json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    pid = holder.get("pid") if isinstance(holder, dict) else None
    if not isinstance(pid, int) or pid == os.getpid() or not _alive(pid):
        return None
    return f"`{_command_line(pid)}` (PID {pid}, since {holder.get('since', '?')})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _command_line(pid: int) -> str:
    """The holder's command as the user typed it (vdc-lake ARGS), or 'another command'."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "another command"
    args = [a for a in args if a]
    for i, arg in enumerate(args):
        if os.path.basename(arg) in ("vdc-lake", "vdc_lake") or arg == "vdc_lake.cli":
            return " ".join(["vdc-lake", *args[i + 1:]])
    return " ".join(args) or "another command"


def catalog_state(catalog_path: Path) -> tuple:
    """What changes whenever a command writes the catalog: size and mtime of the file and its WAL.
    A page computed at one state is the same page while the state stays."""
    state = []
    for path in (catalog_path, catalog_path.with_name(catalog_path.name + ".wal")):
        try:
            info = os.stat(path)
            state.append((info.st_size, info.st_mtime_ns, info.st_ino))
        except OSError:
            state.append(None)
    return tuple(state)


@contextmanager
def reading(catalog_path: Path, scale: dict, wait: float) -> Iterator[Catalog]:
    """The catalog opened read-only, waiting up to `wait` seconds while a writer is inside a write."""
    with ONE_AT_A_TIME, Catalog(catalog_path, read_only=True, scale=scale, wait_seconds=wait) as catalog:
        yield catalog


@contextmanager
def writing(catalog_path: Path, scale: dict, wait: float) -> Iterator[Catalog]:
    """The catalog opened for writing, waiting up to `wait` seconds for another command's lock;
    then CatalogLockedError naming that command."""
    with ONE_AT_A_TIME:
        with _writer(catalog_path, scale, wait) as catalog:
            yield catalog


@contextmanager
def _writer(catalog_path: Path, scale: dict, wait: float) -> Iterator[Catalog]:
    deadline = time.monotonic() + wait
    while True:
        try:
            catalog = Catalog(catalog_path, create=False, scale=scale)
            break
        except CatalogLockedError as e:
            if time.monotonic() >= deadline:
                holder = lock_holder(catalog_path)
                raise CatalogLockedError(
                    f"nothing was written: the catalog is in use by {holder or 'another command'} and stayed "
                    f"locked for {wait:g} s; try again when it has finished") from e
            time.sleep(WAIT_STEP)
    with catalog:
        yield catalog
