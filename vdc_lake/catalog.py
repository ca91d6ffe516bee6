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
from vdc_lake.errors import CatalogLockedError, CatalogNotFoundError, ConfigError

DEFAULT_CATALOG = "vdc-lake.duckdb"
READER_RETRY_SECONDS = 30.0


def sql_dir() -> Path:
    """The sql/ folder: inside the installed package, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "schema").is_dir():
            return candidate
    raise FileNotFoundError("vdc-lake's sql/ folder is missing from the installation; reinstall vdc-lake")


def _now() -> dt.datetime:
    return dt.datetime.now()


class _WriterLock:
    """An exclusive flock on CATALOG.lock; the file records who holds it."""

    def __init__(self, catalog_path: Path):
        self.path = catalog_path.with_name(catalog_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

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
                 wait_seconds: float = READER_RETRY_SECONDS, scale: dict[str, Any] | None = None):
        self.path = Path(path).resolve()
        self.read_only = read_only
        # The effective [scale] config: batch rows, memory budget, DuckDB's memory_limit/temp_directory.
        self.scale = {**_bundled_defaults()["scale"], **(scale or {})}
        self.wait_seconds = wait_seconds  # how long to retry a busy file before CatalogLockedError
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lock: _WriterLock | None = None
        if not self.path.exists() and (read_only or not create):
            raise CatalogNotFoundError(
                f"no catalog at {self.path}; run `vdc-lake scan ROOT` first or pass --catalog PATH"
            )
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _WriterLock(self.path)
            self._lock.acquire()
            try:
                self._prepare()
            except BaseException:
                self.close()
                raise

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
            except duckdb.IOException as e:
                # Reader: the writer is inside a write; it releases the file between batches.
                # Writer: a reader has the file open (DuckDB's file lock is shared/exclusive),
                # e.g. `vdc-lake status` while a scan runs; it is gone in a moment.
                if "lock" not in str(e).lower() or time.monotonic() > deadline:
                    holder = "a writer" if self.read_only else "a read-only connection (close it)"
                    raise CatalogLockedError(
                        f"catalog {self.path} stayed busy for {self.wait_seconds:.0f} s, held by {holder}: {e}"
                    ) from e
                # Jittered, so a polling reader cannot stay in phase with a writer's batches.
                time.sleep(random.uniform(0.005, 0.05))

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

    def install_views(self) -> None:
        """(Re)create every sql/views/*.sql; a view that reads another is retried after it."""
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
            self.finish_run(run_id, status="failed", error=f"{type(e).__name__}: {e}")
            raise

    # -- I/O helpers -------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self.con
        con.execute("BEGIN TRANSACTION").fetchall()
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK").fetchall()
            raise
        con.execute("COMMIT").fetchall()

    def execute(self, sql: str, params: Sequence[Any] | dict | None = None) -> list[tuple]:
        """Run a statement to completion (DuckDB 2 wants every result consumed); returns its rows."""
        return self.con.execute(sql, params).fetchall()

    def rows(self, sql: str, params: Sequence[Any] | dict | None = None) -> list[tuple]:
        return self.con.execute(sql, params).fetchall()

    def scalar(self, sql: str, params: Sequence[Any] | dict | None = None) -> Any:
        rows = self.con.execute(sql, params).fetchall()
        return rows[0][0] if rows else None

    def arrow(self, sql: str, params: Sequence[Any] | dict | None = None) -> pa.Table:
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
