"""Embedding and prediction sets: registration, bulk writes and vector reads through Arrow.

Vectors are Parquet files beside the catalog (vdc_lake.catalog.vectors: CATALOG.vectors/<table>/
<set>/part-*.parquet), registered in it; `embeddings` and `predictions` are views over them, keyed
by set name and (image_id, version). Which rows are current is one DuckDB query on the key
columns; the vectors themselves stream straight from the files (pyarrow, one row group at a
time, no DuckDB and no writer lock) into a preallocated array (or a memmap beyond the memory
budget), so a stage holds the one set it needs plus a batch, never a whole-table Arrow result.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from vdc_lake.catalog.connection import Catalog
from vdc_lake.catalog.side_files import side_folder
from vdc_lake.catalog.vectors import (LEGACY_ROWID_BASE, LEGACY_TABLES, VECTOR_TABLES, has_vector_parts, part_rows,
                                      set_relation, stream_parts, write_part)
from vdc_lake.fileops.confine import check_name
from vdc_lake.errors import StageError


@dataclass
class VectorSet:
    """Vectors of one set for present images at their current version, in image_id order.

    image_ids [n] int64, versions [n] int32, vectors [n, d] float32: in memory, or a
    np.memmap over an already-unlinked file next to the catalog when the set exceeds
    [scale] memory_budget_gb (the space is freed when the array is).
    """

    name: str
    image_ids: np.ndarray
    versions: np.ndarray
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        spilled = ", spilled" if isinstance(self.vectors, np.memmap) else ""
        return f"VectorSet({self.name!r}, n={len(self)}, dim={self.vectors.shape[1] if self.vectors.ndim == 2 else 0}{spilled})"


@dataclass
class VectorBatch:
    """One batch of a set's current vectors: image_ids [b] int64, versions [b] int32, vectors [b, d] float32."""

    image_ids: np.ndarray
    versions: np.ndarray
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)


def per_image_table(run_id: int, vs: VectorSet | VectorBatch, **columns: Any) -> pa.Table:
    """An Arrow table of (run_id, image_id, version) for every row of vs, plus `columns`."""
    n = len(vs.image_ids)
    return pa.table({
        "run_id": pa.array(np.full(n, run_id, np.int64)),
        "image_id": pa.array(vs.image_ids),
        "version": pa.array(vs.versions.astype(np.int32)),
        **{name: (values if isinstance(values, pa.Array) else pa.array(values)) for name, values in columns.items()},
    })


# SSCD (resnet_v1_50_c1_sscd): VDC's GLDv2 walkthrough applies at cosine distance 0.25, reports at 0.5.
SSCD_DEDUP_THRESHOLDS = (0.25, 0.5)


def recommended_dedup_thresholds(model: str | None) -> tuple[float | None, float | None]:
    """(apply, report) cosine-distance thresholds known to suit the model's vectors, or (None, None)
    without a recommendation (the config's [apply_deduplication] / [dedup] values apply)."""
    from vdc_lake.kernels.descriptor import DEDUP_THRESHOLDS

    if model in DEDUP_THRESHOLDS:
        return DEDUP_THRESHOLDS[model]
    if model and "sscd" in model.lower():
        return SSCD_DEDUP_THRESHOLDS
    return None, None


def register_embedding_set(catalog: Catalog, name: str, *, kind: str, model: str | None, dim: int,
                           preprocessing: dict[str, Any] | None, run_id: int) -> None:
    """Create the set's registry row (with the model's recommended dedup thresholds), or check
    that an existing one has the same dimension (and fill in thresholds it lacks)."""
    check_name(name)
    apply_threshold, report_threshold = recommended_dedup_thresholds(model)
    existing = catalog.rows("SELECT dim FROM embedding_sets WHERE name = ?", [name])
    if existing:
        if existing[0][0] != dim:
            raise StageError(f"embedding set {name!r} holds {existing[0][0]}-d vectors, not {dim}-d; "
                             "choose another --tag/--set name")
        catalog.execute("UPDATE embedding_sets SET apply_threshold = coalesce(apply_threshold, ?), "
                        "report_threshold = coalesce(report_threshold, ?) WHERE name = ?",
                        [apply_threshold, report_threshold, name])
        return
    catalog.execute("INSERT INTO embedding_sets (name, kind, model, dim, preprocessing, created_run, "
                    "apply_threshold, report_threshold) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [name, kind, model, dim, json.dumps(preprocessing or {}), run_id, apply_threshold,
                     report_threshold])


