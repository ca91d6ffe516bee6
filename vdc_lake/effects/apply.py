"""The apply engine: the only code in vdc-lake that changes, moves or deletes image files.

Protocol for each planned operation (rows of a decision view):

1. plan: every operation is written to `journal` as `planned` (with the expected checksum, the
   backup path and what the file was: `params.file` holds its mode, owner, group, times, symlink
   target and hard-link siblings) in one transaction before any file is touched;
2. check: the image's root must be one a scan run was given (else the operation is journaled
   `refused`), the paths must lie in it (resolved, symlinks included) and the backup path in the
   backup folder; the current bytes must be the planned ones, and before a delete the reason is
   checked again (a decode failure is decoded again; a file that cannot be read is never
   deleted; a duplicate is never its keeper's own file);
3. backup: copy to BACKUP_DIR/run-N/<root>/<rel_path> through a temp file, fsync, rename,
   then re-read and verify the checksum (a symlink is backed up as the link itself);
4. act: write the result to a temp file in the same directory, check that it decodes, and
   `os.replace` it over the original (atomic on POSIX), or unlink for delete; a recompress's new
   name (NAME.webp) is one no file, no other output of the plan and no catalogued image has, and
   is taken with a hard link that never replaces a file; a rewritten file gets the original's
   mode, owner, group and times back (temp files are private until then). A failed operation
   leaves the tree as it was (a recompress whose original cannot be removed removes its output);
5. journal `done` and the catalog row (version bump, new facts) are committed in batches.

The filesystem plus the plan is enough to tell where a killed run stopped: an operation is
done when its backup verifies and the source no longer has the planned checksum (or is gone).
So a crash at any moment leaves each file untouched or done with a verified backup, and
re-running `apply` finishes the interrupted operations first.

`restore` puts back what was there (bytes, symlink with its own times, hard link, mode, owner,
times) and makes the image's earlier version current again, with every row derived from it. It
refuses backups outside the backup folder and paths outside the scanned root, and leaves alone a
file the user changed after apply unless forced (then the user's version is kept next to the
backup as `NAME.vdc-user-STAMP`). A failed operation changed nothing, so there is nothing of it to
undo; an interrupted recompress's output is removed only when it holds exactly what the operation
writes (a file the user put under that name is theirs). A restore is a `restore` run; it journals
its work in batches, flushed before an image or path already in the batch is touched again, so a
killed restore is finished by the next one: what it put back holds the planned-on bytes, which the
next restore records as original (never as the user's change).

Temp files of a killed run are removed by the next one (leftovers.py) only for operations that
pass the operation's own confinement checks (root recorded by a scan, paths inside it, the backup
exactly where apply puts it inside the run's accepted backup folder).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from vdc_lake.catalog.connection import Catalog
from vdc_lake.fileops.confine import (is_inside, is_plain_relative, is_recorded_root, recorded_roots, root_overlap,
                              scanned_roots)
from vdc_lake.errors import PlanError, disk_full_error
from vdc_lake.fileops.probe import content_hash, decode_check, errno_text, inspect_header, place_new
from vdc_lake.fileops.imageops import ACTIONS, RESTORE_SUFFIX, TMP_SUFFIX, is_recompress_destination
from vdc_lake.effects.leftovers import UNFINISHED_STATES, remove_leftovers_of
from vdc_lake.scale.parallel import get_mapper, progress_bar

FLUSH_EVERY_OPS = 256
FLUSH_EVERY_SECONDS = 2.0
# A restore's batches (_RestoreJournal) may be larger: what a killed restore did not record, the
# next one finds again from the files; each batch also drops the rows of superseded versions
# (a statement per table that holds image versions), which is not worth doing every 2 seconds.
RESTORE_FLUSH_EVERY_OPS = 4096
RESTORE_FLUSH_EVERY_SECONDS = 30.0
USER_COPY_INFIX = ".vdc-user-"
# Sanitize rules whose verdict comes from decoding the bytes: checked again before a delete.
DECODE_RULES = ("corrupt", "truncated")
# Rules that say nothing about the bytes (the file could not be read): never a reason to delete.
IO_RULES = ("missing", "unreadable")


@dataclass
class Plan:
    """What a decision would do: one row per operation (image_id, version, action, params, src, checksum)."""

    decision: str
    ops: pa.Table
    options: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for action in self.ops.column("action").to_pylist():
            counts[action] = counts.get(action, 0) + 1
        return dict(sorted(counts.items()))

    def examples(self, n: int = 5) -> list[dict[str, Any]]:
        return self.ops.slice(0, n).select(["action", "src", "reason"]).to_pylist()

    def __len__(self) -> int:
        return self.ops.num_rows


@dataclass
class ApplySummary:
    run_id: int | None
    planned: int = 0
    done: int = 0
    resumed: int = 0
    skipped: int = 0
    refused: int = 0        # paths outside their scanned root (an edited catalog): journal 'refused'
    failed: int = 0
    rewritten: int = 0      # done ops that wrote a new version (resize, recompress, rotate): not sanitized yet
    errors: list[str] = field(default_factory=list)


@dataclass
class RestoreSummary:
    """Outcome counts of a restore (or, with dry_run, what it would do)."""

    restored: int = 0
    already_original: int = 0
    no_backup: int = 0      # changed by a --no-backup run: cannot be restored
    conflicts: int = 0      # changed by the user since apply: left alone (restore --force)
    failed: int = 0
    kept_aside: list[str] = field(default_factory=list)  # the user's versions that --force kept
    errors: list[str] = field(default_factory=list)


# -- confinement ----------------------------------------------------------------------------------

def _entry_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether the directory entry `path` lies in `folder`: its parent resolved (symlinks included),
    its name a plain name. A symlink that is the entry itself is not followed: it is what we act on."""
    path = Path(path)
    return path.name not in ("", ".", "..") and is_inside(path.parent, folder)


def _rel_in_root(path: str, root: str) -> str | None:
    """path's part under root when it is a plain relative path (no '..'), else None."""
    if not path.startswith(root.rstrip("/") + "/"):
        return None
    rel = path[len(root.rstrip("/")) + 1:]
    return rel if is_plain_relative(rel) else None


