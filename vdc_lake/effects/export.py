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
import errno
import fcntl
import io
import json
import os
import re
import shutil
import stat
import tarfile
import unicodedata
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import xxhash

from vdc_lake import __version__
from vdc_lake.catalog.connection import Catalog
from vdc_lake.fileops.confine import (ReadableRoots, is_inside, is_recorded_root, recorded_backup_dirs, recorded_roots,
                              root_overlap, scanned_roots)
from vdc_lake.errors import StageError, disk_full_error
from vdc_lake.effects.query_output import single_select
from vdc_lake.fileops.markers import RECORD_NAME, RUNNING_NAME, is_export_record
from vdc_lake.fileops.probe import content_hash, place_new
from vdc_lake.scale.parallel import progress_bar, worker_count
from vdc_lake.catalog.settings import decision_settings

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
FILE_COLUMNS = ("path", "rel_path", "root", "width", "height", "format", "size_bytes", "content_hash")
_QUERY_START = re.compile(r"^\s*(\(|select\b|with\b|from\b|values\b|table\b)", re.IGNORECASE)
# A view name, or a table-macro call: name(arguments). The whole text must still parse as one SELECT.
_VIEW_CALL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\s*\(.*\))?", re.DOTALL)
# A relative path part that climbs or is empty ('', '.', '..'), a leading '/', or a NUL byte.
_UNSAFE_REL_PATH = r"(^|/)(\.\.?)?(/|$)|\x00"
_SAFE_EXTENSION = re.compile(r"[a-z0-9]{1,10}")
# Columns the export adds for its own use and leaves out of the manifest: the catalog's mtime of
# each file (a link or manifest export checks the file against it) and its path inside TO.
_MTIME = "_catalog_mtime_ns"
_TARGET = "_target"

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


def _rows_to_export(catalog: Catalog, view: str) -> pa.Table:
    """manifest_rows plus the catalog's mtime of each file (_MTIME), to tell a changed file by its stat."""
    query = (f"SELECT m.*, (SELECT max(i.mtime_ns) FROM images AS i WHERE i.image_id = m.image_id "
             f"AND i.version = m.version) AS {_MTIME}\n"
             f"FROM ({_manifest_query(catalog, view)}) AS m ORDER BY m.image_id")
    return catalog.arrow(single_select(catalog.con, query, f"--view {view!r}"))


def _check_paths(table: pa.Table) -> None:
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


def _check_roots(catalog: Catalog, table: pa.Table) -> None:
    """Refuse a manifest that names a root no scan run was given: only an edited catalog does."""
    recorded = recorded_roots(catalog)
    for root in pc.unique(table.column("root")).to_pylist():
        if not is_recorded_root(root, recorded):
            raise StageError(f"export refused: the catalog names the root {root!r}, which no scan run was given; "
                             "the catalog was edited or is damaged: restore it from a copy, or export a --view "
                             "that leaves those images out")


# -- destination ---------------------------------------------------------------------------------

def _prepare_destination(catalog: Catalog, to_dir: Path, overwrite: bool, params: dict) -> tuple[str | None, int]:
    """Create `to_dir`, or empty it (with `overwrite`, or when it holds an interrupted export), and
    mark it as holding a running export; never a folder that holds catalogued images, lies inside a
    scanned root (the next scan would register the exports) or contains one, or holds the catalog or
    a backup folder, nor one another export is writing. Returns (a note when an interrupted export
    was replaced, the descriptor that holds the running mark's lock: close it when done)."""
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
    _check_catalog_and_backups(catalog, to_dir)
    note = None
    if to_dir.is_dir() and any(to_dir.iterdir()):
        holder = _running_export(to_dir)
        if holder is not None:
            raise StageError(f"export destination {to_dir} is being written by another export (PID {holder}); "
                             "wait for it to finish or choose another folder")
        interrupted = _is_interrupted(to_dir)
        if not interrupted and not _earlier_export(to_dir):
            example = sorted(e.name for e in to_dir.iterdir())[0]
            raise StageError(f"export destination {to_dir} is not empty (e.g. {example}) and holds no earlier "
                             f"export ({RECORD_NAME}); choose an empty folder (--overwrite replaces only an "
                             "earlier export, never other files)")
        if not overwrite and not interrupted:
            raise StageError(f"export destination {to_dir} holds an earlier export; choose an empty folder "
                             "or pass --overwrite to replace it")
        if interrupted:
            note = (f"{to_dir} held an export that was interrupted (no {RECORD_NAME}); "
                    "it was removed and the export started again")
        lock = _mark_running(to_dir, params)  # from here on, an interruption leaves a folder the next export empties
        _empty_folder(to_dir, keep=RUNNING_NAME)
    else:
        to_dir.mkdir(parents=True, exist_ok=True)
        lock = _mark_running(to_dir, params)
    return note, lock