BUILTIN_SET = "builtin"


def register_builtin_set(catalog: Catalog, run_id: int, name: str = BUILTIN_SET) -> int:
    """Register a set of the weight-free descriptor (sanitize's decode pass and
    `predict --model builtin` write the same vectors; the default set is shared) and return
    its dim. A new set holds the alpha-aware multi-view descriptor (builtin-dct-msa); a set made
    before it (builtin-dct, one view; builtin-dct-ms) keeps its model while the images to describe
    are opaque (their vectors are the same): write descriptor.builtin_vectors_for(dim, ...)."""
    from vdc_lake.kernels.descriptor import (ALPHA_VIEW_NAME, BACKGROUND, DESCRIPTOR_DIM, DESCRIPTOR_NAME, SET_DIM,
                                             THUMBNAIL_SIZE, VIEW_SCALES)

    check_legacy_builtin_set(catalog, name)
    if catalog.rows("SELECT 1 FROM embedding_sets WHERE name = ? AND model = ?", [name, DESCRIPTOR_NAME]):
        model, dim, scales = DESCRIPTOR_NAME, DESCRIPTOR_DIM, [1.0]
    else:
        model, dim, scales = ALPHA_VIEW_NAME, SET_DIM, list(VIEW_SCALES)
    register_embedding_set(catalog, name, kind="descriptor", model=model, dim=dim,
                           preprocessing={"thumbnail": THUMBNAIL_SIZE, "grayscale": True, "view_scales": scales,
                                          "alpha_background": BACKGROUND}, run_id=run_id)
    return dim


def check_legacy_builtin_set(catalog: Catalog, name: str = BUILTIN_SET) -> None:
    """StageError when set `name` holds a builtin model made before the descriptor saw alpha
    (descriptor.LEGACY_MODELS) and a present image with transparency has no vector in it yet:
    its new vector would differ from what that model gave, and a set never mixes the two."""
    from vdc_lake.kernels.descriptor import ALPHA_VIEW_NAME, LEGACY_MODELS

    rows = catalog.rows("SELECT model FROM embedding_sets WHERE name = ? AND list_contains(?, model)",
                        [name, list(LEGACY_MODELS)])
    if not rows:
        return
    transparent = catalog.scalar(
        "SELECT count(*) FROM images i WHERE i.present AND i.has_transparency AND NOT EXISTS (SELECT 1 FROM "
        "embeddings e WHERE e.set_name = ? AND e.image_id = i.image_id AND e.version = i.version)", [name])
    if transparent:
        raise StageError(
            f"embedding set {name!r} holds {rows[0][0]} vectors, made before the built-in descriptor saw "
            f"transparency, and {transparent} image(s) with transparency would get {ALPHA_VIEW_NAME} vectors; "
            f"the two are never mixed in one set: describe every image into a new set (`vdc-lake predict --model "
            f"builtin --kind descriptor --set builtin-alpha`, then `--set builtin-alpha` for dedup), and keep sanitize "
            f"from adding to {name!r} with `builtin_descriptor = false` in [sanitize] of vdc-lake.toml")


