"""Find rows by id in a sorted id column: the join two stages do in NumPy (stored rows of an
earlier run against a set's current rows) without a catalog round trip."""

from __future__ import annotations

import numpy as np


def lookup_sorted(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(at, found) for each of ids: found[i] when sorted_ids holds ids[i], at its position at[i]
    (where found is False, at[i] is a valid position to read, whose row is another id).

    sorted_ids [m] ascending, unique; ids [n] any order. Callers compare further columns at
    `at` (a version, a run) and AND them into found."""
    sorted_ids, ids = np.asarray(sorted_ids), np.asarray(ids)
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return at, sorted_ids[at] == ids
