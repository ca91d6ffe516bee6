"""What vdc-lake trusts in a catalog from someone else (issue 24, defects 2, 3 and part of 9).

- Nothing beside the catalog is reached through a symbolic link: the lock, the WAL, the index,
  staging, spill and k-means folders and DuckDB's spill folder; a link there is one `Error:` line
  naming it, and its target is left as it was. A FIFO (or any non-regular file) at the catalog
  or WAL path is an error, not a hang.
- No view, macro or trigger stored in the catalog runs as vdc-lake's code or reads a file: readers
  query the installed package's views and macros, connections have no file access, macros that
  replace DuckDB functions and (for writers) triggers are refused. The user's own `vdc-lake sql`
  may read and write files, unless the catalog holds views or macros vdc-lake does not define.
- A dry-run pipeline runs only `sql` steps that read (INSTALL, ATTACH, writes: skipped).

Real catalogs, real files, the real CLI; each catalog is edited with plain duckdb, as someone
handing over a catalog would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from vdc_lake.catalog.connection import Catalog
from vdc_lake.catalog.package_sql import package_objects
from vdc_lake.errors import NotACatalogError, UnsafeCatalogError
from vdc_lake.cli.pipeline import statements_not_reading

SECRET = "TOPSECRET-4711"


def _images(root: Path, n: int = 4) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (120 + 8 * i, 100), (40 * i, 200 - 40 * i, 90)).save(root / f"im{i}.png")
    return root


def _ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def _csv(result) -> list[str]:
    """The cells of a `sql --format csv` output, unquoted."""
    return _ok(result).replace('"', "").split()


def _error_line(result) -> str:
    """The one `Error:` line of a failed command (no traceback)."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: "), result.output
    return lines[-1]


@pytest.fixture
def scanned(tmp_path, run_cli) -> Path:
    """tmp_path/c.duckdb: a scanned and sanitized catalog of four small images."""
    catalog = tmp_path / "c.duckdb"
    _ok(run_cli(["scan", _images(tmp_path / "images")], catalog))
    _ok(run_cli(["sanitize"], catalog))
    return catalog


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A folder outside the catalog's, holding the secret file a hostile catalog points at."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "secret").write_text(SECRET + "\n")
    return folder


def _link_message(link: Path) -> str:
    return (f"Error: {link} is a symbolic link (to {os.readlink(link)}); vdc-lake never writes through links "
            f"beside a catalog: remove it (rm {link}) and run the command again")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"" for p in sorted(folder.rglob("*"))}


# -- defect 2: links beside the catalog ------------------------------------------------------------

@pytest.mark.parametrize("args", [["status"], ["override", "keep", "1"]], ids=["status", "override"])
def test_a_link_at_the_lock_path_is_refused_and_its_target_kept(scanned, elsewhere, run_cli, tmp_path, args):
    """`status` records a changed config (a writer) and `override` writes: both once wrote the lock's
    JSON into whatever CATALOG.lock pointed at."""
    victim = elsewhere / "victim.txt"
    victim.write_text("precious\n")
    lock = tmp_path / "c.duckdb.lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    config = tmp_path / "other.toml"
    config.write_text("[sanitize]\nmin_width = 50\n")  # differs from the catalog's: status records it
    assert _error_line(run_cli(args, scanned, config=config)) == _link_message(lock)
    assert victim.read_text() == "precious\n" and lock.is_symlink()


def test_a_link_at_the_wal_path_is_refused_and_its_target_kept(scanned, elsewhere, run_cli, tmp_path):
    victim = elsewhere / "victim2.txt"
    victim.write_text("precious\n")
    wal = tmp_path / "c.duckdb.wal"
    assert not wal.exists()
    wal.symlink_to(victim)
    for args in (["sanitize"], ["status"]):  # a writer (DuckDB would write its WAL there) and a reader
        assert _error_line(run_cli(args, scanned)) == _link_message(wal)
    assert victim.read_text() == "precious\n"
    with pytest.raises(UnsafeCatalogError, match=re.escape(f"{wal} is a symbolic link")):
        Catalog(scanned, read_only=True)


