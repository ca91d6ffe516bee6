"""Header facts as images-table columns: how inspect_header's results (probe.py) become the
fact columns of `images`, one definition for scan (new and changed files), apply (a rewritten
file's new version) and restore (the version it makes current again)."""

from __future__ import annotations

import pyarrow as pa

FACT_COLUMNS = [
    "size_bytes", "mtime_ns", "content_hash", "width", "height", "format", "mode",
    "exif_orientation", "n_frames", "has_transparency", "header_error",
]
FACT_TYPES = [
    pa.int64(), pa.int64(), pa.string(), pa.int32(), pa.int32(), pa.string(), pa.string(),
    pa.int16(), pa.int32(), pa.bool_(), pa.string(),
]


def fact_arrays(facts: list[dict]) -> dict[str, pa.Array]:
    """Arrow columns (FACT_COLUMNS) of inspect_header results; shared by scan, apply and restore."""
    return {name: pa.array([f.get(name) for f in facts], typ) for name, typ in zip(FACT_COLUMNS, FACT_TYPES)}


def fact_assignments(alias: str) -> str:
    """`col = alias.col, ...` for every fact column, for UPDATE ... FROM alias."""
    return ", ".join(f"{c} = {alias}.{c}" for c in FACT_COLUMNS)
