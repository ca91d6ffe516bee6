"""What an export reads: the one SELECT over a --view (a view, a table-macro call or a query)
that yields the manifest rows, and the checks that refuse rows of an edited catalog (roots no scan
run was given, paths that climb out of their root)."""

from __future__ import annotations

import os
import re

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from vdc_lake.catalog.connection import Catalog
from vdc_lake.effects.query_output import single_select
from vdc_lake.errors import StageError
from vdc_lake.fileops.confine import is_recorded_root, recorded_roots

# The columns every manifest holds, in order; `key` and `export_path` are added by the export.
MANIFEST_COLUMNS = [
    "path", "image_id", "version", "rel_path", "root", "width", "height", "format", "size_bytes",
    "content_hash", "leaf_cluster_id", "top_cluster_id", "cluster_run", "sample_run",
]
FILE_COLUMNS = ("path", "rel_path", "root", "width", "height", "format", "size_bytes", "content_hash")
_QUERY_START = re.compile(r"^\s*(\(|select\b|with\b|from\b|values\b|table\b)", re.IGNORECASE)
# A view name, or a table-macro call: name(arguments). The whole text must still parse as one SELECT.
_VIEW_CALL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\s*\(.*\))?", re.DOTALL)
# A relative path part that climbs or is empty ('', '.', '..'), a leading '/', or a NUL byte.
_UNSAFE_REL_PATH = r"(^|/)(\.\.?)?(/|$)|\x00"
# Columns the export adds for its own use and leaves out of the manifest: the catalog's mtime of
# each file (a link or manifest export checks the file against it) and its path inside TO.
CATALOG_MTIME = "_catalog_mtime_ns"
TARGET = "_target"

# Used when the source lacks some manifest columns (e.g. `SELECT image_id FROM ...`): the
# current file facts, plus the clusters (of the cluster run the newest sample balanced over,
# image_clusters) and the sample run, the same way `curated` does.
_LOOKUP_SQL = """
WITH chosen AS (
    SELECT DISTINCT image_id FROM ({source}
    )
),

final AS (
    SELECT f.path, f.image_id, f.version, f.rel_path, f.root, f.width, f.height, f.format, f.size_bytes,
           f.content_hash, c.leaf_cluster_id, c.top_cluster_id, c.cluster_run, s.run_id AS sample_run
    FROM image_files AS f
    JOIN chosen AS x ON x.image_id = f.image_id
    LEFT JOIN image_clusters AS c ON c.image_id = f.image_id AND c.version = f.version
    LEFT JOIN sampled_images AS s ON s.image_id = f.image_id AND s.version = f.version
)

SELECT * FROM final ORDER BY image_id
"""

# Used when the source has every manifest column (e.g. `curated`): one row per image, restricted
# to images present at the version the row names. The file's facts (FILE_COLUMNS: where it is, its
# size and hash) come from image_files, never from the source: a query or a view edited in a
# catalog from someone else could name any file there.
_DIRECT_SQL = """
SELECT {columns}
FROM ({source}
) AS s
JOIN image_files AS f ON f.image_id = s.image_id AND f.version = s.version
QUALIFY row_number() OVER (PARTITION BY s.image_id ORDER BY s.version DESC) = 1
ORDER BY s.image_id
"""


def source_sql(view: str) -> str:
    """The SQL that reads `view`: a view or table-macro call name, or a query as written."""
    view = view.strip().rstrip(";").strip()
    if not view:
        raise StageError("--view is empty; pass a view name (curated), a macro call or a SELECT")
    if _QUERY_START.match(view):
        return view
    if not _VIEW_CALL.fullmatch(view):
        raise StageError(f"--view {view!r} is not a view name (letters, digits, _), a table-macro call "
                         "(dedup_actions(threshold := 0.3)) or a SELECT")
    return f"SELECT * FROM {view}"