def register_prediction_set(catalog: Catalog, name: str, *, kind: str, model: str | None,
                            class_names: list[str], preprocessing: dict[str, Any] | None, run_id: int) -> None:
    check_name(name)
    if catalog.scalar("SELECT count(*) FROM prediction_sets WHERE name = ?", [name]):
        return
    catalog.execute("INSERT INTO prediction_sets (name, kind, model, class_names, preprocessing, created_run) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [name, kind, model, class_names, json.dumps(preprocessing or {}), run_id])


def write_vectors(catalog: Catalog, table: str, name: str, run_id: int, image_ids: np.ndarray,
                  versions: np.ndarray, vectors: np.ndarray) -> int:
    """Append rows to the set of `embeddings` (column vector) or `predictions` (column probs):
    one Parquet part beside the catalog, registered in the caller's transaction (if any).
    vectors [n, d] (float32, or anything numpy casts to it). Returns n."""
    check_name(name)
    return write_part(catalog, table, name, run_id, image_ids, versions, vectors)


def set_rows_sql(catalog: Catalog, table: str, name: str) -> str:
    """A SQL relation of the set's rows (set_name, image_id, version, run_id, vector or probs,
    rowid), read from its own files only: cheaper than the view filtered by set name."""
    check_name(name)
    if has_vector_parts(catalog.con):
        return f"({set_relation(catalog.con, catalog.path, table, name)})"
    return f"(SELECT *, rowid FROM {table} WHERE set_name = '{name}')"  # a catalog of an older vdc-lake, read-only


def set_dim(catalog: Catalog, table: str, name: str) -> int:
    registry = {"embeddings": "embedding_sets", "predictions": "prediction_sets"}[table]
    if not catalog.scalar(f"SELECT count(*) FROM {registry} WHERE name = ?", [name]):
        known = [r[0] for r in catalog.rows(f"SELECT name FROM {registry} ORDER BY name")]
        raise StageError(f"no set named {name!r}; known sets: {', '.join(known) or 'none yet'} "
                         "(create one with `vdc-lake predict` or `vdc-lake import`)")
    if table == "embeddings":
        return int(catalog.scalar("SELECT dim FROM embedding_sets WHERE name = ?", [name]))
    return int(catalog.scalar("SELECT len(class_names) FROM prediction_sets WHERE name = ?", [name]))


_TABLE_COLUMN = VECTOR_TABLES
SCAN_MEMORY_LIMIT = "128MB"  # DuckDB's limit while a set streams out (see _stream_rows)


def memory_budget_bytes(catalog: Catalog) -> int:
    """[scale] memory_budget_gb in bytes; 0 means half of this machine's RAM."""
    budget = float(catalog.scale["memory_budget_gb"])
    if budget < 0:
        raise StageError(f"[scale] memory_budget_gb = {budget} must be >= 0 (0 = half of RAM)")
    if budget == 0:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    return int(budget * 1024**3)


def batch_rows_setting(catalog: Catalog, batch_rows: int | None = None) -> int:
    rows = int(batch_rows if batch_rows is not None else catalog.scale["vector_batch_rows"])
    if rows < 1:
        raise StageError(f"[scale] vector_batch_rows = {rows} must be at least 1")
    return rows


def _current_rows(catalog: Catalog, table: str, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rowid, image_id, version) of the set's current rows, in image_id order.

    Current: the image is present and the row is for its current version; where one image
    has several such rows (the set was computed twice), the newest run's (then the last
    written) wins. Only the key columns move here; the newest-run pick is one numpy sort,
    not a window function over every row.
    """
    keys = catalog.con.sql(
        f"""
        SELECT e.rowid AS row_id, e.image_id, e.version, e.run_id
        FROM {set_rows_sql(catalog, table, name)} e
        JOIN images i ON i.image_id = e.image_id AND i.version = e.version AND i.present
        """
    ).to_arrow_table()
    row_id = keys.column("row_id").to_numpy()
    image_id = keys.column("image_id").to_numpy()
    version = keys.column("version").to_numpy().astype(np.int32, copy=False)
    run_id = keys.column("run_id").to_numpy()
    del keys
    order = np.lexsort((row_id, run_id, image_id))  # by image, then run, then row: the last of each image wins
    image_id = image_id[order]
    last = np.ones(len(order), bool)
    last[:-1] = image_id[1:] != image_id[:-1]
    keep = order[last]
    return row_id[keep], image_id[last], version[keep]


def count_vectors(catalog: Catalog, table: str, name: str) -> int:
    """How many vectors read_vectors would return (reads only the key columns)."""
    set_dim(catalog, table, name)
    return len(_current_rows(catalog, table, name)[1])


def _allocate(catalog: Catalog, n: int, dim: int, memory_budget: int | None) -> np.ndarray:
    """An [n, dim] float32 array: in RAM, or a memmap next to the catalog beyond the budget.

    The memmap's file is unlinked at once: the mapping keeps the space until the array is
    freed, so a crash leaves nothing behind.
    """
    budget = memory_budget_bytes(catalog) if memory_budget is None else memory_budget
    if n * dim * 4 <= budget or n == 0:
        return np.empty((n, dim), np.float32)
    folder = side_folder(catalog.path, ".spill", create=True)
    handle, path = tempfile.mkstemp(prefix="vectors-", suffix=".f32", dir=folder)
    try:
        os.ftruncate(handle, n * dim * 4)
        return np.memmap(path, np.float32, mode="r+", shape=(n, dim))
    finally:
        os.close(handle)
        os.unlink(path)


def _stream_rows(catalog: Catalog, table: str, name: str, dim: int, batch_rows: int,
                 wanted: np.ndarray | None = None) -> Iterator[pa.RecordBatch]:
    """(row_id, v FLOAT[dim]) of every row of the set, a batch at a time: its files, read
    directly (vectors.stream_parts; with wanted, sorted row ids, only the row groups holding
    some), then the rows a catalog being migrated still holds.

    DuckDB keeps what it read (table blocks, and Parquet pages in its external file cache) in
    its buffer pool up to its memory_limit; the limit is lowered while a set streams, so the
    set's own array, not a cached copy of its blocks, is what the stage holds.
    """
    column = _TABLE_COLUMN[table]
    with _lowered_memory_limit(catalog):
        if not has_vector_parts(catalog.con):
            yield from _stream_table_rows(catalog, table, column, name, dim, batch_rows, 0)
            return
        yield from stream_parts(part_rows(catalog.con, catalog.path, table, name), column, dim, batch_rows,
                                wanted=wanted)
        if catalog.scalar("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                          "AND table_name = ?", [LEGACY_TABLES[table]]):
            yield from _stream_table_rows(catalog, LEGACY_TABLES[table], column, name, dim, batch_rows,
                                          LEGACY_ROWID_BASE)


@contextmanager
def _lowered_memory_limit(catalog: Catalog) -> Iterator[None]:
    """DuckDB's memory_limit at SCAN_MEMORY_LIMIT (never above a smaller configured one) for the block."""
    con = catalog.con
    # put back as configured: DuckDB shows the limit rounded ('953.6 MiB'), so setting what it
    # shows would drift a little with every set read
    limit = catalog.scale.get("duckdb_memory_limit") or con.execute(
        "SELECT current_setting('memory_limit')").fetchall()[0][0]
    if _setting_bytes(limit) > _setting_bytes(SCAN_MEMORY_LIMIT):  # never raise a smaller configured limit
        con.execute(f"SET memory_limit = '{SCAN_MEMORY_LIMIT}'").fetchall()
    try:
        yield
    finally:
        con.execute(f"SET memory_limit = '{limit}'").fetchall()


