"""Approximate range search on a CPU: a usearch HNSW index, searched until every pair under the
threshold is found (as far as the graph finds them), distances re-scored exactly."""

import os

import numpy as np
from usearch.index import Index

from vdc_lake.kernels.neighbors_pairs import (
    PairSet, Progress, cap_pairs_per_image, check_cap, check_threshold, check_views, cosine_distances, view_pairs_kept,
)
from vdc_lake.kernels.neighbors_vectors import check_vectors_keys

# NB: no `from __future__ import annotations` here: usearch checks a progress callback's
# annotations against the real `int` / `bool` types and rejects string annotations.

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


def _usearch_progress(progress: Progress | None):
    """Adapt ``progress(done, total)`` to usearch's callback, which must return True."""
    if progress is None:
        return None

    def callback(done: int, total: int) -> bool:
        progress(done, total)
        return True

    return callback


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
    vectors, keys = check_vectors_keys(vectors, keys)
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
    vectors, keys = check_vectors_keys(vectors, keys)
    check_threshold(threshold)
    check_views(views)
    check_cap(max_pairs_per_image)
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
