"""Catalog: one DuckDB file holding every fact and decision, with migrations, runs and a writer lock.

DuckDB itself lets one process open a file read-write and then refuses everyone else, readers
included. So the writer's exclusive right is our own lock file (`CATALOG.lock`, flock + the
holder's PID/host/start), while the DuckDB connection is opened lazily and released between
batches (`Catalog.release()`): a reader can open the file read-only whenever the writer is not
inside a write. Readers retry briefly when they hit a write in progress.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import random
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import duckdb
import pyarrow as pa

from vdc_lake import __version__
from vdc_lake.config import _bundled_defaults
from vdc_lake.errors import (
    CatalogAccessError,
    CatalogDamagedError,
    CatalogLockedError,
    CatalogNotFoundError,
    ConfigError,
    NotACatalogError,
    VdcLakeError,
    disk_full_error,
)

DEFAULT_CATALOG = "vdc-lake.duckdb"
READER_RETRY_SECONDS = 30.0
# Up to this many image rows, opening a catalog checks exactly that image ids and paths are
# unique; above it an approximate distinct count (HyperLogLog, ~1% error, 0.1 s per 10^7 rows)
# decides whether to look closer, so opening stays cheap at scale.
EXACT_CHECK_ROWS = 500_000
# DuckDB's texts for a file that is not a database, a damaged one, and a write it may not make.
_NOT_DUCKDB = "not a valid DuckDB database file"
_DAMAGED = ("Could not read enough bytes", "Corrupt database file", "Failed to read database header")
_NO_ACCESS = ("Permission denied", "Read-only file system")


def sql_dir() -> Path:
    """The sql/ folder: inside the installed package, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "schema").is_dir():
            return candidate
    raise FileNotFoundError("vdc-lake's sql/ folder is missing from the installation; reinstall vdc-lake")


