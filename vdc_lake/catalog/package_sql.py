"""The package's SQL: where sql/ is, its views and macros in dependency order, their fingerprint, and
the text DuckDB stores for each view (what a reader compares a catalog's stored views against)."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

import duckdb


def sql_dir() -> Path:
    """The sql/ folder: inside the installed package, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent.parent  # vdc_lake/
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "schema").is_dir():
            return candidate
    raise FileNotFoundError("vdc-lake's sql/ folder is missing from the installation; reinstall vdc-lake")


def view_files(folder: Path | None = None) -> list[Path]:
    """sql/views/**/*.sql, by path: the layer folders (10_base, 20_decisions, 30_marts) in order."""
    views = (folder or sql_dir()) / "views"
    return sorted(views.rglob("*.sql"), key=lambda path: path.relative_to(views).parts)


def views_fingerprint() -> str:
    """A hash of this vdc-lake's view definitions (sql/views/**/*.sql, names and text)."""
    digest = hashlib.sha256()
    for path in view_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


_CREATE = re.compile(r"^CREATE OR REPLACE (VIEW|MACRO) (\w+)", re.MULTILINE)


_VIEW_HEAD = re.compile(r"^.*?CREATE OR REPLACE VIEW \w+ AS\s", re.DOTALL)


_COMMENT = re.compile(r"--[^\n]*")


_WORD = re.compile(r"\b\w+\b")


_EXPECTED_VIEWS: dict[str, str | None] = {}


@lru_cache(maxsize=4)
def package_objects(folder: Path | None = None) -> dict[str, tuple[str, str, str]]:
    """{name: (kind 'VIEW'/'MACRO', statement, the same statement as TEMP)} of sql/views/**, in
    dependency order (each after the views and macros it reads, see dependency_order); each file
    creates one view or macro (`CREATE OR REPLACE VIEW name AS ...`)."""
    found_in = {}
    for path in view_files(folder):
        text = path.read_text(encoding="utf-8")
        found = _CREATE.search(text)
        if found is None:
            raise FileNotFoundError(f"{path} creates no view or macro; reinstall vdc-lake")
        found_in[found.group(2)] = (found.group(1), text,
                                    _CREATE.sub(r"CREATE OR REPLACE TEMP \1 \2", text, count=1))
    reads = {name: object_reads(text, set(found_in) - {name}) for name, (_, text, _) in found_in.items()}
    return {name: found_in[name] for name in dependency_order(reads)}


def object_reads(statement: str, names: set[str]) -> set[str]:
    """The names among `names` that a view's or macro's statement reads (comments left out)."""
    return names & set(_WORD.findall(_COMMENT.sub("", statement)))


def dependency_order(reads: dict[str, set[str]]) -> list[str]:
    """The names of `reads` ({name: the names it reads}, in file order) ordered so that each comes
    after what it reads, otherwise in file order; a cycle is a packaging error."""
    done: list[str] = []
    waiting = dict(reads)
    while waiting:
        ready = [name for name, needs in waiting.items() if needs <= set(done)]
        if not ready:
            raise FileNotFoundError(f"the views {', '.join(sorted(waiting))} of sql/views read each other in a "
                                    "cycle; reinstall vdc-lake")
        done.append(ready[0])
        del waiting[ready[0]]
    return done


def expected_views(con: duckdb.DuckDBPyConnection) -> dict[str, str | None]:
    """{view: the text DuckDB stores for the package's view} (duckdb_views().sql: DuckDB's own
    rendering of the parsed query), made once per process without binding anything: the query
    parsed and rendered again through json_serialize_sql/json_deserialize_sql. None for a view
    DuckDB cannot render so (it is always made TEMP)."""
    if not _EXPECTED_VIEWS:
        for name, (kind, text, _) in package_objects().items():
            if kind == "VIEW":
                query = _VIEW_HEAD.sub("", con.extract_statements(text)[0].query, count=1)
                try:
                    rendered = con.execute("SELECT json_deserialize_sql(json_serialize_sql(?))", [query]).fetchall()
                    _EXPECTED_VIEWS[name] = f"CREATE VIEW {name} AS {rendered[0][0]};"
                except duckdb.Error:
                    _EXPECTED_VIEWS[name] = None
    return _EXPECTED_VIEWS
