"""Export: write the curated set (or any view's images) somewhere else, never touching the originals.

Formats (every one also writes `manifest.parquet` and `manifest.csv`, one row per exported image):

    manifest     the manifest only
    symlink      TO/<root label>/<rel_path> -> the original (absolute link)
    hardlink     the same tree as hard links (same filesystem only)
    copy         the same tree as copies, each verified against the catalog's content hash
    webdataset   TO/shard-000000.tar ...: per image KEY.<ext> (original bytes) + KEY.json (its
                 manifest row); KEY is the zero-padded image_id, so keys are unique and stable

A root's label is its folder name; roots that share a name get `-2`, `-3` ... in root order, so
two scanned trees never write into each other. Files that changed since the last scan (their
bytes no longer match the catalog) or vanished are skipped and reported, not exported.

The catalog is only read, through exactly one SELECT, so a --view cannot change it; the export
is recorded in TO/export.json. A catalog may come from someone else: an edited root or rel_path
that would climb out of its root refuses the export, and every file is placed inside TO.
"""

from __future__ import annotations

import datetime as dt
import errno
import io
import json
import os
import re
import shutil
import tarfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import xxhash

from vdc_lake import __version__
from vdc_lake.catalog import Catalog
from vdc_lake.confine import is_inside, is_recorded_root, recorded_roots, root_overlap, scanned_roots
from vdc_lake.errors import StageError, disk_full_error
from vdc_lake.export_sql import single_select
from vdc_lake.files import content_hash
from vdc_lake.parallel import progress_bar, worker_count

FORMATS = ("manifest", "symlink", "hardlink", "copy", "webdataset")
DEFAULT_SHARD_SIZE_MB = 1024.0
MANIFEST_STEM = "manifest"
KEY_DIGITS = 12
MAX_ERRORS_KEPT = 50
IO_THREADS = 8
BATCH_ROWS = 8192
# The columns every manifest holds, in order; `key` and `export_path` are added by the export.
MANIFEST_COLUMNS = [
    "path", "image_id", "version", "rel_path", "root", "width", "height", "format", "size_bytes",
    "content_hash", "leaf_cluster_id", "top_cluster_id", "cluster_run", "sample_run",
]
_QUERY_START = re.compile(r"^\s*(\(|select\b|with\b|from\b|values\b|table\b)", re.IGNORECASE)
# A view name, or a table-macro call: name(arguments). The whole text must still parse as one SELECT.
_VIEW_CALL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\s*\(.*\))?", re.DOTALL)
# A relative path part that climbs or is empty ('', '.', '..'), a leading '/', or a NUL byte.
_UNSAFE_REL_PATH = r"(^|/)(\.\.?)?(/|$)|\x00"
_SAFE_EXTENSION = re.compile(r"[a-z0-9]{1,10}")
RECORD_NAME = "export.json"

# Used when the source lacks some manifest columns (e.g. `SELECT image_id FROM ...`): the
# current file facts, plus the newest cluster run and sample run the same way `curated` does.
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

# Used when the source has every manifest column (e.g. `curated`): taken as it is, one row per
# image, restricted to images present at the version the row names.
_DIRECT_SQL = """
SELECT {columns}
FROM ({source}
) AS s
WHERE EXISTS (SELECT 1 FROM image_files AS f WHERE f.image_id = s.image_id AND f.version = s.version)
QUALIFY row_number() OVER (PARTITION BY s.image_id ORDER BY s.version DESC) = 1
ORDER BY s.image_id
"""


@dataclass
class ExportSummary:
    """What one export wrote. `images` counts manifest rows; `skipped` files are listed in `errors`.

    `record` is TO/export.json: the export's parameters, this summary and the catalog's newest run
    at the time (an export only reads the catalog, so it is recorded beside what it wrote).
    """

    to_dir: str
    fmt: str
    view: str
    images: int = 0
    bytes: int = 0
    shards: int = 0
    skipped: int = 0
    manifest: str = ""
    record: str = ""
    errors: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"ExportSummary(fmt={self.fmt!r}, images={self.images}, "
                f"skipped={self.skipped}, to_dir={self.to_dir!r})")


# -- what to export ------------------------------------------------------------------------------

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