def check_backup_dir(roots: list[str], backup_dir: str | os.PathLike, what: str = "--backup-dir", *,
                     existing_in: Catalog | None = None) -> Path:
    """The backup folder, resolved; PlanError when it lies inside or contains a scanned root
    (confine.root_overlap: as given and resolved, so a symlink into a root is refused too), or
    when it is empty (an unset shell variable: it would mean the current folder).

    existing_in: the catalog, for a folder of backups already made (restore, resume). It may lie
    inside a root scanned since it was made (scan leaves every apply run's backup folder out), as
    long as it is not the root itself and holds none of the catalog's images."""
    if not os.fspath(backup_dir).strip():
        raise PlanError(f"{what} is empty; give the folder for the backups, outside every scanned root "
                        "(e.g. --backup-dir backup/sanitize)")
    overlap = root_overlap(roots, backup_dir)
    if overlap is not None and existing_in is not None and overlap[0] == "inside":
        overlap = _holds_images(existing_in, backup_dir, overlap)
    if overlap is not None:
        relation, root, root_real = overlap
        suggestion = root_real.parent / f"{root_real.name}-backup"
        if relation == "inside":
            raise PlanError(f"{what} {backup_dir} lies inside the scanned root {root}: its backups would be scanned "
                            f"as images; choose a folder outside every scanned root (e.g. {suggestion})")
        raise PlanError(f"{what} {backup_dir} contains the scanned root {root}; choose a folder outside every "
                        f"scanned root (e.g. {suggestion})")
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(backup_dir))))


def _holds_images(catalog: Catalog, folder: str | os.PathLike, overlap: tuple[str, str, Path]
                  ) -> tuple[str, str, Path] | None:
    """overlap when the folder (inside a scanned root) is that root or holds a catalogued image,
    as given or resolved; None when it holds none (a backup folder that scan left out)."""
    given = Path(os.path.abspath(os.path.expanduser(folder)))
    for candidate in {given, Path(os.path.realpath(given))}:
        if candidate in (Path(overlap[1]), overlap[2]) or catalog.scalar(
                "SELECT count(*) FROM image_files WHERE starts_with(path, ?)", [str(candidate) + "/"]):
            return overlap
    return None


def check_backup_folder(catalog: Catalog, backup_dir: str | os.PathLike) -> Path:
    """check_backup_dir against the catalog's scanned roots (a dry run checks it too)."""
    return check_backup_dir(scanned_roots(catalog), backup_dir)


def _recorded_backup_root(catalog: Catalog, roots: list[str], recorded: str | None, run_id: int,
                          checked: dict[str, str]) -> str:
    """An apply run's recorded backup folder (runs.params, which may have been edited), resolved,
    once check_backup_dir accepts it against the scanned roots (PlanError otherwise; a missing one
    is refused as "/"). `checked` caches the folders already accepted. Used by resume and restore."""
    folder = recorded or "/"
    if folder not in checked:
        check_backup_dir(roots, folder, f"the backup folder of apply run {run_id}", existing_in=catalog)
        checked[folder] = str(Path(os.path.realpath(folder)))
    return checked[folder]


def _confinement_error(op: dict[str, Any], backup_root: str | None) -> str | None:
    """Why op's paths may not be touched (None when they may): src and dst in the image's scanned
    root, dst src itself or a name the action gives its output, the backup exactly where apply
    puts it inside backup_root."""
    root = op.get("root")
    if not root:
        return f"op {op['op_id']}: image {op['image_id']} has no scanned root in the catalog"
    if not op.get("root_recorded"):
        return (f"op {op['op_id']}: image {op['image_id']} names the root {root}, which no scan run was given "
                "(the catalog was edited); vdc-lake only changes files inside the roots it scanned")
    paths = [op["src"]] + ([op["dst"]] if op.get("dst") and op["dst"] != op["src"] else [])
    for path in paths:
        if _rel_in_root(path, root) is None or not _entry_inside(path, root):
            return (f"op {op['op_id']}: {path} lies outside the scanned root {root} (resolved: "
                    f"{os.path.realpath(Path(path).parent)}); vdc-lake only changes files inside their root")
    if len(paths) > 1 and not (op["action"] == "recompress" and is_recompress_destination(
            op["src"], op["dst"], json.loads(op.get("params") or "{}"))):
        return (f"op {op['op_id']}: output path {op['dst']} is not one {op['action']} writes for {op['src']} "
                "(the catalog was edited); it could name another file")
    if op.get("backup") is not None:
        expected = _backup_path(Path(backup_root or "/nonexistent"), op["run_id"], root, _rel_in_root(op["src"], root))
        if op["backup"] != str(expected) or not _entry_inside(op["backup"], backup_root or "/nonexistent"):
            return f"op {op['op_id']}: backup path {op['backup']} escapes the backup root {backup_root}"
    return None


# -- what a file was --------------------------------------------------------------------------------

def file_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """What restore needs to give back besides the bytes: the symlink target (`link`, None for a
    regular file) with the link's own times (link_atime_ns, link_mtime_ns), and mode, uid, gid,
    atime_ns, mtime_ns, dev, ino, nlink (of what a link points to; absent for a broken link)."""
    meta: dict[str, Any] = {"link": None}
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            meta.update(link=os.readlink(path), link_atime_ns=st.st_atime_ns, link_mtime_ns=st.st_mtime_ns)
            st = os.stat(path)
    except OSError:
        return meta
    meta.update(mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid, atime_ns=st.st_atime_ns,
                mtime_ns=st.st_mtime_ns, dev=st.st_dev, ino=st.st_ino, nlink=st.st_nlink)
    return meta


def _add_hard_links(catalog: Catalog, rows: list[dict[str, Any]], metas: list[dict[str, Any]]) -> None:
    """For files with more than one link, record the catalogued paths that are the same inode
    (they have the same bytes, so the same content_hash): restore links the file to them again."""
    linked = [(r, m) for r, m in zip(rows, metas) if m["link"] is None and m.get("nlink", 1) > 1]
    if not linked:
        return
    hashes = sorted({r["checksum"] for r, _ in linked if r["checksum"]})
    candidates: dict[str, list[str]] = {}
    for checksum, path in catalog.rows(
            "SELECT content_hash, root || '/' || rel_path FROM images WHERE present AND list_contains(?, content_hash)",
            [hashes]):
        candidates.setdefault(checksum, []).append(path)
    for row, meta in linked:
        siblings = []
        for path in candidates.get(row["checksum"], []):
            if path == row["src"]:
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (meta["dev"], meta["ino"]):
                siblings.append(path)
        meta["hardlinks"] = siblings


def _set_metadata(path: Path, meta: dict[str, Any]) -> None:
    """Give a regular file the recorded owner, group, mode and times, as far as the OS allows
    (chown needs root or the same owner; an EPERM leaves the owner as it is)."""
    if "mode" not in meta or os.path.islink(path):  # never through a link: its target is not ours
        return
    with contextlib.suppress(OSError):
        os.chown(path, meta["uid"], meta["gid"])
    with contextlib.suppress(OSError):  # after chown, which may clear set-id bits
        os.chmod(path, meta["mode"])
    with contextlib.suppress(OSError):
        os.utime(path, ns=(meta["atime_ns"], meta["mtime_ns"]))


def _make_link(path: Path, meta: dict[str, Any]) -> None:
    """Make the symlink meta records at path, with the link's own recorded times (journals written
    before they were recorded give none: the link gets the current time)."""
    os.symlink(meta["link"], path)
    if "link_mtime_ns" in meta:
        with contextlib.suppress(OSError, NotImplementedError):  # a platform without lutimes
            os.utime(path, ns=(meta["link_atime_ns"], meta["link_mtime_ns"]), follow_symlinks=False)


