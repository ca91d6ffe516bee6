"""Near-duplicate pairs among descriptor vectors, and one keeper per duplicate group.

Pure array-in / array-out kernels; the dedup stage owns the catalog I/O.

    vectors, mean = prepare_vectors(x, center=True, l2_normalize=True)   # SSCD recipe
    index = build_index(vectors, keys)                  # usearch HNSW, CPU
    pairs = radius_pairs_ann(index, vectors, keys, threshold=0.5)
    pairs = radius_pairs_exact(vectors, keys, threshold=0.5, device="cuda")  # tiled matmul
    labels = connected_components(row_a, row_b, n)      # row numbers, not keys
    keep = choose_keepers(labels, keep="largest-resolution", width=w, height=h, paths=p)

Distances are cosine distances, ``1 - cos(x, y)``, in [0, 2]. Both pair finders are range
searches: they return a ``PairSet`` of EVERY pair under the threshold (the exact one
provably, the ANN one as far as the graph finds them: it widens each vector's search until
its farthest neighbour is beyond the threshold). Every returned distance is the exact
cosine distance of the float32 vectors (``cosine_distances``: float64 arithmetic, rounded
to float32 once), so a threshold means the same thing whatever the index or matmul
precision. Report once at a loose threshold, then tighten with ``PairSet.below`` (a filter,
no search).

A pathological group (thousands of near-identical images) would make the pair list
quadratic; ``max_pairs_per_image`` keeps each image's nearest ``max_pairs_per_image`` pairs
(a pair stays when it is among the nearest of either of its images, so at most
``max_pairs_per_image`` x n pairs in all) and ``PairSet.truncated`` names the images that had
more.

Progress callbacks are ``progress(done: int, total: int)``; their return value is ignored.
"""

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable
from typing import Literal

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import torch
from usearch.index import Index

# NB: no `from __future__ import annotations` here: usearch checks a progress callback's
# annotations against the real `int` / `bool` types and rejects string annotations.

Progress = Callable[[int, int], object]
KeepStrategy = Literal["random", "alphabetical", "largest-resolution", "largest-file"]
KEEP_STRATEGIES = ("random", "alphabetical", "largest-resolution", "largest-file")

# usearch defaults, tuned with benchmarks/bench_dedup.py: 100k x 512 random unit vectors,
# the hardest case for a graph index (no low-dimensional structure to navigate; centred,
# L2-normalised SSCD descriptors are trained to spread out much like this). Recall of
# planted pairs at distance < 0.04 / 0.1 / 0.25 / 0.5, usearch build + search CPU-seconds:
#   f16 M=16 ef 128/64    0.988 0.987 0.980 0.922   (wall 143 + 130 s, busy machine)
#   i8  M=16 ef  64/64    0.961 0.950 0.914 0.807   107 +  96 s
#   i8  M=24 ef  64/64    0.989 0.989 0.972 0.902   173 + 116 s
#   i8  M=32 ef  48/64    0.986 0.985 0.966 0.898   116 + 155 s
#   i8  M=32 ef 128/32    0.999 1.000 1.000 0.985   346 +  81 s
#   i8  M=32 ef 128/64    1.000 1.000 1.000 0.988   346 + 128 s   <- defaults
#   i8  M=32 ef 128/128   1.000 1.000 1.000 0.995   346 + 275 s
# - i8: same recall as f16 (at 30k: 0.9997 vs 0.9989 under 0.5) for ~2x less time; HNSW
#   is memory-latency bound and i8 moves half the bytes. With metric "cos" usearch scales
#   each row to unit length before rounding, so any descriptor scale works.
# - connectivity 32 and expansion_add 128: graph quality decides recall of the far pairs;
#   with M=16..24 or expansion_add 48, ~10% of them are lost at expansion_search 64.
# - expansion_search 64: +0.3% recall under 0.5 for +50% search time over 32.
# - k 16: the first search's width; a vector whose 16th neighbour is still near the
#   threshold is searched again with 32, 64, ... (radius_pairs_ann), so big duplicate
#   groups cost more search only where they are. (The table's recalls were measured with a
#   fixed k = 16; planted pairs are each other's first neighbour, so widening changes none.)
# At this size on CPU the exact path is cheaper (~100 CPU-s, recall 1.0): HNSW wins at
# millions of vectors (n log n against n^2), and a GPU makes exact the better choice again.
DEFAULT_METRIC = "cos"
DEFAULT_DTYPE = "i8"
DEFAULT_CONNECTIVITY = 32
DEFAULT_EXPANSION_ADD = 128
DEFAULT_EXPANSION_SEARCH = 64
DEFAULT_K = 16
DEFAULT_BATCH_SIZE = 16_384
# usearch's distances are quantised (i8 rounds each unit component to 1/127: the dot moves
# by up to ||x||_1 / 254 <= sqrt(512) / 254 = 0.089 at d=512); candidates within this much of
# the threshold are re-scored exactly before the final cut. The exact path's margin is
# derived per precision instead (score_error_bound).
CANDIDATE_SLACK = 0.1
_INDEX_DTYPES = ("f32", "f16", "bf16", "i8")


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


