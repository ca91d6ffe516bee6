"""Export: write the curated set (or any view's images) somewhere else, never touching the originals.

Formats (every one also writes `manifest.parquet` and `manifest.csv`, one row per exported image):

    manifest     the manifest only
    symlink      TO/<root label>/<rel_path> -> the original (absolute link)
    hardlink     the same tree as hard links (same filesystem only)
    copy         the same tree as copies, each verified against the catalog's content hash
    webdataset   TO/shard-000000.tar ...: per image KEY.<ext> (original bytes) + KEY.json (its
                 manifest row); KEY is the zero-padded image_id, so keys are unique and stable

A root's label is its folder name; roots whose names are equal ignoring case get `-2`, `-3` ...
in root order, so two scanned trees never write into each other (on any filesystem). On a
destination that ignores case, paths of one root that differ only in case get `~KEY` before
their extension (the later image by id); no file is ever written over another. Files that
changed since the last scan (size or mtime differ and the bytes no longer match the catalog's
hash) or vanished are skipped and reported, in every format (the manifest format too).

The catalog is only read, through exactly one SELECT, so a --view cannot change it. Every file
appears under its final name only when complete (a hidden `.vdc-*.part` name until then), and
TO/export.json, the record of a finished export, is written last: a folder without it holds an
interrupted export, which the next export into it replaces without --overwrite (the hidden
`.vdc-export-running` file marks it). --overwrite replaces a finished earlier export (a folder
with export.json) and nothing else: a folder holding other files is refused either way. A
catalog may come from someone else: an edited root or rel_path that would climb out of its root
refuses the export, a file that resolves outside every scanned root (a symlink out of it) is
never copied, hard-linked or put in a shard (skipped, with its reason: confine.ReadableRoots),
and every file is placed inside TO. TO never holds the catalog, a backup folder of an apply run
or a scanned root.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from vdc_lake import __version__
from vdc_lake.catalog.connection import Catalog
from vdc_lake.effects.export_destination import check_one_filesystem, ignores_case, prepare_destination
from vdc_lake.effects.export_layout import MANIFEST_STEM, export_targets, image_key, root_labels
from vdc_lake.effects.export_rows import (CATALOG_MTIME, MANIFEST_COLUMNS, TARGET, check_paths, check_roots,
                                          manifest_rows, rows_to_export, source_sql)
from vdc_lake.effects.export_tree import SourceChecker, TreeWriter, in_order
from vdc_lake.effects.export_webdataset import WebDatasetWriter
from vdc_lake.errors import StageError
from vdc_lake.fileops.confine import ReadableRoots
from vdc_lake.fileops.markers import RECORD_NAME, RUNNING_NAME
from vdc_lake.progress import progress_bar
from vdc_lake.review.status import settings_in_force
from vdc_lake.scale.parallel import worker_count

__all__ = ["DEFAULT_SHARD_SIZE_MB", "FORMATS", "MANIFEST_COLUMNS", "ExportSummary", "export", "export_targets",
           "image_key", "manifest_rows", "root_labels", "source_sql"]

FORMATS = ("manifest", "symlink", "hardlink", "copy", "webdataset")
DEFAULT_SHARD_SIZE_MB = 1024.0
MAX_ERRORS_KEPT = 50
IO_THREADS = 8
BATCH_ROWS = 8192


@dataclass
class ExportSummary:
    """What one export wrote. `images` counts manifest rows; `skipped` files are listed in `errors`.

    `record` is TO/export.json: the export's parameters, this summary and the catalog's newest run
    at the time (an export only reads the catalog, so it is recorded beside what it wrote).
    `notes` say what the user should know that is not an error (an interrupted export replaced).
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
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"ExportSummary(fmt={self.fmt!r}, images={self.images}, "
                f"skipped={self.skipped}, to_dir={self.to_dir!r})")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `path` so that it appears only complete (and on disk): a hidden temp file, fsync, rename."""
    tmp = path.with_name(f".vdc-{path.name}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_manifest(table: pa.Table, to_dir: Path) -> Path:
    parquet_path = to_dir / f"{MANIFEST_STEM}.parquet"
    sink = io.BytesIO()
    pq.write_table(table, sink)
    _write_atomic(parquet_path, sink.getvalue())
    sink = io.BytesIO()
    pa_csv.write_csv(table, sink)
    _write_atomic(to_dir / f"{MANIFEST_STEM}.csv", sink.getvalue())
    return parquet_path


def _write_files(table: pa.Table, to_dir: Path, fmt: str, shard_bytes: int, summary: ExportSummary,
                 quiet: bool, readable: ReadableRoots) -> tuple[pa.Array, pa.Array]:
    """Check, link, copy or shard every row of the manifest; returns each row's export path (None for
    the manifest format) and whether it was exported (False = skipped, the reason in summary.errors)."""
    if fmt == "webdataset":
        writer: TreeWriter | WebDatasetWriter | SourceChecker = WebDatasetWriter(to_dir, shard_bytes, readable)
    elif fmt == "manifest":
        writer = SourceChecker()
    else:
        writer = TreeWriter(to_dir, fmt, readable)
    placed: list[str | None] = []
    kept: list[bool] = []
    threads = min(IO_THREADS, worker_count(None))
    try:
        with ThreadPoolExecutor(threads) as pool, progress_bar(table.num_rows, f"export {fmt}", quiet=quiet) as bar:
            for batch in table.to_batches(max_chunksize=BATCH_ROWS):
                rows = batch.to_pylist()
                for row, result in zip(rows, in_order(writer.write, rows, pool, 4 * threads)):
                    ok, path = _record(writer, row, result, summary)
                    kept.append(ok)
                    placed.append(path)
                    bar.update()
    except BaseException:
        writer.abort()  # no half-written shard is renamed into place
        raise
    writer.close()
    if isinstance(writer, WebDatasetWriter):
        summary.shards = writer.shards.count
    return pa.array(placed, pa.string()), pa.array(kept, pa.bool_())


def _record(writer: TreeWriter | WebDatasetWriter | SourceChecker, row: dict, result: tuple,
            summary: ExportSummary) -> tuple[bool, str | None]:
    """Account for one written (or failed) row; returns (exported, its export path)."""
    if isinstance(writer, WebDatasetWriter):
        data, error = result
        if error is None:
            summary.bytes += len(data)
            return True, writer.finish_row(row, data)
    else:
        target, error, n_bytes = result
        if error is None:
            summary.bytes += n_bytes
            return True, target
    summary.skipped += 1
    if len(summary.errors) < MAX_ERRORS_KEPT:
        summary.errors.append(error)
    return False, None


def export(catalog: Catalog, to_dir: str | os.PathLike, *, fmt: str = "manifest", view: str = "curated",
           shard_size_mb: float = DEFAULT_SHARD_SIZE_MB, overwrite: bool = False,
           quiet: bool = False) -> ExportSummary:
    """Write the images of `view` to `to_dir` as `fmt`, plus the manifest and TO/export.json.

    view: a view or macro call name (curated, dedup_actions(threshold := 0.3)) or one SELECT that
    yields image_id. shard_size_mb: target WebDataset shard size, in MiB. The catalog is only read
    (open it read-only); the originals too. Every file is written inside `to_dir`. Files changed
    or gone since the scan are skipped: left out of the manifest, counted in `skipped` and
    described in `errors`. An interrupted export into `to_dir` is replaced (see `notes`);
    TO/export.json is written last, once everything else is complete and on disk.
    """
    if fmt not in FORMATS:
        raise StageError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "webdataset" and not shard_size_mb > 0:
        raise StageError(f"--shard-size-mb must be positive, got {shard_size_mb}")
    if not os.fspath(to_dir).strip():  # an unset shell variable: it would mean the current folder
        raise StageError("--to is empty; give the folder to export into (e.g. --to out/curated)")
    to_dir = Path(to_dir).expanduser().resolve()
    params = {"to": str(to_dir), "format": fmt, "view": view, "shard_size_mb": shard_size_mb, "overwrite": overwrite}
    started = dt.datetime.now()
    table = rows_to_export(catalog, view)
    check_paths(table)
    check_roots(catalog, table)
    roots = pc.unique(table.column("root")).to_pylist()
    if fmt == "hardlink":
        check_one_filesystem(roots, to_dir)
    catalog_run = catalog.scalar("SELECT max(run_id) FROM runs")
    settings = settings_in_force(catalog)  # the decisions the exported set was computed under
    readable = ReadableRoots.of(catalog)
    note, lock = prepare_destination(catalog, to_dir, overwrite, params)
    catalog.release()  # file work ahead; writers may open the catalog meanwhile
    summary = ExportSummary(str(to_dir), fmt, view, notes=[note] if note else [])
    try:
        _write_export(table, to_dir, fmt, shard_size_mb, quiet, summary, readable)
        record = {"tool_version": __version__, "catalog": str(catalog.path), "catalog_run": catalog_run,
                  "started_at": started.isoformat(timespec="seconds"),
                  "finished_at": dt.datetime.now().isoformat(timespec="seconds"),
                  "params": params, "settings": settings, "summary": asdict(summary)}
        _write_atomic(to_dir / RECORD_NAME, (json.dumps(record, indent=1, default=str) + "\n").encode())
        (to_dir / RUNNING_NAME).unlink(missing_ok=True)  # export.json says it is finished; the mark is not needed
    finally:
        os.close(lock)  # an export that failed leaves its mark unlocked: the next export replaces what it wrote
    return summary


def _write_export(table: pa.Table, to_dir: Path, fmt: str, shard_size_mb: float, quiet: bool,
                  summary: ExportSummary, readable: ReadableRoots) -> None:
    """The files (as `fmt`) and the manifest of what was exported; fills `summary`."""
    keys = pa.array([image_key(i) for i in table.column("image_id").to_pylist()], pa.string())
    table = table.append_column("key", keys)
    if fmt in ("symlink", "hardlink", "copy"):
        table = table.append_column(TARGET, export_targets(table.column("root").combine_chunks(),
                                                            table.column("rel_path").combine_chunks(), keys,
                                                            ignore_case=ignores_case(to_dir)))
    placed, kept = _write_files(table, to_dir, fmt, int(shard_size_mb * 2**20), summary, quiet, readable)
    table = table.drop_columns([c for c in (CATALOG_MTIME, TARGET) if c in table.column_names])
    table = table.append_column("export_path", placed)
    if summary.skipped:
        table = table.filter(kept)
    summary.images = table.num_rows
    if fmt in ("copy", "webdataset"):
        os.sync()  # the bytes written are on disk before the manifest and the record say they are there
    summary.manifest = str(_write_manifest(table, to_dir))
    summary.record = str(to_dir / RECORD_NAME)
