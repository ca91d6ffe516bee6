"""Scan: walk roots and keep the `images` table in step with the filesystem, incrementally.

A re-scan lists every file (stat only), classifies it against the catalog in one SQL join,
and reads only new files and files whose size or mtime changed (and files whose header could not
be read last time: that may have been brief). A changed file whose hash is the same keeps its
version; different bytes bump the version, so every derived row computed on the old bytes
drops out of the views. Files that vanished are marked not present. A file is read once, for
its hash and header together (probe.read_file); with sanitize's scan_and_sanitize (`scan
--sanitize`) the same read also runs sanitize's decode check (ReadAhead).

Roots never overlap, so one file is never two images: a root inside a scanned root (one with
present images) is refused, and a root that contains scanned roots takes them over (their rows,
image ids and all, move under it). A file that vanished from one path while the same bytes
appeared at another in the same scan was moved: its row follows it (_follow_moves).

What can never be an image is left out: the backup folder of any apply run (skipped with a
note; a root at or inside one is refused), this catalog's by its runs' records, any catalog's by
the marker apply writes into it (markers.BACKUP_MARKER); a folder below a root that holds a
vdc-lake export (its export.json record or running mark) or report (index.html and thumbs/),
skipped with a note: copies and thumbnails of catalogued images, which would be registered as
duplicates of their originals; and apply/restore temp files (`*.vdc-tmp`, `*.vdc-restore`). What could not be
listed is a finding of the scan run, not a crash and not a silent gap: a name that is not
valid UTF-8 (`bad_filename`), a symlink back into its own
folder or an ancestor (`symlink_loop`), a second way into a folder already listed
(`duplicate_folder`), a folder that cannot be read (`unreadable_folder`: the images
registered under it keep their state, since whether they are still there is not known). Such
findings name no image: image_id and version are 0 (NO_IMAGE), the path is in the detail, the
action 'none'.
"""

from __future__ import annotations

import errno
import os
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from vdc_lake.catalog.connection import Catalog
from vdc_lake.fileops.confine import ReadableRoots, recorded_backup_dirs
from vdc_lake.fileops.facts import FACT_COLUMNS, fact_arrays, fact_assignments
from vdc_lake.fileops.markers import (BACKUP_MARKER, RECORD_NAME, RUNNING_NAME, backup_folder_at_or_above,
                                     is_backup_marker, is_export_record)
from vdc_lake.errors import StageError
from vdc_lake.fileops.probe import DecodeResult, FileRead, errno_text, inspect_header, read_file
from vdc_lake.fileops.imageops import LEFTOVER_SUFFIXES
from vdc_lake.scale.parallel import LazyRows, batched, get_mapper, map_ordered  # noqa: F401 - tests reach INLINE_BELOW through it

COMMIT_EVERY = 5000
NO_IMAGE = 0  # image_id and version of a scan finding about a path that is not registered
# Header errors that say nothing about the file's bytes: read such a file again at every scan.
RETRY_HEADER_ERRORS = ("unreadable:%", "missing:%", "broken_symlink:%")


@dataclass
class ScanSummary:
    run_id: int
    listed: int = 0
    new: int = 0
    changed: int = 0
    touched: int = 0       # size/mtime changed but the bytes are the same
    unchanged: int = 0
    gone: int = 0
    moved: int = 0         # same bytes at a new path: the image keeps its id, version and results
    excluded: int = 0      # names that no longer match the scan's extensions: not present now
    errors: int = 0        # files whose header could not be read (findings at sanitize)
    problems: int = 0      # paths that could not be listed: findings of this run (NO_IMAGE)
    notes: list[str] = field(default_factory=list)


@dataclass
class ReadAhead:
    """The decode check done in the read that hashes each new or changed file (sanitize's
    scan_and_sanitize: one read per file for scan and sanitize). Files are decoded with
    probe.read_file's rules (max_pixels, with_descriptor) when they may be read by sanitize's
    rule (confine.ReadableRoots) and their bytes differ from the row's recorded ones; once a
    batch's facts are written, on_batch(catalog, files, results) gets the files whose result
    stands (a table of root, rel_path, content_hash; one DecodeResult each): not over the pixel
    limit, not changed during the read, a readable header, and not possibly a moved file (its
    row may be replaced by the vanished one's, see _follow_moves)."""

    max_pixels: int
    with_descriptor: bool
    on_batch: Callable[[Catalog, pa.Table, list[DecodeResult]], None]


