"""Names and paths checked before they reach the filesystem.

A catalog may come from someone else, so a set name, a relative path or an index path read from
it is never trusted to name a file: names follow one rule, and every path we write or read on a
catalog's behalf is resolved (symlinks included) and must lie inside the folder it belongs to.
ReadableRoots is that rule for every stage that opens an image file a catalog names.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable, Iterable

from vdc_lake.errors import InvalidNameError

NAME_RULE = "1-64 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(name: object, what: str = "set name") -> str:
    """`name` if it follows NAME_RULE (safe as a file name part); else InvalidNameError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidNameError(f"{what} {name!r} is not allowed: use {NAME_RULE} (e.g. builtin, sscd_v2)")
    return name


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path`, resolved (symlinks included, missing tail allowed), lies in `folder` (resolved)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def is_plain_relative(rel_path: str) -> bool:
    """A POSIX relative path with no '..', '.' or empty parts and no NUL: it cannot climb out of its root."""
    if not rel_path or rel_path.startswith("/") or "\0" in rel_path:
        return False
    return all(part not in ("", ".", "..") for part in rel_path.split("/"))


def relative_in_root(path: str, root: str) -> str | None:
    """path's part under root when it is a plain relative path (is_plain_relative), else None."""
    prefix = root.rstrip("/") + "/"
    if not path.startswith(prefix):
        return None
    rel = path[len(prefix):]
    return rel if is_plain_relative(rel) else None


def resolve_entry(path: str) -> str:
    """path with its folder resolved (every symlink followed); its own name as it is (not followed)."""
    folder, name = os.path.split(path)
    return os.path.join(os.path.realpath(folder), name)


def real_root(root: str) -> str:
    """root resolved, ending in os.sep: the form root_entry_problem's real_roots take."""
    return os.path.realpath(root).rstrip(os.sep) + os.sep


# Which part of the rule a catalog's root + rel_path breaks (root_entry_problem's answers).
UNRECORDED_ROOT = "unrecorded_root"
NOT_PLAIN_RELATIVE = "not_plain_relative"
RESOLVES_OUTSIDE = "resolves_outside"


def root_entry_problem(root: str | None, rel_path: str | None, *, recorded: bool, real_roots: Iterable[str],
                       resolve: Callable[[str], str] = resolve_entry) -> str | None:
    """The one rule for an image file a catalog names by root and rel_path, for reading it
    (ReadableRoots) and for apply and restore acting on it: None when it holds, else the part it
    breaks: UNRECORDED_ROOT (no scan run was given the root: `recorded`), NOT_PLAIN_RELATIVE
    (rel_path is not a plain relative path), RESOLVES_OUTSIDE (the entry's folder, every symlink
    followed, lies in none of `real_roots`: resolved roots ending in os.sep, see real_root).
    The file's own name is not followed: it may be a symlink the owner of the tree put there
    (scan registered it; apply replaces the link, never its target). `resolve` may cache."""
    if not recorded or not isinstance(root, str):
        return UNRECORDED_ROOT
    if not isinstance(rel_path, str) or not is_plain_relative(rel_path):
        return NOT_PLAIN_RELATIVE
    real = resolve(os.path.join(root, rel_path))
    if not any((real + os.sep).startswith(r) for r in real_roots):
        return RESOLVES_OUTSIDE
    return None


def recorded_roots(catalog) -> set[str]:
    """The roots scan runs were given (runs.params `roots`, resolved when scanned). An image's
    root is trusted only if it is one of them: the images row that names it may have been edited.
    Every scan run counts, finished or not: its roots were checked before it started, and an
    interrupted scan has registered images too."""
    rows = catalog.rows("SELECT params FROM runs WHERE stage = 'scan' AND params IS NOT NULL")
    roots: set[str] = set()
    for (params,) in rows:
        try:
            given = json.loads(params).get("roots") or []
        except (ValueError, AttributeError):
            continue
        for root in given:
            if isinstance(root, str) and os.path.isabs(root) and "\0" not in root:
                roots.add(root)
    return roots


def is_recorded_root(root: str | None, recorded: set[str]) -> bool:
    """Whether `root` (an images row's) is a scanned root: as written or resolved, one of `recorded`."""
    return bool(root) and "\0" not in root and (root in recorded or os.path.realpath(root) in recorded)


def scanned_roots(catalog) -> list[str]:
    """Every root the catalog knows, sorted: given to a scan run, or named by an images row."""
    return sorted(recorded_roots(catalog) | {r for (r,) in catalog.rows("SELECT DISTINCT root FROM images")})


def root_overlap(roots: list[str], folder: str | os.PathLike) -> tuple[str, str, Path] | None:
    """("inside" or "contains", the root, the root resolved) for the first root that `folder`
    lies inside or contains, each side taken as written and resolved (a symlink into a root
    counts); None when the folder is apart from every root. The one check behind a backup
    folder and an export destination."""
    given = Path(os.path.abspath(os.path.expanduser(folder)))
    real = Path(os.path.realpath(given))
    for root in roots:
        root_real = Path(os.path.realpath(root))
        for candidate in (given, real):
            for r in (Path(root), root_real):
                if candidate.is_relative_to(r):
                    return "inside", root, root_real
                if r.is_relative_to(candidate):
                    return "contains", root, root_real
    return None


def recorded_backup_dirs(catalog) -> dict[str, int]:
    """{backup folder as an apply run recorded it (resolved, absolute): the newest such run id}:
    the folders scan leaves out and export never empties."""
    rows = catalog.rows(
        """SELECT json_extract_string(params, '$.backup_dir') AS folder, max(run_id)
           FROM runs WHERE stage LIKE 'apply%' AND folder IS NOT NULL GROUP BY folder"""
    )
    return {folder: run_id for folder, run_id in rows if os.path.isabs(folder) and "\0" not in folder}


# -- reading the files a catalog names ----------------------------------------------------------

OUTSIDE_ROOT = "outside_root"  # the finding (and report placeholder) of a file that is not read


class ReadableRoots:
    """Where the image files a catalog names may be read from: the roots its scan runs were given.

    The one confinement rule of every stage that opens an image file by the catalog's root and
    rel_path (sanitize's decode, report's thumbnails, export's copies, predict). `error(root,
    rel_path)` is None when the file may be read, else why not (one line): root_entry_problem's
    rule, with the file's folder inside any recorded root (apply and restore ask for the image's
    own root: effects/confinement.py). The file's own name may be a symlink, read through; a
    folder link out of the roots is not. Folders are resolved once per instance (cached).
    """

    def __init__(self, recorded: Iterable[str]):
        self.recorded = set(recorded)
        self._real_roots = sorted({real_root(r) for r in self.recorded})
        self._by_length = sorted(self.recorded, key=len, reverse=True)
        self._root_ok: dict[str, bool] = {}
        self._folders: dict[str, str] = {}

    @classmethod
    def of(cls, catalog) -> ReadableRoots:
        return cls(recorded_roots(catalog))

    def error(self, root: str | None, rel_path: str | None) -> str | None:
        """Why root/rel_path may not be read (no rule prefix), or None when it may."""
        problem = root_entry_problem(root, rel_path, recorded=isinstance(root, str) and self._is_root(root),
                                     real_roots=self._real_roots, resolve=self.resolve)
        if problem == UNRECORDED_ROOT:
            return (f"the catalog names the root {root!r}, which no scan run was given (the catalog was edited); "
                    "vdc-lake reads files inside the roots it scanned only")
        if problem == NOT_PLAIN_RELATIVE:
            return (f"the catalog names the path {rel_path!r} under {root}, which is not a plain relative path "
                    "(the catalog was edited); not read")
        if problem == RESOLVES_OUTSIDE:
            path = os.path.join(root, rel_path)
            return (f"{path} resolves to {self.resolve(path)}, outside every scanned root (a folder link out of the "
                    "root); not read: scan the folder it points into")
        return None

    def path_error(self, path: str | None) -> str | None:
        """error() for a whole path (root + '/' + rel_path): split at the longest recorded root
        it starts with (a path in no recorded root may not be read)."""
        if isinstance(path, str):
            for root in self._by_length:
                prefix = root.rstrip("/") + "/"
                if path.startswith(prefix):
                    return self.error(root, path[len(prefix):])
        return f"{path!r} lies in no scanned root; not read"

    def resolve(self, path: str) -> str:
        """path with its folder's symlinks resolved (from the cache); its own name as it is."""
        folder, name = os.path.split(path)
        real_folder = self._folders.get(folder)
        if real_folder is None:
            real_folder = self._folders[folder] = os.path.realpath(folder)
        return os.path.join(real_folder, name)

    def is_inside_a_root(self, real: str) -> bool:
        """Whether the resolved path `real` lies inside a recorded root (resolved)."""
        return any((real + os.sep).startswith(root) for root in self._real_roots)

    def _is_root(self, root: str) -> bool:
        ok = self._root_ok.get(root)
        if ok is None:
            ok = self._root_ok[root] = is_recorded_root(root, self.recorded)
        return ok