@contextlib.contextmanager
def _private_files():
    """New files (temp outputs) are readable by their owner only until their mode is set."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _current_checksum(path: Path) -> str | None:
    """Checksum of what path holds now (through a symlink); None for a broken symlink.
    Raises OSError when it cannot be read, ValueError for something that is not a regular file."""
    if path.is_symlink() and not path.exists():
        return None
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path} is not a regular file")
    return content_hash(path)


def _holds_bytes(path: Path, checksum: str | None, meta: dict[str, Any]) -> bool:
    """Whether path is what the journal says it was: the same symlink, or a regular file with checksum."""
    try:
        if meta.get("link") is not None:
            return path.is_symlink() and os.readlink(path) == meta["link"]
        return not path.is_symlink() and _current_checksum(path) == checksum
    except (OSError, ValueError):
        return False


# -- planning ---------------------------------------------------------------------------------

def make_plan(catalog: Catalog, decision: str, source_sql: str, params: list[Any], options: dict[str, Any]) -> Plan:
    """Turn a decision query (image_id, version, action, reason, params) into operations.

    `params` (JSON or NULL) holds per-operation options, e.g. the resize limits of the
    sanitize run that found the image too large; they override the plan's options.

    Images with an unfinished operation from an earlier run are left out: resume handles them.
    """
    ops = catalog.arrow(
        f"""
        WITH decision AS ({source_sql})
        SELECT d.image_id, d.version, d.action, i.root, i.rel_path, i.root || '/' || i.rel_path AS src,
               i.content_hash AS checksum, coalesce(CAST(d.reason AS VARCHAR), '') AS reason,
               CAST(d.params AS VARCHAR) AS op_params
        FROM decision d
        JOIN images i ON i.image_id = d.image_id AND i.version = d.version AND i.present
        WHERE d.action IS NOT NULL AND d.action <> 'none'
          AND NOT EXISTS (SELECT 1 FROM journal j WHERE j.image_id = d.image_id AND j.state = 'planned')
        ORDER BY d.image_id
        """,
        params,
    )
    unknown = set(ops.column("action").to_pylist()) - set(ACTIONS)
    if unknown:
        raise PlanError(f"decision {decision!r} asks for unknown actions {sorted(unknown)}")
    return Plan(decision, ops, options)


def _backup_path(backup_root: Path, run_id: int, root: str, rel_path: str) -> Path:
    return backup_root / f"run-{run_id}" / root.lstrip("/") / rel_path


def _journal_rows(catalog: Catalog, plan: Plan, run_id: int, backup_root: Path | None,
                  max_pixels: int | None) -> pa.Table:
    """The plan's journal rows (op_id 0: numbered when inserted). Each row's params hold the
    operation's options, the decision's reason and what the file is now (`file`, for restore)."""
    rows = plan.ops.to_pylist()
    now = dt.datetime.now()
    metas = [file_metadata(r["src"]) for r in rows]
    _add_hard_links(catalog, rows, metas)
    params = [{**plan.options, **json.loads(r["op_params"] or "{}"), "reason": r["reason"], "file": m}
              for r, m in zip(rows, metas)]
    if max_pixels:
        for p in params:
            p.setdefault("max_pixels", max_pixels)
    return pa.table({
        "op_id": pa.array([0] * len(rows), pa.int64()),
        "run_id": pa.array([run_id] * len(rows), pa.int64()),
        "image_id": pa.array([r["image_id"] for r in rows], pa.int64()),
        "version": pa.array([r["version"] for r in rows], pa.int32()),
        "action": [r["action"] for r in rows],
        "params": [json.dumps(p, default=str) for p in params],
        "src": [r["src"] for r in rows],
        "dst": _destinations(catalog, rows, params),
        "backup": [
            str(_backup_path(backup_root, run_id, r["root"], r["rel_path"])) if backup_root else None for r in rows
        ],
        "checksum_before": [r["checksum"] for r in rows],
        "state": ["planned"] * len(rows),
        "ts": pa.array([now] * len(rows), pa.timestamp("us")),
    })


def _destinations(catalog: Catalog, rows: list[dict[str, Any]], params: list[dict[str, Any]]) -> list[str]:
    """Each operation's output path. A new name (recompress: NAME.webp) is one no file has now, no
    other operation of the plan writes, and no image of the catalog holds (its file may be away
    for a moment): two outputs, or an output and another image, never share a path."""
    dsts = [ACTIONS[r["action"]].destination(r["src"], p) for r, p in zip(rows, params)]
    moved = [i for i, (r, d) in enumerate(zip(rows, dsts)) if d != r["src"]]
    held: set[str] = set()  # catalogued paths found so far
    while moved:
        claimed = set(held)
        for i in moved:
            dsts[i] = ACTIONS[rows[i]["action"]].destination(rows[i]["src"], params[i], claimed)
            claimed.add(dsts[i])
        outputs = pa.table({"path": pa.array(sorted({dsts[i] for i in moved}), pa.string())})
        with catalog.registered("output_paths", outputs):
            found = {path for (path,) in catalog.rows(
                "SELECT o.path FROM output_paths o JOIN images i ON i.root || '/' || i.rel_path = o.path")}
        if not found:
            break
        held |= found
    return dsts


# -- one operation -----------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a read-only copy (mode 0444) can be fsynced this way too
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _verified(path: Path, checksum: str) -> bool:
    try:
        return content_hash(path) == checksum
    except OSError:
        return False


def _backup_ok(op: dict[str, Any], meta: dict[str, Any]) -> bool:
    return op["backup"] is None or _holds_bytes(Path(op["backup"]), op["checksum_before"], meta)


def make_backup(src: Path, backup: Path, checksum: str | None, meta: dict[str, Any] | None = None) -> None:
    """Copy src to backup (temp + fsync + rename) and verify the copy: the same bytes, owner,
    mode and times, or for a symlink the link itself (its target is not copied)."""
    meta = meta or {"link": None}
    backup.parent.mkdir(parents=True, exist_ok=True)
    tmp = backup.with_name(backup.name + ".vdc-tmp")
    tmp.unlink(missing_ok=True)
    try:
        if meta.get("link") is not None:
            _make_link(tmp, meta)
        else:
            shutil.copy2(src, tmp)
            _set_metadata(tmp, meta)
            _fsync_file(tmp)
        os.replace(tmp, backup)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half a copy behind
        raise
    _fsync_dir(backup.parent)
    if not _holds_bytes(backup, checksum, meta):
        raise OSError(f"backup {backup} does not match the original's checksum")


def _already_done(op: dict[str, Any], meta: dict[str, Any], src: Path, dst: Path) -> bool:
    """After a crash: has this operation's atomic step already happened? A new file under a moved
    operation's output name counts only when it is that output (written again from the backup to
    compare; without a backup a regular file there is taken for it)."""
    if not _backup_ok(op, meta):
        return False
    if op["action"] == "delete" or dst != src:
        if os.path.lexists(src) or op["action"] == "delete":
            return not os.path.lexists(src)
        return (dst.is_file() and not dst.is_symlink()
                and (op["backup"] is None or _is_own_output(op, Path(op["backup"]), dst)))
    if meta.get("link") is not None:
        return os.path.lexists(src) and not src.is_symlink()  # the link was replaced by the output
    return not src.is_symlink() and src.exists() and not _verified(src, op["checksum_before"])


def _skipped(op: dict[str, Any], error: str) -> dict[str, Any]:
    return {"op_id": op["op_id"], "state": "skipped", "error": error}


def _reason_no_longer_holds(op: dict[str, Any], src: Path, options: dict[str, Any]) -> str | None:
    """Before a delete: check the decision's reason on the current bytes again. Returns why it no
    longer holds (the delete is skipped), or None. The checksum was already found unchanged."""
    keeper = _keeper_path(options)
    if keeper is not None:  # a delete removes the entry src (a symlink: the link only); the keeper must keep its bytes
        if _entry(src) in (_entry(keeper), os.path.realpath(keeper)):
            return f"it is the kept copy itself ({keeper}: one file registered twice, or the keeper links to it)"
        if not keeper.exists():
            return f"the kept copy {keeper} is gone"
        if options.get("kept_hash") and not _verified(keeper, options["kept_hash"]):
            return (f"the kept copy {keeper} changed since the plan (no longer the bytes it was compared as); "
                    "run `vdc-lake scan`, then dedup report and plan again")
    rules = set(re.findall(r"(?:^|; )([a-z_]+): ", options.get("reason") or ""))
    if rules & set(IO_RULES):
        return "the file could not be read when it was checked, which is no reason to delete it"
    if "broken_symlink" in rules and not (src.is_symlink() and not src.exists()):
        return "the symlink is no longer broken"
    if rules & set(DECODE_RULES):
        result = decode_check(str(src), max_pixels=int(options.get("max_pixels") or 0) or _pixel_limit(),
                              with_descriptor=False)
        if result.error is None:
            return "the file decodes completely now"
        if result.error.split(":", 1)[0] not in DECODE_RULES:
            return f"the file cannot be read now ({result.error}), which is no reason to delete it"
    return None


def _keeper_path(options: dict[str, Any]) -> Path | None:
    """The file a duplicate's delete keeps: params.kept_path, or for journals written before it,
    the path in the reason's text (which a path with a line break in it defeats)."""
    if options.get("kept_path"):
        return Path(options["kept_path"])
    kept = re.match(r"duplicate of (.+) \(image \d+, kept by ", options.get("reason") or "")
    return Path(kept.group(1)) if kept else None


