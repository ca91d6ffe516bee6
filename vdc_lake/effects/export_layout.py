"""Names inside an export: each root's folder label, each file's path in the tree (unique on a
destination that ignores case) and each image's WebDataset key."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vdc_lake.fileops.markers import RECORD_NAME, RUNNING_NAME

MANIFEST_STEM = "manifest"
KEY_DIGITS = 12


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