def manifest_rows(catalog: Catalog, view: str = "curated") -> pa.Table:
    """The manifest of `view`: MANIFEST_COLUMNS for each of its images that is present, by image_id."""
    sql = source_sql(view)
    columns = _source_columns(catalog, sql, view)
    if set(MANIFEST_COLUMNS) <= set(columns):
        query = _DIRECT_SQL.format(columns=", ".join(f"s.{c}" for c in MANIFEST_COLUMNS), source=sql)
    else:
        query = _LOOKUP_SQL.format(source=sql)
    return catalog.arrow(single_select(catalog.con, query, f"--view {view!r}"))


def _check_paths(table: pa.Table) -> None:
    """Refuse a manifest whose roots are not absolute, normalised paths or whose rel_paths could
    climb out of their root ('..', '.', empty parts, a leading '/'): only an edited or damaged
    catalog holds such rows, and they would make the export read or write elsewhere."""
    for root in pc.unique(table.column("root")).to_pylist():
        if not (os.path.isabs(root) and os.path.normpath(root) == root and "\0" not in root):
            raise StageError(f"export refused: the catalog names the scanned root {root!r}, which is not an "
                             "absolute, normalised path; the catalog was edited or is damaged")
    bad = table.filter(pc.match_substring_regex(table.column("rel_path"), _UNSAFE_REL_PATH))
    if bad.num_rows:
        example = bad.slice(0, 1).to_pylist()[0]
        raise StageError(
            f"export refused: the catalog names {bad.num_rows} files outside their scanned root (e.g. image "
            f"{example['image_id']}: {example['rel_path']!r} under {example['root']}); the catalog was edited or "
            "is damaged: restore it from a copy, or export a --view that leaves those images out"
        )


def _check_roots(catalog: Catalog, table: pa.Table) -> None:
    """Refuse a manifest that names a root no scan run was given: only an edited catalog does."""
    recorded = recorded_roots(catalog)
    for root in pc.unique(table.column("root")).to_pylist():
        if not is_recorded_root(root, recorded):
            raise StageError(f"export refused: the catalog names the root {root!r}, which no scan run was given; "
                             "the catalog was edited or is damaged: restore it from a copy, or export a --view "
                             "that leaves those images out")


# -- destination ---------------------------------------------------------------------------------

def _prepare_destination(catalog: Catalog, to_dir: Path, overwrite: bool) -> None:
    """Create `to_dir`, or empty it with `overwrite`; never a folder that holds catalogued images,
    lies inside a scanned root (the next scan would register the exports) or contains one."""
    if to_dir.exists() and not to_dir.is_dir():
        raise StageError(f"export destination {to_dir} is a file; pass a folder")
    prefix = str(to_dir).rstrip("/") + "/"
    inside = catalog.scalar(
        "SELECT path FROM image_files WHERE starts_with(path, ?) OR starts_with(root || '/', ?) LIMIT 1",
        [prefix, prefix],
    )
    if inside is not None:
        raise StageError(f"export destination {to_dir} holds catalogued images (e.g. {inside}); "
                         "choose a folder outside every scanned root")
    overlap = root_overlap(scanned_roots(catalog), to_dir)
    if overlap is not None:
        relation, root, real = overlap
        if relation == "inside":
            raise StageError(f"export destination {to_dir} lies inside the scanned root {root}: the next scan would "
                             f"register the exported files as images; choose a folder outside every scanned root "
                             f"(e.g. {real.parent / (real.name + '-export')})")
        raise StageError(f"export destination {to_dir} contains the scanned root {root}; choose a folder "
                         "outside every scanned root")
    if to_dir.is_dir() and any(to_dir.iterdir()):
        if not overwrite:
            raise StageError(f"export destination {to_dir} is not empty; choose an empty folder "
                             "or pass --overwrite to replace what is there")
        for entry in to_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    to_dir.mkdir(parents=True, exist_ok=True)


def root_labels(roots: Iterable[str]) -> dict[str, str]:
    """{root: folder name inside the export}: the root's basename, `-2`, `-3` ... on collisions."""
    reserved = {f"{MANIFEST_STEM}.parquet", f"{MANIFEST_STEM}.csv", RECORD_NAME}
    labels: dict[str, str] = {}
    used: set[str] = set()
    for root in sorted(set(roots)):
        base = Path(root).name
        base = base if base not in ("", ".", "..") else "root"
        label, n = base, 1
        while label in used or label in reserved:
            n += 1
            label = f"{base}-{n}"
        used.add(label)
        labels[root] = label
    return labels


