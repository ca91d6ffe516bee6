"""Catalog: migrations, runs, the writer lock and readers beside a working writer."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pytest

from vdc_lake.catalog.connection import Catalog
from vdc_lake.catalog.package_sql import sql_dir
from vdc_lake.errors import CatalogLockedError, CatalogNotFoundError, NotACatalogError

LOCKED = re.compile(
    r"^catalog (?P<path>\S+) is in use by PID (?P<pid>\d+) on (?P<host>\S+) since "
    r"(?P<since>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d); wait for that command to finish \(or stop it\), "
    r"or open the catalog read-only$"
)


def _spawn(code: str) -> subprocess.Popen:
    """A Python child running `code`; it prints 'ready' once it holds what it should."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_new_catalog_has_every_migration_and_view(catalog_path):
    with Catalog(catalog_path) as catalog:
        names = [r[0] for r in catalog.rows("SELECT name FROM schema_migrations ORDER BY version")]
        views = {r[0] for r in catalog.rows(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal UNION ALL "
            "SELECT function_name FROM duckdb_functions() WHERE function_type IN ('macro', 'table_macro') "
            "AND NOT internal")}
    assert names == sorted(p.stem for p in (sql_dir() / "schema").glob("*.sql"))
    # One view or table macro per sql/views file, named after the file.
    view_files = list((sql_dir() / "views").rglob("*.sql"))
    assert len(view_files) > 20 and views >= {p.stem for p in view_files}
    with Catalog(catalog_path) as catalog:
        assert catalog.migrate() == []  # re-opening applies nothing twice
        assert catalog.scalar("SELECT count(*) FROM schema_migrations") == len(names)


def test_reading_a_missing_catalog_names_the_fix(tmp_path):
    missing = tmp_path / "nope.duckdb"
    with pytest.raises(CatalogNotFoundError) as err:
        Catalog(missing, read_only=True)
    assert str(err.value) == f"no catalog at {missing}; run `vdc-lake scan ROOT` first or pass --catalog PATH"
    assert not missing.exists()


def test_run_records_failure_and_interrupted_runs(catalog_path):
    with Catalog(catalog_path) as catalog:
        with pytest.raises(ValueError):
            with catalog.run("scan", {"roots": ["x"]}):
                raise ValueError("boom")
        left_running = catalog.begin_run("sanitize", {})  # the process "dies" before finish_run
    with Catalog(catalog_path) as catalog:
        rows = catalog.rows("SELECT stage, status, error, params->>'$.roots[0]' FROM runs ORDER BY run_id")
        assert rows == [("scan", "failed", "ValueError: boom", "x"), ("sanitize", "interrupted", None, None)]
        assert catalog.scalar("SELECT finished_at IS NOT NULL FROM runs WHERE run_id = ?", [left_running])


def test_insert_arrow_and_next_ids(catalog_path):
    with Catalog(catalog_path) as catalog:
        ids = catalog.next_ids("op_id_seq", 3)
        assert list(ids) == [1, 2, 3]
        assert catalog.next_ids("op_id_seq", 0).size == 0
        n = catalog.insert_arrow("samples", pa.table({"run_id": [1, 1], "image_id": [5, 6], "version": [1, 1]}))
        assert n == 2
        assert catalog.rows("SELECT image_id FROM samples ORDER BY 1") == [(5,), (6,)]


def test_second_writer_in_same_process_is_refused(catalog_path):
    with Catalog(catalog_path):
        with pytest.raises(CatalogLockedError) as err:
            Catalog(catalog_path)
    match = LOCKED.match(str(err.value))
    assert match, str(err.value)
    assert match["path"] == str(catalog_path)
    assert int(match["pid"]) == os.getpid()
    assert match["host"] == socket.gethostname()
    with Catalog(catalog_path):  # released on close: the next writer gets in
        pass


def test_second_writer_names_the_holding_process(catalog_path):
    holder = _spawn(f"""
        import sys
        from vdc_lake.catalog.connection import Catalog
        with Catalog({str(catalog_path)!r}) as c:
            c.release()
            print("ready", flush=True)
            sys.stdin.readline()
    """)
    try:
        assert holder.stdout.readline().strip() == "ready"
        before = time.strftime("%Y-%m-%dT")
        with pytest.raises(CatalogLockedError) as err:
            Catalog(catalog_path)
        match = LOCKED.match(str(err.value))
        assert match, str(err.value)
        assert int(match["pid"]) == holder.pid
        assert match["host"] == socket.gethostname()
        assert match["since"].startswith(before)
        # ...while a reader can query the catalog the writer holds.
        with Catalog(catalog_path, read_only=True) as reader:
            assert reader.scalar("SELECT count(*) FROM runs") == 0
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0, holder.stderr
    with Catalog(catalog_path):  # the lock died with its holder's release
        pass


