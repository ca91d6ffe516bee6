"""Pair sets of a range search: every pair under a threshold with its exact cosine distance.

``PairSet`` holds whole arrays; the functions here check a search's arguments, measure exact
distances, drop the pairs a multi-view set does not need, cap each image's pairs and merge
the sets of several searches (tiles, shards). Used by both pair finders (neighbors_ann,
neighbors_exact).
"""

import dataclasses
import math
from collections.abc import Callable

import numpy as np

# NB: no `from __future__ import annotations` in the neighbors modules: usearch checks a
# progress callback's annotations against the real `int` / `bool` types.

Progress = Callable[[int, int], object]


@dataclasses.dataclass(frozen=True, repr=False)
class PairSet:
    """Undirected pairs of keys with their exact cosine distance.

    a, b:      [m] int64 keys, ``a < b``, each pair once, sorted by (a, b).
    distance:  [m] float32 cosine distance ``1 - cos`` in [0, 2].
    truncated: [t] int64 sorted keys of images that had more pairs under the threshold than
               the per-image cap: only their nearest pairs are here (cap_pairs_per_image).
    """

    a: np.ndarray
    b: np.ndarray
    distance: np.ndarray
    truncated: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, np.int64))

    def __len__(self) -> int:
        return len(self.a)

    def __repr__(self) -> str:
        cut = f", {len(self.truncated)} images truncated" if len(self.truncated) else ""
        if len(self) == 0:
            return f"PairSet(0 pairs{cut})"
        lo, hi = float(self.distance.min()), float(self.distance.max())
        return f"PairSet({len(self)} pairs, distance {lo:.4f}..{hi:.4f}{cut})"

    def below(self, threshold: float) -> "PairSet":
        """The pairs with ``distance < threshold``: a filter, no search is repeated."""
        keep = self.distance < np.float32(threshold)
        return PairSet(self.a[keep], self.b[keep], self.distance[keep], self.truncated)

    @classmethod
    def empty(cls) -> "PairSet":
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))



def view_pairs_kept(keys_a: np.ndarray, keys_b: np.ndarray, views: int) -> np.ndarray:
    """Which row pairs of a multi-view set (keys image_id * views + view) can decide an image
    pair: two different images, one side a whole view (view 0). The others (an image's own
    views, two partial views) are dropped where they are found, before any cap counts them."""
    keys_a, keys_b = np.asarray(keys_a), np.asarray(keys_b)
    return (keys_a // views != keys_b // views) & ((keys_a % views == 0) | (keys_b % views == 0))


def check_views(views: int) -> None:
    """ValueError unless views >= 1 (rows per image of a multi-view set)."""
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")


def check_threshold(threshold: float) -> None:
    """ValueError unless threshold is a cosine distance in (0, 2]."""
    if not (math.isfinite(threshold) and 0 < threshold <= 2):
        raise ValueError(f"threshold is a cosine distance in (0, 2] (e.g. 0.5), got {threshold}")


def check_cap(max_pairs_per_image: int | None) -> None:
    """ValueError unless the per-image cap is None or >= 1."""
    if max_pairs_per_image is not None and max_pairs_per_image < 1:
        raise ValueError(f"max_pairs_per_image must be at least 1 (or None for no cap), got {max_pairs_per_image}")


def cosine_distances(
    vectors: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray, *, chunk: int = 65_536
) -> np.ndarray:
    """Exact cosine distance ``1 - cos`` between row pairs: THE distance of every PairSet.

    vectors: [n, d]; rows_a, rows_b: [m] row numbers. Returns [m] float32 in [0, 2]
    (rounding below 0 is clipped). A zero row is at distance 1 from everything.
    Computed in float64 from the float32 values and rounded once, so it does not depend on
    the order of the sum (the exact torch path computes the same numbers on its device).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    out = np.empty(len(rows_a), np.float32)
    for s in range(0, len(rows_a), chunk):
        xa = vectors[rows_a[s : s + chunk]].astype(np.float64)
        xb = vectors[rows_b[s : s + chunk]].astype(np.float64)
        dot = np.einsum("ij,ij->i", xa, xb)
        norm = np.sqrt(np.einsum("ij,ij->i", xa, xa) * np.einsum("ij,ij->i", xb, xb))
        cos = np.divide(dot, norm, out=np.zeros_like(dot), where=norm > 0)
        out[s : s + chunk] = np.clip(1.0 - cos, 0.0, 2.0)
    return out


def cap_pairs_per_image(pairs: PairSet, max_pairs_per_image: int | None, *,
                        truncated: list[np.ndarray] | None = None) -> PairSet:
    """Keep each image's ``max_pairs_per_image`` nearest pairs (None: keep all).

    A pair stays when it is among the nearest of EITHER of its images (ties: the smaller
    partner key), so every image keeps its own nearest ones and there are at most
    ``max_pairs_per_image`` x n pairs in all. The result's ``truncated`` is the sorted union
    of ``pairs.truncated``, ``truncated`` (key arrays) and the images that had more.
    Capping a superset of a capped set's pairs gives the same set, so tiles may be capped
    on their own before a final cap over their union.
    """
    cut = [pairs.truncated] + list(truncated or [])
    if max_pairs_per_image is None or len(pairs) == 0:
        return PairSet(pairs.a, pairs.b, pairs.distance, _sorted_keys(cut))
    m = len(pairs)
    ends = np.concatenate([pairs.a, pairs.b])
    partner = np.concatenate([pairs.b, pairs.a])
    order = np.lexsort((partner, np.tile(pairs.distance, 2), ends))
    sorted_ends = ends[order]
    first = np.ones(2 * m, bool)
    first[1:] = sorted_ends[1:] != sorted_ends[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(2 * m), 0))
    rank = np.arange(2 * m) - group_start
    keep = np.zeros(m, bool)
    keep[order[rank < max_pairs_per_image] % m] = True
    cut.append(sorted_ends[rank == max_pairs_per_image])
    return PairSet(pairs.a[keep], pairs.b[keep], pairs.distance[keep], _sorted_keys(cut))


def _sorted_keys(parts: list[np.ndarray]) -> np.ndarray:
    parts = [np.asarray(p, np.int64) for p in parts if len(p)]
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)


def merge_pair_sets(parts: list[PairSet], max_pairs_per_image: int | None = None) -> PairSet:
    """One PairSet from the PairSets of disjoint tiles (each pair found in one tile only):
    concatenated, sorted by (a, b), capped per image over the whole set."""
    if not parts:
        return PairSet.empty()
    a = np.concatenate([p.a for p in parts])
    b = np.concatenate([p.b for p in parts])
    dist = np.concatenate([p.distance for p in parts])
    order = np.lexsort((b, a))
    merged = PairSet(a[order], b[order], dist[order], _sorted_keys([p.truncated for p in parts]))
    return cap_pairs_per_image(merged, max_pairs_per_image)