def _entry(path: Path) -> str:
    """Where the directory entry `path` is: its folder resolved, its name as it is (not followed)."""
    return os.path.join(os.path.realpath(path.parent), path.name)


def _pixel_limit() -> int:
    from PIL import Image

    return int(Image.MAX_IMAGE_PIXELS or 1 << 62)


def execute_op(op: dict[str, Any]) -> dict[str, Any]:
    """Carry out one journaled operation (options from its journal row); returns the journal update.

    op carries its journal row plus `root` (the image's scanned root) and `backup_root`."""
    src, dst = Path(op["src"]), Path(op["dst"] or op["src"])
    options = json.loads(op["params"] or "{}")
    meta = options.get("file") or {"link": None}
    try:
        refused = _confinement_error(op, op.get("backup_root"))
        if refused:
            return {"op_id": op["op_id"], "state": "refused", "error": f"refused {refused}"}
        if not os.path.isdir(op["root"]):  # not "gone": an unmounted disk; whether it happened is not known
            return {"op_id": op["op_id"], "state": "planned",
                    "error": f"{src}: its scanned root {op['root']} is missing (a disk not mounted?); left for "
                             "the next apply: mount it and run apply again"}
        if _already_done(op, meta, src, dst):
            return _finished(op, meta, dst, resumed=True)
        if not os.path.lexists(src):
            return _skipped(op, f"{src} no longer exists; run `vdc-lake scan`")
        if meta.get("link") is not None and op["action"] == "delete":
            # Deleting a symlink removes the link only: it must be the same link; its target may
            # have been changed or removed meanwhile (even by this run).
            if not _holds_bytes(src, None, meta):
                return _skipped(op, f"{src} changed since it was scanned; run `vdc-lake scan` and plan again")
        else:
            try:
                current = _current_checksum(src)
            except (OSError, ValueError) as e:
                return _skipped(op, f"{src} cannot be read now ({getattr(e, 'strerror', None) or e}); nothing done")
            if current != op["checksum_before"] or (meta.get("link") is not None and not _holds_bytes(src, None, meta)):
                # rescan: the next scan reads it again, even if the change kept its size and mtime
                return {**_skipped(op, f"{src} changed since it was scanned; run `vdc-lake scan` and plan again"),
                        "rescan": True}
        if op["action"] == "delete":
            why = _reason_no_longer_holds(op, src, options)
            if why:
                return _skipped(op, f"skipped: reason no longer holds for {src}: {why}")
        if op["backup"] is not None and not _backup_ok(op, meta):
            make_backup(src, Path(op["backup"]), op["checksum_before"], meta)
        _act(op, src, dst, options)
        return _finished(op, meta, dst, resumed=False)
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the run; it is journaled
        return {"op_id": op["op_id"], "state": "failed", "error": _failure_text(op, e)}


def _act(op: dict[str, Any], src: Path, dst: Path, options: dict[str, Any]) -> None:
    """Run the action. When it fails after writing a new file (a recompress whose original cannot
    be removed), that new file is removed again: a failed operation leaves the tree as it was."""
    new_name = dst != src and not os.path.lexists(dst)
    try:
        with _private_files():
            ACTIONS[op["action"]].run(src, dst, options)
    except BaseException:
        if new_name and os.path.lexists(src) and os.path.lexists(dst):
            dst.unlink()
        raise


def _failure_text(op: dict[str, Any], error: Exception, doing: str | None = None) -> str:
    """One line for a failed operation (or its restore): what it was doing to which file, and why:
    `delete of /data/a.jpg failed: Permission denied (/data/a.jpg, EACCES)`."""
    what = f"{doing or op['action']} of {op['src']} failed"
    if isinstance(error, OSError) and error.errno is not None:
        code = errno.errorcode.get(error.errno, str(error.errno))
        where = [os.fsdecode(f) for f in (error.filename, error.filename2) if f is not None]
        return f"{what}: {error.strerror} ({', '.join(where + [code])})"
    return f"{what}: {type(error).__name__}: {error}"