@dataclass
class RootListing:
    """What walk_root found under one root: image files (POSIX relative paths, sizes and
    mtimes in ns, -1 when stat failed), problems as (rule, detail) findings, and notes."""

    rel_paths: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    leftovers: int = 0
    unlisted: list[str] = field(default_factory=list)  # folders that could not be listed, relative ('' = root)


def _printable(path: str) -> str:
    """A path for a message: bytes that are not UTF-8 as \\xNN escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.scandir maps undecodable bytes to lone surrogates
        return False
    return True


def walk_root(root: Path, extensions: set[str], *, backup_dirs: dict[tuple[int, int], str] | None = None,
              other_roots: Sequence[str] = ()) -> RootListing:
    """List image files under root, folders in name order.

    Broken symlinks with an image extension are listed (size/mtime -1) so that sanitize can
    report them. Real folders are walked first, symlinked folders after them, each folder once
    (under its real path when it is inside root): a link back into its own folder or an
    ancestor is a `symlink_loop` finding, another way into a listed folder `duplicate_folder`.
    Folders in backup_dirs ((st_dev, st_ino) -> what they are) are skipped with a note;
    apply/restore temp files are skipped and counted. A symlinked folder that leads into one of
    other_roots (resolved; the other roots of this scan and the scanned roots) is not followed,
    a `duplicate_folder` finding: that root lists its files, and one file is never two images.
    """
    backup_dirs = backup_dirs or {}
    out = RootListing()
    prefix = len(str(root)) + 1
    root_stat = root.stat()
    seen: dict[tuple[int, int], str] = {(root_stat.st_dev, root_stat.st_ino): str(root)}  # first path of a folder
    stack = [str(root)]
    links: list[tuple[str, str, tuple[int, int]]] = []  # symlinked folders: (path, parent, key), walked last

    def enter(path: str, parent: str, key: tuple[int, int]) -> bool:
        inside = _other_root_of(path, other_roots) if other_roots and os.path.islink(path) else None
        if key in backup_dirs:
            out.notes.append(f"skipped {path}: {backup_dirs[key]}, not images")
        elif key in seen:
            first = seen[key]
            rule = "symlink_loop" if parent == first or parent.startswith(first + os.sep) else "duplicate_folder"
            out.problems.append((rule, f"{path}: the same folder as {first}, listed there only"))
        elif inside is not None:
            out.problems.append(("duplicate_folder", f"{path}: a link into {inside}, another scanned root; "
                                 "its files are listed there only"))
        else:
            seen[key] = path
            return True
        return False

    while stack or links:
        if not stack:
            path, parent, key = links.pop(0)
            if enter(path, parent, key):
                stack.append(path)
            continue
        folder = stack.pop()
        subfolders = _walk_folder(folder, prefix, extensions, out, links)
        stack.extend(path for path, key in reversed(subfolders) if enter(path, folder, key))
    if out.leftovers:
        out.notes.append(f"skipped {out.leftovers} temp file(s) of an interrupted apply or restore under {root} "
                         f"({', '.join('*' + s for s in LEFTOVER_SUFFIXES)}): not images")
    return out


def _walk_folder(folder: str, prefix: int, extensions: set[str], out: RootListing,
                 links: list[tuple[str, str, tuple[int, int]]]) -> list[tuple[str, tuple[int, int]]]:
    """List one folder into out (files, problems); symlinked subfolders go to links; returns
    the real subfolders as (path, (st_dev, st_ino)) in name order."""
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as e:
        out.problems.append(("unreadable_folder", f"{folder}: cannot list the folder ({errno_text(e)}); "
                             "its files are not listed"))
        out.unlisted.append(folder[prefix:].replace(os.sep, "/"))
        return []
    output = _vdc_output(folder, entries) if len(folder) >= prefix else None
    if output is not None:
        out.notes.append(f"skipped {folder}: it holds a vdc-lake {output}, not images")
        return []
    subfolders = []
    for entry in entries:
        if not _is_utf8(entry.name):
            out.problems.append(("bad_filename", f"{_printable(entry.path)}: the name is not valid UTF-8; "
                                 "rename it (e.g. convmv -f latin1 -t utf8) to have it scanned"))
            continue
        if entry.name.endswith(LEFTOVER_SUFFIXES):
            out.leftovers += 1
            continue
        try:
            if entry.is_dir():
                st = entry.stat()
                key = (st.st_dev, st.st_ino)
                if entry.is_symlink():
                    links.append((entry.path, folder, key))
                else:
                    subfolders.append((entry.path, key))
                continue
        except OSError as e:
            if e.errno == errno.ELOOP:
                out.problems.append(("symlink_loop", f"{entry.path}: the link resolves to itself "
                                     "(too many levels of symbolic links); not followed"))
                continue
            if _is_dir_entry(entry):  # e.g. a path longer than the system allows: never a silent gap
                out.problems.append(("unreadable_folder", f"{_printable(entry.path)}: cannot list the folder "
                                     f"({errno_text(e)}); its files are not listed"))
                out.unlisted.append(entry.path[prefix:].replace(os.sep, "/"))
                continue
            # otherwise listed below if it has an image name: scan and sanitize say why it fails
        if os.path.splitext(entry.name)[1].lower() not in extensions:
            continue
        try:
            st = entry.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1  # broken link or vanished between listing and stat
        out.rel_paths.append(entry.path[prefix:].replace(os.sep, "/"))
        out.sizes.append(size)
        out.mtimes.append(mtime)
    return subfolders


def _other_root_of(link: str, other_roots: Sequence[str]) -> str | None:
    """The root among other_roots that the symlinked folder `link` resolves into, if any."""
    if not other_roots:
        return None
    real = os.path.realpath(link)
    for other in other_roots:
        if real == other or real.startswith(other.rstrip(os.sep) + os.sep):
            return other
    return None


def _vdc_output(folder: str, entries: list[os.DirEntry]) -> str | None:
    """What vdc-lake wrote into the folder, if it holds copies or thumbnails of catalogued images
    (which a scan would register as duplicates of their originals): an export (its running
    mark, or an export.json record naming its catalog and params), a report (index.html
    titled "vdc-lake report" beside thumbs/) or the backups of an apply run, of any catalog
    (its marker); None otherwise."""
    names = {e.name for e in entries}
    if BACKUP_MARKER in names and is_backup_marker(Path(folder) / BACKUP_MARKER):
        return (f"apply run's backups ({BACKUP_MARKER}; this catalog's or another's): copies of originals "
                "that restore needs")
    if RUNNING_NAME in names or (RECORD_NAME in names and is_export_record(Path(folder) / RECORD_NAME)):
        return "export (copies of catalogued images); remove its export.json to have it scanned"
    if "index.html" in names and "thumbs" in names:
        try:
            with open(os.path.join(folder, "index.html"), "rb") as f:
                head = f.read(4096)
        except OSError:
            head = b""
        if b"<title>vdc-lake report" in head:
            return "report (thumbnails of catalogued images)"
    return None


def _is_dir_entry(entry: os.DirEntry) -> bool:
    """Is the entry a folder by its type in the listing (no stat of its own: that just failed)?"""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _known_backup_dirs(catalog: Catalog) -> dict[str, int]:
    """{resolved backup folder: apply run id} of every apply run that named one."""
    return {str(Path(folder).resolve()): run_id for folder, run_id in recorded_backup_dirs(catalog).items()}


def _backup_dirs_by_inode(known: dict[str, int]) -> dict[tuple[int, int], str]:
    out = {}
    for folder, run_id in known.items():
        try:
            st = os.stat(folder)
        except OSError:
            continue  # not there (yet): nothing to skip
        out[(st.st_dev, st.st_ino)] = f"the backup folder of apply run {run_id}"
    return out


def _check_root_outside_backups(root: Path, known: dict[str, int]) -> None:
    for folder, run_id in known.items():
        if root == Path(folder) or root.is_relative_to(folder):
            raise StageError(f"scan root {root} is inside {folder}, the backup folder of apply run {run_id}: "
                             "backups are never images; scan the folders that hold your images")
    marked = backup_folder_at_or_above(root)
    if marked is not None:
        where = "is" if marked == root else f"is inside {marked},"
        raise StageError(f"scan root {root} {where} a backup folder of an apply run (it holds {BACKUP_MARKER}; "
                         "of this catalog or another): backups are never images; scan the folders that hold your "
                         "images")


def _check_nesting(catalog: Catalog, roots: list[Path]) -> list[tuple[str, Path]]:
    """Roots never overlap, or one file would be two images (and a duplicate of itself). Refuses
    a root inside another root given or scanned before (one with present images), compared
    resolved; returns the scanned roots that lie inside a new root as (old root, new root): the
    new root takes them over (_take_over)."""
    for root in roots:
        for other in roots:
            if other != root and root.is_relative_to(other):
                raise StageError(f"{root} is inside {other}, also given; scan {other} only")
    taken = []
    for (old,) in catalog.rows("SELECT DISTINCT root FROM images WHERE present ORDER BY root"):
        old_real = Path(os.path.realpath(old))
        for root in roots:
            if root == old_real or str(root) == old:
                continue
            if root.is_relative_to(old_real) or root.is_relative_to(old):
                raise StageError(f"{root} is inside the scanned root {old}; scan {old} instead")
            if old_real.is_relative_to(root):
                taken.append((old, root))
    return taken


def _take_over(catalog: Catalog, old: str, root: Path) -> str:
    """Register the images of the scanned root `old` under `root`, which contains it: the same
    rows (image ids, versions, everything derived) with the root's part moved into rel_path.
    A row whose new path is registered already (two rows for one file) is marked not present."""
    prefix = Path(os.path.realpath(old)).relative_to(root).as_posix() + "/"
    with catalog.transaction():
        moved = catalog.execute(
            """UPDATE images SET root = ?, rel_path = ? || rel_path
               WHERE root = ? AND NOT EXISTS (SELECT 1 FROM images o
                                              WHERE o.root = ? AND o.rel_path = ? || images.rel_path)""",
            [str(root), prefix, old, str(root), prefix],
        )[0][0]
        catalog.execute("UPDATE images SET present = false WHERE root = ? AND present", [old])
    return f"{old} lies inside {root}: its {moved} images are registered under {root} now (same image ids)"


def _listing(roots: Sequence[Path], extensions: set[str], backup_dirs: dict[tuple[int, int], str],
             scanned_roots: Sequence[str] = ()) -> tuple[pa.Table, list[RootListing]]:
    columns: dict[str, list] = {"root": [], "rel_path": [], "size_bytes": [], "mtime_ns": []}
    walked = []
    every_root = list(dict.fromkeys([str(r) for r in roots] + [os.path.realpath(r) for r in scanned_roots]))
    for root in roots:
        found = walk_root(root, extensions, backup_dirs=backup_dirs,
                          other_roots=[r for r in every_root if r != str(root)])
        walked.append(found)
        columns["root"].extend([str(root)] * len(found.rel_paths))
        columns["rel_path"].extend(found.rel_paths)
        columns["size_bytes"].extend(found.sizes)
        columns["mtime_ns"].extend(found.mtimes)
    return pa.table(columns, schema=pa.schema([
        ("root", pa.string()), ("rel_path", pa.string()), ("size_bytes", pa.int64()), ("mtime_ns", pa.int64()),
    ])), walked


def _record_problems(catalog: Catalog, run_id: int, problems: list[tuple[str, str]]) -> None:
    if not problems:
        return
    with catalog.transaction():
        catalog.insert_arrow("findings", pa.table({
            "run_id": pa.array([run_id] * len(problems), pa.int64()),
            "image_id": pa.array([NO_IMAGE] * len(problems), pa.int64()),
            "version": pa.array([NO_IMAGE] * len(problems), pa.int32()),
            "rule": [rule for rule, _ in problems],
            "detail": [detail for _, detail in problems],
            "action": ["none"] * len(problems),
        }))


def _classify(catalog: Catalog, listing: pa.Table, roots: list[str], extensions: set[str],
              unlisted: pa.Table) -> tuple[pa.Table, int, pa.Table]:
    """Return (work rows: new or possibly changed files, unchanged count, vanished rows). Present
    rows of the roots that the listing lacks are marked not present, except those under a folder
    that could not be listed (unlisted: root, folder; '' = the root): their state is unknown, so
    it stays as it was. vanished holds (image_id, content_hash, size_bytes, excluded), excluded
    true where the name no longer has one of `extensions` (the file may well be there)."""
    with catalog.registered("scan_listing", listing), catalog.registered("scan_unlisted", unlisted):
        work = catalog.arrow(
            f"""
            SELECT l.root, l.rel_path, i.image_id, i.content_hash AS old_hash, i.version AS old_version
            FROM scan_listing l
            LEFT JOIN images i ON i.root = l.root AND i.rel_path = l.rel_path
            WHERE i.image_id IS NULL OR NOT i.present
               OR i.size_bytes IS DISTINCT FROM l.size_bytes OR i.mtime_ns IS DISTINCT FROM l.mtime_ns
               OR {" OR ".join(f"i.header_error LIKE '{p}'" for p in RETRY_HEADER_ERRORS)}
            """
        )
        vanished = catalog.arrow(
            """
            SELECT image_id, content_hash, size_bytes,
                   NOT list_contains(?, lower(regexp_extract(rel_path, '[^/](\\.[^./]*)$', 1))) AS excluded
            FROM images
            WHERE present AND list_contains(?, root)
              AND NOT EXISTS (SELECT 1 FROM scan_listing l WHERE l.root = images.root AND l.rel_path = images.rel_path)
              AND NOT EXISTS (SELECT 1 FROM scan_unlisted u WHERE u.root = images.root
                              AND (u.folder = '' OR starts_with(images.rel_path, u.folder || '/')))
            """,
            [sorted(extensions), roots],
        )
    with catalog.registered("scan_vanished", vanished):
        catalog.execute("UPDATE images SET present = false FROM scan_vanished v WHERE images.image_id = v.image_id")
    return work, listing.num_rows - work.num_rows, vanished


def _follow_moves(catalog: Catalog, run_id: int, vanished: pa.Table) -> int:
    """A file that vanished from one path and appeared at another in this scan with the same
    bytes (size and hash) is the same image moved: its row takes the new path (image id,
    version, results, overrides and all) and the row this scan made for the new path goes.
    Files with the same bytes pair up in order of (file name, path), so a moved folder of
    copies keeps each copy's history. Returns the number of moves."""
    vanished = vanished.filter(pa.compute.invert(vanished.column("excluded")))
    if not vanished.num_rows:
        return 0
    with catalog.registered("scan_vanished", vanished), catalog.transaction():
        catalog.execute(
            """
            CREATE OR REPLACE TEMP TABLE scan_moves AS
            WITH gone AS (
                SELECT i.image_id, i.content_hash, i.size_bytes, row_number() OVER (
                    PARTITION BY i.content_hash, i.size_bytes ORDER BY parse_filename(i.rel_path), i.root, i.rel_path
                ) AS k
                FROM scan_vanished v JOIN images i ON i.image_id = v.image_id
                WHERE NOT i.present AND i.content_hash IS NOT NULL
            ),
            appeared AS (
                SELECT image_id, content_hash, size_bytes, row_number() OVER (
                    PARTITION BY content_hash, size_bytes ORDER BY parse_filename(rel_path), root, rel_path
                ) AS k
                FROM images
                WHERE first_run = ? AND present AND content_hash IS NOT NULL
                  AND content_hash IN (SELECT content_hash FROM gone)
            )
            SELECT g.image_id AS old_id, a.image_id AS new_id
            FROM gone g JOIN appeared a USING (content_hash, size_bytes, k)
            """,
            [run_id],
        )
        moved = int(catalog.scalar("SELECT count(*) FROM scan_moves"))
        if moved:
            catalog.execute(
                f"""UPDATE images SET root = n.root, rel_path = n.rel_path, {fact_assignments("n")}, present = true
                    FROM scan_moves m JOIN images n ON n.image_id = m.new_id
                    WHERE images.image_id = m.old_id"""
            )
            catalog.execute("DELETE FROM images WHERE image_id IN (SELECT new_id FROM scan_moves)")
        catalog.execute("DROP TABLE scan_moves")
    return moved