# --------------------------------------------------------------------------- vectors


def prepare_vectors(
    x: np.ndarray, *, center: bool | np.ndarray, l2_normalize: bool, copy: bool = True,
    chunk_rows: int = 8192,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Center then L2-normalise descriptors (the SSCD recipe).

    x:        [n, d] float descriptors (not modified unless copy=False).
    center:   True subtracts the mean of ``x``; an [d] array subtracts that mean (use the
              mean of a reference set so later batches are centred the same way);
              False leaves ``x`` uncentred.
    copy:     False works in place when ``x`` is a writable C-contiguous float32 array (or
              memmap): no second [n, d] array, for sets near the memory budget.
    Returns   (vectors [n, d] float32, mean [d] float32 or None when not centred).
    Rows of norm zero stay zero (their cosine distance to anything is then 1).
    Works ``chunk_rows`` rows at a time, so temporaries stay small.
    """
    x = np.asarray(x) if not isinstance(x, np.memmap) else x
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"expected a numeric [n, d] array of descriptors, got shape {x.shape}")
    in_place = not copy and x.dtype == np.float32 and x.flags.c_contiguous and x.flags.writeable
    out = x if in_place else np.empty(x.shape, np.float32)
    mean = None
    if isinstance(center, np.ndarray):
        mean = np.asarray(center, dtype=np.float32)
        if mean.shape != (x.shape[1],):
            raise ValueError(
                f"center has shape {mean.shape} but descriptors have {x.shape[1]} dims; "
                "pass the mean of descriptors from the same model"
            )
    elif center:
        # float64 accumulation: a float32 sum over millions of rows drifts.
        total = np.zeros(x.shape[1], np.float64)
        for start in range(0, len(x), chunk_rows):
            total += np.asarray(x[start:start + chunk_rows], np.float64).sum(axis=0)
        mean = (total / max(len(x), 1)).astype(np.float32)
    for start in range(0, len(x), chunk_rows):
        rows = np.array(x[start:start + chunk_rows], dtype=np.float32)
        if mean is not None:
            rows -= mean
        if l2_normalize:
            norms = np.linalg.norm(rows, axis=1, keepdims=True)
            np.divide(rows, norms, out=rows, where=norms > 0)
        out[start:start + len(rows)] = rows
    return out, mean


def _check_vectors_keys(vectors: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate [n, d] vectors and [n] unique non-negative integer keys; return C arrays."""
    vectors = np.asarray(vectors)
    keys = np.asarray(keys)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be a [n, d] array, got shape {vectors.shape}")
    if keys.shape != (vectors.shape[0],):
        raise ValueError(
            f"got {vectors.shape[0]} vectors but keys of shape {keys.shape}; pass one key per row"
        )
    if not np.issubdtype(keys.dtype, np.integer):
        raise ValueError(f"keys must be integers (uint64 or int64), got {keys.dtype}")
    if keys.dtype.kind == "i" and len(keys) and keys.min() < 0:
        raise ValueError("keys must be non-negative; use image ids or row numbers")
    if keys.dtype == np.uint64 and len(keys) and keys.max() > np.iinfo(np.int64).max:
        raise ValueError("keys must fit in int64 (below 2**63)")
    keys = keys.astype(np.int64)
    if len(np.unique(keys)) != len(keys):
        raise ValueError("keys must be unique; give each vector its own key (e.g. image_id)")
    return np.ascontiguousarray(vectors, dtype=np.float32), keys


def _usearch_progress(progress: Progress | None):
    """Adapt ``progress(done, total)`` to usearch's callback, which must return True."""
    if progress is None:
        return None

    def callback(done: int, total: int) -> bool:
        progress(done, total)
        return True

    return callback


# --------------------------------------------------------------------------- usearch


def build_index(
    vectors: np.ndarray,
    keys: np.ndarray,
    *,
    metric: str = DEFAULT_METRIC,
    dtype: str = DEFAULT_DTYPE,
    connectivity: int | None = None,
    expansion_add: int | None = None,
    expansion_search: int | None = None,
    threads: int = 0,
    progress: Progress | None = None,
) -> Index:
    """Build a usearch HNSW index over ``vectors``.

    vectors:  [n, d] float (stored as ``dtype``: "f16", "f32", "bf16" or "i8").
    keys:     [n] unique non-negative integers (image ids); search results report them.
    connectivity, expansion_add, expansion_search: HNSW M, efConstruction and ef; None
              means this module's DEFAULT_* values. threads=0 uses every core.
    With metric "cos", "i8" stores each row scaled to unit length and rounded to 1/127.
    """
    vectors, keys = _check_vectors_keys(vectors, keys)
    if dtype not in _INDEX_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_INDEX_DTYPES)}, got {dtype!r}")
    index = Index(
        ndim=vectors.shape[1],
        metric=metric,
        dtype=dtype,
        connectivity=connectivity or DEFAULT_CONNECTIVITY,
        expansion_add=expansion_add or DEFAULT_EXPANSION_ADD,
        expansion_search=expansion_search or DEFAULT_EXPANSION_SEARCH,
    )
    if len(vectors):
        index.add(keys.astype(np.uint64), vectors, threads=threads,
                  progress=_usearch_progress(progress))
    return index