@pytest.mark.parametrize("suffix", [".indexes", ".staging", ".tmp", ".spill", ".kmeans"])
def test_a_link_at_a_side_folder_is_refused_by_every_command(scanned, elsewhere, run_cli, tmp_path, suffix):
    target = elsewhere / "dir"
    target.mkdir()
    link = tmp_path / f"c.duckdb{suffix}"
    link.symlink_to(target)
    for args in (["status"], ["sanitize"]):
        assert _error_line(run_cli(args, scanned)) == _link_message(link)
    assert list(target.iterdir()) == []


def test_the_index_folder_is_checked_where_the_index_is_written(scanned, elsewhere, run_cli, tmp_path):
    """A link planted while a writer has the catalog open (after its open checked) is still refused
    where dedup writes its index, and nothing is written through it."""
    from vdc_lake.stages.dedup import build_index

    _ok(run_cli(["predict", "--model", "builtin", "--kind", "descriptor"], scanned))
    target = elsewhere / "dir"
    target.mkdir()
    link = tmp_path / "c.duckdb.indexes"
    with Catalog(scanned) as catalog:
        catalog.scalar("SELECT 1")
        link.symlink_to(target)
        with pytest.raises(UnsafeCatalogError) as err:
            build_index(catalog, "builtin", center=False, l2_normalize=True, dtype="f32", force=True, quiet=True)
    assert f"Error: {err.value}" == _link_message(link)
    assert list(target.iterdir()) == []
    link.unlink()
    _ok(run_cli(["dedup", "index", "--set", "builtin", "--force", "--device", "cpu"], scanned))
    assert [p.suffix for p in (tmp_path / "c.duckdb.indexes").iterdir()] == [".usearch"]
    assert not (tmp_path / "c.duckdb.indexes").is_symlink()


def test_the_ray_staging_folder_is_never_a_link(scanned, elsewhere, tmp_path):
    from vdc_lake.scale.ray_backend import staging_root

    assert staging_root(scanned) == tmp_path / "c.duckdb.staging"
    target = elsewhere / "dir"
    target.mkdir()
    (tmp_path / "c.duckdb.staging").symlink_to(target)
    with pytest.raises(UnsafeCatalogError) as err:
        staging_root(scanned)
    assert f"Error: {err.value}" == _link_message(tmp_path / "c.duckdb.staging")