def _finished(op: dict[str, Any], meta: dict[str, Any], dst: Path, *, resumed: bool) -> dict[str, Any]:
    """The journal update of an operation whose act happened. Never `failed` (a failed operation
    changed nothing): when the new file's facts cannot be read it stays planned, for the next
    apply to record."""
    result: dict[str, Any] = {"op_id": op["op_id"], "state": "done", "error": None, "resumed": resumed}
    if op["action"] != "delete":
        try:
            _set_metadata(dst, meta)
            result["facts"] = inspect_header(str(dst))
        except Exception as e:  # noqa: BLE001
            return {"op_id": op["op_id"], "state": "planned",
                    "error": f"{dst}: written, but its facts could not be read ({type(e).__name__}: {e}); "
                             "the next apply records it"}
        result["checksum_after"] = result["facts"]["content_hash"]
    return result


# -- journal + catalog updates -------------------------------------------------------------------

def _flush(catalog: Catalog, run_id: int, results: list[dict[str, Any]], ops: dict[int, dict]) -> None:
    if not results:
        return
    updates = pa.table({
        "op_id": pa.array([r["op_id"] for r in results], pa.int64()),
        "state": [r["state"] for r in results],
        "error": pa.array([r.get("error") for r in results], pa.string()),
        "checksum_after": pa.array([r.get("checksum_after") for r in results], pa.string()),
    })
    done = [r for r in results if r["state"] == "done"]
    changed = [r for r in done if "facts" in r]
    with catalog.registered("journal_updates", updates), catalog.transaction():
        catalog.execute(
            """UPDATE journal SET state = u.state, error = u.error, checksum_after = u.checksum_after, ts = now()
               FROM journal_updates u WHERE journal.op_id = u.op_id"""
        )
        deleted = [ops[r["op_id"]]["image_id"] for r in done if "facts" not in r]
        if deleted:
            catalog.execute("UPDATE images SET present = false, updated_run = ? WHERE list_contains(?, image_id)",
                        [run_id, deleted])
        if changed:
            _update_changed_images(catalog, run_id, changed, ops)
        rescan = [ops[r["op_id"]]["image_id"] for r in results if r.get("rescan")]
        if rescan:  # mtime NULL never matches the listing (sanitize does the same for bytes it found changed)
            catalog.execute("UPDATE images SET mtime_ns = NULL WHERE list_contains(?, image_id)", [rescan])


def _update_changed_images(catalog: Catalog, run_id: int, changed: list[dict], ops: dict[int, dict]) -> None:
    from vdc_lake.stages.scan import fact_arrays, fact_assignments

    columns: dict[str, Any] = {
        "image_id": pa.array([ops[r["op_id"]]["image_id"] for r in changed], pa.int64()),
        "dst": [ops[r["op_id"]]["dst"] for r in changed],
    }
    columns.update(fact_arrays([r["facts"] for r in changed]))
    assignments = fact_assignments("f")
    with catalog.registered("changed_facts", pa.table(columns)):
        catalog.execute(
            f"""UPDATE images SET {assignments}, version = images.version + 1, updated_run = ?,
                       rel_path = substr(f.dst, length(images.root) + 2)
                FROM changed_facts f WHERE images.image_id = f.image_id""",
            [run_id],
        )
    from vdc_lake.stages.predict import carry_rotated_results  # results a predict pass computed on these turned pixels

    carry_rotated_results(catalog, [ops[r["op_id"]] for r in changed])


def _journal_ops(catalog: Catalog, where: str, params: list[Any]) -> list[dict[str, Any]]:
    """Journal rows with the image's scanned root and the run's backup folder (both from the catalog),
    and `root_recorded`: whether a scan run was given that root (else the op is refused)."""
    ops = catalog.arrow(
        f"""SELECT j.*, i.root AS root, json_extract_string(r.params, '$.backup_dir') AS backup_root
            FROM journal j JOIN runs r USING (run_id)
            LEFT JOIN (SELECT image_id, any_value(root) AS root FROM images GROUP BY image_id) i USING (image_id)
            WHERE {where}""",
        params,
    ).to_pylist()
    recorded = recorded_roots(catalog)
    for op in ops:
        op["root_recorded"] = is_recorded_root(op["root"], recorded)
    return ops


def _run_ops(catalog: Catalog, run_id: int, ops: list[dict], summary: ApplySummary, quiet: bool,
             backend: str = "local"):
    by_id = {op["op_id"]: op for op in ops}
    pending: list[dict[str, Any]] = []
    last_flush = time.monotonic()
    catalog.release()
    if backend == "local":
        results = map(execute_op, ops)
    else:  # shards of ops as Ray tasks; execute_op is idempotent, so a retried task is safe
        results = get_mapper(backend, catalog_path=catalog.path)(execute_op, ops, desc="apply", quiet=True)
    with progress_bar(len(ops), "apply", quiet=quiet) as bar:
        for result in results:
            pending.append(result)
            _count(summary, result)
            bar.update()
            if len(pending) >= FLUSH_EVERY_OPS or time.monotonic() - last_flush > FLUSH_EVERY_SECONDS:
                _flush(catalog, run_id, pending, by_id)
                catalog.release()
                pending, last_flush = [], time.monotonic()
    _flush(catalog, run_id, pending, by_id)


def _count(summary: ApplySummary, result: dict[str, Any]) -> None:
    state = result["state"]
    if state == "done":
        summary.done += 1
        summary.resumed += int(result.get("resumed", False))
        summary.rewritten += int("facts" in result)
    elif state == "skipped":
        summary.skipped += 1
    elif state == "refused":
        summary.refused += 1
    else:  # failed, or left planned for the next apply
        summary.failed += 1
    if result.get("error") and len(summary.errors) < 20:
        summary.errors.append(result["error"])


def unfinished_count(catalog: Catalog) -> int:
    """Operations a killed apply left `planned` (the next apply finishes them first)."""
    return int(catalog.scalar("SELECT count(*) FROM journal WHERE state = 'planned'") or 0)


def resume_unfinished(catalog: Catalog, *, quiet: bool = False, backend: str = "local") -> ApplySummary:
    """Finish every operation left `planned` by a killed apply, in its own run."""
    summary = ApplySummary(run_id=None)
    roots = scanned_roots(catalog)
    _remove_unfinished_leftovers(catalog, roots)  # temp files a killed or failed apply left next to its files
    runs = catalog.rows("SELECT DISTINCT run_id FROM journal WHERE state = 'planned' ORDER BY run_id")
    for (run_id,) in runs:
        ops = sorted(_journal_ops(catalog, "j.run_id = ? AND j.state = 'planned'", [run_id]), key=lambda o: o["op_id"])
        recorded = ops[0]["backup_root"] if ops else None
        if recorded is not None:  # checked only: the journal's backup paths were made from it as recorded
            _recorded_backup_root(catalog, roots, recorded, run_id, {})
        summary.planned += len(ops)
        _run_ops(catalog, run_id, ops, summary, quiet, backend)
        catalog.execute("UPDATE runs SET status = 'done', finished_at = now() WHERE run_id = ?", [run_id])
    return summary