def _facts_table(work: pa.Table, facts: list[dict]) -> pa.Table:
    """The work rows (a slice of _classify's table) with their inspected facts, as one table."""
    arrays = {
        "root": work["root"].cast(pa.string()),
        "rel_path": work["rel_path"].cast(pa.string()),
        "image_id": work["image_id"].cast(pa.int64()),
        "old_version": work["old_version"].cast(pa.int32()),
        "old_hash": work["old_hash"].cast(pa.string()),
    }
    arrays.update(fact_arrays(facts))
    return pa.table(arrays)


def _write_batch(catalog: Catalog, run_id: int, work: pa.Table, batch: list[dict], summary: ScanSummary) -> None:
    facts = _facts_table(work, batch)
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
    summary.errors += sum(1 for f in batch if f.get("header_error"))


def _inspect(path: str) -> dict:
    return inspect_header(path)


def _inspect_within(path: str, *, whole_max_bytes: int) -> dict:
    return inspect_header(path, whole_max_bytes=whole_max_bytes)


def _read(item: tuple[str, str | None, bool], *, whole_max_bytes: int | None, max_pixels: int,
          with_descriptor: bool) -> FileRead:
    """read_file of (path, recorded content hash, may decode): decoded only when allowed and the
    bytes are not the recorded ones (a touched file keeps its version and its verdict)."""
    path, old_hash, may_decode = item
    return read_file(path, decode=may_decode, max_pixels=max_pixels, with_descriptor=with_descriptor,
                     decode_if=lambda digest: digest != old_hash, whole_max_bytes=whole_max_bytes)


