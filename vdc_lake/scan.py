"""Scan: walk roots and keep the `images` table in step with the filesystem, incrementally.

A re-scan lists every file (stat only), classifies it against the catalog in one SQL join,
and reads only new files and files whose size or mtime changed. A changed file whose hash is
the same keeps its version; different bytes bump the version, so every derived row computed
on the old bytes drops out of the views. Files that vanished are marked not present.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import pyarrow as pa

from vdc_lake.catalog import Catalog
from vdc_lake.errors import StageError
from vdc_lake.files import inspect_header
from vdc_lake.parallel import batched, get_mapper, map_ordered  # noqa: F401 - tests reach INLINE_BELOW through it

COMMIT_EVERY = 5000
FACT_COLUMNS = [
    "size_bytes", "mtime_ns", "content_hash", "width", "height", "format", "mode",
    "exif_orientation", "n_frames", "has_transparency", "header_error",
]
FACT_TYPES = [
    pa.int64(), pa.int64(), pa.string(), pa.int32(), pa.int32(), pa.string(), pa.string(),
    pa.int16(), pa.int32(), pa.bool_(), pa.string(),
]


@dataclass
class ScanSummary:
    run_id: int
    listed: int = 0
    new: int = 0
    changed: int = 0
    touched: int = 0       # size/mtime changed but the bytes are the same
    unchanged: int = 0
    gone: int = 0
    errors: int = 0        # files whose header could not be read (findings at sanitize)


def walk_root(root: Path, extensions: set[str]) -> tuple[list[str], list[int], list[int]]:
    """List image files under root: POSIX relative paths, sizes and mtimes (ns).

    Broken symlinks with an image extension are listed (size/mtime -1) so that sanitize can
    report them; unreadable directories are skipped silently by design of os.scandir errors.
    Symlinked directories are followed once each (a link to an ancestor does not loop).
    """
    rel_paths, sizes, mtimes = [], [], []
    stack = [root]
    prefix = len(str(root)) + 1
    root_stat = root.stat()
    seen_dirs = {(root_stat.st_dev, root_stat.st_ino)}  # a symlink to an ancestor must not loop
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir():
                    st = entry.stat()
                    if (st.st_dev, st.st_ino) not in seen_dirs:
                        seen_dirs.add((st.st_dev, st.st_ino))
                        stack.append(Path(entry.path))
                    continue
            except OSError:
                continue
            if os.path.splitext(entry.name)[1].lower() not in extensions:
                continue
            try:
                st = entry.stat()
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                size, mtime = -1, -1  # broken link or vanished between listing and stat
            rel_paths.append(entry.path[prefix:].replace(os.sep, "/"))
            sizes.append(size)
            mtimes.append(mtime)
    return rel_paths, sizes, mtimes


def _listing(roots: Sequence[Path], extensions: set[str]) -> pa.Table:
    columns: dict[str, list] = {"root": [], "rel_path": [], "size_bytes": [], "mtime_ns": []}
    for root in roots:
        rel_paths, sizes, mtimes = walk_root(root, extensions)
        columns["root"].extend([str(root)] * len(rel_paths))
        columns["rel_path"].extend(rel_paths)
        columns["size_bytes"].extend(sizes)
        columns["mtime_ns"].extend(mtimes)
    return pa.table(columns, schema=pa.schema([
        ("root", pa.string()), ("rel_path", pa.string()), ("size_bytes", pa.int64()), ("mtime_ns", pa.int64()),
    ]))


def _classify(catalog: Catalog, listing: pa.Table, roots: list[str]) -> tuple[pa.Table, int, int]:
    """Return (work rows: new or possibly changed files, unchanged count, gone count)."""
    with catalog.registered("scan_listing", listing):
        work = catalog.arrow(
            """
            SELECT l.root, l.rel_path, i.image_id, i.content_hash AS old_hash, i.version AS old_version
            FROM scan_listing l
            LEFT JOIN images i ON i.root = l.root AND i.rel_path = l.rel_path
            WHERE i.image_id IS NULL OR NOT i.present
               OR i.size_bytes IS DISTINCT FROM l.size_bytes OR i.mtime_ns IS DISTINCT FROM l.mtime_ns
            """
        )
        gone = catalog.scalar(
            """
            UPDATE images SET present = false
            WHERE present AND list_contains(?, root)
              AND NOT EXISTS (SELECT 1 FROM scan_listing l WHERE l.root = images.root AND l.rel_path = images.rel_path)
            """,
            [roots],
        )
    return work, listing.num_rows - work.num_rows, int(gone or 0)


def fact_arrays(facts: list[dict]) -> dict[str, pa.Array]:
    """Arrow columns (FACT_COLUMNS) of inspect_header results; shared by scan, apply and restore."""
    return {name: pa.array([f.get(name) for f in facts], typ) for name, typ in zip(FACT_COLUMNS, FACT_TYPES)}


def fact_assignments(alias: str) -> str:
    """`col = alias.col, ...` for every fact column, for UPDATE ... FROM alias."""
    return ", ".join(f"{c} = {alias}.{c}" for c in FACT_COLUMNS)


def _facts_table(batch: list[tuple[dict, dict]]) -> pa.Table:
    arrays = {
        "root": pa.array([w["root"] for w, _ in batch], pa.string()),
        "rel_path": pa.array([w["rel_path"] for w, _ in batch], pa.string()),
        "image_id": pa.array([w["image_id"] for w, _ in batch], pa.int64()),
        "old_version": pa.array([w["old_version"] for w, _ in batch], pa.int32()),
        "old_hash": pa.array([w["old_hash"] for w, _ in batch], pa.string()),
    }
    arrays.update(fact_arrays([f for _, f in batch]))
    return pa.table(arrays)


def _write_batch(catalog: Catalog, run_id: int, batch: list[tuple[dict, dict]], summary: ScanSummary) -> None:
    facts = _facts_table(batch)
    facts_sql = ", ".join(FACT_COLUMNS)
    with catalog.registered("scan_facts", facts), catalog.transaction():
        touched = catalog.execute(
            """
            UPDATE images SET present = true, size_bytes = f.size_bytes, mtime_ns = f.mtime_ns
            FROM scan_facts f
            WHERE images.image_id = f.image_id AND f.content_hash IS NOT DISTINCT FROM f.old_hash
            """
        )[0][0]
        changed = catalog.execute(
            f"""
            UPDATE images SET {fact_assignments("f")},
                   present = true, version = images.version + 1, updated_run = ?
            FROM scan_facts f
            WHERE images.image_id = f.image_id AND f.content_hash IS DISTINCT FROM f.old_hash
            """,
            [run_id],
        )[0][0]
        new = catalog.execute(
            f"""
            INSERT INTO images (image_id, root, rel_path, {facts_sql}, version, present, first_run, updated_run)
            SELECT nextval('image_id_seq'), root, rel_path, {facts_sql}, 1, true, ?, ?
            FROM scan_facts WHERE image_id IS NULL ORDER BY root, rel_path
            """,
            [run_id, run_id],
        )[0][0]
    summary.touched += int(touched)
    summary.changed += int(changed)
    summary.new += int(new)
    summary.errors += sum(1 for _, f in batch if f.get("header_error"))


def _inspect(path: str) -> dict:
    return inspect_header(path)


def scan(
    catalog: Catalog,
    roots: Sequence[str | os.PathLike],
    *,
    extensions: Sequence[str],
    workers: int | None = None,
    quiet: bool = False,
    backend: str = "local",
) -> ScanSummary:
    """Register image files under `roots` in the catalog; returns counts per outcome."""
    resolved = []
    for root in roots:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise StageError(f"scan root {root} is not a directory; pass folders that hold images")
        resolved.append(path.resolve())
    ext = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    params = {"roots": [str(r) for r in resolved], "extensions": sorted(ext), "workers": workers}
    with catalog.run("scan", params) as run_id:
        summary = ScanSummary(run_id)
        listing = _listing(resolved, ext)
        summary.listed = listing.num_rows
        work, summary.unchanged, summary.gone = _classify(catalog, listing, params["roots"])
        rows = work.to_pylist()
        if rows:  # closing and reopening costs ~0.1 s, most of an unchanged re-scan
            catalog.release()  # no open DuckDB handle across fork; readers may get in meanwhile
        paths = [os.path.join(r["root"], r["rel_path"]) for r in rows]
        mapper = get_mapper(backend, catalog_path=catalog.path)
        results = mapper(_inspect, paths, workers=workers, desc="scan", quiet=quiet)
        for batch in batched(zip(rows, results), COMMIT_EVERY):
            _write_batch(catalog, run_id, batch, summary)
            catalog.release()
        catalog.finish_run(run_id, summary=asdict(summary))
    return summary