def _remove_unfinished_leftovers(catalog: Catalog, roots: list[str]) -> list[str]:
    """Remove the temp files unfinished operations (planned or failed) left (leftovers.py), of the
    operations that pass the checks the operation itself gets: its run's recorded backup folder
    accepted (_recorded_backup_root), then _confinement_error. An edited journal row is refused
    as an operation, and so are its temp names: they may be someone else's files."""
    checked: dict[str, str] = {}
    refused: set[str | None] = set()
    confined = []
    for op in _journal_ops(catalog, "list_contains(?, j.state)", [list(UNFINISHED_STATES)]):
        if op["backup"] is not None:
            if op["backup_root"] in refused:
                continue
            try:
                _recorded_backup_root(catalog, roots, op["backup_root"], op["run_id"], checked)
            except PlanError:
                refused.add(op["backup_root"])
                continue
        if _confinement_error(op, op["backup_root"]) is None:
            confined.append(op)
    return remove_leftovers_of(confined)


def apply_plan(
    catalog: Catalog,
    plan: Plan,
    *,
    backup_dir: str | os.PathLike | None,
    no_backup: bool = False,
    quiet: bool = False,
    backend: str = "local",
) -> ApplySummary:
    """Carry out a plan with the journaled protocol. Unfinished earlier operations run first.

    The backup folder must lie outside every scanned root (PlanError otherwise)."""
    if backup_dir is None and not no_backup:
        raise PlanError("apply needs --backup-dir DIR (or an explicit --no-backup to change files without a copy)")
    backup_root = None if no_backup else check_backup_folder(catalog, backup_dir)
    if backup_root is not None and len(plan):
        _check_writable(backup_root)
    resumed = resume_unfinished(catalog, quiet=quiet, backend=backend)
    if len(plan) == 0:
        return ApplySummary(None, resumed=resumed.done, skipped=resumed.skipped, refused=resumed.refused,
                            failed=resumed.failed, rewritten=resumed.rewritten, errors=resumed.errors)
    options = dict(plan.options, backup_dir=str(backup_root) if backup_root else None, no_backup=no_backup)
    with catalog.run(f"apply:{plan.decision}", options) as run_id:
        summary = ApplySummary(run_id, planned=len(plan))
        summary.resumed, summary.refused, summary.rewritten = resumed.done, resumed.refused, resumed.rewritten
        rows = _journal_rows(catalog, plan, run_id, backup_root, _sanitize_pixel_limit(catalog))
        with catalog.transaction():
            op_ids = catalog.next_ids("op_id_seq", len(plan))
            catalog.insert_arrow("journal", rows.set_column(0, "op_id", pa.array(op_ids, pa.int64())))
        ops = sorted(_journal_ops(catalog, "j.run_id = ?", [run_id]), key=lambda o: o["op_id"])
        _run_ops(catalog, run_id, ops, summary, quiet, backend)
        summary.errors = resumed.errors + summary.errors
        catalog.finish_run(run_id, summary=asdict(summary), status="done")
    return summary


def _check_writable(backup_root: Path) -> None:
    """Make the backup folder, write a file in it and mark it as a backup folder (markers.BACKUP_MARKER,
    which every scan of any catalog honours: it leaves the folder out), before any operation is
    journaled: a folder that cannot be written is one error, not a failed operation per file."""
    from vdc_lake.fileops.markers import mark_backup_folder

    try:
        backup_root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=backup_root, prefix=".vdc-probe-")
        os.close(fd)
        os.unlink(probe)
        mark_backup_folder(backup_root)
    except FileExistsError as e:  # something else has the marker's name
        raise PlanError(f"cannot mark {backup_root} as a backup folder: {e}") from e
    except OSError as e:
        full = disk_full_error(e)
        if full is not None:
            raise full from e
        where = f" at {os.fsdecode(e.filename)}" if e.filename and os.fsdecode(e.filename) != str(backup_root) else ""
        raise PlanError(f"cannot write backups to {backup_root} ({errno_text(e)}{where}); choose a folder you can "
                        "write to, outside every scanned root") from e


def _sanitize_pixel_limit(catalog: Catalog) -> int | None:
    """The decompression-bomb limit of the newest sanitize run (decode checks before a delete use it)."""
    value = catalog.scalar("SELECT json_extract_string(params, '$.max_pixels') FROM runs "
                           "WHERE stage = 'sanitize' ORDER BY run_id DESC LIMIT 1")
    return int(value) if value else None


# -- restore ------------------------------------------------------------------------------------