def _read_items(catalog: Catalog, work: pa.Table) -> LazyRows:
    """(path, old hash, may decode) per work row; may decode: sanitize may read it (ReadableRoots)."""
    readable = ReadableRoots.of(catalog)
    return LazyRows(work, lambda row: (os.path.join(row["root"], row["rel_path"]), row["old_hash"],
                                       readable.error(row["root"], row["rel_path"]) is None))


def _standing_decodes(work: pa.Table, reads: list[FileRead], may_move: set[tuple[str, int]]
                      ) -> tuple[pa.Table, list]:
    """The files of a batch whose decode result stands (see ReadAhead), with their results.
    may_move: (content_hash, size_bytes) of the vanished rows, which a new file with those
    bytes may replace as moved."""
    new = work.column("image_id").is_null().to_pylist()
    keep = [i for i, r in enumerate(reads)
            if r.decode is not None and not r.over_limit and not r.changed and r.facts["header_error"] is None
            and not (new[i] and (r.facts["content_hash"], r.facts["size_bytes"]) in may_move)]
    files = pa.table({"root": work.column("root").take(keep).cast(pa.string()),
                      "rel_path": work.column("rel_path").take(keep).cast(pa.string()),
                      "content_hash": pa.array([reads[i].facts["content_hash"] for i in keep], pa.string())})
    return files, [reads[i].decode for i in keep]


