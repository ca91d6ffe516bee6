"""The Parquet store of vectors beside a catalog: `CATALOG.vectors/<table>/<set>/part-<id>.parquet`.

Each embedding set (table `embeddings`, column `vector`) and prediction set (`predictions`,
column `probs`) is a list of immutable Parquet files (image_id BIGINT, version INTEGER, run_id
BIGINT and the vectors as a fixed-size float list), each registered in the catalog's
`vector_parts` table. `embeddings` and `predictions` are views over the registered files (one
`read_parquet` per set, created by every writer and, as TEMP views, by every reader), so every
SQL surface reads them as before; their `rowid` column orders rows by writing (part id, then
row in the part) as a table's rowid did.

A part is written under a temp name (O_EXCL | O_NOFOLLOW), fsynced and renamed into place, and
only then registered, inside the caller's transaction: a killed or rolled-back writer leaves an
unregistered file, which the next writer removes (`remove_orphans`). Parts are never changed;
many small parts of one run are merged into one (`merge_small_parts`) and the small ones are
unregistered, their files removed by the next sweep. Every folder on the way and every part is
checked with lstat: a link, a file that is not a regular file, or a registered path that is not
`<table>/<set>/part-<id>.parquet` is an UnsafeCatalogError naming it. DuckDB connections may
read this folder and nothing else (allowed_directories, set by the connection).

A Ray task of predict writes its shard's part itself, under a staged name in the set's folder
(`.staged-<stage>-<key>-<shard>.parquet`, `write_staged_part`; the folder must be shared with
the workers, as CATALOG.staging is); the driver checks it and adopts it (`adopt_staged_part`:
renamed to `part-<id>.parquet` and registered in its transaction). A staged file is kept while
the Ray map that staged it can resume (CATALOG.staging/<stage>-<key> exists), then it is an
orphan that `remove_orphans` removes.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vdc_lake.catalog.side_files import file_kind, side_folder, side_path
from vdc_lake.errors import CatalogDamagedError, StageError, UnsafeCatalogError
from vdc_lake.fileops.confine import check_name

VECTORS_SUFFIX = ".vectors"
VECTOR_TABLES = {"embeddings": "vector", "predictions": "probs"}  # view name: its vector column
LEGACY_TABLES = {table: f"{table}_rows_legacy" for table in VECTOR_TABLES}  # before migration 013
# A legacy row (a catalog being migrated) sorts after every part: parts made by the migration
# hold the legacy rows written before it.
LEGACY_ROWID_BASE = 1 << 62
ROW_GROUP_BYTES = 32 * 2**20      # one row group of vectors: what a streaming reader holds at once
SMALL_PART_BYTES = 32 * 2**20     # parts below this are merged ...
MERGE_AFTER_PARTS = 16            # ... when a run has written this many of them in a row
MIGRATE_CHUNK_BYTES = 256 * 2**20  # legacy rows moved per part when a catalog is migrated
_PART = re.compile(r"(embeddings|predictions)/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})/part-([0-9]{1,18})\.parquet")
# Files a merge or a rewrite replaced, per catalog: (a path registered once the change is
# committed, or None: the part id is gone once committed; the part id; the files), removed once
# the change is committed (seen from a second connection), so a long run does not keep them all.
_RETIRED: dict[str, list[tuple[str | None, int, list[Path]]]] = {}
_PART_FILE = re.compile(r"part-[0-9]{1,18}\.parquet|\.part-[0-9]{1,18}\.parquet\.tmp")
# A part a Ray task wrote (its stage folder's name in CATALOG.staging, then the shard), and its temp files.
_STAGED = re.compile(r"\.staged-([a-z][a-z0-9_-]{0,63}-[0-9a-f]{16})-[0-9]{5}\.parquet")
_STAGED_TEMP = re.compile(r"\.staged-.*\.tmp")
STAGING_SUFFIX = ".staging"  # CATALOG.staging: the Ray backend's stage folders


def vectors_folder(catalog_path: str | os.PathLike, *, create: bool = False) -> Path:
    """CATALOG.vectors (a folder, never a link)."""
    return side_folder(catalog_path, VECTORS_SUFFIX, create=create)


def _folder(path: Path, *, create: bool) -> Path:
    """path as a real folder (lstat: no link, no file); made with mkdir (which follows no link) when asked."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        if not create:
            return path
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        raise UnsafeCatalogError(f"{path} is a symbolic link (to {os.readlink(path)}); vectors are never read or "
                                 f"written through links beside a catalog: remove it (rm {path}) and restore the "
                                 "folder from your copy of the catalog")
    if not stat.S_ISDIR(mode):
        raise UnsafeCatalogError(f"{path} is a {file_kind(mode)}, where vdc-lake keeps a catalog's vector files "
                                 "(a folder): move it away and run the command again")
    return path