def _stream_table_rows(catalog: Catalog, table: str, column: str, name: str, dim: int, batch_rows: int,
                       rowid_base: int) -> Iterator[pa.RecordBatch]:
    """(row_id, v FLOAT[dim]) of the set's rows in a table (before migration 013): a plain scan."""
    reader = catalog.con.sql(
        f"SELECT e.rowid + {rowid_base} AS row_id, e.{column}::FLOAT[{dim}] AS v FROM {table} e WHERE e.set_name = ?",
        params=[name],
    ).to_arrow_reader(batch_rows)
    for batch in reader:
        if batch.num_rows:
            yield batch
    del reader


_UNITS = {"": 1, "B": 1, "BYTES": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _setting_bytes(text: str) -> float:
    """DuckDB's memory_limit as bytes ('488.2 MiB', '128MB'); unreadable text counts as no limit."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).upper() not in _UNITS:
        return float("inf")
    return float(match.group(1)) * _UNITS[match.group(2).upper()]


def _batch_vectors(batch: pa.RecordBatch, dim: int) -> np.ndarray:
    """[b, dim] float32 view of a FLOAT[dim] column (no copy)."""
    return batch.column(1).flatten().to_numpy().reshape(-1, dim)


def _current_order(catalog: Catalog, table: str, name: str) -> tuple[np.ndarray, ...]:
    """(image_ids, versions, sorted row ids, argsort of the row ids) of the set's current rows,
    what _matched_batches needs; the unsorted row ids are not kept (8 bytes a row at 10^8)."""
    row_ids, image_ids, versions = _current_rows(catalog, table, name)
    by_row = np.argsort(row_ids)
    return image_ids, versions, row_ids[by_row], by_row


def _matched_batches(catalog: Catalog, table: str, name: str, dim: int, batch_rows: int, sorted_rows: np.ndarray,
                     by_row: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, pa.RecordBatch]]:
    """The set's stored batches with, for each, where its current rows go (positions in
    image_id order) and which of its rows are current (a boolean mask); batches with none skipped."""
    for batch in _stream_rows(catalog, table, name, dim, batch_rows, sorted_rows):
        rows = batch.column(0).to_numpy()
        at = np.minimum(np.searchsorted(sorted_rows, rows), max(len(sorted_rows) - 1, 0))
        wanted = sorted_rows[at] == rows if len(sorted_rows) else np.zeros(len(rows), bool)
        if wanted.any():
            yield by_row[at[wanted]], wanted, batch


def read_vectors(catalog: Catalog, table: str, name: str, *, batch_rows: int | None = None,
                 memory_budget: int | None = None) -> VectorSet:
    """Current-version vectors of present images, in image_id order (see _current_rows).

    Streams the set in batches of batch_rows ([scale] vector_batch_rows) into one
    preallocated float32 array, spilled to a memmap beyond memory_budget bytes ([scale]
    memory_budget_gb): peak memory is the set's raw bytes plus one batch.
    """
    dim = set_dim(catalog, table, name)
    batch_rows = batch_rows_setting(catalog, batch_rows)
    image_ids, versions, sorted_rows, by_row = _current_order(catalog, table, name)
    vectors = _allocate(catalog, len(image_ids), dim, memory_budget)
    _fill(vectors, catalog, table, name, batch_rows, sorted_rows, by_row)
    return VectorSet(name=name, image_ids=image_ids, versions=versions, vectors=vectors)


def _fill(vectors: np.ndarray, catalog: Catalog, table: str, name: str, batch_rows: int, sorted_rows: np.ndarray,
          by_row: np.ndarray) -> None:
    """Fill vectors [n, dim] (row by_row[i] of the result from stored row sorted_rows[i]) from the
    set's files; StageError when a writer changed the set meanwhile (fewer rows came back)."""
    filled = 0
    for position, wanted, batch in _matched_batches(catalog, table, name, vectors.shape[1], batch_rows,
                                                    sorted_rows, by_row):
        block = _batch_vectors(batch, vectors.shape[1])
        vectors[position] = block if wanted.all() else block[wanted]
        filled += len(position)
    if filled != len(vectors):
        raise StageError(f"set {name!r} changed while it was read ({filled} of {len(vectors)} vectors); "
                         "run the command again once the other writer is done")