def _cli_subprocess(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`vdc-lake ARGS` in a child process that must end within a minute (a FIFO once hung it)."""
    code = "import sys; from vdc_lake.cli import cli; cli(sys.argv[1:], prog_name='vdc-lake')"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "HOME": str(cwd)}, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("suffix", ["", ".wal", ".lock"], ids=["catalog", "wal", "lock"])
def test_a_fifo_at_the_catalog_or_beside_it_is_one_error_line_not_a_hang(scanned, tmp_path, suffix):
    if suffix == "":
        path = tmp_path / "fifo.duckdb"
        catalog = path
    else:
        path = tmp_path / f"c.duckdb{suffix}"
        path.unlink(missing_ok=True)
        catalog = scanned
    os.mkfifo(path)
    if suffix == "":
        expected = (f"Error: {path} is a named pipe (FIFO), not a catalog file; pass the right --catalog, "
                    "or move it away to start a new catalog there")
    else:
        what = {".wal": "DuckDB write-ahead log", ".lock": "writer lock"}[suffix]
        expected = (f"Error: {path} is a named pipe (FIFO), where vdc-lake keeps the catalog's {what} (a regular "
                    "file): move it away and run the command again")
    for args in (["status"], ["sanitize"]):
        done = _cli_subprocess(["--catalog", str(catalog), "-q", *args], tmp_path)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip().splitlines()[-1] == expected
    if suffix == "":
        with pytest.raises(NotACatalogError):
            Catalog(path, read_only=True)


# -- defect 3: stored views, macros and triggers ---------------------------------------------------

def _tamper(catalog: Path, *statements: str) -> None:
    """Edit the catalog with plain duckdb (as someone handing it over could), leaving views_installed
    as it is: the catalog still claims this vdc-lake's views."""
    con = duckdb.connect(str(catalog))
    try:
        for statement in statements:
            con.execute(statement)
    finally:
        con.close()


def _stored_sql(catalog: Path, view: str) -> str:
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        return con.execute("SELECT sql FROM duckdb_views() WHERE view_name = ?", [view]).fetchall()[0][0]
    finally:
        con.close()


def _leaky_image_files(catalog: Path, secret: Path) -> str:
    """image_files as stored, with `format` read from the secret file."""
    sql = _stored_sql(catalog, "image_files")
    assert ", format," in sql
    return sql.replace("CREATE VIEW", "CREATE OR REPLACE VIEW").replace(
        ", format,", f", (SELECT content FROM read_text('{secret}')) AS format,")


def test_a_stored_view_that_reads_a_file_does_not_reach_the_manifest(scanned, elsewhere, run_cli, tmp_path):
    _ok(run_cli(["export", "--format", "manifest", "--to", tmp_path / "clean"], scanned))
    curated = _stored_sql(scanned, "curated").replace("CREATE VIEW curated", "CREATE VIEW curated_base", 1)
    _tamper(scanned, _leaky_image_files(scanned, elsewhere / "secret"), curated,
            f"CREATE OR REPLACE VIEW curated AS SELECT * REPLACE ((SELECT length(content) FROM read_text("
            f"'{elsewhere / 'secret'}')) AS leaf_cluster_id) FROM curated_base")
    _ok(run_cli(["export", "--format", "manifest", "--to", tmp_path / "out"], scanned))
    written = (tmp_path / "out" / "manifest.csv").read_text()
    assert SECRET not in written
    assert written == (tmp_path / "clean" / "manifest.csv").read_text()


def test_readers_query_the_package_s_views_and_macros_not_the_stored_ones(scanned, elsewhere, run_cli):
    setting = "CREATE OR REPLACE MACRO setting(section_name, key_name) AS 'stored'"
    originals = {view: _stored_sql(scanned, view) for view in ("image_files", "sanitize_actions")}
    _tamper(scanned, _leaky_image_files(scanned, elsewhere / "secret"),
            "CREATE OR REPLACE VIEW sanitize_actions AS SELECT image_id, 'delete' AS action FROM images", setting)
    assert _csv(run_cli(["sql", "SELECT DISTINCT format FROM image_files", "--format", "csv"], scanned)) == \
        ["format", "PNG"]
    with Catalog(scanned, read_only=True) as catalog:
        assert catalog.scalar("SELECT count(*) FROM sanitize_actions") == 0  # the images are all fine
        assert catalog.scalar("SELECT setting('sanitize', 'min_width')") != "stored"
        assert catalog.scalar("SELECT count(DISTINCT format) FROM curated") == 1
    # a writer puts the package's definitions back into the file, whatever views_installed says
    _ok(run_cli(["sanitize"], scanned))
    assert {view: _stored_sql(scanned, view) for view in originals} == originals


def test_no_stored_view_reads_a_file_whoever_queries_it(scanned, elsewhere, run_cli):
    _tamper(scanned, f"CREATE VIEW notes AS SELECT content FROM read_text('{elsewhere / 'secret'}')")
    for read_only in (True, False):
        with Catalog(scanned, read_only=read_only) as catalog:
            with pytest.raises(duckdb.PermissionException):
                catalog.rows("SELECT * FROM notes")
    for args in (["sql", "SELECT * FROM notes"], ["sql", "--write", "SELECT * FROM notes"]):
        result = run_cli(args, scanned)
        assert SECRET not in result.output
        assert _error_line(result).startswith("Error: query failed: Permission Error: ")


def test_the_user_s_own_sql_may_use_files_unless_the_catalog_holds_code_vdc_lake_does_not_define(
        scanned, elsewhere, run_cli, tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("hello\n")
    copied = tmp_path / "copied.csv"
    read = f"SELECT content FROM read_text('{mine}')"
    copy = f"COPY (SELECT rel_path FROM image_files ORDER BY 1) TO '{copied}' (HEADER)"
    assert _csv(run_cli(["sql", read, "--format", "csv"], scanned)) == ["content", "hello"]
    _ok(run_cli(["sql", copy], scanned))
    assert copied.read_text().split() == ["rel_path", "im0.png", "im1.png", "im2.png", "im3.png"]
    copied.unlink()
    # stored code the user's query could reach by name: file access is off, and the error says why
    _tamper(scanned, "CREATE MACRO shout(x) AS upper(x)")
    for query in (read, copy):
        line = _error_line(run_cli(["sql", query], scanned))
        assert line.startswith("Error: query failed: Permission Error: ")
        assert line.endswith("file access is off for queries on this catalog: it holds macro shout, not defined "
                             "by vdc-lake, which a query that may read files could run; drop what you do not need "
                             "(vdc-lake sql --write \"DROP VIEW name\") to let vdc-lake sql read and write files")
    assert not copied.exists()
    assert _csv(run_cli(["sql", "SELECT shout('a') AS s", "--format", "csv"], scanned)) == ["s", "A"]
    _ok(run_cli(["sql", "--write", "DROP MACRO shout"], scanned))
    assert _csv(run_cli(["sql", read, "--format", "csv"], scanned)) == ["content", "hello"]


@pytest.mark.parametrize("macro", ["lower(x) AS 'pwned'", "duckdb_views() AS TABLE SELECT 'none' AS view_name"],
                         ids=["scalar", "table"])
def test_a_stored_macro_that_replaces_a_duckdb_function_is_refused(scanned, run_cli, macro):
    _tamper(scanned, f"CREATE MACRO {macro}")
    name = macro.split("(")[0]
    expected = (f"Error: catalog {scanned} defines the macro {name}, which replaces DuckDB's own function of that "
                f"name in every query, vdc-lake's included: the catalog was edited; drop it (in DuckDB: DROP MACRO "
                f"{name}) or use a catalog you trust")
    for args in (["status"], ["sanitize"], ["sql", "SELECT 1"]):
        assert _error_line(run_cli(args, scanned)) == expected


def test_a_writer_refuses_a_catalog_with_a_trigger(scanned, elsewhere, run_cli):
    _tamper(scanned, "CREATE TABLE loot (content VARCHAR)",
            f"CREATE TRIGGER grab AFTER INSERT ON runs INSERT INTO loot SELECT content FROM read_text("
            f"'{elsewhere / 'secret'}')")
    expected = (f"Error: catalog {scanned} holds the trigger grab on runs, which vdc-lake does not make and would "
                "run inside its writes: the catalog was edited; drop it (in DuckDB: DROP TRIGGER grab on runs) or "
                "use a catalog you trust")
    assert _error_line(run_cli(["sanitize"], scanned)) == expected
    _ok(run_cli(["status"], scanned))  # a reader cannot fire it
    con = duckdb.connect(str(scanned), read_only=True)
    assert con.execute("SELECT count(*) FROM loot").fetchall() == [(0,)]
    con.close()


def _temp_objects(catalog: Catalog) -> set[str]:
    return {name for (name,) in catalog.rows(
        "SELECT view_name FROM duckdb_views() WHERE temporary AND NOT internal UNION ALL "
        "SELECT function_name FROM duckdb_functions() WHERE database_name = 'temp' AND NOT internal")}


def test_a_reader_connection_runs_only_the_package_s_views_and_macros(scanned, elsewhere):
    """Every macro is the package's TEMP one; a view is TEMP unless the catalog stores exactly the
    text DuckDB stores for the package's, which expected_views renders without binding anything."""
    from vdc_lake.catalog.package_sql import expected_views

    macros = {name for name, (kind, _, _) in package_objects().items() if kind == "MACRO"}
    views = set(package_objects()) - macros
    con = duckdb.connect(str(scanned), read_only=True)
    stored = dict(con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal").fetchall())
    assert {name: stored[name] for name in views} == expected_views(con)  # as a writer installed them
    con.close()
    with Catalog(scanned, read_only=True) as catalog:
        assert _temp_objects(catalog) == macros
        assert catalog.scalar("SELECT current_setting('enable_external_access')") is False
        catalog.release()  # every connection gets them
        assert _temp_objects(catalog) == macros
    _tamper(scanned, _leaky_image_files(scanned, elsewhere / "secret"))
    with Catalog(scanned, read_only=True) as catalog:
        assert _temp_objects(catalog) == macros | {"image_files"}
        assert catalog.scalar("SELECT count(DISTINCT format) FROM curated") == 1  # a stored view reads the TEMP one


# -- defect 9: dry-run pipelines run only reading SQL ----------------------------------------------

def test_statement_kinds_that_a_dry_run_skips():
    assert statements_not_reading("SELECT 1; FROM images; SHOW TABLES; DESCRIBE images") == []
    assert statements_not_reading("INSTALL httpfs; LOAD httpfs; FORCE INSTALL spatial") == ["INSTALL/LOAD"] * 3
    assert statements_not_reading("ATTACH 'x.db'; COPY (SELECT 1) TO 'x.csv'; EXPORT DATABASE 'd'") == \
        ["ATTACH", "COPY", "EXPORT"]
    assert statements_not_reading("IMPORT DATABASE 'd'; CHECKPOINT; SET threads = 1; UPDATE images SET present = "
                                  "false; CREATE TABLE t AS SELECT 1; EXPLAIN ANALYZE SELECT 1") == \
        ["PRAGMA", "CALL", "SET", "UPDATE", "CREATE", "EXPLAIN"]
    assert statements_not_reading("SELEC 1") == []  # does not parse: running it fails before doing anything


def test_a_dry_run_pipeline_skips_sql_steps_that_install_attach_or_write(scanned, run_cli, tmp_path):
    attached = tmp_path / "attached.db"
    steps = [("INSTALL httpfs", None), ("LOAD httpfs", None), (f"ATTACH '{attached}' AS other", None),
             ("CREATE TABLE notes AS SELECT 1 AS n", None), ("CHECKPOINT", None),
             ("UPDATE images SET present = false", "write = true\n"),
             ("SELECT count(*) AS n FROM images WHERE present", None)]
    text = "".join(f'[[step]]\ncommand = "sql"\nargs = ["{sql}"]\n{extra or ""}\n' for sql, extra in steps)
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(text)
    before = _tree(tmp_path / "images")
    out = _ok(run_cli(["run", pipeline], scanned))
    for index in range(1, len(steps)):
        assert re.search(rf"^{index}\s+sql .*\s+skipped\s", out, re.M), out
    assert re.search(rf"^{len(steps)}\s+sql .*\s+ok\s", out, re.M), out
    assert "its SQL writes files (INSTALL/LOAD)" in out and "its SQL writes files (ATTACH)" in out
    assert "its SQL does more than read (CREATE)" in out and "it opens the catalog to write (--write)" in out
    assert not attached.exists() and _tree(tmp_path / "images") == before
    with Catalog(scanned, read_only=True) as catalog:
        assert catalog.scalar("SELECT count(*) FROM images WHERE present") == 4
        assert catalog.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'notes'") == 0