def set_folder(catalog_path: str | os.PathLike, table: str, name: str, *, create: bool = False) -> Path:
    """CATALOG.vectors/<table>/<set>, every level checked (and made when create)."""
    check_name(name)
    root = vectors_folder(catalog_path, create=create)
    return _folder(_folder(root / table, create=create) / name, create=create)


def part_file(catalog_path: str | os.PathLike, relative: str) -> Path:
    """The absolute path of a registered part, after checking what the catalog says: the path is
    `<table>/<set>/part-<id>.parquet` and the file a regular file reached through no link."""
    found = _PART.fullmatch(str(relative))
    if found is None:
        raise UnsafeCatalogError(f"catalog {catalog_path} registers the vector file {relative!r}, which is not a "
                                 f"part inside {Path(str(catalog_path) + VECTORS_SUFFIX)}: the catalog was edited; "
                                 "use a catalog you trust")
    folder = set_folder(catalog_path, found.group(1), found.group(2))
    path = folder / f"part-{found.group(3)}.parquet"
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise CatalogDamagedError(f"vector file {path} registered in catalog {catalog_path} is missing: copy the "
                                  "catalog's .vectors folder back with it (see docs/catalog.md, moving a catalog)")
    if stat.S_ISLNK(mode) or not stat.S_ISREG(mode):
        what = f"a symbolic link (to {os.readlink(path)})" if stat.S_ISLNK(mode) else f"a {file_kind(mode)}"
        raise UnsafeCatalogError(f"vector file {path} is {what}, not a regular file: vdc-lake never reads vectors "
                                 "through links; remove it and restore it from your copy of the catalog")
    return path


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# -- writing -------------------------------------------------------------------------------------