def read_vector_range(catalog: Catalog, table: str, name: str, start: int, stop: int, *,
                      batch_rows: int | None = None) -> VectorSet:
    """Rows [start, stop) of what read_vectors returns (image_id order), reading only the files'
    row groups that hold them: one torchrun rank's block of a set, straight from the Parquet
    parts (no exported copy). Memory: the block plus one row group."""
    dim = set_dim(catalog, table, name)
    batch_rows = batch_rows_setting(catalog, batch_rows)
    image_ids, versions, sorted_rows, by_row = _current_order(catalog, table, name)
    start, stop = max(0, int(start)), min(len(image_ids), int(stop))
    mine = (by_row >= start) & (by_row < stop)
    sorted_rows, by_row = sorted_rows[mine], by_row[mine] - start
    vectors = np.empty((max(stop - start, 0), dim), np.float32)
    _fill(vectors, catalog, table, name, batch_rows, sorted_rows, by_row)
    return VectorSet(name=name, image_ids=image_ids[start:stop], versions=versions[start:stop], vectors=vectors)


def iter_vectors(catalog: Catalog, table: str, name: str, *, batch_rows: int | None = None) -> Iterator[VectorBatch]:
    """The set's current vectors (as read_vectors picks them) in batches of at most batch_rows,
    in storage order, for stages that need one row at a time (scores, distances to examples):
    memory is one batch, whatever the set's size."""
    dim = set_dim(catalog, table, name)
    batch_rows = batch_rows_setting(catalog, batch_rows)
    image_ids, versions, sorted_rows, by_row = _current_order(catalog, table, name)
    for position, wanted, batch in _matched_batches(catalog, table, name, dim, batch_rows, sorted_rows, by_row):
        yield VectorBatch(image_ids[position], versions[position], np.array(_batch_vectors(batch, dim)[wanted]))


def missing_images(catalog: Catalog, table: str, name: str) -> pa.Table:
    """Present images with no row in the set for their current version (work for predict)."""
    return catalog.arrow(
        f"""
        SELECT i.image_id, i.version, i.root || '/' || i.rel_path AS path
        FROM images i
        WHERE i.present AND i.header_error IS NULL
          AND NOT EXISTS (SELECT 1 FROM {set_rows_sql(catalog, table, name)} e WHERE e.image_id = i.image_id
                          AND e.version = i.version)
        ORDER BY i.image_id
        """
    )
