"""Duplicate groups from pairs (connected components), and the one image each group keeps."""

from typing import Literal

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

KeepStrategy = Literal["random", "alphabetical", "largest-resolution", "largest-file"]
KEEP_STRATEGIES = ("random", "alphabetical", "largest-resolution", "largest-file")


def connected_components(a: np.ndarray, b: np.ndarray, n_nodes: int) -> np.ndarray:
    """Duplicate groups: connected components of the undirected graph of pairs.

    a, b:     [m] node numbers in [0, n_nodes) (row positions, not image ids: map keys
              with ``np.searchsorted`` on sorted keys).
    Returns   labels [n_nodes] int64; a node's label is the smallest node number in its
              component, so labels are stable whatever the order of the pairs.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("a and b must be 1-d arrays of the same length (one pair per entry)")
    if len(a) and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= n_nodes):
        raise ValueError(f"pair endpoints must be node numbers in [0, {n_nodes})")
    graph = scipy.sparse.coo_matrix(
        (np.ones(len(a), np.int8), (a, b)), shape=(n_nodes, n_nodes)
    ).tocsr()
    if n_nodes == 0:
        return np.empty(0, np.int64)
    _, raw = scipy.sparse.csgraph.connected_components(graph, directed=False)
    # scipy numbers components in discovery order; relabel by smallest member instead.
    smallest = np.full(raw.max() + 1 if n_nodes else 0, n_nodes, np.int64)
    np.minimum.at(smallest, raw, np.arange(n_nodes))
    return smallest[raw]


def choose_keepers(
    labels: np.ndarray,
    *,
    keep: KeepStrategy = "random",
    seed: int = 0,
    paths: np.ndarray | None = None,
    width: np.ndarray | None = None,
    height: np.ndarray | None = None,
    size_bytes: np.ndarray | None = None,
) -> np.ndarray:
    """Exactly one keeper per duplicate group; every singleton keeps itself.

    A bare kernel, not vdc-lake's decision: `plan`/`apply dedup`, `curated` and `export` take
    their keepers from the SQL macro dedup_actions(), which also breaks ties by format and bytes
    per pixel, honours overrides and never keeps a member another decision removes, and whose
    random draw differs from this one.

    labels:   [n] group label per image (connected_components).
    keep:     "random"             a seeded random member (same seed, same choice);
              "alphabetical"       the smallest path (code-point order, like DuckDB's
                                   default binary collation of UTF-8 text);
              "largest-resolution" the largest width * height (missing: NaN, loses);
              "largest-file"       the largest size_bytes (missing: NaN, loses).
    Ties on the strategy's measure go to the smallest path, then the smallest row number;
    without ``paths`` straight to the row number. paths/width/height/size_bytes are [n].
    Returns   keep mask [n] bool.
    """
    labels = np.asarray(labels)
    n = len(labels)
    score = _keeper_score(n, keep, seed, paths, width, height, size_bytes)
    path_rank = _path_rank(paths, n)
    order = np.lexsort((np.arange(n), path_rank, score, labels))
    sorted_labels = labels[order]
    first = np.ones(n, bool)
    first[1:] = sorted_labels[1:] != sorted_labels[:-1]
    mask = np.zeros(n, bool)
    mask[order[first]] = True
    return mask


def _keeper_score(n, keep, seed, paths, width, height, size_bytes) -> np.ndarray:
    """[n] float64, smaller is better, for the chosen keep strategy."""
    if keep == "random":
        return np.random.default_rng(seed).permutation(n).astype(np.float64)
    if keep == "alphabetical":
        if paths is None:
            raise ValueError("keep='alphabetical' needs paths=[n] file paths")
        return np.zeros(n)  # the path itself is the first tie-break
    if keep == "largest-resolution":
        if width is None or height is None:
            raise ValueError("keep='largest-resolution' needs width=[n] and height=[n]")
        area = _column(width, n, "width") * _column(height, n, "height")
        return np.where(np.isnan(area), np.inf, -area)
    if keep == "largest-file":
        if size_bytes is None:
            raise ValueError("keep='largest-file' needs size_bytes=[n]")
        size = _column(size_bytes, n, "size_bytes")
        return np.where(np.isnan(size), np.inf, -size)
    raise ValueError(f"keep must be one of {', '.join(KEEP_STRATEGIES)}, got {keep!r}")


def _column(values, n: int, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (n,):
        raise ValueError(f"{name} must have one value per image ({n}), got shape {values.shape}")
    return values


def _path_rank(paths, n: int) -> np.ndarray:
    """[n] int64 rank of each path in sorted order (equal paths share a rank)."""
    if paths is None:
        return np.zeros(n, np.int64)
    paths = np.asarray(paths, dtype=object)
    if paths.shape != (n,):
        raise ValueError(f"paths must have one path per image ({n}), got shape {paths.shape}")
    _, rank = np.unique(paths.astype(str), return_inverse=True)
    return rank.astype(np.int64)