def _earlier_export(to_dir: Path) -> bool:
    """Whether to_dir holds a finished vdc-lake export (is_export_record of its export.json)."""
    return is_export_record(to_dir / RECORD_NAME)


def _is_interrupted(to_dir: Path) -> bool:
    """Whether to_dir holds an export that started and never wrote export.json."""
    marker = to_dir / RUNNING_NAME
    return marker.is_file() and not marker.is_symlink() and not os.path.lexists(to_dir / RECORD_NAME)


def _running_export(to_dir: Path) -> str | None:
    """The PID of the export writing to_dir now (it holds a lock on the running mark), else None."""
    marker = to_dir / RUNNING_NAME
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        fd = os.open(marker, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it: that export is over (finished or killed)
    except BlockingIOError:
        try:
            return str(json.loads(os.read(fd, 65536)).get("pid", "?"))
        except (ValueError, AttributeError, OSError):
            return "?"
    finally:
        os.close(fd)


def _mark_running(to_dir: Path, params: dict) -> int:
    """Write the running mark and lock it for this export's lifetime (the lock goes with the process,
    so a killed export leaves a mark nobody holds); returns the locked descriptor."""
    marker = to_dir / RUNNING_NAME
    if os.path.lexists(marker):
        _remove_entry(marker)  # an interrupted export's (checked unlocked above)
    record = {"pid": os.getpid(), "started_at": dt.datetime.now().isoformat(timespec="seconds"), "params": params}
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise StageError(f"export destination {to_dir} is being written by another export that started just now; "
                         "wait for it to finish or choose another folder") from None
    except OSError as e:  # the first file written: name the folder the user gave, not the hidden file
        raise OSError(e.errno, e.strerror, str(to_dir)) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, (json.dumps(record, indent=1) + "\n").encode())
        os.fsync(fd)
        # the record of an earlier, finished export goes first: a folder is never both running and finished
        if os.path.lexists(to_dir / RECORD_NAME):
            _remove_entry(to_dir / RECORD_NAME)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_entry(path: Path) -> None:
    """Remove a file, a link (never followed) or a folder tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _empty_folder(to_dir: Path, keep: str) -> None:
    for entry in to_dir.iterdir():
        if entry.name != keep:
            _remove_entry(entry)


def _check_catalog_and_backups(catalog: Catalog, to_dir: Path) -> None:
    """Refuse a destination that holds the catalog (its folder would be emptied with it) or lies
    inside or around a backup folder of an apply run (restore needs every backup)."""
    catalog_file = Path(os.path.realpath(catalog.path))
    if catalog_file.is_relative_to(to_dir):
        raise StageError(f"export destination {to_dir} holds the catalog {catalog.path}; choose a folder that "
                         f"does not (e.g. {to_dir / 'export'})")
    overlap = root_overlap(sorted(recorded_backup_dirs(catalog)), to_dir)  # the check of a folder against roots
    if overlap is not None:
        _, backup, real = overlap
        relation = "contains" if Path(backup).is_relative_to(to_dir) or real.is_relative_to(to_dir) else "lies inside"
        raise StageError(f"export destination {to_dir} {relation} the backup folder {backup} of an apply "
                         "run (restore needs every backup there); choose a folder apart from it")


def _check_one_filesystem(roots: Iterable[str], to_dir: Path) -> None:
    """Refuse a hard-link export across filesystems before anything is written (every link would fail)."""
    existing = to_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    device = os.stat(existing).st_dev
    for root in roots:
        try:
            other = os.stat(root).st_dev
        except OSError:
            continue  # its files are reported as gone, one by one
        if other != device:
            raise StageError(f"cannot hard-link the files of {root} into {to_dir}: another filesystem; "
                             "use --format symlink or --format copy, or a destination on the same filesystem")


def _ignores_case(folder: Path) -> bool:
    """Whether names in `folder` are matched ignoring case (a macOS, Windows or FAT/exFAT volume)."""
    probe = folder / ".vdc-case-Probe"
    fd = os.open(probe, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    try:
        return os.path.lexists(folder / ".vdc-case-probe")
    finally:
        probe.unlink()


def root_labels(roots: Iterable[str]) -> dict[str, str]:
    """{root: folder name inside the export}: the root's basename, `-2`, `-3` ... on collisions.

    Names are compared ignoring case and Unicode normalisation, so that the tree keeps its roots
    apart on any filesystem (Photos and photos would be one folder on macOS)."""
    reserved = {_fold(n) for n in (f"{MANIFEST_STEM}.parquet", f"{MANIFEST_STEM}.csv", RECORD_NAME, RUNNING_NAME)}
    labels: dict[str, str] = {}
    used: set[str] = set()
    for root in sorted(set(roots)):
        base = Path(root).name
        base = base if base not in ("", ".", "..") else "root"
        label, n = base, 1
        while _fold(label) in used or _fold(label) in reserved:
            n += 1
            label = f"{base}-{n}"
        used.add(_fold(label))
        labels[root] = label
    return labels


def _fold(name: str) -> str:
    """A name as a case- and normalisation-insensitive filesystem compares it (_fold_array's rule)."""
    return unicodedata.normalize("NFC", name).lower()


def export_targets(roots: pa.Array, rel_paths: pa.Array, keys: pa.Array, *, ignore_case: bool) -> pa.Array:
    """Each row's path inside the export: `<root label>/<rel_path>`, unique on the destination.

    When the destination ignores case (`ignore_case`), paths equal but for case or Unicode
    normalisation would land on one file: each later one (rows in image_id order) gets `~KEY`
    before its extension. Vectorised; only colliding rows are handled one by one."""
    unique_roots = pc.unique(roots)
    labels = root_labels(unique_roots.to_pylist())
    label_of = pa.array([labels[r] for r in unique_roots.to_pylist()], pa.string())
    targets = pc.binary_join_element_wise(pc.take(label_of, pc.index_in(roots, value_set=unique_roots)),
                                          rel_paths, "/")
    if not ignore_case or len(targets) == 0:
        return targets
    folded = _fold_array(targets)
    counts = pc.value_counts(folded)
    shared = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if len(shared) == 0:
        return targets
    rows = np.flatnonzero(pc.is_in(folded, value_set=shared).to_numpy(zero_copy_only=False))
    names, taken = targets.to_pylist(), set(pc.unique(folded).to_pylist())
    seen: set[str] = set()
    for row in rows:
        folded_name = folded[row].as_py()
        if folded_name not in seen:  # the first image under this name keeps it
            seen.add(folded_name)
            continue
        candidate = names[row]
        while True:  # a real file may already be called NAME~KEY.ext: add the key again
            stem, ext = os.path.splitext(candidate)
            candidate = f"{stem}~{keys[row].as_py()}{ext}"
            if _fold(candidate) not in taken:
                break
        taken.add(_fold(candidate))
        names[row] = candidate
    return pa.array(names, pa.string())


def _fold_array(names: pa.Array) -> pa.Array:
    """_fold of every name, vectorised."""
    return pc.utf8_lower(pc.utf8_normalize(names, "NFC"))


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


def _source_error(row: dict) -> str | None:
    """Why the file of a manifest row cannot be exported as the catalog describes it, or None.

    Gone, not a regular file, or changed: its size or mtime differ from the catalog's (what scan
    compares) and so do its bytes (a file only touched is still the same image)."""
    src = row["path"]
    try:
        st = os.stat(src)
    except FileNotFoundError:
        return f"{src}: the original is gone; run `vdc-lake scan` again"
    except OSError as e:
        return f"{src}: {e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):
        # Only regular files (or links to one) are placed: a link to a folder (a row of an edited
        # catalog naming a folder) would let a later row, in another thread, write through it.
        return _not_a_file(src)
    if st.st_size == row["size_bytes"] and st.st_mtime_ns == row.get(_MTIME):
        return None
    if row["content_hash"] is None:
        return _unverifiable(src)
    try:
        same = content_hash(src) == row["content_hash"]
    except OSError as e:
        return f"{src}: {e.strerror or e}"
    return None if same else f"{src}: changed since the last scan; run `vdc-lake scan` and export again"


def _place(row: dict, dst: Path, fmt: str, to_dir: Path) -> str | None:
    """Link or copy one file to dst (inside to_dir); returns an error text, or None when done (and verified).

    Nothing is written over: a name already taken (on a destination that matches names loosely,
    say) is an error for this file."""
    src = row["path"]
    if fmt != "copy":  # a copy checks the bytes it wrote instead
        error = _source_error(row)
        if error is not None:
            return error
    elif not os.path.isfile(src):
        return _source_error(row)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not is_inside(dst.parent, to_dir):  # checked again once the folders exist
        return f"{src}: refused, {dst} lies outside --to {to_dir}"
    try:
        if fmt == "symlink":
            os.symlink(src, dst)
        elif fmt == "hardlink":
            os.link(src, dst, follow_symlinks=True)
        else:
            return _verified_copy(src, dst, row["content_hash"], row["key"])
    except FileExistsError:
        return _taken(src, dst)
    except OSError as e:
        if e.errno == errno.EXDEV:
            raise StageError(f"cannot hard-link {src} into {dst.parent}: another filesystem; "
                             "use --format symlink or --format copy") from e
        full = disk_full_error(e)
        if full is not None:  # every later file would fail the same way: stop here
            raise full from e
        return f"{src}: {e.strerror or e}"
    return None


def _not_a_file(src: str) -> str:
    return f"{src}: not a regular file, so it is not exported (check the catalog's images row)"


def _taken(src: str, dst: Path) -> str:
    return (f"{src}: not exported, {dst} exists already (another image's name, matched ignoring case or "
            "Unicode normalisation by the destination's filesystem)")


def _unverifiable(src: str) -> str:
    # Only bytes the catalog vouches for are copied: a row with no hash (say, an edited catalog
    # naming a file it never scanned) cannot make the export carry some other file away.
    return f"{src}: the catalog holds no content hash for it, so a copy cannot be verified; run `vdc-lake scan`"


def _part_name(dst: Path, key: str) -> Path:
    # Short and fixed-length: `.NAME.part` would exceed the 255-byte name limit for a long NAME.
    return dst.with_name(f".vdc-{key}.part")


def _verified_copy(src: str, dst: Path, expected_hash: str | None, key: str) -> str | None:
    if expected_hash is None:
        return _unverifiable(src)
    tmp = _part_name(dst, key)
    try:
        shutil.copy2(src, tmp)
        mode = os.stat(tmp).st_mode
        if mode & 0o7000:  # a set-user-ID "image" copied by root would be a root-owned set-user-ID file
            os.chmod(tmp, mode & 0o777)
        written = content_hash(tmp)
        if written != expected_hash:
            tmp.unlink()
            if content_hash(src) != expected_hash:
                return f"{src}: changed since the last scan; run `vdc-lake scan` and export again"
            return f"{src}: the copy does not match the original (hash {written}); check the destination disk"
        place_new(tmp, dst)  # never over a file: the export's names are unique, a loose filesystem may merge two
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half copy (say, on a full disk) is not left in --to
        raise
    return None


def _unreadable(row: dict, readable: ReadableRoots) -> str | None:
    """Why the file of a manifest row may not be read into the export (confine.ReadableRoots: a link
    out of every scanned root, say), or None."""
    why = readable.error(row["root"], row["rel_path"])
    return None if why is None else f"{row['path']}: not exported, {why}"


class _TreeWriter:
    """Links or copies each image to TO/<its target> (see export_targets). A copy or a hard link
    carries the file's bytes: only a file ReadableRoots allows is placed."""

    def __init__(self, to_dir: Path, fmt: str, readable: ReadableRoots):
        self.to_dir, self.fmt, self.readable = to_dir, fmt, readable

    def write(self, row: dict) -> tuple[str | None, str | None, int]:
        """(export path, error, bytes) for one manifest row; runs in a worker thread."""
        if self.fmt != "symlink" and (refused := _unreadable(row, self.readable)) is not None:
            return None, refused, 0
        target = row[_TARGET]
        dst = self.to_dir / target
        # Resolved before any folder is made: a symlink on the way (say, a link to a folder that an
        # earlier row of an edited catalog placed) must not lead outside --to. Nothing is replaced.
        if not is_inside(dst.parent, self.to_dir):
            return None, f"{row['path']}: refused, {dst} lies outside --to {self.to_dir}", 0
        if os.path.lexists(dst):
            return None, _taken(row["path"], dst), 0
        error = _place(row, dst, self.fmt, self.to_dir)
        return (None, error, 0) if error else (target, None, row["size_bytes"] or 0)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _SourceChecker:
    """The manifest format: checks each file is still the one the catalog describes; writes nothing."""

    def write(self, row: dict) -> tuple[str | None, str | None, int]:
        error = _source_error(row)
        return (None, error, 0) if error else (None, None, row["size_bytes"] or 0)

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
        # O_NONBLOCK: a named pipe put in a file's place must not hang the export (it is refused below)
        fd = os.open(row["path"], os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None, _not_a_file(row["path"])
            data = f.read()
    except FileNotFoundError:
        return None, f"{row['path']}: the original is gone; run `vdc-lake scan` again"
    except OSError as e:
        return None, f"{row['path']}: {e.strerror or e}"
    if xxhash.xxh3_128_hexdigest(data) != row["content_hash"]:
        return None, f"{row['path']}: changed since the last scan; run `vdc-lake scan` and export again"
    return data, None


def _extension(rel_path: str, fmt: str | None) -> str:
    """The member's extension: the file's, else its format's; only [a-z0-9]{1,10} (a tar member
    name from an edited catalog must not carry '/' or '..') and never 'json' (KEY.json is the
    sample's record), else 'bin'."""
    for ext in (os.path.splitext(rel_path)[1].lower().lstrip("."), (fmt or "").lower()):
        if _SAFE_EXTENSION.fullmatch(ext) and ext != "json":
            return ext
    return "bin"


class _WebDatasetWriter:
    """Reads each image (one ReadableRoots allows) in a worker thread; the shards are written in
    order by the caller's thread."""

    def __init__(self, to_dir: Path, shard_bytes: int, readable: ReadableRoots):
        self.shards = _ShardWriter(to_dir, shard_bytes)
        self.readable = readable

    def write(self, row: dict) -> tuple[bytes | None, str | None]:
        if (refused := _unreadable(row, self.readable)) is not None:
            return None, refused
        return _read_verified(row)

    def finish_row(self, row: dict, data: bytes) -> str:
        record = {k: v for k, v in row.items() if k not in ("export_path", _MTIME, _TARGET)}
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
        writer: _TreeWriter | _WebDatasetWriter | _SourceChecker = _WebDatasetWriter(to_dir, shard_bytes, readable)
    elif fmt == "manifest":
        writer = _SourceChecker()
    else:
        writer = _TreeWriter(to_dir, fmt, readable)
    placed: list[str | None] = []
    kept: list[bool] = []
    threads = min(IO_THREADS, worker_count(None))
    try:
        with ThreadPoolExecutor(threads) as pool, progress_bar(table.num_rows, f"export {fmt}", quiet=quiet) as bar:
            for batch in table.to_batches(max_chunksize=BATCH_ROWS):
                rows = batch.to_pylist()
                for row, result in zip(rows, _in_order(writer.write, rows, pool, 4 * threads)):
                    ok, path = _record(writer, row, result, summary)
                    kept.append(ok)
                    placed.append(path)
                    bar.update()
    except BaseException:
        writer.abort()  # no half-written shard is renamed into place
        raise
    writer.close()
    if isinstance(writer, _WebDatasetWriter):
        summary.shards = writer.shards.count
    return pa.array(placed, pa.string()), pa.array(kept, pa.bool_())


def _record(writer: _TreeWriter | _WebDatasetWriter | _SourceChecker, row: dict, result: tuple,
            summary: ExportSummary) -> tuple[bool, str | None]:
    """Account for one written (or failed) row; returns (exported, its export path)."""
    if isinstance(writer, _WebDatasetWriter):
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
    table = _rows_to_export(catalog, view)
    _check_paths(table)
    _check_roots(catalog, table)
    roots = pc.unique(table.column("root")).to_pylist()
    if fmt == "hardlink":
        _check_one_filesystem(roots, to_dir)
    catalog_run = catalog.scalar("SELECT max(run_id) FROM runs")
    settings = decision_settings(catalog)  # the decisions the exported set was computed under
    readable = ReadableRoots.of(catalog)
    note, lock = _prepare_destination(catalog, to_dir, overwrite, params)
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
        table = table.append_column(_TARGET, export_targets(table.column("root").combine_chunks(),
                                                            table.column("rel_path").combine_chunks(), keys,
                                                            ignore_case=_ignores_case(to_dir)))
    placed, kept = _write_files(table, to_dir, fmt, int(shard_size_mb * 2**20), summary, quiet, readable)
    table = table.drop_columns([c for c in (_MTIME, _TARGET) if c in table.column_names])
    table = table.append_column("export_path", placed)
    if summary.skipped:
        table = table.filter(kept)
    summary.images = table.num_rows
    if fmt in ("copy", "webdataset"):
        os.sync()  # the bytes written are on disk before the manifest and the record say they are there
    summary.manifest = str(_write_manifest(table, to_dir))
    summary.record = str(to_dir / RECORD_NAME)