def scan(
    catalog: Catalog,
    roots: Sequence[str | os.PathLike],
    *,
    extensions: Sequence[str],
    workers: int | None = None,
    quiet: bool = False,
    backend: str = "local",
    whole_max_bytes: int | None = None,
    read_ahead: ReadAhead | None = None,
) -> ScanSummary:
    """Register image files under `roots` in the catalog; returns counts per outcome.

    Each new or changed file is read once (probe.read_file): whole into memory up to
    whole_max_bytes (None: the bundled sanitize.max_file_size_mb), streamed beyond. read_ahead:
    the decode check done in the same read (sanitize.scan_and_sanitize)."""
    resolved = []
    known_backups = _known_backup_dirs(catalog)
    for root in roots:
        if not os.fspath(root).strip():  # an unset shell variable: it would mean the current folder
            raise StageError("scan root is empty (''); give the folder that holds the images "
                             "(e.g. vdc-lake scan ~/Datasets/GLDv2)")
        path = Path(root).expanduser()
        if not _is_utf8(str(path)):
            raise StageError(f"scan root {_printable(str(path))} is not a valid UTF-8 path; rename it or scan "
                             "a folder above it")
        if not path.is_dir():
            raise StageError(f"scan root {root} is not a directory; pass folders that hold images")
        _check_root_outside_backups(path.resolve(), known_backups)
        if path.resolve() not in resolved:  # the same root twice would list every file twice
            resolved.append(path.resolve())
    taken = _check_nesting(catalog, resolved)
    ext = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    params = {"roots": [str(r) for r in resolved], "extensions": sorted(ext), "workers": workers}
    with catalog.run("scan", params) as run_id:
        summary = ScanSummary(run_id)
        takeovers = [_take_over(catalog, old, root) for old, root in taken]
        scanned = [r for (r,) in catalog.rows("SELECT DISTINCT root FROM images WHERE present")]
        listing, walked = _listing(resolved, ext, _backup_dirs_by_inode(known_backups), scanned)
        problems = [p for found in walked for p in found.problems]
        _record_problems(catalog, run_id, problems)
        summary.problems = len(problems)
        summary.notes = takeovers + [note for found in walked for note in found.notes]
        summary.listed = listing.num_rows
        unlisted = pa.table({"root": pa.array([str(r) for r, found in zip(resolved, walked) for _ in found.unlisted],
                                               pa.string()),
                             "folder": pa.array([f for found in walked for f in found.unlisted], pa.string())})
        work, summary.unchanged, vanished = _classify(catalog, listing, params["roots"], ext, unlisted)
        summary.excluded = int(pa.compute.sum(vanished.column("excluded")).as_py() or 0)
        summary.gone = vanished.num_rows - summary.excluded
        if read_ahead is None:
            items = LazyRows(work, lambda row: os.path.join(row["root"], row["rel_path"]))
            kernel = _inspect if whole_max_bytes is None else partial(_inspect_within, whole_max_bytes=whole_max_bytes)
        else:
            items = _read_items(catalog, work)
            kernel = partial(_read, whole_max_bytes=whole_max_bytes, max_pixels=read_ahead.max_pixels,
                             with_descriptor=read_ahead.with_descriptor)
        if work.num_rows:  # closing and reopening costs ~0.1 s, most of an unchanged re-scan
            catalog.release()  # no open DuckDB handle across fork; readers may get in meanwhile
        mapper = get_mapper(backend, catalog_path=catalog.path)
        results = mapper(kernel, items, workers=workers, desc="scan", quiet=quiet)
        may_move = set(zip(vanished.column("content_hash").to_pylist(), vanished.column("size_bytes").to_pylist())
                       ) if read_ahead is not None else set()
        done = 0
        for batch in batched(results, COMMIT_EVERY):
            rows = work.slice(done, len(batch))
            _write_batch(catalog, run_id, rows, batch if read_ahead is None else [r.facts for r in batch], summary)
            if read_ahead is not None:
                files, decodes = _standing_decodes(rows, batch, may_move)
                if files.num_rows:
                    read_ahead.on_batch(catalog, files, decodes)
            done += len(batch)
            catalog.release()
        summary.moved = _follow_moves(catalog, run_id, vanished)
        summary.new -= summary.moved
        summary.gone -= summary.moved
        catalog.finish_run(run_id, summary=asdict(summary))
    return summary
