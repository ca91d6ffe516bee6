"""One journaled operation, as a worker carries it out (execute_op): confinement, the bytes still
the planned ones, the reason re-checked before a delete, backup, act through a temp file, and the
journal update it returns. Idempotent, so a resumed or retried operation is safe."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vdc_lake.effects.backups import (current_checksum, holds_bytes, make_backup, private_files, set_metadata,
                                      verified)
from vdc_lake.effects.confinement import confinement_error
from vdc_lake.fileops.imageops import ACTIONS
from vdc_lake.fileops.probe import content_hash, decode_check, inspect_header

# Sanitize rules whose verdict comes from decoding the bytes: checked again before a delete.
DECODE_RULES = ("corrupt", "truncated")
# Rules that say nothing about the bytes (the file could not be read): never a reason to delete.
IO_RULES = ("missing", "unreadable")


def backup_ok(op: dict[str, Any], meta: dict[str, Any]) -> bool:
    return op["backup"] is None or holds_bytes(Path(op["backup"]), op["checksum_before"], meta)


def is_own_output(op: dict[str, Any], src: Path, dst: Path) -> bool:
    """Whether dst holds exactly what op writes from src's bytes: the output of an interrupted run
    of op (encoding is deterministic), not a file someone put under that name since. Writes the
    output again in a scratch folder to compare."""
    try:
        with tempfile.TemporaryDirectory(prefix="vdc-restore-check-") as scratch:
            copy, out = Path(scratch) / ("original" + src.suffix), Path(scratch) / ("output" + dst.suffix)
            shutil.copyfile(src, copy)
            ACTIONS[op["action"]].run(copy, out, json.loads(op["params"] or "{}"))
            return not dst.is_symlink() and verified(dst, content_hash(out))
    except Exception:  # noqa: BLE001 - cannot tell: the file is not ours to remove
        return False


def _already_done(op: dict[str, Any], meta: dict[str, Any], src: Path, dst: Path) -> bool:
    """After a crash: has this operation's atomic step already happened? A new file under a moved
    operation's output name counts only when it is that output (written again from the backup to
    compare; without a backup a regular file there is taken for it)."""
    if not backup_ok(op, meta):
        return False
    if op["action"] == "delete" or dst != src:
        if os.path.lexists(src) or op["action"] == "delete":
            return not os.path.lexists(src)
        return (dst.is_file() and not dst.is_symlink()
                and (op["backup"] is None or is_own_output(op, Path(op["backup"]), dst)))
    if meta.get("link") is not None:
        return os.path.lexists(src) and not src.is_symlink()  # the link was replaced by the output
    return not src.is_symlink() and src.exists() and not verified(src, op["checksum_before"])


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
        if options.get("kept_hash") and not verified(keeper, options["kept_hash"]):
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
        refused = confinement_error(op, op.get("backup_root"))
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
            if not holds_bytes(src, None, meta):
                return _skipped(op, f"{src} changed since it was scanned; run `vdc-lake scan` and plan again")
        else:
            try:
                current = current_checksum(src)
            except (OSError, ValueError) as e:
                return _skipped(op, f"{src} cannot be read now ({getattr(e, 'strerror', None) or e}); nothing done")
            if current != op["checksum_before"] or (meta.get("link") is not None and not holds_bytes(src, None, meta)):
                # rescan: the next scan reads it again, even if the change kept its size and mtime
                return {**_skipped(op, f"{src} changed since it was scanned; run `vdc-lake scan` and plan again"),
                        "rescan": True}
        if op["action"] == "delete":
            why = _reason_no_longer_holds(op, src, options)
            if why:
                return _skipped(op, f"skipped: reason no longer holds for {src}: {why}")
        if op["backup"] is not None and not backup_ok(op, meta):
            make_backup(src, Path(op["backup"]), op["checksum_before"], meta)
        _act(op, src, dst, options)
        return _finished(op, meta, dst, resumed=False)
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the run; it is journaled
        return {"op_id": op["op_id"], "state": "failed", "error": failure_text(op, e)}


def _act(op: dict[str, Any], src: Path, dst: Path, options: dict[str, Any]) -> None:
    """Run the action. When it fails after writing a new file (a recompress whose original cannot
    be removed), that new file is removed again: a failed operation leaves the tree as it was."""
    new_name = dst != src and not os.path.lexists(dst)
    try:
        with private_files():
            ACTIONS[op["action"]].run(src, dst, options)
    except BaseException:
        if new_name and os.path.lexists(src) and os.path.lexists(dst):
            dst.unlink()
        raise


def failure_text(op: dict[str, Any], error: Exception, doing: str | None = None) -> str:
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
            set_metadata(dst, meta)
            result["facts"] = inspect_header(str(dst))
        except Exception as e:  # noqa: BLE001
            return {"op_id": op["op_id"], "state": "planned",
                    "error": f"{dst}: written, but its facts could not be read ({type(e).__name__}: {e}); "
                             "the next apply records it"}
        result["checksum_after"] = result["facts"]["content_hash"]
    return result