def _source_columns(catalog: Catalog, sql: str, view: str) -> list[str]:
    single_select(catalog.con, sql, f"--view {view!r}")
    try:
        columns = catalog.arrow(f"SELECT * FROM ({sql}\n) LIMIT 0").column_names
    except duckdb.Error as e:
        raise StageError(f"cannot read --view {view!r}: {str(e).splitlines()[0]}; pass a view name "
                         "(curated), a table-macro call (dedup_actions(threshold := 0.3)) or a SELECT") from e
    if "image_id" not in columns:
        raise StageError(f"--view {view!r} yields no image_id column (it has: {', '.join(columns)}); "
                         "select image_id in it")
    return columns


def _manifest_query(catalog: Catalog, view: str) -> str:
    sql = source_sql(view)
    columns = _source_columns(catalog, sql, view)
    if set(MANIFEST_COLUMNS) <= set(columns):
        columns = ", ".join(f"{'f' if c in FILE_COLUMNS else 's'}.{c}" for c in MANIFEST_COLUMNS)
        return _DIRECT_SQL.format(columns=columns, source=sql)
    return _LOOKUP_SQL.format(source=sql)


def manifest_rows(catalog: Catalog, view: str = "curated") -> pa.Table:
    """The manifest of `view`: MANIFEST_COLUMNS for each of its images that is present, by image_id."""
    return catalog.arrow(single_select(catalog.con, _manifest_query(catalog, view), f"--view {view!r}"))


def rows_to_export(catalog: Catalog, view: str) -> pa.Table:
    """manifest_rows plus the catalog's mtime of each file (CATALOG_MTIME), to tell a changed file by its stat."""
    query = (f"SELECT m.*, (SELECT max(i.mtime_ns) FROM images AS i WHERE i.image_id = m.image_id "
             f"AND i.version = m.version) AS {CATALOG_MTIME}\n"
             f"FROM ({_manifest_query(catalog, view)}) AS m ORDER BY m.image_id")
    return catalog.arrow(single_select(catalog.con, query, f"--view {view!r}"))


def check_paths(table: pa.Table) -> None:
    """Refuse a manifest whose roots are not absolute, normalised paths or whose rel_paths could
    climb out of their root ('..', '.', empty parts, a leading '/'): only an edited or damaged
    catalog holds such rows, and they would make the export read or write elsewhere."""
    for root in pc.unique(table.column("root")).to_pylist():
        if not (isinstance(root, str) and os.path.isabs(root) and os.path.normpath(root) == root
                and "\0" not in root):
            raise StageError(f"export refused: the catalog names the scanned root {root!r}, which is not an "
                             "absolute, normalised path; the catalog was edited or is damaged")
    rel_path = table.column("rel_path")
    bad = table.filter(pc.or_kleene(pc.is_null(rel_path), pc.match_substring_regex(rel_path, _UNSAFE_REL_PATH)))
    if bad.num_rows:
        example = bad.slice(0, 1).to_pylist()[0]
        raise StageError(
            f"export refused: the catalog names {bad.num_rows} files outside their scanned root (e.g. image "
            f"{example['image_id']}: {example['rel_path']!r} under {example['root']}); the catalog was edited or "
            "is damaged: restore it from a copy, or export a --view that leaves those images out"
        )
    # The path read and linked is the one root and rel_path name (an edited image_files view could say otherwise).
    joined = pc.binary_join_element_wise(table.column("root"), rel_path, "/")
    bad = table.filter(pc.invert(pc.fill_null(pc.equal(table.column("path"), joined), False)))
    if bad.num_rows:
        example = bad.slice(0, 1).to_pylist()[0]
        raise StageError(
            f"export refused: the catalog names {bad.num_rows} files whose path is not their root/rel_path (e.g. "
            f"image {example['image_id']}: {example['path']!r}); the catalog was edited or is damaged: restore it "
            "from a copy"
        )


def check_roots(catalog: Catalog, table: pa.Table) -> None:
    """Refuse a manifest that names a root no scan run was given: only an edited catalog does."""
    recorded = recorded_roots(catalog)
    for root in pc.unique(table.column("root")).to_pylist():
        if not is_recorded_root(root, recorded):
            raise StageError(f"export refused: the catalog names the root {root!r}, which no scan run was given; "
                             "the catalog was edited or is damaged: restore it from a copy, or export a --view "
                             "that leaves those images out")