def image_key(image_id: int) -> str:
    """The WebDataset key of an image: its id, zero-padded so keys sort like ids."""
    return f"{int(image_id):0{KEY_DIGITS}d}"


# -- file operations -----------------------------------------------------------------------------

def _in_order(func: Callable[[Any], Any], items: Iterable[Any], pool: ThreadPoolExecutor, window: int) -> Iterator[Any]:
    """Yield func(item) in order from a thread pool, at most `window` in flight (I/O bound work)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(func, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _place(src: str, dst: Path, fmt: str, expected_hash: str | None, to_dir: Path) -> str | None:
    """Link or copy one file to dst (inside to_dir); returns an error text, or None when done (and verified)."""
    if not os.path.lexists(src):
        return f"{src}: the original is gone; run `vdc-lake scan` again"
    if not os.path.isfile(src):
        # Only regular files (or links to one) are placed: a link to a folder (a row of an edited
        # catalog naming a folder) would let a later row, in another thread, write through it.
        return f"{src}: not a regular file, so it is not exported (check the catalog's images row)"
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not is_inside(dst.parent, to_dir):  # checked again once the folders exist
        return f"{src}: refused, {dst} lies outside --to {to_dir}"
    try:
        if fmt == "symlink":
            os.symlink(src, dst)
        elif fmt == "hardlink":
            os.link(src, dst, follow_symlinks=True)
        else:
            return _verified_copy(src, dst, expected_hash)
    except OSError as e:
        if e.errno == errno.EXDEV:
            raise StageError(f"cannot hard-link {src} into {dst.parent}: another filesystem; "
                             "use --format symlink or --format copy") from e
        full = disk_full_error(e)
        if full is not None:  # every later file would fail the same way: stop here
            raise full from e
        return f"{src}: {e.strerror or e}"
    return None


def _unverifiable(src: str) -> str:
    # Only bytes the catalog vouches for are copied: a row with no hash (say, an edited catalog
    # naming a file it never scanned) cannot make the export carry some other file away.
    return f"{src}: the catalog holds no content hash for it, so a copy cannot be verified; run `vdc-lake scan`"


def _verified_copy(src: str, dst: Path, expected_hash: str | None) -> str | None:
    if expected_hash is None:
        return _unverifiable(src)
    tmp = dst.with_name(f".{dst.name}.part")
    try:
        shutil.copy2(src, tmp)
        written = content_hash(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half copy (say, on a full disk) is not left in --to
        raise
    if written != expected_hash:
        tmp.unlink()
        if content_hash(src) != expected_hash:
            return f"{src}: changed since the last scan; run `vdc-lake scan` and export again"
        return f"{src}: the copy does not match the original (hash {written}); check the destination disk"
    os.replace(tmp, dst)
    return None


class _TreeWriter:
    """Links or copies each image to TO/<root label>/<rel_path>."""

    def __init__(self, to_dir: Path, fmt: str, roots: Iterable[str]):
        self.to_dir, self.fmt = to_dir, fmt
        self.labels = root_labels(roots)

    def target(self, row: dict) -> str:
        return f"{self.labels[row['root']]}/{row['rel_path']}"

    def write(self, row: dict) -> tuple[str | None, str | None, int]:
        """(export path, error, bytes) for one manifest row; runs in a worker thread."""
        target = self.target(row)
        dst = self.to_dir / target
        # Resolved before any folder is made: a symlink on the way (say, a link to a folder that an
        # earlier row of an edited catalog placed) must not lead outside --to. Nothing is replaced.
        if not is_inside(dst.parent, self.to_dir) or os.path.lexists(dst):
            return None, f"{row['path']}: refused, {dst} lies outside --to {self.to_dir} or exists already", 0
        error = _place(row["path"], dst, self.fmt, row["content_hash"], self.to_dir)
        return (None, error, 0) if error else (target, None, row["size_bytes"] or 0)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


# -- WebDataset ----------------------------------------------------------------------------------

def _tar_size(n_bytes: int) -> int:
    """Bytes a member takes in a tar: a 512-byte header plus the data padded to 512 bytes."""
    return 512 + (n_bytes + 511) // 512 * 512


class _ShardWriter:
    """Writes shard-000000.tar, ... of at most about `limit` bytes each (one sample may exceed it).

    A shard is written as a hidden .part file and renamed when complete.
    """

    def __init__(self, to_dir: Path, limit: int):
        self.to_dir, self.limit = to_dir, limit
        self.count = 0  # shards started
        self.size = 0   # bytes in the open shard
        self._tar: tarfile.TarFile | None = None

    @staticmethod
    def shard_name(index: int) -> str:
        return f"shard-{index:06d}.tar"

    def add(self, key: str, ext: str, data: bytes, record: dict[str, Any]) -> None:
        """Add KEY.ext and KEY.json; the record gets `export_path` (its shard) before it is written."""
        record["export_path"] = self.shard_name(self.count)  # every name has the same length
        needed = _tar_size(len(data)) + _tar_size(len(json.dumps(record, sort_keys=True, default=str)))
        if self._tar is None or (self.size > 0 and self.size + needed > self.limit):
            self.close()
            self._tar = tarfile.open(self._part(self.count), "w", format=tarfile.PAX_FORMAT)
            self.count += 1
            self.size = 0
        record["export_path"] = self.shard_name(self.count - 1)
        self._member(f"{key}.{ext}", data)
        self._member(f"{key}.json", json.dumps(record, sort_keys=True, default=str).encode())
        self.size += needed

    def _part(self, index: int) -> Path:
        return self.to_dir / f".{self.shard_name(index)}.part"

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o444, 0
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            os.replace(self._part(self.count - 1), self.to_dir / self.shard_name(self.count - 1))
            self._tar = None

    def abort(self) -> None:
        """Drop the open shard (after an error): its .part file goes, finished shards stay."""
        if self._tar is not None:
            tar, self._tar = self._tar, None
            try:
                tar.close()
            except OSError:
                pass  # e.g. the disk is full; the file is removed below anyway
            self._part(self.count - 1).unlink(missing_ok=True)


def _read_verified(row: dict) -> tuple[bytes | None, str | None]:
    """The file's bytes, or an error when it cannot be read or no longer matches the catalog."""
    if row["content_hash"] is None:
        return None, _unverifiable(row["path"])
    try:
        with open(row["path"], "rb") as f:
            data = f.read()
    except OSError as e:
        return None, f"{row['path']}: {e.strerror or e}"
    if xxhash.xxh3_128_hexdigest(data) != row["content_hash"]:
        return None, f"{row['path']}: changed since the last scan; run `vdc-lake scan` and export again"
    return data, None


