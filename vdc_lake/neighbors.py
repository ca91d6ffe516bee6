"""Near-duplicate pairs among descriptor vectors, and one keeper per duplicate group.

Pure array-in / array-out kernels; the dedup stage owns the catalog I/O.

    vectors, mean = prepare_vectors(x, center=True, l2_normalize=True)   # SSCD recipe
    index = build_index(vectors, keys)                  # usearch HNSW, CPU
    pairs = radius_pairs_ann(index, vectors, keys, threshold=0.5)
    pairs = radius_pairs_exact(vectors, keys, threshold=0.5, device="cuda")  # tiled matmul
    labels = connected_components(row_a, row_b, n)      # row numbers, not keys
    keep = choose_keepers(labels, keep="largest-resolution", width=w, height=h, paths=p)

Distances are cosine distances, ``1 - cos(x, y)``, in [0, 2]. Both pair finders return a
``PairSet`` of every pair under the threshold found among each vector's ``k`` nearest
neighbours, with the distance recomputed exactly in float32 from the vectors, so a
threshold means the same thing whatever the index precision. Report once at a loose
threshold, then tighten with ``PairSet.below`` (a filter, no search).

Progress callbacks are ``progress(done: int, total: int)``; their return value is ignored.
"""

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
# - k 16: a planted copy is the first neighbour, so k only matters for big duplicate
#   groups; 16 joins groups of 17 directly and larger ones through overlapping lists.
# At this size on CPU the exact path is cheaper (~100 CPU-s, recall 1.0): HNSW wins at
# millions of vectors (n log n against n^2), and a GPU makes exact the better choice again.
DEFAULT_METRIC = "cos"
DEFAULT_DTYPE = "i8"
DEFAULT_CONNECTIVITY = 32
DEFAULT_EXPANSION_ADD = 128
DEFAULT_EXPANSION_SEARCH = 64
DEFAULT_K = 16
DEFAULT_BATCH_SIZE = 16_384
# Index distances are quantised (f16/bf16/i8) or low-precision (bf16 matmul); candidates
# within this much of the threshold are re-scored exactly before the final cut.
CANDIDATE_SLACK = 0.1
_INDEX_DTYPES = ("f32", "f16", "bf16", "i8")


@dataclasses.dataclass(frozen=True, repr=False)
class PairSet:
    """Undirected pairs of keys with their exact cosine distance.

    a, b:      [m] int64 keys, ``a < b``, each pair once, sorted by (a, b).
    distance:  [m] float32 cosine distance ``1 - cos`` in [0, 2].
    """

    a: np.ndarray
    b: np.ndarray
    distance: np.ndarray

    def __len__(self) -> int:
        return len(self.a)

    def __repr__(self) -> str:
        if len(self) == 0:
            return "PairSet(0 pairs)"
        lo, hi = float(self.distance.min()), float(self.distance.max())
        return f"PairSet({len(self)} pairs, distance {lo:.4f}..{hi:.4f})"

    def below(self, threshold: float) -> "PairSet":
        """The pairs with ``distance < threshold``: a filter, no search is repeated."""
        keep = self.distance < np.float32(threshold)
        return PairSet(self.a[keep], self.b[keep], self.distance[keep])

    @classmethod
    def empty(cls) -> "PairSet":
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))


# --------------------------------------------------------------------------- vectors