def _restore_ops(catalog: Catalog, run_id: int | None, backup_dir: str | os.PathLike | None) -> list[dict[str, Any]]:
    """The operations to undo, newest first, each with the backup path to restore from.

    Refuses (PlanError, before any file is touched) an operation whose paths leave the image's
    scanned root, or whose backup is not where apply puts it inside the backup folder: the
    folder given (`backup_dir`, the user's word) or else the run's recorded one, which must lie
    outside every scanned root."""
    if run_id is not None and not catalog.scalar("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]):
        raise PlanError(f"there is no run {run_id}; list runs with `vdc-lake sql \"SELECT * FROM runs\"`")
    where = "j.state IN ('done', 'planned', 'failed')" + (" AND j.run_id = ?" if run_id is not None else "")
    ops = sorted(_journal_ops(catalog, where, [run_id] if run_id is not None else []),
                 key=lambda o: o["op_id"], reverse=True)
    roots = scanned_roots(catalog)
    given = check_backup_dir(roots, backup_dir, existing_in=catalog) if backup_dir is not None else None
    checked: dict[str, str] = {}
    for op in ops:
        if op["backup"] is not None and given is not None:
            recorded, op["backup_root"] = op["backup"], str(given)
            rel = _rel_in_root(op["src"], op["root"] or "")
            tail = str(_backup_path(Path("/"), op["run_id"], op["root"] or "", rel or ""))
            if rel is not None and recorded.endswith(tail):
                op["backup"] = str(_backup_path(given, op["run_id"], op["root"], rel))
            else:
                op["backup"] = recorded  # not apply's layout: refused below
        elif op["backup"] is not None:
            op["backup_root"] = _recorded_backup_root(catalog, roots, op["backup_root"], op["run_id"], checked)
        refused = _confinement_error(op, op["backup_root"])
        if refused:
            raise PlanError(f"refusing to restore {refused}")
    return ops


def _user_changed(op: dict[str, Any], meta: dict[str, Any]) -> list[Path]:
    """Paths where the bytes are not what apply left (the user's later edits, or a new file where
    apply deleted one); an interrupted operation (no checksum_after) counts as apply's own."""
    src, dst = Path(op["src"]), Path(op["dst"] or op["src"])
    changed = []
    if op["action"] == "delete" or dst != src:
        if os.path.lexists(src) and not _holds_bytes(src, op["checksum_before"], meta):
            changed.append(src)
    if op["action"] != "delete" and os.path.lexists(dst) and op["checksum_after"] is not None:
        if dst.is_symlink() or not _verified(dst, op["checksum_after"]):
            changed.append(dst)
    return changed


def _classify(op: dict[str, Any], force: bool) -> tuple[str, str | None]:
    """What restore would do with op: original | cleanup | untouched | restore | no_backup | conflict |
    failed, and why. `untouched`: a failed operation (it changes nothing: its output is removed
    when it fails) whose file was changed since by a later run or the user; nothing to undo. An
    image whose scanned root is missing fails: restore makes folders below a root, never the root."""
    src, dst = Path(op["src"]), Path(op["dst"] or op["src"])
    meta = (json.loads(op["params"] or "{}").get("file")) or {"link": None}
    if _holds_bytes(src, op["checksum_before"], meta):
        if dst == src or not os.path.lexists(dst):
            return "original", None
        if op["state"] != "done":  # an interrupted recompress: its output is left to remove, if it is its own
            return ("cleanup" if _is_own_output(op, src, dst) else "original"), None
    if not os.path.isdir(op["root"]):  # never made again: the files would land on the disk below the mount point
        return "failed", (f"{src}: its scanned root {op['root']} is missing (a disk not mounted?); nothing was "
                          "restored there; mount it and run restore again")
    if op["state"] == "failed":
        return "untouched", None  # a failed operation changed nothing: what is there now is another's doing
    if op["backup"] is None:
        return "no_backup", f"{src}: changed with --no-backup; nothing to restore from"
    if not _backup_ok(op, meta):
        return "failed", f"{src}: backup {op['backup']} is missing or does not match the original checksum"
    changed = _user_changed(op, meta)
    if changed and not force:
        return "conflict", (f"{', '.join(map(str, changed))}: changed since apply run {op['run_id']}; not restored "
                            "(`vdc-lake restore --force` restores it and keeps your version next to the backup)")
    return "restore", None


def _is_own_output(op: dict[str, Any], src: Path, dst: Path) -> bool:
    """Whether dst holds exactly what op writes from src's bytes: the output of an interrupted run
    of op (encoding is deterministic), not a file someone put under that name since. Writes the
    output again in a scratch folder to compare."""
    try:
        with tempfile.TemporaryDirectory(prefix="vdc-restore-check-") as scratch:
            copy, out = Path(scratch) / ("original" + src.suffix), Path(scratch) / ("output" + dst.suffix)
            shutil.copyfile(src, copy)
            ACTIONS[op["action"]].run(copy, out, json.loads(op["params"] or "{}"))
            return not dst.is_symlink() and _verified(dst, content_hash(out))
    except Exception:  # noqa: BLE001 - cannot tell: the file is not ours to remove
        return False


def _keep_aside(path: Path, backup: Path, stamp: str) -> Path:
    """Copy the user's version of path next to the backup (the backup folder is outside every root),
    through BACKUP.vdc-tmp (a killed restore's is removed by the next run): the copy under the new
    name is complete, and never written through whatever holds a name (a link would be followed)."""
    aside, n = backup.with_name(f"{path.name}{USER_COPY_INFIX}{stamp}"), 1
    while os.path.lexists(aside):
        aside, n = backup.with_name(f"{path.name}{USER_COPY_INFIX}{stamp}-{n}"), n + 1
    tmp = backup.with_name(backup.name + TMP_SUFFIX)
    tmp.unlink(missing_ok=True)
    try:
        shutil.copy2(path, tmp, follow_symlinks=False)
        if not tmp.is_symlink():
            _fsync_file(tmp)
        place_new(tmp, aside)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(aside.parent)
    return aside


def _link_sibling(op: dict[str, Any], meta: dict[str, Any]) -> str | None:
    """A catalogued hard link of the original (same root) that still holds the original bytes."""
    for path in meta.get("hardlinks") or []:
        if _rel_in_root(path, op["root"]) is None or not _entry_inside(path, op["root"]):
            continue
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_dev == meta.get("dev") and _verified(Path(path), op["checksum_before"]):
            return path
    return None


def _put_back(op: dict[str, Any], meta: dict[str, Any]) -> None:
    """Make src what it was (the link, a hard link to its sibling, or a copy of the backup with
    the recorded owner, mode and times) through a temp entry + os.replace; remove dst if it moved."""
    src, dst = Path(op["src"]), Path(op["dst"] or op["src"])
    src.parent.mkdir(parents=True, exist_ok=True)
    tmp = src.with_name(src.name + RESTORE_SUFFIX)
    tmp.unlink(missing_ok=True)
    sibling = _link_sibling(op, meta) if meta.get("link") is None else None
    try:
        if meta.get("link") is not None:
            _make_link(tmp, meta)
        elif sibling is not None:
            os.link(sibling, tmp)
        else:
            with _private_files():
                shutil.copy2(op["backup"], tmp)
            _set_metadata(tmp, meta)
            _fsync_file(tmp)
        os.replace(tmp, src)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half a copy behind
        raise
    if dst != src and os.path.lexists(dst):
        dst.unlink()
    _fsync_dir(src.parent)


def restore(catalog: Catalog, *, run_id: int | None = None, dry_run: bool = False, quiet: bool = False,
            force: bool = False, backup_dir: str | os.PathLike | None = None) -> RestoreSummary:
    """Undo one apply run (or every run, newest first) from its verified backups, as a `restore` run.

    A file the user changed since apply is left alone unless `force` (then the user's version is
    kept next to the backup as NAME.vdc-user-STAMP). `backup_dir` names the backup folder (when
    the catalog's record is not to be trusted, or the folder moved). With dry_run nothing changes
    and the summary says what would happen.

    The work is journaled as it goes (_RestoreJournal), so a killed restore is finished by the
    next one, as a killed apply is by the next apply: each operation it put back but had not
    recorded holds the bytes it was planned on, which the next restore finds `original` and records."""
    ops = _restore_ops(catalog, run_id, backup_dir)
    if dry_run:
        summary = RestoreSummary()
        for op in ops:
            outcome, error = _classify(op, force)
            _tally(summary, "original" if outcome == "cleanup" else outcome, error)
        return summary
    params = {"run": run_id, "force": force, "backup_dir_given": os.fspath(backup_dir) if backup_dir else None}
    with catalog.run("restore", params) as restore_run:
        summary = _undo(catalog, ops, force, quiet)
        catalog.finish_run(restore_run, summary=asdict(summary), status="done")
    return summary


def _undo(catalog: Catalog, ops: list[dict[str, Any]], force: bool, quiet: bool) -> RestoreSummary:
    """Put back what ops (newest first, confined by _restore_ops) changed; journal it in batches."""
    summary = RestoreSummary()
    catalog.release()  # readers get in while files are copied; journaling opens the connection again
    remove_leftovers_of(ops)  # temp files a killed or failed apply or restore left next to these files
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    journal = _RestoreJournal(catalog)
    with progress_bar(len(ops), "restore", quiet=quiet) as bar:
        for op in ops:
            journal.make_room(op)
            outcome, error = _classify(op, force)
            if outcome == "cleanup":
                Path(op["dst"]).unlink(missing_ok=True)
                outcome = "original"
            elif outcome == "restore":
                outcome, error = _restore_one(op, summary, stamp)
            if outcome in ("restore", "original"):
                journal.add(op)
            _tally(summary, outcome, error)
            bar.update()
    journal.flush()
    return summary


class _RestoreJournal:
    """The operations a restore has put back (or found original), recorded in batches by
    _record_restore (journal `restored`, the images rows).

    What makes a killed restore resumable: an operation joins the batch only once its file is what
    it was, and the batch is flushed before any operation on an image or a path already in it is
    touched (an image that two runs changed is undone twice, newest first). So at any moment every
    operation not yet journaled `restored` has its file either as apply left it or holding the bytes
    it was planned on (checksum_before); the next restore finds the latter `original` and records
    it, and never takes the killed run's work for a change of the user's."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.pending: list[dict[str, Any]] = []
        self.images: set[int] = set()
        self.paths: set[str] = set()
        self.last_flush = time.monotonic()

    def make_room(self, op: dict[str, Any]) -> None:
        """Flush before op is touched when the batch holds its image or one of its paths, or is due."""
        if (op["image_id"] in self.images or not self.paths.isdisjoint(_paths_of(op))
                or len(self.pending) >= RESTORE_FLUSH_EVERY_OPS
                or time.monotonic() - self.last_flush > RESTORE_FLUSH_EVERY_SECONDS):
            self.flush()

    def add(self, op: dict[str, Any]) -> None:
        self.pending.append(op)
        self.images.add(op["image_id"])
        self.paths.update(_paths_of(op))

    def flush(self) -> None:
        if self.pending:
            _record_restore(self.catalog, self.pending)
            self.catalog.release()
        self.pending, self.images, self.paths = [], set(), set()
        self.last_flush = time.monotonic()


def _paths_of(op: dict[str, Any]) -> set[str]:
    return {op["src"], op["dst"] or op["src"]}


def _restore_one(op: dict[str, Any], summary: RestoreSummary, stamp: str) -> tuple[str, str | None]:
    meta = (json.loads(op["params"] or "{}").get("file")) or {"link": None}
    try:
        for path in _user_changed(op, meta):
            summary.kept_aside.append(str(_keep_aside(path, Path(op["backup"]), stamp)))
        _put_back(op, meta)
    except OSError as e:
        return "failed", _failure_text(op, e, "restore")
    return "restore", None


def _tally(summary: RestoreSummary, outcome: str, error: str | None) -> None:
    if outcome == "untouched":
        return
    if outcome == "restore":
        summary.restored += 1
    elif outcome == "original":
        summary.already_original += 1
    elif outcome == "no_backup":
        summary.no_backup += 1
    elif outcome == "conflict":
        summary.conflicts += 1
    else:
        summary.failed += 1
    if error:
        summary.errors.append(error)


def _record_restore(catalog: Catalog, ops: list[dict[str, Any]]) -> None:
    """Journal ops `restored` (their files hold what they were: put back, or found original);
    each image's row from its oldest operation among them: the bytes of the version it was
    planned on make that version current again (and drop rows derived from the versions apply
    made, which no file holds any more); other bytes get a new version. One transaction."""
    from vdc_lake.stages.scan import fact_arrays, fact_assignments

    if not ops:
        return
    facts = [inspect_header(op["src"]) for op in ops]
    columns: dict[str, Any] = {
        "op_id": pa.array([op["op_id"] for op in ops], pa.int64()),
        "image_id": pa.array([op["image_id"] for op in ops], pa.int64()),
        "src": [op["src"] for op in ops],
        "planned_version": pa.array([op["version"] for op in ops], pa.int32()),
        "same_bytes": pa.array([f["content_hash"] is not None and f["content_hash"] == op["checksum_before"]
                                for op, f in zip(ops, facts)], pa.bool_()),
    }
    columns.update(fact_arrays(facts))
    assignments = fact_assignments("r")
    with catalog.registered("restored_facts", pa.table(columns)), catalog.transaction():
        catalog.execute("UPDATE journal SET state = 'restored', ts = now() FROM restored_facts r "
                        "WHERE journal.op_id = r.op_id")
        oldest = "SELECT * FROM restored_facts QUALIFY row_number() OVER (PARTITION BY image_id ORDER BY op_id) = 1"
        _drop_superseded_rows(catalog, oldest)
        catalog.execute(
            f"""UPDATE images SET {assignments}, present = true,
                       version = CASE WHEN r.same_bytes THEN r.planned_version ELSE images.version + 1 END,
                       rel_path = substr(r.src, length(images.root) + 2)
                FROM ({oldest}) r
                WHERE images.image_id = r.image_id"""
        )


# The user's choices about an image, not facts of its bytes: a restore carries them back to the
# version it makes current (an override or a sample made after `apply rotation` still names the
# picture once it is restored); apply carries them forward the same way (applied_versions).
IMAGE_CHOICE_TABLES = ("overrides", "samples")


def _drop_superseded_rows(catalog: Catalog, oldest_sql: str) -> None:
    """Delete rows derived from versions newer than the one a restore makes current again: no
    file holds those bytes now, and the next change must not find them under its version number.
    The rows of IMAGE_CHOICE_TABLES move to that version instead."""
    for table in IMAGE_CHOICE_TABLES:
        catalog.execute(
            f"""UPDATE "{table}" SET version = r.planned_version FROM ({oldest_sql}) r
                WHERE r.same_bytes AND r.image_id = "{table}".image_id AND "{table}".version > r.planned_version""")
    columns: dict[str, set[str]] = {}
    for table, column in catalog.rows(
            """SELECT c.table_name, c.column_name FROM information_schema.columns c
               JOIN information_schema.tables t USING (table_catalog, table_schema, table_name)
               WHERE t.table_type = 'BASE TABLE' AND c.table_schema = 'main'
                 AND c.table_name NOT IN ('images', 'journal')"""):
        columns.setdefault(table, set()).add(column)
    for table, cols in sorted(columns.items()):
        pairs = [(i, v) for i, v in (("image_id", "version"), ("image_a", "version_a"), ("image_b", "version_b"))
                 if {i, v} <= cols]
        for image_col, version_col in pairs:
            catalog.execute(
                f"""DELETE FROM "{table}" WHERE EXISTS (
                        SELECT 1 FROM ({oldest_sql}) r WHERE r.same_bytes AND r.image_id = "{table}".{image_col}
                                                         AND "{table}".{version_col} > r.planned_version)""")