def save_index(index: Index, path: str | os.PathLike) -> None:
    """Write ``index`` to ``path`` atomically (a temp file, then rename)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    index.save(tmp)
    os.replace(tmp, path)


def open_index(
    path: str | os.PathLike, *, view: bool = True, expansion_search: int | None = None
) -> Index:
    """Open an index written by ``save_index``.

    view=True memory-maps the file (read-only, opens instantly, pages load on demand);
    view=False loads it into memory so it can be extended with ``index.add``.
    The file does not store expansion_search; None means DEFAULT_EXPANSION_SEARCH.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no index at {path}; build one with build_index + save_index")
    index = Index.restore(path, view=view)
    if index is None:
        raise ValueError(f"{path} is not a usearch index; rebuild it with build_index")
    index.expansion_search = expansion_search or DEFAULT_EXPANSION_SEARCH
    return index


def radius_pairs_ann(
    index: Index,
    vectors: np.ndarray,
    keys: np.ndarray,
    *,
    threshold: float,
    k: int = DEFAULT_K,
    max_pairs_per_image: int | None = None,
    threads: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    views: int = 1,
    progress: Progress | None = None,
) -> PairSet:
    """Every pair closer than ``threshold`` that the HNSW graph finds (a range search).

    index:     built from exactly these ``vectors`` and ``keys`` (build_index).
    vectors:   [n, d] float queries, also used to recompute the distances exactly.
    keys:      [n] their keys. threshold: cosine distance, pairs with distance < threshold.
    k:         neighbours asked for first. A vector whose k-th neighbour is still within
               threshold + CANDIDATE_SLACK (index distance) is searched again with 2k, 4k,
               ... until its list ends beyond the threshold, covers the set, or reaches
               ``max_pairs_per_image`` (None: no cap); vectors stopped by the cap are in
               ``PairSet.truncated``. HNSW is approximate: a pair the graph does not reach
               is missed whatever k (recall in benchmarks/RESULTS.md); radius_pairs_exact
               misses none.
    views:     > 1 for a multi-view set's rows (keys image_id * views + view): only the pairs
               view_pairs_kept keeps are collected.
    Returns a PairSet of keys with exact distances (cosine_distances), capped per image by
    cap_pairs_per_image; progress counts query rows.
    """
    vectors, keys = _check_vectors_keys(vectors, keys)
    _check_threshold(threshold)
    _check_views(views)
    _check_cap(max_pairs_per_image)
    if k < 1:
        raise ValueError(f"k (neighbours per vector) must be at least 1, got {k}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    n = len(vectors)
    row_of = _KeyRows(keys)
    limit = threshold + CANDIDATE_SLACK
    found_a, found_b, cut = [], [], []
    for start in range(0, n, batch_size):
        queries = np.arange(start, min(start + batch_size, n))
        wanted = k if max_pairs_per_image is None else min(k, max_pairs_per_image)
        while len(queries):
            # A row's own entry (and, in a multi-view set, its image's other views) come back
            # too: asked for on top of the wanted neighbours, so they never fill the list.
            wanted = max(min(wanted, n - views), 0)
            asked = min(wanted + views, n)
            matches = index.search(vectors[queries], asked, threads=threads)
            rows, cols, still_close = _close_candidates(matches, queries, limit, asked)
            if views > 1:
                kept = view_pairs_kept(keys[rows], cols, views)
                rows, cols = rows[kept], cols[kept]
            found_a.append(rows)
            found_b.append(row_of(cols))
            queries = queries[still_close]
            if asked >= n:
                break
            if max_pairs_per_image is not None and wanted >= max_pairs_per_image:
                cut.append(keys[queries])
                break
            wanted = 2 * wanted if max_pairs_per_image is None else min(2 * wanted, max_pairs_per_image)
        if progress is not None:
            progress(min(start + batch_size, n), n)
    pairs = _exact_pairs(vectors, keys, found_a, found_b, threshold)
    return cap_pairs_per_image(pairs, max_pairs_per_image, truncated=cut)


def view_pairs_kept(keys_a: np.ndarray, keys_b: np.ndarray, views: int) -> np.ndarray:
    """Which row pairs of a multi-view set (keys image_id * views + view) can decide an image
    pair: two different images, one side a whole view (view 0). The others (an image's own
    views, two partial views) are dropped where they are found, before any cap counts them."""
    keys_a, keys_b = np.asarray(keys_a), np.asarray(keys_b)
    return (keys_a // views != keys_b // views) & ((keys_a % views == 0) | (keys_b % views == 0))


def _check_views(views: int) -> None:
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")


def _check_threshold(threshold: float) -> None:
    if not (math.isfinite(threshold) and 0 < threshold <= 2):
        raise ValueError(f"threshold is a cosine distance in (0, 2] (e.g. 0.5), got {threshold}")


def _check_cap(max_pairs_per_image: int | None) -> None:
    if max_pairs_per_image is not None and max_pairs_per_image < 1:
        raise ValueError(f"max_pairs_per_image must be at least 1 (or None for no cap), got {max_pairs_per_image}")


def _close_candidates(matches, queries: np.ndarray, limit: float,
                      asked: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query rows [c], neighbour keys [c]) of matches under ``limit``, self included, and
    [len(queries)] bool: the query got all ``asked`` results and the last is under ``limit``
    (its list may go on under the threshold)."""
    # usearch returns Matches (no counts) instead of BatchMatches for a single query.
    counts = getattr(matches, "counts", None)
    counts = np.asarray([len(matches.keys)] if counts is None else counts)
    keys = np.asarray(matches.keys).astype(np.int64).reshape(len(counts), -1)
    dist = np.asarray(matches.distances).reshape(keys.shape)
    valid = np.arange(keys.shape[1]) < counts[:, None]
    rows = np.broadcast_to(queries[:, None], keys.shape)
    close = valid & (dist < limit)
    still_close = (counts >= asked) & close[:, -1] if keys.shape[1] else np.zeros(len(counts), bool)
    return rows[close], keys[close], still_close


class _KeyRows:
    """Maps keys back to row numbers of the vectors they came from."""

    def __init__(self, keys: np.ndarray):
        self.order = np.argsort(keys, kind="stable")
        self.sorted = keys[self.order]

    def __call__(self, wanted: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.sorted, wanted)
        pos = np.minimum(pos, len(self.sorted) - 1)
        if len(wanted) and not np.array_equal(self.sorted[pos], wanted):
            raise ValueError(
                "the index holds keys that are not in `keys`; pass the same vectors and keys "
                "the index was built from"
            )
        return self.order[pos]


def _exact_pairs(vectors, keys, rows_a: list, rows_b: list, threshold: float) -> PairSet:
    """Deduplicate candidate row pairs, re-score exactly, keep distance < threshold."""
    ra = np.concatenate(rows_a) if rows_a else np.empty(0, np.int64)
    rb = np.concatenate(rows_b) if rows_b else np.empty(0, np.int64)
    ka, kb = keys[ra], keys[rb]
    swap = ka > kb
    ra, rb = np.where(swap, rb, ra), np.where(swap, ra, rb)
    ka, kb = np.minimum(ka, kb), np.maximum(ka, kb)
    order = np.lexsort((kb, ka))
    ra, rb, ka, kb = ra[order], rb[order], ka[order], kb[order]
    first = np.ones(len(ka), bool)
    first[1:] = (ka[1:] != ka[:-1]) | (kb[1:] != kb[:-1])
    keep = first & (ka != kb)  # ka == kb: a vector matched itself
    ra, rb, ka, kb = ra[keep], rb[keep], ka[keep], kb[keep]
    dist = cosine_distances(vectors, ra, rb)
    close = dist < np.float32(threshold)
    return PairSet(ka[close], kb[close], dist[close])


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


# --------------------------------------------------------------------------- exact (torch)

# Unit roundoff (inputs, output) of a tile's similarity scores for each matmul precision:
# bf16 keeps 8 significant bits, tf32 11, fp32 24. tf32 and fp32 write fp32 outputs.
_UNIT_ROUNDOFF = {"bf16": (2.0**-8, 2.0**-8), "tf32": (2.0**-11, 2.0**-24), "fp32": (0.0, 2.0**-24)}
PRECISIONS = tuple(_UNIT_ROUNDOFF)
_MATMUL_DTYPE = {"bf16": torch.bfloat16, "tf32": torch.float32, "fp32": torch.float32}
# Rows whose norm is this close to 1 are used as unit rows without renormalising them.
_UNIT_TOLERANCE = 1e-5
# The re-check margin is this times score_error_bound: the bound is worst-case already; the
# factor covers a BLAS that rounds once more than modelled (e.g. a split-K partial sum).
RECHECK_SAFETY = 1.25


def score_error_bound(precision: str, dim: int) -> float:
    """Largest |tile score - exact cosine| for rows of ``dim`` dims, in cosine units.

    The tile scores are dot products of the rows normalised in fp32 and rounded to the
    matmul's input format (unit roundoff u_in), accumulated in fp32, written in the output
    format (u_out). Rounding the inputs moves each product x_i y_i by at most
    (2 u_in + u_in^2) |x_i y_i|, and sum |x_i y_i| <= |x| |y| = 1 (Cauchy-Schwarz), so the dot
    moves by at most 2 u_in + u_in^2 WHATEVER the dimension; writing the output adds u_out
    (|score| <= 1). The fp32 parts (normalising each row, accumulating ``dim`` products in
    any order) add at most (2 dim + 8) 2^-24 (gamma_dim bounds, again with sum |x_i y_i| <= 1),
    and rows taken as unit within _UNIT_TOLERANCE add 2 * _UNIT_TOLERANCE.
      bf16, dim 512: 2^-7 + 2^-16 + 2^-8 + 1032 * 2^-24 + 2e-5 = 0.0118
      tf32, dim 512: 2^-10 + 2^-22 + 2^-24 + ...               = 0.0011
      fp32, dim 512:                                             0.00008
    A pair whose exact distance is under the threshold t therefore scores above
    1 - t - bound in the tile; every pair scoring above 1 - t - margin (margin =
    RECHECK_SAFETY * bound) is re-scored exactly, so the result equals an fp32 search's.
    """
    if precision not in _UNIT_ROUNDOFF:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    u_in, u_out = _UNIT_ROUNDOFF[precision]
    return 2 * u_in + u_in**2 + u_out + (2 * dim + 8) * 2.0**-24 + 2 * _UNIT_TOLERANCE


def default_precision(device: str | torch.device) -> str:
    """bf16 tensor cores on CUDA; fp32 on the CPU, where bf16 matmuls are slower, not faster."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def default_tile_rows(device: str | torch.device) -> int:
    """Edge of one block of similarities: 16384^2 bf16 = 512 MB on a GPU, 4096^2 fp32 on a CPU."""
    return 16_384 if torch.device(device).type == "cuda" else 4096


def radius_pairs_exact(
    vectors: np.ndarray,
    keys: np.ndarray,
    *,
    threshold: float,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    tile_rows: int | None = None,
    max_pairs_per_image: int | None = None,
    views: int = 1,
    progress: Progress | None = None,
) -> PairSet:
    """EVERY pair closer than ``threshold``, by tiled matrix products (an exact range search).

    vectors:   [n, d] float; keys: [n] unique keys. threshold: cosine distance.
    device:    "cpu", "cuda" or a torch.device; the set lives there ([n, d] in the matmul
               dtype for the scores, plus the float32 rows for the re-check).
    precision: "bf16", "tf32" or "fp32" for the scores (None: default_precision). Every
               pair scoring within the margin of the threshold (score_error_bound) is
               re-scored exactly (cosine_distances' arithmetic, on the device), so the
               pairs and distances are the same at every precision.
    tile_rows: edge of the square block of similarities computed at once (None:
               default_tile_rows); never n x n. Only blocks on and above the diagonal are
               computed (i < j): n^2 d FLOP, not 2 n^2 d.
    max_pairs_per_image: cap_pairs_per_image's cap (None: every pair).
    views:     > 1 for a multi-view set's rows: only the pairs view_pairs_kept keeps, dropped
               block by block.
    Returns a PairSet of keys; progress counts blocks.
    """
    vectors, keys = _check_vectors_keys(vectors, keys)
    found = block_pairs_exact(vectors, keys, None, None, threshold=threshold, device=device,
                              precision=precision, tile_rows=tile_rows,
                              max_pairs_per_image=max_pairs_per_image, views=views, progress=progress)
    return merge_pair_sets([found], max_pairs_per_image)


def block_pairs_exact(
    vectors_a: np.ndarray,
    keys_a: np.ndarray,
    vectors_b: np.ndarray | None,
    keys_b: np.ndarray | None,
    *,
    threshold: float,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    tile_rows: int | None = None,
    max_pairs_per_image: int | None = None,
    views: int = 1,
    progress: Progress | None = None,
) -> PairSet:
    """The pairs under ``threshold`` between two blocks of a set: one tile of a search
    spread over machines (vdc_lake.scale.ray_backend), or the whole set when B is None.

    vectors_a [na, d], keys_a [na]; vectors_b [nb, d], keys_b [nb], rows disjoint from A's;
    B None: the pairs within A (i < j). Other arguments as radius_pairs_exact. Returns a
    PairSet (a < b, unsorted), capped within the blocks: merge_pair_sets over every block
    pair of a set gives radius_pairs_exact's result.
    """
    vectors_a, keys_a = _check_vectors_keys(vectors_a, keys_a)
    same = vectors_b is None
    if not same:
        vectors_b, keys_b = _check_vectors_keys(vectors_b, keys_b)
        if vectors_b.shape[1] != vectors_a.shape[1]:
            raise ValueError(f"blocks of {vectors_a.shape[1]} and {vectors_b.shape[1]} dims; pass one set's rows")
    _check_threshold(threshold)
    _check_cap(max_pairs_per_image)
    _check_views(views)
    device = torch.device(device)
    precision = precision or default_precision(device)
    margin = RECHECK_SAFETY * score_error_bound(precision, vectors_a.shape[1])
    tile = tile_rows or default_tile_rows(device)
    if tile < 1:
        raise ValueError("tile_rows must be at least 1")
    with _matmul_precision(precision, device):
        a = _Block(vectors_a, device, precision)
        b = a if same else _Block(vectors_b, device, precision)
        keys_b_rows = keys_a if same else keys_b
        keep = None if views == 1 else (lambda r, c: view_pairs_kept(keys_a[r], keys_b_rows[c], views))
        found = _search_blocks(a, b, same, threshold, margin, tile, progress, keep)
    ka, kb = keys_a[found[0]], keys_b_rows[found[1]]
    pairs = PairSet(np.minimum(ka, kb), np.maximum(ka, kb), found[2])
    return cap_pairs_per_image(pairs, max_pairs_per_image)


class _Block:
    """Rows of a block on the device: unit rows in the matmul dtype (the scores) and the
    float32 rows with their float64 squared norms (the exact re-check)."""

    def __init__(self, vectors: np.ndarray, device: torch.device, precision: str):
        self.unit = _unit_rows_on(vectors, device, _MATMUL_DTYPE[precision])
        if device.type != "cpu":
            self.exact = _to_device(vectors, device)
        else:  # torch wants a writable array to share (a read-only memmap is copied)
            self.exact = torch.from_numpy(vectors if vectors.flags.writeable else np.array(vectors))
        # float64 squared norms, 8192 rows at a time (a larger chunk's float64 copy was 0.27 GB)
        self.sq_norm = torch.cat([(part.double() ** 2).sum(1) for part in self.exact.split(8192)])

    def __len__(self) -> int:
        return len(self.unit)


def _search_blocks(a: _Block, b: _Block, same: bool, threshold: float, margin: float, tile: int,
                   progress: Progress | None, keep: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows of a [m], rows of b [m], exact distance [m] float32) of the pairs under threshold;
    keep(rows of a, rows of b) -> bool mask drops candidate pairs before their re-check."""
    starts_a = range(0, len(a), tile)
    blocks = [(i0, j0) for i0 in starts_a for j0 in range(i0 if same else 0, len(b), tile)]
    limit = np.float32(threshold)
    rows_a, rows_b, dists = [], [], []
    for done, (i0, j0) in enumerate(blocks, 1):
        sims = a.unit[i0 : i0 + tile] @ b.unit[j0 : j0 + tile].T
        hit = sims >= _floor_in(sims.dtype, 1.0 - threshold - margin)
        if same and i0 == j0:
            hit.triu_(1)  # each pair once, and not a vector with itself
        r, c = hit.nonzero(as_tuple=True)
        del sims, hit
        r, c = r + i0, c + j0
        if keep is not None and len(r):
            kept = torch.from_numpy(keep(r.cpu().numpy(), c.cpu().numpy())).to(r.device)
            r, c = r[kept], c[kept]
        if len(r):
            dist = _exact_distances(a, b, r, c)
            close = dist < torch.tensor(limit, device=dist.device)
            rows_a.append(r[close].cpu().numpy())
            rows_b.append(c[close].cpu().numpy())
            dists.append(dist[close].cpu().numpy())
        if progress is not None:
            progress(done, len(blocks))
    if not rows_a:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(rows_a), np.concatenate(rows_b), np.concatenate(dists)


def _floor_in(dtype: torch.dtype, floor: float) -> float:
    """``floor`` lowered to a value of ``dtype`` not above it: comparing a bf16 tensor with a
    Python float rounds the float to bf16, which could otherwise raise the floor."""
    value = torch.tensor(floor, dtype=torch.float64).to(dtype)
    if float(value) > floor:
        value = torch.nextafter(value, torch.tensor(-math.inf, dtype=dtype))
    return float(value)


def _exact_distances(a: _Block, b: _Block, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """cosine_distances of row pairs (r of a, c of b), in float64 on the device, as float32."""
    out = []
    for s in range(0, len(r), 262_144):
        ri, ci = r[s : s + 262_144], c[s : s + 262_144]
        dot = (a.exact[ri].double() * b.exact[ci].double()).sum(1)
        norm = (a.sq_norm[ri] * b.sq_norm[ci]).sqrt()
        cos = torch.where(norm > 0, dot / torch.where(norm > 0, norm, 1.0), 0.0)
        out.append((1.0 - cos).clamp(0.0, 2.0).float())
    return torch.cat(out)


@contextlib.contextmanager
def _matmul_precision(precision: str, device: torch.device):
    """fp32 accumulation and the asked-for input rounding for the duration of a search (the
    error bound assumes both); torch's global settings are restored after."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    cuda = torch.backends.cuda.matmul
    reduced = cuda.allow_bf16_reduced_precision_reduction
    cuda.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)
        cuda.allow_bf16_reduced_precision_reduction = reduced


def _to_device(vectors: np.ndarray, device: torch.device) -> torch.Tensor:
    out = torch.empty(vectors.shape, dtype=torch.float32, device=device)
    for s in range(0, len(vectors), 262_144):
        out[s : s + 262_144] = torch.from_numpy(np.ascontiguousarray(vectors[s : s + 262_144])).to(device)
    return out


def _unit_rows_on(vectors: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[n, d] L2-normalised rows on ``device`` in ``dtype``, moved in chunks. Float32 rows on
    the CPU that are unit length already (prepare_vectors' output) are used as they are, not
    copied: the exact search then holds the set once."""
    if device.type == "cpu" and dtype == torch.float32 and vectors.flags.writeable and _unit_rows(vectors):
        return torch.from_numpy(vectors)
    out = torch.empty(vectors.shape, dtype=dtype, device=device)
    for s in range(0, len(vectors), 262_144):
        part = torch.from_numpy(np.ascontiguousarray(vectors[s : s + 262_144])).to(device)
        out[s : s + len(part)] = torch.nn.functional.normalize(part, dim=1).to(dtype)
    return out


def _unit_rows(vectors: np.ndarray, chunk_rows: int = 8192) -> bool:
    """Whether every row has norm 1 (to _UNIT_TOLERANCE) or 0, checked chunk by chunk."""
    for start in range(0, len(vectors), chunk_rows):
        norms = np.linalg.norm(vectors[start:start + chunk_rows], axis=1)
        if not np.all((np.abs(norms - 1.0) < _UNIT_TOLERANCE) | (norms == 0)):
            return False
    return True


# --------------------------------------------------------------------------- groups


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