def prepare_vectors(
    x: np.ndarray, *, center: bool | np.ndarray, l2_normalize: bool, copy: bool = True,
    chunk_rows: int = 65_536,
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
    threads: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> PairSet:
    """Pairs closer than ``threshold`` among each vector's ``k`` approximate neighbours.

    index:     built from exactly these ``vectors`` and ``keys`` (build_index).
    vectors:   [n, d] float queries, also used to recompute the distances exactly.
    keys:      [n] their keys. threshold: cosine distance, pairs with distance < threshold.
    k:         neighbours per vector, not counting itself. A group of more than k + 1
               near-copies yields only some of its pairs; overlapping neighbour lists
               usually still join it into one component, but raise k when groups are big.
    Returns a PairSet of keys with exact float32 distances; progress counts query rows.
    """
    vectors, keys = _check_vectors_keys(vectors, keys)
    _check_threshold_k(threshold, k)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    n = len(vectors)
    row_of = _KeyRows(keys)
    found_a, found_b = [], []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        matches = index.search(vectors[start:stop], k + 1, threads=threads)
        rows, cols = _close_candidates(matches, start, threshold + CANDIDATE_SLACK)
        found_a.append(rows)
        found_b.append(row_of(cols))
        if progress is not None:
            progress(stop, n)
    return _exact_pairs(vectors, keys, found_a, found_b, threshold)


def _check_threshold_k(threshold: float, k: int) -> None:
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold is a cosine distance > 0 (e.g. 0.5), got {threshold}")
    if k < 1:
        raise ValueError(f"k (neighbours per vector) must be at least 1, got {k}")


def _close_candidates(matches, start: int, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """(query rows [c], neighbour keys [c]) of matches under ``limit``, self included."""
    # usearch returns Matches (no counts) instead of BatchMatches for a single query.
    counts = getattr(matches, "counts", None)
    counts = np.asarray([len(matches.keys)] if counts is None else counts)
    keys = np.asarray(matches.keys).astype(np.int64).reshape(len(counts), -1)
    dist = np.asarray(matches.distances).reshape(keys.shape)
    valid = np.arange(keys.shape[1]) < counts[:, None]
    rows = np.broadcast_to(np.arange(start, start + len(keys))[:, None], keys.shape)
    close = valid & (dist < limit)
    return rows[close], keys[close]


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
    """Exact float32 cosine distance ``1 - cos`` between row pairs.

    vectors: [n, d]; rows_a, rows_b: [m] row numbers. Returns [m] float32 in [0, 2]
    (rounding below 0 is clipped). A zero row is at distance 1 from everything.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    out = np.empty(len(rows_a), np.float32)
    for s in range(0, len(rows_a), chunk):
        xa, xb = vectors[rows_a[s : s + chunk]], vectors[rows_b[s : s + chunk]]
        dot = np.einsum("ij,ij->i", xa, xb)
        norm = np.sqrt(np.einsum("ij,ij->i", xa, xa) * np.einsum("ij,ij->i", xb, xb))
        cos = np.divide(dot, norm, out=np.zeros_like(dot), where=norm > 0)
        out[s : s + chunk] = np.clip(1.0 - cos, 0.0, 2.0)
    return out


# --------------------------------------------------------------------------- exact (torch)


def radius_pairs_exact(
    vectors: np.ndarray,
    keys: np.ndarray,
    *,
    threshold: float,
    k: int = DEFAULT_K,
    device: str | torch.device = "cpu",
    tile_rows: int | None = None,
    dtype: torch.dtype | None = None,
    progress: Progress | None = None,
) -> PairSet:
    """Exact ``k`` nearest neighbours by tiled matrix products, then the radius cut.

    vectors:   [n, d] float; keys: [n] unique keys. threshold: cosine distance.
    device:    "cpu", "cuda" or a torch.device; the matrix lives there, [n, d] in ``dtype``.
    dtype:     matmul precision; None means bfloat16 on CUDA, float32 on CPU (CPU bf16
               matmuls are slow). Final distances are recomputed in float32 either way.
    tile_rows: edge of the square [tile_rows, tile_rows] block of similarities computed at
               once (None: 16384 on CUDA, 4096 on CPU); never n x n. The similarity matrix
               is symmetric, so only blocks on and above the diagonal are computed, each
               feeding the top-k of its rows and of its columns: n^2 d FLOP, not 2 n^2 d.
    Returns the same PairSet as radius_pairs_ann would with a perfect index;
    progress counts blocks.
    """
    vectors, keys = _check_vectors_keys(vectors, keys)
    _check_threshold_k(threshold, k)
    device = torch.device(device)
    cuda = device.type == "cuda"
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    tile = tile_rows or (16_384 if cuda else 4096)
    if tile < 1:
        raise ValueError("tile_rows must be at least 1")
    matrix = _unit_rows_on(vectors, device, dtype)
    floor = 1.0 - (threshold + CANDIDATE_SLACK)  # similarity below which nothing matters
    n = len(vectors)
    best = torch.full((n, k), -math.inf, device=device)
    best_cols = torch.full((n, k), -1, dtype=torch.long, device=device)
    starts = range(0, n, tile)
    total, done = len(starts) * (len(starts) + 1) // 2, 0
    for i0 in starts:
        rows = matrix[i0 : i0 + tile]
        for j0 in range(i0, n, tile):
            sims = rows @ matrix[j0 : j0 + tile].T  # in the matmul dtype: float32 is 2x
            if i0 == j0:
                sims.fill_diagonal_(-math.inf)  # a vector is not its own neighbour
            _merge_top_k(best, best_cols, i0, sims, j0, floor)
            if j0 != i0:
                _merge_top_k(best, best_cols, j0, sims.T, i0, floor)
            done += 1
            if progress is not None:
                progress(done, total)
    hit = best >= floor
    found_a = hit.nonzero()[:, 0].cpu().numpy()
    found_b = best_cols[hit].cpu().numpy()
    return _exact_pairs(vectors, keys, [found_a], [found_b], threshold)


def _unit_rows_on(vectors: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[n, d] L2-normalised rows on ``device`` in ``dtype``, moved in chunks. Float32 rows on
    the CPU that are unit length already (prepare_vectors' output) are used as they are, not
    copied: the exact search then holds the set once."""
    if device.type == "cpu" and dtype == torch.float32 and vectors.flags.writeable and _unit_rows(vectors):
        return torch.from_numpy(vectors)
    out = torch.empty(vectors.shape, dtype=dtype, device=device)
    for s in range(0, len(vectors), 262_144):
        part = torch.from_numpy(vectors[s : s + 262_144]).to(device)
        out[s : s + len(part)] = torch.nn.functional.normalize(part, dim=1).to(dtype)
    return out


def _unit_rows(vectors: np.ndarray, chunk_rows: int = 65_536) -> bool:
    """Whether every row has norm 1 (to float32 rounding) or 0, checked chunk by chunk."""
    for start in range(0, len(vectors), chunk_rows):
        norms = np.linalg.norm(vectors[start:start + chunk_rows], axis=1)
        if not np.all((np.abs(norms - 1.0) < 1e-5) | (norms == 0)):
            return False
    return True


def _merge_top_k(best, best_cols, r0: int, sims, c0: int, floor: float) -> None:
    """Fold a block of similarities into the running top-k of its rows, in place.

    best, best_cols: [n, k] running similarities (float32, -inf when empty) and columns.
    sims:  [r, c] similarities of rows r0.. against columns c0..
    Only rows whose best similarity in the block reaches ``floor`` pay for a top-k: with
    a tight threshold that is a small fraction of them.
    """
    hit = (sims.amax(dim=1) >= floor).nonzero().squeeze(1)
    if len(hit) == 0:
        return
    k = best.shape[1]
    vals, idx = sims[hit].topk(min(k, sims.shape[1]), dim=1)
    rows = hit + r0
    merged = torch.cat([best[rows], vals.float()], dim=1)
    merged_cols = torch.cat([best_cols[rows], idx + c0], dim=1)
    top, pos = merged.topk(k, dim=1)
    best[rows] = top
    best_cols[rows] = merged_cols.gather(1, pos)


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