def _extension(rel_path: str, fmt: str | None) -> str:
    """The member's extension: the file's, else its format's; only [a-z0-9]{1,10} (a tar member
    name from an edited catalog must not carry '/' or '..'), else 'bin'."""
    for ext in (os.path.splitext(rel_path)[1].lower().lstrip("."), (fmt or "").lower()):
        if _SAFE_EXTENSION.fullmatch(ext):
            return ext
    return "bin"


class _WebDatasetWriter:
    """Reads each image in a worker thread; the shards are written in order by the caller's thread."""

    def __init__(self, to_dir: Path, shard_bytes: int):
        self.shards = _ShardWriter(to_dir, shard_bytes)

    def write(self, row: dict) -> tuple[bytes | None, str | None]:
        return _read_verified(row)

    def finish_row(self, row: dict, data: bytes) -> str:
        record = {k: v for k, v in row.items() if k != "export_path"}
        try:
            self.shards.add(row["key"], _extension(row["rel_path"], row["format"]), data, record)
        except OSError as e:
            e.filename = e.filename or str(self.shards.to_dir / record.get("export_path", ""))  # tarfile names none
            full = disk_full_error(e)
            if full is not None:
                raise full from e
            raise
        return record["export_path"]

    def close(self) -> None:
        self.shards.close()

    def abort(self) -> None:
        self.shards.abort()


# -- manifest ------------------------------------------------------------------------------------

def _write_manifest(table: pa.Table, to_dir: Path) -> Path:
    parquet_path = to_dir / f"{MANIFEST_STEM}.parquet"
    pq.write_table(table, parquet_path)
    pa_csv.write_csv(table, to_dir / f"{MANIFEST_STEM}.csv")
    return parquet_path