def views_fingerprint() -> str:
    """A hash of this vdc-lake's view definitions (sql/views/*.sql, names and text)."""
    digest = hashlib.sha256()
    for path in sorted((sql_dir() / "views").glob("*.sql")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _now() -> dt.datetime:
    return dt.datetime.now()


def _damaged(path: Path, what: str) -> CatalogDamagedError:
    return CatalogDamagedError(f"catalog {path} is damaged: {what} (restore it from a copy)")


def _write_refused(path: Path, error: OSError) -> Exception:
    """The typed error for a failed write next to the catalog: a full disk, or no permission."""
    full = disk_full_error(error)
    if full is not None:
        return full
    return CatalogAccessError(
        f"cannot write to the catalog's folder {path.parent} ({error.strerror or error}): make it writable "
        "for this user or copy the catalog to a writable folder; commands that only read (status, sql, "
        "export) work as they are"
    )


class _WriterLock:
    """An exclusive flock on CATALOG.lock; the file records who holds it."""

    def __init__(self, catalog_path: Path):
        self.path = catalog_path.with_name(catalog_path.name + ".lock")
        self._fd: int | None = None
        self.created = False  # this lock made the file (so a failed open may remove it)

    def _open(self) -> int | None:
        """A descriptor of the lock file (made now, or found); None when a file that was there
        vanished before it could be opened (a failed open removing its own: try again)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            self.created = True
            return fd
        except FileExistsError:
            self.created = False
        try:
            return os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            if os.path.islink(self.path):  # a dangling link: not a lock file that went away
                raise CatalogAccessError(f"the catalog's lock file {self.path} is a link to "
                                         f"{os.readlink(self.path)}, which does not exist; remove the link "
                                         f"(rm {self.path}) and run the command again") from None
            return None

    def acquire(self) -> None:
        for _ in range(100):
            try:
                fd = self._open()
            except OSError as e:
                raise _write_refused(self.path, e) from e
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
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now().isoformat(timespec="seconds")}
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError as e:
            self.remove()  # e.g. a full disk: the file was made, its content could not be written
            raise _write_refused(self.path, OSError(e.errno, e.strerror, str(self.path))) from e

    def _is_current(self, fd: int) -> bool:
        """The locked file is still the one at the lock's path (not unlinked since we opened it)."""
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            return False
        locked = os.fstat(fd)
        return (here.st_dev, here.st_ino) == (locked.st_dev, locked.st_ino)

    def remove(self) -> None:
        """Release, and delete the lock file when this lock created it (a failed open leaves
        nothing behind). Unlinked while still held, so no other process locks a file on its way out."""
        if self._fd is not None and self.created:
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


class Catalog:
    """One catalog file. Use as a context manager; `con` opens the DuckDB connection on demand."""

    def __init__(self, path: str | os.PathLike, *, read_only: bool = False, create: bool = True,
                 scale: dict[str, Any] | None = None, wait_seconds: float = READER_RETRY_SECONDS):
        self.path = Path(path).resolve()
        self.read_only = read_only
        self.wait_seconds = wait_seconds  # how long to retry a busy file before CatalogLockedError
        # The effective [scale] config: batch rows, memory budget, DuckDB's memory_limit/temp_directory.
        self.scale = {**_bundled_defaults()["scale"], **(scale or {})}
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lock: _WriterLock | None = None
        self._checked = False  # the first connection checks that this is a sound vdc-lake catalog
        if self.path.is_dir():
            raise NotACatalogError(f"{self.path} is a folder, not a catalog file; pass --catalog "
                                   f"{self.path / DEFAULT_CATALOG} (or another file name in it)")
        if not self.path.exists() and (read_only or not create):
            missing = "" if self.path.parent.is_dir() else f" (the folder {self.path.parent} does not exist)"
            raise CatalogNotFoundError(
                f"no catalog at {self.path}{missing}; run `vdc-lake scan ROOT` first or pass --catalog PATH"
            )
        if not read_only:
            self._check_folder()
            self._lock = _WriterLock(self.path)
            self._lock.acquire()
            # Under the writer lock, so no other writer can make them meanwhile: what this open
            # would create for a new catalog (an existing catalog's files are never removed).
            wal = self.path.with_name(self.path.name + ".wal")
            made = [] if self.path.exists() else [p for p in (self.path, wal) if not p.exists()]
            try:
                with self._translated():  # a damaged file fails in the migrations' first read
                    self._prepare()
            except BaseException:
                self._undo_failed_open(made)
                raise

    def _check_folder(self) -> None:
        """A new catalog goes into an existing folder: a mistyped --catalog never makes folders."""
        folder = self.path.parent
        if folder.is_dir():
            return
        if folder.exists():
            raise CatalogNotFoundError(f"cannot create catalog {self.path}: {folder} is not a folder; "
                                       "fix the --catalog path")
        raise CatalogNotFoundError(f"cannot create catalog {self.path}: the folder {folder} does not exist; "
                                   f"create it (`mkdir -p {folder}`) or fix the --catalog path")

    def _undo_failed_open(self, made: list[Path]) -> None:
        """Close, and remove what this open created: the lock file and, for a new catalog, the
        database and WAL files DuckDB began (only those that did not exist before)."""
        self.release()
        if self._lock is not None:
            for path in made:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
            self._lock.remove()
            self._lock = None

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.release()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def release(self) -> None:
        """Close the DuckDB connection (keeping the writer lock) so readers can get in."""
        if self._con is not None:
            self._con.close()
            self._con = None

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self._con = self._connect()
            if not self._checked:
                try:
                    with self._translated():
                        self._check_contents()
                except BaseException:
                    self.release()
                    raise
                self._checked = True
        return self._con

    def _connect(self) -> duckdb.DuckDBPyConnection:
        config = {"enable_external_access": "true",
                  "temp_directory": self.scale["duckdb_temp_directory"] or str(self.path) + ".tmp"}
        if self.scale["duckdb_memory_limit"]:
            config["memory_limit"] = str(self.scale["duckdb_memory_limit"])
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=self.read_only, config=config)
            except (duckdb.ParserException, duckdb.InvalidInputException) as e:
                raise ConfigError(f"[scale] duckdb_memory_limit = {config.get('memory_limit')!r} or "
                                  f"duckdb_temp_directory is not valid: {e} (e.g. \"4GB\")") from e
            except duckdb.Error as e:
                # Reader: the writer is inside a write; it releases the file between batches.
                # Writer: a reader has the file open (DuckDB's file lock is shared/exclusive),
                # e.g. `vdc-lake status` while a scan runs; it is gone in a moment.
                # Anything else (not a database, damaged, no permission, full disk) is final.
                if "could not set lock" not in str(e).lower() or time.monotonic() > deadline:
                    raise self._open_error(e) from e
                # Jittered, so a polling reader cannot stay in phase with a writer's batches.
                time.sleep(random.uniform(0.005, 0.05))

    def _open_error(self, error: duckdb.Error) -> Exception:
        """The typed error for a connection DuckDB refused."""
        text = str(error)
        first_line = text.splitlines()[0] if text else type(error).__name__
        if "could not set lock" in text.lower():
            holder = "a writer" if self.read_only else "a read-only connection (close it)"
            return CatalogLockedError(
                f"catalog {self.path} stayed busy for {self.wait_seconds:g} s, held by {holder}: {first_line}"
            )
        if _NOT_DUCKDB in text:
            empty = self.path.is_file() and self.path.stat().st_size == 0
            return NotACatalogError(
                f"{self.path} is not a vdc-lake catalog ({'an empty file' if empty else 'not a DuckDB database file'}); "
                "pass the right --catalog, or move this file away to start a new catalog there"
            )
        if any(marker in text for marker in _DAMAGED):
            return _damaged(self.path, first_line)
        return self._io_error(error) or CatalogAccessError(f"cannot open catalog {self.path}: {first_line}")

    def _io_error(self, error: BaseException) -> Exception | None:
        """A full disk or a refused write/read, as a typed error; None for anything else."""
        full = disk_full_error(error)
        if full is not None:
            return full
        text = str(error)
        if any(marker in text for marker in _NO_ACCESS):
            if self.read_only:
                return CatalogAccessError(f"cannot read catalog {self.path} ({text.splitlines()[0]}): "
                                          "run as a user who may read it, or copy it somewhere readable")
            return CatalogAccessError(
                f"cannot write to catalog {self.path} ({text.splitlines()[0]}): make it and its folder writable "
                "for this user or copy the catalog to a writable folder; commands that only read (status, sql, "
                "export) work as they are")
        return None

    def _check_contents(self) -> None:
        """Refuse a DuckDB file without vdc-lake's tables, a catalog of a newer schema, and one whose
        images rows contradict each other (duplicate ids, two present rows for one path)."""
        tables = [r[0] for r in self._con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() "
            "AND table_schema = 'main' ORDER BY table_name").fetchall()]
        if "schema_migrations" not in tables:
            if tables or self.read_only:
                what = f"a DuckDB database with other tables: {', '.join(tables[:5])}" if tables else "an empty DuckDB database"
                raise NotACatalogError(f"{self.path} is not a vdc-lake catalog ({what}); pass the right --catalog")
            return  # a new catalog: migrations create the tables
        if not self.read_only:
            newest = self._con.execute("SELECT max(version) FROM schema_migrations").fetchall()[0][0] or 0
            known = max(int(p.name.split("_", 1)[0]) for p in (sql_dir() / "schema").glob("*.sql"))
            if newest > known:
                raise CatalogAccessError(f"catalog {self.path} has schema version {newest}, newer than this vdc-lake "
                                         f"knows ({known}); upgrade vdc-lake to write to it")
        if "images" in tables:
            self._check_images()

    def _check_images(self) -> None:
        con = self._con
        n = con.execute("SELECT count(*) FROM images").fetchall()[0][0]
        if n > EXACT_CHECK_ROWS:
            approx = con.execute("SELECT approx_count_distinct(image_id) FROM images").fetchall()[0][0]
            if approx >= 0.95 * n:
                return
        ids, present, paths = con.execute(
            "SELECT count(DISTINCT image_id), count(*) FILTER (WHERE present), "
            "count(DISTINCT (root, rel_path)) FILTER (WHERE present) FROM images").fetchall()[0]
        if ids < n:
            raise _damaged(self.path, f"{n} image rows for {ids} image ids")
        if paths < present:
            raise _damaged(self.path, f"{present} present images for {paths} distinct paths")

    # -- schema ------------------------------------------------------------------------------
    def _prepare(self) -> None:
        from vdc_lake.settings import seed_settings

        self.migrate()
        seed_settings(self)  # before the views: a fresh catalog's decision macros read the settings
        self.install_views()
        self._mark_interrupted_runs()

    def migrate(self) -> list[str]:
        """Apply the sql/schema/NNN_*.sql files not yet recorded; returns the names applied."""
        con = self.con
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER, name VARCHAR, applied_at TIMESTAMP)"
        ).fetchall()
        done = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
        applied = []
        for path in sorted((sql_dir() / "schema").glob("*.sql")):
            version = int(path.name.split("_", 1)[0])
            if version in done:
                continue
            with self.transaction():
                con.execute(path.read_text(encoding="utf-8")).fetchall()
                con.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, path.stem, _now()]).fetchall()
            applied.append(path.stem)
        return applied

    def schema_is_current(self) -> bool:
        """True when every migration of this vdc-lake is applied and its views are installed (a
        catalog written by another version is brought up to date by the next writer)."""
        try:
            applied = {row[0] for row in self.con.execute("SELECT version FROM schema_migrations").fetchall()}
            installed = self.con.execute("SELECT max(fingerprint) FROM views_installed").fetchall()[0][0]
        except duckdb.CatalogException:
            return False
        wanted = {int(path.name.split("_", 1)[0]) for path in (sql_dir() / "schema").glob("*.sql")}
        return wanted <= applied and installed == views_fingerprint()

    def install_views(self) -> None:
        """(Re)create every sql/views/*.sql; a view that reads another is retried after it. Records
        the views' fingerprint, so readers can tell a catalog whose views are from another version."""
        self.execute("CREATE TABLE IF NOT EXISTS views_installed (fingerprint VARCHAR, installed_at TIMESTAMP)")
        self._create_views()
        self.execute("DELETE FROM views_installed")
        self.execute("INSERT INTO views_installed VALUES (?, ?)", [views_fingerprint(), _now()])

    def _create_views(self) -> None:
        pending = sorted((sql_dir() / "views").glob("*.sql"))
        while pending:
            failed = []
            for path in pending:
                try:
                    self.execute(path.read_text(encoding="utf-8"))
                except duckdb.CatalogException:
                    failed.append(path)
            if len(failed) == len(pending):
                self.execute(failed[0].read_text(encoding="utf-8"))  # raises the real error
            pending = failed

    def _mark_interrupted_runs(self) -> None:
        # We hold the writer lock, so any run still 'running' belongs to a process that died.
        self.execute(
            "UPDATE runs SET status = 'interrupted', finished_at = coalesce(finished_at, ?) WHERE status = 'running'",
            [_now()],
        )

    # -- runs --------------------------------------------------------------------------------
    def begin_run(self, stage: str, params: dict[str, Any]) -> int:
        """Record a running stage; params also get the catalog's decision settings (key 'settings')."""
        from vdc_lake.settings import decision_settings

        run_id = self.scalar("SELECT nextval('run_id_seq')")
        if "settings" not in params:
            params = {**params, "settings": decision_settings(self)}
        self.execute(
            "INSERT INTO runs (run_id, stage, params, started_at, status, tool_version, pid, host) "
            "VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
            [run_id, stage, json.dumps(params, default=str), _now(), __version__, os.getpid(), socket.gethostname()],
        )
        return int(run_id)

    def finish_run(self, run_id: int, *, status: str = "done", summary: dict | None = None, error: str | None = None):
        self.execute(
            "UPDATE runs SET status = ?, finished_at = ?, summary = ?, error = ? WHERE run_id = ?",
            [status, _now(), json.dumps(summary or {}, default=str), error, run_id],
        )

    @contextmanager
    def run(self, stage: str, params: dict[str, Any]) -> Iterator[int]:
        """Record a stage invocation; marks it failed (with the error) if the body raises."""
        run_id = self.begin_run(stage, params)
        try:
            yield run_id
        except BaseException as e:
            try:
                self.finish_run(run_id, status="failed", error=f"{type(e).__name__}: {e}")
            except (duckdb.Error, VdcLakeError):
                pass  # e.g. the disk is full: the next writer marks this run interrupted
            raise

    # -- I/O helpers -------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self.con
        con.execute("BEGIN TRANSACTION").fetchall()
        try:
            yield con
        except BaseException:
            try:
                con.execute("ROLLBACK").fetchall()
            except duckdb.Error:
                pass  # the connection is gone (a full disk invalidates it); the first error says why
            raise
        with self._translated():
            con.execute("COMMIT").fetchall()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Turn DuckDB's full-disk and damaged-file errors into typed ones; others pass unchanged."""
        try:
            yield
        except duckdb.Error as e:
            text = str(e)
            if any(marker in text for marker in _DAMAGED):
                raise _damaged(self.path, text.splitlines()[0]) from e
            full = disk_full_error(e)
            if full is None:
                raise
            raise full from e

    def execute(self, sql: str, params: Sequence[Any] | dict | None = None) -> list[tuple]:
        """Run a statement to completion (DuckDB 2 wants every result consumed); returns its rows."""
        with self._translated():
            return self.con.execute(sql, params).fetchall()

    def rows(self, sql: str, params: Sequence[Any] | dict | None = None) -> list[tuple]:
        with self._translated():
            return self.con.execute(sql, params).fetchall()

    def scalar(self, sql: str, params: Sequence[Any] | dict | None = None) -> Any:
        with self._translated():
            rows = self.con.execute(sql, params).fetchall()
        return rows[0][0] if rows else None

    def arrow(self, sql: str, params: Sequence[Any] | dict | None = None) -> pa.Table:
        with self._translated():
            return self.con.sql(sql, params=params).to_arrow_table()

    def insert_arrow(self, table_name: str, data: pa.Table) -> int:
        """Bulk-insert an Arrow table by column name; returns the row count."""
        if data.num_rows == 0:
            return 0
        view = f"_arrow_in_{os.getpid()}"
        self.con.register(view, data)
        try:
            self.execute(f"INSERT INTO {table_name} BY NAME SELECT * FROM {view}")
        finally:
            self.con.unregister(view)
        return data.num_rows

    @contextmanager
    def registered(self, name: str, data: pa.Table) -> Iterator[str]:
        """Expose an Arrow table to SQL under `name` for the duration of the block."""
        self.con.register(name, data)
        try:
            yield name
        finally:
            self.con.unregister(name)

    def next_ids(self, sequence: str, n: int) -> Any:
        """n fresh values of a sequence, as a numpy array (one round trip)."""
        import numpy as np

        if n == 0:
            return np.zeros(0, dtype=np.int64)
        table = self.arrow(f"SELECT nextval('{sequence}') AS id FROM range(?)", [n])
        return table.column("id").to_numpy()