def vector_table(image_ids: np.ndarray, versions: np.ndarray, run_ids: np.ndarray | int, vectors: np.ndarray,
                 column: str) -> pa.Table:
    """The Arrow table of one part: image_id int64, version int32, run_id int64, column fixed_size_list<float32>[d]."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(image_ids)
    if vectors.ndim != 2 or len(vectors) != n:
        raise StageError(f"{n} image ids for vectors of shape {vectors.shape}: expected [{n}, dim]")
    run_ids = np.full(n, run_ids, np.int64) if np.isscalar(run_ids) else np.asarray(run_ids, np.int64)
    return pa.table({
        "image_id": pa.array(np.asarray(image_ids, dtype=np.int64)),
        "version": pa.array(np.asarray(versions, dtype=np.int32)),
        "run_id": pa.array(run_ids),
        column: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
    })


def _write_file(folder: Path, part_id: int, batches: Iterator[pa.RecordBatch] | list[pa.RecordBatch],
                schema: pa.Schema, dim: int) -> tuple[Path, int, int]:
    """Write the batches as folder/part-<id>.parquet: temp name (O_EXCL | O_NOFOLLOW), fsync,
    rename. Returns (path, rows, bytes)."""
    return _write_named(folder, f"part-{part_id:012d}.parquet", f".part-{part_id:012d}.parquet.tmp", batches,
                        schema, dim)


def _write_named(folder: Path, name: str, temp_name: str, batches: Iterator[pa.RecordBatch] | list[pa.RecordBatch],
                 schema: pa.Schema, dim: int, *, replace: bool = False) -> tuple[Path, int, int]:
    """_write_file's body for any final name; replace: an existing file of that name is replaced
    (rename never follows a link there), else it is an UnsafeCatalogError."""
    final = folder / name
    temp = folder / temp_name
    handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    rows = 0
    try:
        with os.fdopen(handle, "wb", buffering=8 * 2**20) as sink:
            writer = pq.ParquetWriter(sink, schema, compression="none", use_dictionary=["version", "run_id"],
                                      write_statistics=["image_id", "version", "run_id"])
            group = max(1024, ROW_GROUP_BYTES // max(4 * dim, 1))
            for batch in batches:
                if batch.num_rows:
                    writer.write_batch(batch, row_group_size=group)
                    rows += batch.num_rows
            writer.close()
            sink.flush()
            os.fsync(sink.fileno())
        if not replace and os.path.lexists(final):  # part ids come from a sequence: an existing one is not ours
            raise UnsafeCatalogError(f"{final} exists but the catalog never registered it: move it away")
        os.replace(temp, final)
        _fsync_folder(folder)  # the new name is durable before the catalog registers it
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    return final, rows, os.lstat(final).st_size


def _fsync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_part(catalog: Any, table: str, name: str, run_id: int | np.ndarray, image_ids: np.ndarray,
               versions: np.ndarray, vectors: np.ndarray) -> int:
    """Write one part of the set and register it (in the caller's transaction, if any); refresh
    the table's view; merge this run's small parts when enough accumulated. Returns the rows written.

    catalog: a vdc_lake Catalog (writer); run_id: one run for every row, or [n] (rows carried
    over under their own runs)."""
    column = VECTOR_TABLES[table]
    if len(image_ids) == 0:
        return 0
    data = vector_table(image_ids, versions, run_id, vectors, column)
    dim = int(np.asarray(vectors).shape[1])
    sweep_merged(catalog)
    folder = set_folder(catalog.path, table, name, create=True)
    part_id = int(catalog.scalar("SELECT nextval('vector_part_seq')"))
    path, rows, size = _write_file(folder, part_id, data.to_batches(), data.schema, dim)
    runs = np.unique(data.column("run_id").to_numpy())
    run_id = int(runs[0]) if len(runs) == 1 else None
    _register(catalog, part_id, table, name, path, rows, dim, run_id, size)
    _after_register(catalog, table, name, run_id)
    return rows


def _after_register(catalog: Any, table: str, name: str, run_id: int | None) -> None:
    """Merge the run's small parts when enough accumulated; else refresh the table's view."""
    if run_id is None or not merge_small_parts(catalog, table, name, run_id):
        create_vector_views(catalog.con, catalog.path, tables=[table])


def staged_name(stage_folder: str, shard: int) -> str:
    """The name a Ray task gives its shard's part in the set's folder: `.staged-<stage folder>-<shard>.parquet`
    (stage_folder: its map's folder in CATALOG.staging, `<stage>-<key>`, the key hashing the items)."""
    name = f".staged-{stage_folder}-{shard:05d}.parquet"
    if _STAGED.fullmatch(name) is None:
        raise StageError(f"{stage_folder!r} is not a Ray stage folder name (<stage>-<16 hex digits>)")
    return name


def write_staged_part(folder: str | os.PathLike, name: str, table: str, run_id: int, image_ids: np.ndarray,
                      versions: np.ndarray, vectors: np.ndarray) -> tuple[int, int] | None:
    """Write a finished part of the set whose folder is `folder` (CATALOG.vectors/<table>/<set>,
    made by the driver) under the staged name `name` (staged_name), without registering it: what
    a Ray task does; the driver adopts it (adopt_staged_part). Same schema and row groups as
    write_part; temp name, fsync, rename (a duplicate attempt of the shard replaces it with the
    same rows). Returns (rows, bytes), or None when there are no rows (no file is written).

    image_ids, versions [n]; vectors [n, d] (float32, or anything numpy casts to it)."""
    if _STAGED.fullmatch(name) is None:
        raise StageError(f"{name!r} is not a staged part name (see staged_name)")
    if len(image_ids) == 0:
        return None
    folder = _folder(Path(folder), create=False)
    if not folder.is_dir():
        raise StageError(f"{folder} is missing on this Ray worker: the catalog's .vectors folder must be on "
                         "storage every node mounts at the same path (as its .staging folder)")
    data = vector_table(image_ids, versions, run_id, vectors, VECTOR_TABLES[table])
    temp = f"{name}.{os.getpid()}-{os.urandom(6).hex()}.tmp"  # attempts of one shard may overlap
    _, rows, size = _write_named(folder, name, temp, data.to_batches(), data.schema, int(np.shape(vectors)[1]),
                                 replace=True)
    return rows, size


def adopt_staged_part(catalog: Any, table: str, name: str, staged: str, *, run_id: int, image_ids: np.ndarray,
                      versions: np.ndarray, dim: int, size: int) -> int:
    """Register the part a Ray task wrote as `staged` in the set's folder (in the caller's
    transaction), after checking it is what the task said: a regular file reached through no
    link, the parts' schema with [dim] vectors, `size` bytes, and exactly the rows image_ids,
    versions ([n], in order). It is renamed to part-<id>.parquet, or, when it holds another run's
    id (a resumed run adopts what an earlier one staged), written anew under run_id. Then as
    write_part: merge the run's small parts or refresh the view. Returns the rows registered.
    A file that is not what the task wrote is an UnsafeCatalogError (a link, not a regular file)
    or a CatalogDamagedError (other rows, dim or size), naming it."""
    if _STAGED.fullmatch(staged) is None:
        raise StageError(f"{staged!r} is not a staged part name (see staged_name)")
    folder = set_folder(catalog.path, table, name)
    path = folder / staged
    handle = _open_staged(path)
    with os.fdopen(handle, "rb") as source:
        found = os.fstat(source.fileno())
        reader = pq.ParquetFile(source)
        expected = vector_table(np.empty(0, np.int64), np.empty(0, np.int32), run_id, np.empty((0, dim), np.float32),
                                VECTOR_TABLES[table]).schema
        if not reader.schema_arrow.equals(expected):
            _not_as_written(path, f"its columns are {_columns(reader.schema_arrow)}, not {_columns(expected)}")
        if reader.metadata.num_rows != len(image_ids) or found.st_size != size:
            _not_as_written(path, f"{reader.metadata.num_rows} rows in {found.st_size} bytes, where the task wrote "
                                  f"{len(image_ids)} rows in {size} bytes")
        keys = reader.read(columns=["image_id", "version", "run_id"])
        if not (np.array_equal(keys.column("image_id").to_numpy(), np.asarray(image_ids, np.int64))
                and np.array_equal(keys.column("version").to_numpy(), np.asarray(versions, np.int32))):
            _not_as_written(path, "its image ids or versions are not those of the task's images")
        part_id = int(catalog.scalar("SELECT nextval('vector_part_seq')"))
        if (keys.column("run_id").to_numpy() == run_id).all():
            final = folder / f"part-{part_id:012d}.parquet"
            if os.path.lexists(final):
                raise UnsafeCatalogError(f"{final} exists but the catalog never registered it: move it away")
            os.rename(path, final)
            if os.lstat(final).st_ino != found.st_ino:  # swapped between the check and the rename
                _not_as_written(path, "it was replaced while it was checked")
            _fsync_folder(folder)
        else:
            data = reader.read()
            data = data.set_column(2, "run_id", pa.array(np.full(data.num_rows, run_id, np.int64)))
            final, _, _ = _write_file(folder, part_id, data.to_batches(), data.schema, dim)
            os.unlink(path)
    _register(catalog, part_id, table, name, final, len(image_ids), dim, run_id, os.lstat(final).st_size)
    _after_register(catalog, table, name, run_id)
    return len(image_ids)


def _open_staged(path: Path) -> int:
    """A read handle on a staged part: a regular file, reached through no link."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise StageError(f"{path}, which a Ray task wrote, is gone: run the command again (its shard is "
                         "computed again)") from None
    if stat.S_ISLNK(mode) or not stat.S_ISREG(mode):
        what = f"a symbolic link (to {os.readlink(path)})" if stat.S_ISLNK(mode) else f"a {file_kind(mode)}"
        raise UnsafeCatalogError(f"{path}, where a Ray task wrote a vector part, is {what}: vdc-lake never reads "
                                 f"vectors through links; remove it (rm {path}) and run the command again")
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:  # ELOOP: a link put there since the check
        raise UnsafeCatalogError(f"{path}, where a Ray task wrote a vector part, cannot be opened without "
                                 f"following a link ({e.strerror}): remove it and run the command again") from e


def _columns(schema: pa.Schema) -> str:
    return ", ".join(f"{field.name} {field.type}" for field in schema)


def _not_as_written(path: Path, why: str) -> None:
    raise CatalogDamagedError(f"{path} is not the vector part its Ray task wrote ({why}): it was changed since; "
                              f"remove it (rm {path}) and run the command again (its shard is computed again)")


def staged_part_exists(catalog_path: str | os.PathLike, table: str, name: str, staged: str) -> bool:
    """Whether the set's folder holds `staged` (any kind of entry: adopting it checks what it is)."""
    return os.path.lexists(set_folder(catalog_path, table, name) / staged)


def _register(catalog: Any, part_id: int, table: str, name: str, path: Path, rows: int, dim: int,
              run_id: int | None, size: int) -> None:
    catalog.execute("INSERT INTO vector_parts (part_id, table_name, set_name, path, n_rows, dim, run_id, bytes) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [part_id, table, name, f"{table}/{name}/{path.name}", rows, dim, run_id, size])


def merge_small_parts(catalog: Any, table: str, name: str, run_id: int) -> bool:
    """Merge the newest parts of the set when they are MERGE_AFTER_PARTS or more small parts of
    `run_id` in a row (newest first, stopping at the first other): one part in their place, with
    their rows in order. The small files are removed once the merge is committed (sweep_merged,
    or the next writer's remove_orphans), so a rolled-back transaction loses nothing. Returns
    whether it merged."""
    newest = catalog.rows("SELECT part_id, path, run_id, bytes, dim FROM vector_parts WHERE table_name = ? AND "
                          "set_name = ? ORDER BY part_id DESC LIMIT ?", [table, name, 4 * MERGE_AFTER_PARTS])
    tail = []
    for part_id, relative, part_run, size, dim in newest:
        if part_run != run_id or size >= SMALL_PART_BYTES:
            break
        tail.append((part_id, relative, dim))
    if len(tail) < MERGE_AFTER_PARTS or len({dim for _, _, dim in tail}) != 1:
        return False
    tail.reverse()
    dim = tail[0][2]
    files = [part_file(catalog.path, relative) for _, relative, _ in tail]
    schema = pq.read_schema(files[0])
    folder = set_folder(catalog.path, table, name, create=True)
    part_id = int(catalog.scalar("SELECT nextval('vector_part_seq')"))

    def batches() -> Iterator[pa.RecordBatch]:
        for path in files:
            yield from pq.ParquetFile(path).iter_batches(batch_size=65_536)

    path, rows, size = _write_file(folder, part_id, batches(), schema, dim)
    catalog.execute("DELETE FROM vector_parts WHERE list_contains(?, part_id)", [[p for p, _, _ in tail]])
    _register(catalog, part_id, table, name, path, rows, dim, run_id, size)
    _RETIRED.setdefault(str(catalog.path), []).append((f"{table}/{name}/{path.name}", part_id, files))
    create_vector_views(catalog.con, catalog.path, tables=[table])
    return True


def sweep_merged(catalog: Any) -> int:
    """Remove the files of merges this process made whose transaction has committed (a second
    connection sees the merged part); a merge not yet committed (or rolled back) keeps them.
    Returns how many files were removed."""
    pending = _RETIRED.get(str(catalog.path))
    if not pending:
        return 0
    cursor = catalog.con.cursor()  # its own transaction: sees only what is committed
    try:
        registered = {(row[0], row[1]) for row in cursor.execute(
            "SELECT path, part_id FROM vector_parts WHERE list_contains(?, part_id)",
            [[part_id for _, part_id, _ in pending]]).fetchall()}
    finally:
        cursor.close()
    ids = {part_id for _, part_id in registered}

    def committed(item: tuple[str | None, int, list[Path]]) -> bool:
        path, part_id, _ = item
        return (path, part_id) in registered if path is not None else part_id not in ids

    removed = 0
    for _, _, files in [item for item in pending if committed(item)]:
        for path in files:
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
    pending[:] = [item for item in pending if not committed(item)]
    return removed


def drop_rows_newer_than(catalog: Any, versions_sql: str) -> int:
    """Remove the vector rows of versions newer than a restore makes current again:
    versions_sql yields (image_id, planned_version); every row with that image and a higher
    version goes. Each part holding some is rewritten without them under a new file name but
    its part id (its rows keep their order), or unregistered when nothing is left; the old
    files go once the caller's transaction commits. Returns the rows removed."""
    removed = 0
    for table in VECTOR_TABLES:
        doomed = catalog.rows(
            f"""SELECT e.rowid >> 32 AS part_id, list(e.rowid & 4294967295) AS rows
                FROM ({set_relation(catalog.con, catalog.path, table)}) e
                WHERE e.rowid < {LEGACY_ROWID_BASE} AND EXISTS (SELECT 1 FROM ({versions_sql}) r (image_id, planned_version)
                              WHERE r.image_id = e.image_id AND e.version > r.planned_version)
                GROUP BY ALL""")
        for part_id, rows in doomed:
            removed += _rewrite_without(catalog, table, int(part_id), np.asarray(rows, np.int64))
        if doomed:
            create_vector_views(catalog.con, catalog.path, tables=[table])
    return removed


def _rewrite_without(catalog: Any, table: str, part_id: int, rows: np.ndarray) -> int:
    (relative, name, dim), = catalog.rows("SELECT path, set_name, dim FROM vector_parts WHERE part_id = ?", [part_id])
    old = part_file(catalog.path, relative)
    data = pq.read_table(old)
    keep = np.ones(data.num_rows, bool)
    keep[rows] = False
    if not keep.any():
        catalog.execute("DELETE FROM vector_parts WHERE part_id = ?", [part_id])
        _RETIRED.setdefault(str(catalog.path), []).append((None, part_id, [old]))
        return len(rows)
    kept = data.filter(pa.array(keep))
    folder = set_folder(catalog.path, table, name, create=True)
    new_id = int(catalog.scalar("SELECT nextval('vector_part_seq')"))  # a fresh file name; the part id stays
    path, n, size = _write_file(folder, new_id, kept.to_batches(), kept.schema, int(dim))
    new_relative = f"{table}/{name}/{path.name}"
    catalog.execute("UPDATE vector_parts SET path = ?, n_rows = ?, bytes = ? WHERE part_id = ?",
                    [new_relative, n, size, part_id])
    _RETIRED.setdefault(str(catalog.path), []).append((new_relative, part_id, [old]))
    return len(rows)


def remove_orphans(con: duckdb.DuckDBPyConnection, catalog_path: str | os.PathLike) -> int:
    """Remove the part files (and temp files) no registration names: what a killed or
    rolled-back writer left, and parts merged away; and the parts Ray tasks staged for a map that
    can no longer resume (see _staged_orphan). Call only under the writer lock, outside a
    transaction. Returns how many were removed."""
    root = vectors_folder(catalog_path)
    if not os.path.lexists(root):
        return 0
    registered = {row[0] for row in con.execute("SELECT path FROM vector_parts").fetchall()}
    staging = side_path(catalog_path, STAGING_SUFFIX)
    removed = 0
    for table in VECTOR_TABLES:
        tables = _folder(root / table, create=False)
        if not tables.is_dir():
            continue
        for entry in os.scandir(tables):
            if not entry.is_dir(follow_symlinks=False):
                continue
            for item in os.scandir(_folder(Path(entry.path), create=False)):
                if _PART_FILE.fullmatch(item.name) and f"{table}/{entry.name}/{item.name}" not in registered \
                        and item.is_file(follow_symlinks=False) \
                        or _staged_orphan(item.name, staging) and not item.is_dir(follow_symlinks=False):
                    os.unlink(item.path)
                    removed += 1
    return removed


def _staged_orphan(name: str, staging: Path) -> bool:
    """Whether `name` is a Ray task's temp file, or a part it staged for a map that can no longer
    resume (its folder in CATALOG.staging is gone: the map finished, or a later one removed it)."""
    if _STAGED_TEMP.fullmatch(name):
        return True
    found = _STAGED.fullmatch(name)
    return found is not None and not os.path.isdir(staging / found.group(1))


# -- views ---------------------------------------------------------------------------------------

def has_vector_parts(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether migration 013 made vector_parts in this catalog (a catalog of an older vdc-lake has none)."""
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() AND "
                            "schema_name = 'main' AND table_name = 'vector_parts'").fetchall()[0][0])


def _legacy_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() AND "
                            "schema_name = 'main' AND table_name = ?", [LEGACY_TABLES[table]]).fetchall()[0][0])


def set_relation(con: duckdb.DuckDBPyConnection, catalog_path: str | os.PathLike, table: str,
                 name: str | None = None) -> str:
    """SQL for the rows of a table's registered parts (of one set, or all): set_name, image_id,
    version, run_id, the vector column and rowid (part id << 32 | row in the part)."""
    column = VECTOR_TABLES[table]
    sql = "SELECT set_name, path FROM vector_parts WHERE table_name = ?" + (" AND set_name = ?" if name else "")
    parts: dict[str, list[tuple[int, str]]] = {}
    for set_name, part_id, relative in con.execute(sql.replace("SELECT set_name,", "SELECT set_name, part_id,")
                                                   + " ORDER BY set_name, part_id",
                                                   [table, name] if name else [table]).fetchall():
        check_name(set_name)
        parts.setdefault(set_name, []).append((int(part_id), str(part_file(catalog_path, relative))))
    # rowid: the part's id (from a list indexed by DuckDB's file_index) << 32, plus the row in the part
    branches = [
        f"SELECT {_literal(set_name)} AS set_name, image_id, version, run_id, {column}, "
        f"(list_extract({'[' + ', '.join(str(i) for i, _ in files) + ']'}::BIGINT[], file_index::BIGINT + 1) << 32) "
        f"+ file_row_number AS rowid "
        f"FROM read_parquet([{', '.join(_literal(p) for _, p in files)}], file_row_number = true)"
        for set_name, files in parts.items()]
    if _legacy_exists(con, table):
        where = f" WHERE set_name = {_literal(check_name(name))}" if name else ""
        branches.append(f"SELECT set_name, image_id, version, run_id, {column}, rowid + {LEGACY_ROWID_BASE} AS rowid "
                        f"FROM {LEGACY_TABLES[table]}{where}")
    if not branches:
        branches.append(f"SELECT NULL::VARCHAR AS set_name, NULL::BIGINT AS image_id, NULL::INTEGER AS version, "
                        f"NULL::BIGINT AS run_id, NULL::FLOAT[] AS {column}, NULL::BIGINT AS rowid WHERE false")
    return "\nUNION ALL\n".join(branches)


def create_vector_views(con: duckdb.DuckDBPyConnection, catalog_path: str | os.PathLike, *, temp: bool = False,
                        tables: list[str] | None = None) -> None:
    """(Re)create the `embeddings` / `predictions` views over the registered parts: stored ones
    (a writer; what a plain duckdb client reads) or TEMP ones (a reader: the stored text may name
    another folder, or have been edited)."""
    for table in tables or VECTOR_TABLES:
        query = set_relation(con, catalog_path, table)
        if temp and _stored_view(con, table) == _rendered_view(con, table, query):
            continue  # the catalog stores exactly this view (the package's views do the same)
        kind = "TEMP VIEW" if temp else "VIEW"
        con.execute(f"CREATE OR REPLACE {kind} {table} AS\n{query}").fetchall()


def _stored_view(con: duckdb.DuckDBPyConnection, table: str) -> str | None:
    rows = con.execute("SELECT sql FROM duckdb_views() WHERE database_name = current_database() AND schema_name = "
                       "'main' AND view_name = ? AND NOT temporary", [table]).fetchall()
    return rows[0][0] if rows else None


def _rendered_view(con: duckdb.DuckDBPyConnection, table: str, query: str) -> str | None:
    """The text DuckDB stores for `CREATE VIEW table AS query` (rendered without binding, as
    package_sql.expected_views does); None when it cannot be rendered so."""
    try:
        rendered = con.execute("SELECT json_deserialize_sql(json_serialize_sql(?))", [query]).fetchall()[0][0]
    except duckdb.Error:
        return None
    return f"CREATE VIEW {table} AS {rendered};"


# -- reading -------------------------------------------------------------------------------------

def part_rows(con: duckdb.DuckDBPyConnection, catalog_path: str | os.PathLike, table: str,
              name: str) -> list[tuple[int, Path, int]]:
    """(part_id, absolute path, rows) of the set's registered parts, in writing order."""
    return [(int(part_id), part_file(catalog_path, relative), int(rows)) for part_id, relative, rows in con.execute(
        "SELECT part_id, path, n_rows FROM vector_parts WHERE table_name = ? AND set_name = ? ORDER BY part_id",
        [table, name]).fetchall()]


def stream_parts(parts: list[tuple[int, Path, int]], column: str, dim: int, batch_rows: int, *,
                 wanted: np.ndarray | None = None) -> Iterator[pa.RecordBatch]:
    """(row_id, v fixed_size_list<float32>[dim]) of every row of the parts, a batch at a time,
    straight from the files (no DuckDB connection, no writer lock): memory is one row group.
    row_id is the views' rowid (part id << 32 | row in the part). wanted: sorted row ids; when
    given, parts and row groups holding none of them are not read (a rank's row range)."""
    for part_id, path, n_rows in parts:
        start = part_id << 32
        if wanted is not None and not _any_between(wanted, start, start + n_rows):
            continue
        try:
            handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise StageError(f"vector file {path} was removed while the set was read (a writer merged it); "
                             "run the command again") from None
        with os.fdopen(handle, "rb") as source:
            reader = pq.ParquetFile(source)
            for group in range(reader.num_row_groups):
                rows = reader.metadata.row_group(group).num_rows
                if wanted is None or _any_between(wanted, start, start + rows):
                    for batch in reader.read_row_group(group, columns=[column]).to_batches(batch_rows):
                        yield _row_batch(batch, start, dim)
                        start += batch.num_rows
                else:
                    start += rows


def _any_between(sorted_values: np.ndarray, low: int, high: int) -> bool:
    """Whether any of sorted_values lies in [low, high)."""
    at = np.searchsorted(sorted_values, low)
    return bool(at < len(sorted_values) and sorted_values[at] < high)


def _row_batch(batch: pa.RecordBatch, start: int, dim: int) -> pa.RecordBatch:
    vectors = batch.column(0)
    if isinstance(vectors, pa.ChunkedArray):
        vectors = vectors.combine_chunks()
    if not pa.types.is_fixed_size_list(vectors.type) or vectors.type.list_size != dim:
        vectors = vectors.cast(pa.list_(pa.float32(), dim))
    row_ids = pa.array(np.arange(start, start + batch.num_rows, dtype=np.int64))
    return pa.RecordBatch.from_arrays([row_ids, vectors], ["row_id", "v"])


# -- migration of a catalog that kept vectors as rows -------------------------------------------

def migrate_legacy_rows(catalog: Any, *, chunk_bytes: int | None = None) -> int:
    """Move the rows of embeddings_rows_legacy / predictions_rows_legacy (migration 013 renamed
    the old tables) into parts, oldest rows first: write a part, then in one transaction register
    it and delete its rows; drop a table once empty. Killed at any moment it loses nothing (a
    part not registered is removed by the next sweep) and the next writer goes on. Returns the
    rows moved. catalog: a vdc_lake Catalog (writer)."""
    moved = 0
    con = catalog.con
    for table, column in VECTOR_TABLES.items():
        if not _legacy_exists(con, table):
            continue
        legacy = LEGACY_TABLES[table]
        for (name,) in con.execute(f"SELECT DISTINCT set_name FROM {legacy} ORDER BY 1").fetchall():
            moved += _migrate_set(catalog, table, column, legacy, name, chunk_bytes or MIGRATE_CHUNK_BYTES)
        with catalog.transaction():
            catalog.execute(f"DROP TABLE {legacy}")
            create_vector_views(catalog.con, catalog.path, tables=[table])
    return moved


def _migrate_set(catalog: Any, table: str, column: str, legacy: str, name: str, chunk_bytes: int) -> int:
    moved = 0
    while True:
        dim = catalog.scalar(f"SELECT len({column}) FROM {legacy} WHERE set_name = ? LIMIT 1", [name])
        if dim is None:
            return moved
        rows = max(1, chunk_bytes // (4 * max(int(dim), 1)))
        try:
            chunk = catalog.arrow(f"SELECT rowid AS row_id, image_id, version, run_id, {column}::FLOAT[{int(dim)}] AS v "
                                  f"FROM {legacy} WHERE set_name = ? ORDER BY rowid LIMIT ?", [name, rows])
        except duckdb.ConversionException as e:
            raise CatalogDamagedError(f"set {name!r} in {legacy} holds vectors of different lengths ({e}); "
                                      "restore the catalog from a copy") from e
        vectors = chunk.column("v").combine_chunks().flatten().to_numpy().reshape(-1, int(dim))
        data = vector_table(chunk.column("image_id").to_numpy(), chunk.column("version").to_numpy(),
                            chunk.column("run_id").to_numpy(), vectors, column)
        folder = set_folder(catalog.path, table, name, create=True)
        part_id = int(catalog.scalar("SELECT nextval('vector_part_seq')"))
        path, n, size = _write_file(folder, part_id, data.to_batches(), data.schema, int(dim))
        runs = np.unique(data.column("run_id").to_numpy())
        last = int(chunk.column("row_id").to_numpy()[-1])
        with catalog.transaction():
            _register(catalog, part_id, table, name, path, n, int(dim), int(runs[0]) if len(runs) == 1 else None, size)
            catalog.execute(f"DELETE FROM {legacy} WHERE set_name = ? AND rowid <= ?", [name, last])
            create_vector_views(catalog.con, catalog.path, tables=[table])
        moved += n


def prepare_writer(catalog: Any) -> None:
    """At a writer's open, after the migrations: remove orphan files, move legacy rows into parts,
    and (re)create the views (their paths follow the catalog when it was moved)."""
    con = catalog.con
    remove_orphans(con, catalog.path)
    migrate_legacy_rows(catalog)
    create_vector_views(con, catalog.path)


def allowed_folder(catalog_path: str | os.PathLike) -> str:
    """The one folder a catalog connection may read files from (DuckDB's allowed_directories)."""
    return str(side_path(catalog_path, VECTORS_SUFFIX)) + os.sep