def _write_files(table: pa.Table, to_dir: Path, fmt: str, shard_bytes: int, summary: ExportSummary,
                 quiet: bool) -> pa.Array:
    """Link, copy or shard every row of the manifest; returns each row's export path (None = skipped)."""
    if fmt == "webdataset":
        writer: _TreeWriter | _WebDatasetWriter = _WebDatasetWriter(to_dir, shard_bytes)
    else:
        writer = _TreeWriter(to_dir, fmt, pc.unique(table.column("root")).to_pylist())
    placed: list[str | None] = []
    threads = min(IO_THREADS, worker_count(None))
    try:
        with ThreadPoolExecutor(threads) as pool, progress_bar(table.num_rows, f"export {fmt}", quiet=quiet) as bar:
            for batch in table.to_batches(max_chunksize=BATCH_ROWS):
                rows = batch.to_pylist()
                for row, result in zip(rows, _in_order(writer.write, rows, pool, 4 * threads)):
                    placed.append(_record(writer, row, result, summary))
                    bar.update()
    except BaseException:
        writer.abort()  # no half-written shard is renamed into place
        raise
    writer.close()
    if isinstance(writer, _WebDatasetWriter):
        summary.shards = writer.shards.count
    return pa.array(placed, pa.string())


def _record(writer: _TreeWriter | _WebDatasetWriter, row: dict, result: tuple, summary: ExportSummary) -> str | None:
    """Account for one written (or failed) row; returns its export path or None."""
    if isinstance(writer, _WebDatasetWriter):
        data, error = result
        if error is None:
            summary.bytes += len(data)
            return writer.finish_row(row, data)
    else:
        target, error, n_bytes = result
        if error is None:
            summary.bytes += n_bytes
            return target
    summary.skipped += 1
    if len(summary.errors) < MAX_ERRORS_KEPT:
        summary.errors.append(error)
    return None


def export(catalog: Catalog, to_dir: str | os.PathLike, *, fmt: str = "manifest", view: str = "curated",
           shard_size_mb: float = DEFAULT_SHARD_SIZE_MB, overwrite: bool = False,
           quiet: bool = False) -> ExportSummary:
    """Write the images of `view` to `to_dir` as `fmt`, plus the manifest and TO/export.json.

    view: a view or macro call name (curated, dedup_actions(threshold := 0.3)) or one SELECT that
    yields image_id. shard_size_mb: target WebDataset shard size, in MiB. The catalog is only read
    (open it read-only); the originals too. Every file is written inside `to_dir`. Files changed
    or gone since the scan are skipped: left out of the manifest, counted in `skipped` and
    described in `errors`.
    """
    if fmt not in FORMATS:
        raise StageError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "webdataset" and not shard_size_mb > 0:
        raise StageError(f"--shard-size-mb must be positive, got {shard_size_mb}")
    to_dir = Path(to_dir).expanduser().resolve()
    params = {"to": str(to_dir), "format": fmt, "view": view, "shard_size_mb": shard_size_mb, "overwrite": overwrite}
    started = dt.datetime.now()
    table = manifest_rows(catalog, view)
    _check_paths(table)
    _check_roots(catalog, table)
    catalog_run = catalog.scalar("SELECT max(run_id) FROM runs")
    _prepare_destination(catalog, to_dir, overwrite)
    catalog.release()  # file work ahead; writers may open the catalog meanwhile
    summary = ExportSummary(str(to_dir), fmt, view)
    keys = [image_key(i) for i in table.column("image_id").to_pylist()]
    table = table.append_column("key", pa.array(keys, pa.string()))
    if fmt == "manifest":
        placed = pa.nulls(table.num_rows, pa.string())
        summary.bytes = int(pc.sum(table.column("size_bytes")).as_py() or 0)
    else:
        placed = _write_files(table, to_dir, fmt, int(shard_size_mb * 2**20), summary, quiet)
    table = table.append_column("export_path", placed)
    if summary.skipped:
        table = table.filter(pc.is_valid(table.column("export_path")))
    summary.images = table.num_rows
    summary.manifest = str(_write_manifest(table, to_dir))
    summary.record = str(to_dir / RECORD_NAME)
    record = {"tool_version": __version__, "catalog": str(catalog.path), "catalog_run": catalog_run,
              "started_at": started.isoformat(timespec="seconds"),
              "finished_at": dt.datetime.now().isoformat(timespec="seconds"),
              "params": params, "summary": asdict(summary)}
    (to_dir / RECORD_NAME).write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    return summary
