"""New points put into an existing hierarchical clustering: nearest centre at the finest level,
then up the tree by the parents (as hierarchical k-means assigns every image), and how far
they lie from their centres compared with the points clustered before (drift).

Pure NumPy, arrays in and out; the cluster stage owns the catalog I/O.
"""

from __future__ import annotations

import numpy as np

METRICS = ("cosine", "l2")


def center_distances(x: np.ndarray, centers: np.ndarray, labels: np.ndarray, metric: str) -> np.ndarray:
    """Distance of each row to its centre, [n] float32: cosine 1 - cos, l2 squared (k-means' metric).

    x [n, d], centers [k, d], labels [n] ints in [0, k).
    """
    _check_metric(metric)
    out = np.empty(len(x), np.float32)
    step = max(1, (64 << 20) // (4 * max(x.shape[1], 1)))  # 64 MB of rows (and of their centres) at a time
    for start in range(0, len(x), step):
        rows = np.asarray(x[start:start + step], np.float32)
        c = centers[labels[start:start + step]]
        if metric == "cosine":
            num = np.einsum("ij,ij->i", rows, c)
            den = np.linalg.norm(rows, axis=1) * np.linalg.norm(c, axis=1) + 1e-12
            out[start:start + len(rows)] = 1.0 - num / den
        else:
            out[start:start + len(rows)] = ((rows - c) ** 2).sum(axis=1)
    return out


def nearest_centers(x: np.ndarray, centers: np.ndarray, metric: str, *, chunk_rows: int = 8192) -> np.ndarray:
    """[n] int64: the nearest of ``centers`` [k, d] to each row of ``x`` [n, d] (ties: lower id),
    by cosine distance or squared L2, scored in float64 so the pick is the exact nearest."""
    _check_metric(metric)
    c = np.asarray(centers, np.float64)
    if metric == "cosine":
        c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-300)
    else:
        c_sq = (c**2).sum(1)
    labels = np.empty(len(x), np.int64)
    for start in range(0, len(x), chunk_rows):
        rows = np.asarray(x[start:start + chunk_rows], np.float64)
        if metric == "cosine":  # the row's own norm scales every score alike: no need to divide
            labels[start:start + len(rows)] = np.argmax(rows @ c.T, axis=1)
        else:
            labels[start:start + len(rows)] = np.argmin(c_sq[None, :] - 2.0 * (rows @ c.T), axis=1)
    return labels


def assign_levels(x: np.ndarray, level0_centers: np.ndarray, parents: list[np.ndarray], metric: str) -> np.ndarray:
    """[n, L] int64 cluster ids of each row at every level: level 0 the nearest centre, level
    l + 1 the parent of the level-l cluster (parents[l] [k_l] ids at level l + 1; L = len(parents) + 1)."""
    labels = np.empty((len(x), len(parents) + 1), np.int64)
    labels[:, 0] = nearest_centers(x, level0_centers, metric)
    for level, parent in enumerate(parents):
        labels[:, level + 1] = np.asarray(parent, np.int64)[labels[:, level]]
    return labels


def drift_share(old_distances: np.ndarray, new_distances: np.ndarray, percentile: float = 95.0) -> tuple[float, float]:
    """(share of new points farther from their centre than the old points' ``percentile``, that
    percentile). About 1 - percentile / 100 when the new points are like the old ones; 0.0 with
    no new or no old points."""
    if len(old_distances) == 0 or len(new_distances) == 0:
        return 0.0, float(np.percentile(old_distances, percentile)) if len(old_distances) else 0.0
    cut = float(np.percentile(np.asarray(old_distances, np.float64), percentile))
    return float(np.mean(np.asarray(new_distances, np.float64) > cut)), cut


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
