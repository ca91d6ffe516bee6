"""Run a user's SQL query on the catalog and render it as a table, csv, json or parquet."""

from __future__ import annotations

import io
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from vdc_lake.catalog.connection import Catalog
from vdc_lake.errors import StageError, VdcLakeError

MAX_TABLE_ROWS = 1000


def single_select(con: duckdb.DuckDBPyConnection, sql: str, what: str = "the query") -> str:
    """`sql` if DuckDB parses it as exactly one SELECT (WITH/FROM/VALUES/TABLE forms included);
    else StageError. Statements are split by DuckDB's own parser, so `...; DROP TABLE x` is caught."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise StageError(f"{what} is not valid SQL: {str(e).splitlines()[0]}; pass one SELECT") from e
    kinds = [s.type.name for s in statements]
    if kinds != ["SELECT"]:
        found = f"{len(kinds)} statements ({', '.join(kinds)})" if len(kinds) != 1 else f"a {kinds[0]} statement"
        raise StageError(f"{what} must be exactly one SELECT statement, found {found}; "
                         "remove everything but the SELECT")
    return sql


# A JSON text, list (a vector) or struct value longer than this is cut in a table, whole in
# --format json/csv: runs.params and 512-d vectors would otherwise make every row 1,000+ characters.
MAX_JSON_CELL = 100


def _nested(column: pa.ChunkedArray, values: list) -> bool:
    """A column of JSON objects/arrays: a list, struct or map type, or text whose values start as JSON does."""
    if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type) or \
            pa.types.is_large_list(column.type) or pa.types.is_struct(column.type) or pa.types.is_map(column.type):
        return True
    text = [v for v in values if isinstance(v, str) and v.strip()]
    return bool(text) and all(v.lstrip()[:1] in ("{", "[") for v in text)


def _cell(value: object, nested: bool) -> str:
    text = "NULL" if value is None else str(value)
    return text[:MAX_JSON_CELL - 3] + "..." if nested and len(text) > MAX_JSON_CELL else text


def _as_table_text(table: pa.Table) -> str:
    shown = table.slice(0, MAX_TABLE_ROWS)
    headers = table.column_names
    # by position, not by name: a join can yield two columns of the same name
    columns = [column.to_pylist() for column in shown.columns]
    nested = [_nested(column, values) for column, values in zip(shown.columns, columns)]
    cells = [[_cell(col[i], is_nested) for col, is_nested in zip(columns, nested)] for i in range(shown.num_rows)]
    cut = [h for h, col, is_nested in zip(headers, columns, nested)
           if is_nested and any(v is not None and len(str(v)) > MAX_JSON_CELL for v in col)]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip() for c in cells]
    if table.num_rows > MAX_TABLE_ROWS:
        lines.append(f"... {table.num_rows - MAX_TABLE_ROWS} more rows (use --format csv --output FILE)")
    lines.append(f"({table.num_rows} rows)")
    if cut:
        lines.append(f"(long JSON values of {', '.join(cut)} cut to {MAX_JSON_CELL} characters: "
                     "--format json shows them whole)")
    return "\n".join(lines) + "\n"


def _as_json(table: pa.Table) -> str:
    return json.dumps(table.to_pylist(), default=str, indent=1) + "\n"


def _as_csv(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pa_csv.write_csv(_stringify_nested(table), sink)
    return sink.getvalue()


def _stringify_nested(table: pa.Table) -> pa.Table:
    # CSV cannot hold list columns (vectors); write them as their JSON text.
    columns = []
    for col in table.columns:
        if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_struct(col.type):
            col = pa.array([None if v is None else json.dumps(v) for v in col.to_pylist()], pa.string())
        columns.append(col)
    return pa.table(columns, names=table.column_names)


def write_query(catalog: Catalog, query: str, *, fmt: str = "table", output: str | None = None) -> str | None:
    """Run `query`; return the text to print, or None when it was written to `output`."""
    table = catalog.arrow(query) if query.strip() else pa.table({})
    if output is None:
        if fmt == "parquet":
            raise VdcLakeError("parquet output needs --output FILE")
        if fmt == "csv":
            return _as_csv(table).decode()
        return _as_json(table) if fmt == "json" else _as_table_text(table)
    path = Path(output)
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "csv":
        path.write_bytes(_as_csv(table))
    elif fmt == "json":
        path.write_text(_as_json(table))
    else:
        path.write_text(_as_table_text(table))
    return None