def test_readers_query_while_a_writer_process_works(catalog_path):
    """The writer commits batches and releases the file between them: a reader gets in between
    any two batches and sees exactly the committed ones. Lock-step through pipes, no timing."""
    n_batches = 6
    writer = _spawn(f"""
        import sys
        from vdc_lake.catalog.connection import Catalog
        with Catalog({str(catalog_path)!r}) as c:
            c.execute("CREATE TABLE progress (batch INTEGER)")
            c.release()
            for i in range({n_batches}):
                c.execute("INSERT INTO progress VALUES (?)", [i])
                c.release()
                print("committed", i, flush=True)
                sys.stdin.readline()  # the next batch starts when the reader has looked
        print("done", flush=True)
    """)
    seen = []
    try:
        for i in range(n_batches):
            assert writer.stdout.readline().split() == ["committed", str(i)]
            with Catalog(catalog_path, read_only=True) as reader:
                seen.append(reader.scalar("SELECT count(*) FROM progress"))
            writer.stdin.write("\n")
            writer.stdin.flush()
        out, err = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err
    assert out.strip() == "done"
    assert seen == list(range(1, n_batches + 1))


def test_writer_waits_out_a_reader_holding_the_file(catalog_path):
    """DuckDB's file lock is shared/exclusive: a writer that finds a reader's connection open
    retries until the reader lets go, then commits; the reader never sees a partial write."""
    writer = _spawn(f"""
        import sys
        from vdc_lake.catalog.connection import Catalog
        with Catalog({str(catalog_path)!r}) as c:
            c.execute("CREATE TABLE progress (batch INTEGER)")
            c.release()
            print("ready", flush=True)
            sys.stdin.readline()
            print("inserting", flush=True)
            c.execute("INSERT INTO progress VALUES (1)")
        print("done", flush=True)
    """)
    reader = None
    try:
        assert writer.stdout.readline().strip() == "ready"
        reader = Catalog(catalog_path, read_only=True)
        assert reader.scalar("SELECT count(*) FROM progress") == 0  # the reader now holds the file
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "inserting"
        time.sleep(0.3)
        assert writer.poll() is None  # still waiting for the file, not failed
        assert reader.scalar("SELECT count(*) FROM progress") == 0
        reader.close()
        out, err = writer.communicate(timeout=60)
    finally:
        if reader is not None:
            reader.close()
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err
    assert out.strip() == "done"
    with Catalog(catalog_path, read_only=True) as r:
        assert r.scalar("SELECT count(*) FROM progress") == 1


def test_a_busy_file_is_told_apart_from_a_file_that_is_no_catalog(catalog_path, tmp_path):
    """Only DuckDB's lock conflict means "busy"; the retry gives up after wait_seconds."""
    holder = _spawn(f"""
        import sys
        from vdc_lake.catalog.connection import Catalog
        with Catalog({str(catalog_path)!r}) as c:
            c.scalar("SELECT 1")  # keeps the DuckDB file open, as a writer inside a write does
            print("ready", flush=True)
            sys.stdin.readline()
    """)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(CatalogLockedError) as err:
            Catalog(catalog_path, read_only=True, wait_seconds=0.5).scalar("SELECT 1")
        assert str(err.value).startswith(f"catalog {catalog_path} stayed busy for 0.5 s, held by a writer: "
                                         "IO Error: Could not set lock on file")
    finally:
        holder.communicate("\n", timeout=30)
    garbage = tmp_path / "garbage.duckdb"
    garbage.write_bytes(b"\x00" * 4096)
    with pytest.raises(NotACatalogError, match="is not a vdc-lake catalog"):
        Catalog(garbage, read_only=True, wait_seconds=0.5).scalar("SELECT 1")


def test_a_read_only_command_brings_a_catalog_of_another_version_up_to_date(catalog_path, run_cli):
    """A catalog last written by an older vdc-lake (a view missing, other view definitions):
    the first read-only command reinstalls the views while the catalog is free."""
    with Catalog(catalog_path) as catalog:
        assert catalog.schema_is_current()
        catalog.execute("DROP VIEW curated")
        catalog.execute("UPDATE views_installed SET fingerprint = 'older-version'")
        assert not catalog.schema_is_current()
    result = run_cli(["sql", "SELECT count(*) AS n FROM curated", "--format", "csv"], catalog_path)
    assert result.exit_code == 0, result.output
    assert result.output.replace('"', "").split()[-2:] == ["n", "0"]
    with Catalog(catalog_path, read_only=True) as catalog:
        assert catalog.schema_is_current()
