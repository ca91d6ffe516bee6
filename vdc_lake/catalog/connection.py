"""Catalog: one DuckDB file holding every fact and decision, with migrations, runs and a writer lock.

DuckDB itself lets one process open a file read-write and then refuses everyone else, readers
included. So the writer's exclusive right is our own lock file (`CATALOG.lock`, flock + the
holder's PID/host/start), while the DuckDB connection is opened lazily and released between
batches (`Catalog.release()`): a reader can open the file read-only whenever the writer is not
inside a write. Readers retry briefly when they hit a write in progress.

What vdc-lake trusts in a catalog (it may come from someone else): its rows, as data, and nothing
else. Exactly:

- Beside the catalog. The files vdc-lake and DuckDB make next to CATALOG (SIDE_PATHS: .lock, .wal,
  .tmp, .indexes, .staging, .kmeans, .spill, .vectors) are never reached through a symbolic link: every open
  checks them (lstat) and refuses a link, a lock or WAL that is not a regular file and a folder that
  is not a folder (UnsafeCatalogError, naming the path); vdc-lake makes them with O_NOFOLLOW/O_EXCL
  and mkdir, which never follow a link. The catalog path itself may be a link (it is resolved once,
  and the side files live beside the file it names), but it must be a regular file: a FIFO, socket
  or device there is NotACatalogError (DuckDB would block on it).
- No file access. Every connection runs with DuckDB's enable_external_access = false: no
  read_text/read_csv/read_parquet/glob, COPY, ATTACH, INSTALL/LOAD or extension autoloading, so
  nothing stored in the catalog (a view, a macro, a column default) can read or write a file or
  reach the network, except read inside CATALOG.vectors (allowed_directories): the Parquet files
  of the vector sets, which the `embeddings` / `predictions` views read; every registered part is
  checked (a plain part name, no link) before a view names it (catalog.vectors). vdc-lake moves
  its other data through Arrow; DuckDB's own files (the
  catalog, its WAL, the spill folder `temp_directory`) are not external access. The one exception
  is `files=True`, below.
- The package's code. The views and macros vdc-lake queries (sql/views) are the installed
  package's: a writer re-creates them on every open (whatever views_installed says); a reader
  creates on every connection TEMP copies of every macro and of every view whose stored text is
  not exactly what DuckDB stores for the package's (a text comparison against DuckDB's rendering
  of the package's query, expected_views). DuckDB resolves a name in temp before the catalog's own schema, also
  inside the views that read it, so a definition stored in the file under one of those names
  never runs. A stored macro named like one of DuckDB's functions would take precedence over
  that function in every query, ours included, so a catalog holding one is refused; a writer also
  refuses a catalog holding triggers (they would run inside its writes).
- The user's own SQL (`vdc-lake sql`, pipeline `sql` steps) is the user's, so it may read and
  write files (read_csv, COPY ... TO, INSTALL): such a Catalog is opened with files=True, which
  turns file access on only when the catalog holds no view or macro besides vdc-lake's (whose
  names are served by the package's definitions, as above), so that nothing the query reaches by
  name can be stored code. Otherwise the query runs without file access, and a query that needs
  files fails naming the stored views and macros that are in the way (`files_refused`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import socket
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import duckdb
import pyarrow as pa

from vdc_lake import __version__
from vdc_lake.config.loader import bundled_defaults
from vdc_lake.catalog.lock import WriterLock
from vdc_lake.catalog.package_sql import expected_views, package_objects, sql_dir, views_fingerprint
from vdc_lake.catalog.side_files import SIDE_PATHS, file_kind, side_path
from vdc_lake.catalog.vectors import VECTOR_TABLES, allowed_folder, create_vector_views, has_vector_parts, prepare_writer
from vdc_lake.errors import (
    CatalogAccessError,
    CatalogDamagedError,
    CatalogLockedError,
    CatalogNotFoundError,
    ConfigError,
    NotACatalogError,
    UnsafeCatalogError,
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


# File states (file_state) of catalogs whose contents a read-only open of this process checked
# (_check_contents) and found sound: a read-only open of the same unchanged file skips the checks,
# which read nothing but the file (the review app opens the catalog per request). Any write, by
# DuckDB or anything else, changes the state: size, mtime and ctime (which no user can set) of the
# file and of its WAL, and the inode of each (a file moved over it). Only stat: opening and closing
# the file would drop the process's POSIX locks on it, DuckDB's among them.
_VERIFIED_STATES: dict[tuple, None] = {}
VERIFIED_STATES_KEPT = 64


def file_state(path: Path) -> tuple | None:
    """(device, inode, size, mtime_ns, ctime_ns) of the catalog file and of its WAL (None where
    there is none); None when the catalog file cannot be read."""
    state: list[Any] = [str(path)]
    for name in (path, path.with_name(path.name + ".wal")):
        try:
            info = os.stat(name)
        except OSError:
            if name == path:
                return None
            state.append(None)
            continue
        state.append((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns))
    return tuple(state)


def forget_verified() -> None:
    """Check every catalog again on its next read-only open (what a write does to its file state)."""
    _VERIFIED_STATES.clear()


def _remember_verified(state: tuple) -> None:
    _VERIFIED_STATES[state] = None
    while len(_VERIFIED_STATES) > VERIFIED_STATES_KEPT:
        del _VERIFIED_STATES[next(iter(_VERIFIED_STATES))]


def _now() -> dt.datetime:
    return dt.datetime.now()


def _damaged(path: Path, what: str) -> CatalogDamagedError:
    return CatalogDamagedError(f"catalog {path} is damaged: {what} (restore it from a copy)")




class Catalog:
    """One catalog file. Use as a context manager; `con` opens the DuckDB connection on demand."""

    def __init__(self, path: str | os.PathLike, *, read_only: bool = False, create: bool = True,
                 scale: dict[str, Any] | None = None, wait_seconds: float = READER_RETRY_SECONDS,
                 files: bool = False):
        """files: the connection may read and write files, for the user's own SQL only (the `sql`
        command); granted only while the catalog holds no views or macros but vdc-lake's (see the
        module docstring; `files_refused` says why not)."""
        self.path = Path(path).resolve()
        self.read_only = read_only
        self.wait_seconds = wait_seconds  # how long to retry a busy file before CatalogLockedError
        # The effective [scale] config: batch rows, memory budget, DuckDB's memory_limit/temp_directory.
        self.scale = {**bundled_defaults()["scale"], **(scale or {})}
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lock: WriterLock | None = None
        self._made: list[Path] = []  # the files this open created for a new catalog
        self._checked = False  # the first connection checks that this is a sound vdc-lake catalog
        self._files_wanted = files
        self._files = False  # external access granted (files wanted, and no stored code in the way)
        self.files_refused: str | None = None  # why files were wanted but not granted
        if self.path.is_dir():
            raise NotACatalogError(f"{self.path} is a folder, not a catalog file; pass --catalog "
                                   f"{self.path / DEFAULT_CATALOG} (or another file name in it)")
        if not self.path.exists() and (read_only or not create):
            missing = "" if self.path.parent.is_dir() else f" (the folder {self.path.parent} does not exist)"
            raise CatalogNotFoundError(
                f"no catalog at {self.path}{missing}; run `vdc-lake scan ROOT` first or pass --catalog PATH"
            )
        self._check_paths(SIDE_PATHS)
        if not read_only:
            self._check_folder()
            self._lock = WriterLock(self.path)
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
            self._made = made

    def _check_paths(self, suffixes: Sequence[str]) -> None:
        """The catalog is a regular file (or not there yet), and the side paths with these suffixes
        are no links, files as files and folders as folders (checked before DuckDB opens any)."""
        try:
            mode = os.stat(self.path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            raise NotACatalogError(f"{self.path} is a {file_kind(mode)}, not a catalog file; pass the right "
                                   "--catalog, or move it away to start a new catalog there")
        for suffix in suffixes:
            if suffix != ".tmp" or not self.scale["duckdb_temp_directory"]:  # a configured one is the user's
                side_path(self.path, suffix)

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

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None and self._made and self._lock is not None and self._holds_no_images():
            # A first command that failed (a scan of a mistyped folder): no empty catalog stays.
            self._undo_failed_open(self._made)
        self.close()

    def _holds_no_images(self) -> bool:
        try:
            return self.scalar("SELECT count(*) FROM images") == 0
        except Exception:  # whatever went wrong, a catalog that cannot be read is not removed
            return False

    def close(self) -> None:
        """Close the connection and end the writer lock, removing its file (no stale CATALOG.lock)."""
        self.release()
        if self._lock is not None:
            self._lock.remove(made_only=False)
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
            try:
                if not self._checked:
                    # taken while this connection is open: no DuckDB writer can change the file meanwhile
                    state = file_state(self.path) if self.read_only and not self._files_wanted else None
                    if state is None or state not in _VERIFIED_STATES:
                        with self._translated():
                            self._check_contents()
                        if state is not None and file_state(self.path) == state:
                            _remember_verified(state)
                    self._checked = True
                    if self._files_wanted and self.files_refused is None:
                        self._files = True  # reconnect with file access for the user's own SQL
                        self.release()
                        self._con = self._connect()
                if self.read_only:
                    self._create_temp_views()
            except BaseException:
                self.release()
                raise
        return self._con

    def _connect(self) -> duckdb.DuckDBPyConnection:
        self._check_paths((".wal", ".tmp"))  # DuckDB makes and writes these itself
        config = {"temp_directory": self.scale["duckdb_temp_directory"] or str(self.path) + ".tmp"}
        if self.scale["duckdb_memory_limit"]:
            config["memory_limit"] = str(self.scale["duckdb_memory_limit"])
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                return self._confined(duckdb.connect(str(self.path), read_only=self.read_only, config=config))
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

    def _confined(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        """Turn file access off, but for the catalog's vector files (CATALOG.vectors): DuckDB takes
        allowed_directories only while external access is on, and then never again. Nothing runs
        between the connect and these settings. A connection for the user's own SQL keeps access."""
        if self._files:
            return con
        try:
            if con.execute("SELECT current_setting('enable_external_access')").fetchall()[0][0]:
                con.execute("SET allowed_directories = ?", [[allowed_folder(self.path)]]).fetchall()
                con.execute("SET enable_external_access = false").fetchall()
        except BaseException:
            con.close()
            raise
        return con

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
        """Refuse a DuckDB file without vdc-lake's tables, a catalog of a newer schema, one whose
        images rows contradict each other (duplicate ids, two present rows for one path), and one
        holding code vdc-lake would run unawares (_check_stored_code)."""
        self._check_stored_code()
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

    def _check_stored_code(self) -> None:
        """Refuse stored macros that replace a DuckDB function and, for a writer, stored triggers;
        note the views and macros vdc-lake does not define, which keep file access off (files_refused).
        System functions are named in full: a stored macro could take an unqualified name."""
        con = self._con
        database = con.execute("SELECT system.main.current_database()").fetchall()[0][0]
        functions = con.execute("SELECT DISTINCT database_name, function_name FROM system.main.duckdb_functions() "
                                "WHERE database_name = 'system' OR NOT internal").fetchall()
        builtin = {name for db, name in functions if db == "system"}
        rows = sorted(("macro", name, name in builtin) for db, name in functions if db == database)
        rows += con.execute(
            "SELECT 'view', view_name, false FROM system.main.duckdb_views() WHERE database_name = ? "
            "AND NOT internal AND NOT temporary UNION ALL SELECT 'trigger', trigger_name || ' on ' || table_name, "
            "false FROM system.main.duckdb_triggers() WHERE database_name = ? ORDER BY 1, 2",
            [database, database]).fetchall()
        replacing = [name for kind, name, builtin in rows if builtin]
        if replacing:
            raise UnsafeCatalogError(
                f"catalog {self.path} defines the macro {replacing[0]}, which replaces DuckDB's own function of "
                f"that name{f' (and {len(replacing) - 1} more)' if len(replacing) > 1 else ''} in every query, "
                f"vdc-lake's included: the catalog was edited; drop it (in DuckDB: DROP MACRO {replacing[0]}) "
                "or use a catalog you trust")
        triggers = [name for kind, name, _ in rows if kind == "trigger"]
        if triggers and not self.read_only:
            more = f" (and {len(triggers) - 1} more)" if len(triggers) > 1 else ""
            raise UnsafeCatalogError(
                f"catalog {self.path} holds the trigger {triggers[0]}{more}, which vdc-lake does not make and would "
                f"run inside its writes: the catalog was edited; drop it (in DuckDB: DROP TRIGGER {triggers[0]}) or "
                "use a catalog you trust")
        ours = {**package_objects(), **{table: ("VIEW",) for table in VECTOR_TABLES}}
        foreign = [f"{kind} {name}" for kind, name, _ in rows
                   if kind != "trigger" and ours.get(name, ("",))[0] != kind.upper()]
        if foreign and self._files_wanted:
            self.files_refused = (
                f"file access is off for queries on this catalog: it holds {', '.join(foreign[:3])}"
                f"{f' and {len(foreign) - 3} more' if len(foreign) > 3 else ''}, not defined by vdc-lake, which a "
                "query that may read files could run; drop what you do not need (vdc-lake sql --write "
                "\"DROP VIEW name\") to let vdc-lake sql read and write files")

    def _create_temp_views(self) -> None:
        """Give this connection the package's views and macros as TEMP ones, which DuckDB resolves
        before what the catalog stores under those names: every macro (duckdb_functions() does not
        show a macro's parameter defaults, so a stored one cannot be verified), and every view whose
        stored text is not exactly the one DuckDB stores for the package's (expected_views); a TEMP
        view costs the binding of its whole tree. One that cannot be built on this catalog (tables
        of another vdc-lake version, read-only here) becomes one that fails saying why."""
        con = self._con
        if has_vector_parts(con):  # before the package's views, which read them
            with self._translated():
                create_vector_views(con, self.path, temp=True)
        expected = expected_views(con)
        stored = dict(con.execute(
            "SELECT view_name, sql FROM system.main.duckdb_views() WHERE database_name = "
            "system.main.current_database() AND schema_name = 'main' AND NOT internal AND NOT temporary").fetchall())
        self._create_temp([(name, kind, temp) for name, (kind, _, temp) in package_objects().items()
                           if kind == "MACRO" or expected[name] is None or stored.get(name) != expected[name]])

    def _create_temp(self, pending: list[tuple[str, str, str]]) -> None:
        """Run the TEMP statements of (name, kind, statement), in package_objects' dependency order;
        one that cannot be built gets a stand-in that fails saying why."""
        con = self._con
        failed = []
        for name, kind, temp in pending:
            try:
                con.execute(temp).fetchall()
            except duckdb.Error as e:
                failed.append((name, kind, e))
        for name, kind, error in failed:
            why = str(error).splitlines()[0].replace("'", "''")
            con.execute(f"CREATE OR REPLACE TEMP {kind} {name}"
                        f"{'() AS TABLE' if kind == 'MACRO' else ' AS'} SELECT error('{name} cannot be "
                        f"built on this catalog ({why}): a writing command (vdc-lake status, with "
                        "the catalog free and its folder writable) brings it up to date') AS error").fetchall()

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
        from vdc_lake.catalog.settings import seed_settings

        self.migrate()
        prepare_writer(self)  # vector files: orphans removed, old rows moved into files, views made
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
        """(Re)create every sql/views/**/*.sql, each after the views it reads. Records
        the views' fingerprint, so readers can tell a catalog whose views are from another version."""
        self.execute("CREATE TABLE IF NOT EXISTS views_installed (fingerprint VARCHAR, installed_at TIMESTAMP)")
        self._create_views()
        self.execute("DELETE FROM views_installed")
        self.execute("INSERT INTO views_installed VALUES (?, ?)", [views_fingerprint(), _now()])

    def _create_views(self) -> None:
        # A view binds the views it reads as they are stored (a missing one, or one edited to read
        # a file, would fail it), so each is re-created after those it reads: package_objects' order.
        for _, statement, _ in package_objects().values():
            self.execute(statement)

    def _mark_interrupted_runs(self) -> None:
        # We hold the writer lock, so any run still 'running' belongs to a process that died.
        self.execute(
            "UPDATE runs SET status = 'interrupted', finished_at = coalesce(finished_at, ?) WHERE status = 'running'",
            [_now()],
        )

    # -- runs --------------------------------------------------------------------------------
    def begin_run(self, stage: str, params: dict[str, Any]) -> int:
        """Record a running stage; params also get the catalog's decision settings (key 'settings')."""
        from vdc_lake.catalog.settings import decision_settings

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
