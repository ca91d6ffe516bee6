"""Where apply and restore may act: the backup folder outside every scanned root, and each
journaled operation's paths inside its image's scanned root. The root/path part is the read rule
(fileops/confine.root_entry_problem), asked of the image's own root; the write side is added here:
the output name the action gives, the backup exactly where apply puts it. A catalog may come from
someone else: its rows are checked, never trusted."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vdc_lake.catalog.connection import Catalog
from vdc_lake.errors import PlanError
from vdc_lake.fileops.confine import (UNRECORDED_ROOT, is_inside, is_recorded_root, real_root, recorded_roots,
                                      relative_in_root, root_entry_problem, root_overlap, scanned_roots)
from vdc_lake.fileops.imageops import is_recompress_destination


def _entry_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether the directory entry `path` lies in `folder`: its parent resolved (symlinks included),
    its name a plain name. A symlink that is the entry itself is not followed: it is what we act on."""
    path = Path(path)
    return path.name not in ("", ".", "..") and is_inside(path.parent, folder)


def root_path_problem(path: str, root: str, root_recorded: bool) -> str | None:
    """confine.root_entry_problem for a whole path inside the image's own root: None when apply or
    restore may act on the entry `path`, else the part of the rule it breaks."""
    return root_entry_problem(root, relative_in_root(path, root), recorded=root_recorded, real_roots=[real_root(root)])


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


def recorded_backup_root(catalog: Catalog, roots: list[str], recorded: str | None, run_id: int,
                          checked: dict[str, str]) -> str:
    """An apply run's recorded backup folder (runs.params, which may have been edited), resolved,
    once check_backup_dir accepts it against the scanned roots (PlanError otherwise; a missing one
    is refused as "/"). `checked` caches the folders already accepted. Used by resume and restore."""
    folder = recorded or "/"
    if folder not in checked:
        check_backup_dir(roots, folder, f"the backup folder of apply run {run_id}", existing_in=catalog)
        checked[folder] = str(Path(os.path.realpath(folder)))
    return checked[folder]


def confinement_error(op: dict[str, Any], backup_root: str | None) -> str | None:
    """Why op's paths may not be touched (None when they may): src and dst in the image's scanned
    root, dst src itself or a name the action gives its output, the backup exactly where apply
    puts it inside backup_root."""
    root = op.get("root")
    if not root:
        return f"op {op['op_id']}: image {op['image_id']} has no scanned root in the catalog"
    paths = [op["src"]] + ([op["dst"]] if op.get("dst") and op["dst"] != op["src"] else [])
    for path in paths:
        problem = root_path_problem(path, root, bool(op.get("root_recorded")))
        if problem == UNRECORDED_ROOT:
            return (f"op {op['op_id']}: image {op['image_id']} names the root {root}, which no scan run was given "
                    "(the catalog was edited); vdc-lake only changes files inside the roots it scanned")
        if problem is not None:
            return (f"op {op['op_id']}: {path} lies outside the scanned root {root} (resolved: "
                    f"{os.path.realpath(Path(path).parent)}); vdc-lake only changes files inside their root")
    if len(paths) > 1 and not (op["action"] == "recompress" and is_recompress_destination(
            op["src"], op["dst"], json.loads(op.get("params") or "{}"))):
        return (f"op {op['op_id']}: output path {op['dst']} is not one {op['action']} writes for {op['src']} "
                "(the catalog was edited); it could name another file")
    if op.get("backup") is not None:
        expected = backup_path(Path(backup_root or "/nonexistent"), op["run_id"], root,
                               relative_in_root(op["src"], root))
        if op["backup"] != str(expected) or not _entry_inside(op["backup"], backup_root or "/nonexistent"):
            return f"op {op['op_id']}: backup path {op['backup']} escapes the backup root {backup_root}"
    return None


def backup_path(backup_root: Path, run_id: int, root: str, rel_path: str) -> Path:
    return backup_root / f"run-{run_id}" / root.lstrip("/") / rel_path


def journal_ops(catalog: Catalog, where: str, params: list[Any]) -> list[dict[str, Any]]:
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
