"""k-means on torch: flat and hierarchical, resumable, for millions of embeddings.

Kernels only: tensors or NumPy arrays in, small result dataclasses out; no catalog, no
printing. Long loops report to an optional ``progress``: a callable taking (stage, step,
total), or a tqdm-like bar (anything with ``set_description``, ``total``, ``n`` and
``refresh``), which then shows the current stage.

Semantics follow VDC (pt-kmeans) and Vo et al. 2024, "Automatic data curation for
self-supervised learning: a clustering-based approach" (facebookresearch/ssl-data-curation):
level 0 clusters the points, every upper level clusters the centres of the level below, and
method "resampled" refines each level with resampling steps (see ``hierarchical_kmeans``).

Where the time goes, and why it stays low (DESIGN.md, "Performance model"):

- a full pass scores each chunk of rows against all centres with one matmul and keeps the
  best two (an N x K matrix never exists), summing the rows into their clusters on the way;
- later passes start from Hamerly's bounds (2010): a row keeps its label while an upper
  bound on the distance to its own centre stays below a lower bound on the distance to
  every other, both moved by how far the centres moved, which reads no data. Rows that
  fail are checked against the centres that moved most, then their own centre, and only
  the rest are scored against all centres; the cluster sums are updated for the rows that
  changed. Late Lloyd iterations, and resampling steps once their centres settle, cost a
  small part of a pass. The labels are still exact: near ties (1e-4) are always rescored;
- k-means++ (greedy, 2 + log k trials per centre) runs in ``INIT_ROUNDS`` rounds of
  batched matmuls on a random sample of ``INIT_SAMPLE_PER_CLUSTER * k`` points, instead of
  k sequential passes over the data;
- resampling picks the closest points of every cluster with one sort, and the refit starts
  from the current centres;
- on CUDA the matmuls run in TF32 (fp32 accumulation, fp32 scores); the data is copied to
  the GPU once when it fits in half the free memory, otherwise chunks are streamed from
  host memory or a NumPy memmap. Cluster sums are float64 and added in a fixed order on
  every device, so a seed gives the same result on every run.

Empty clusters: after an update, each cluster that lost all its points is re-seeded with
one of the points farthest from their current centre (the farthest point goes to the
lowest empty cluster id; ties by row index), so the rule is deterministic. A cluster can
stay empty only when the data has fewer distinct points than clusters, or after the last
reassignment of a resampling step; its centre is then kept, and it owns no points.

Resume: with ``checkpoint_dir``, ``hierarchical_kmeans`` writes its state (arguments, the
finished levels, and the current level after its k-means and after every resampling step)
to one file, atomically (temporary file, fsync, ``os.replace``). Calling it again with the
same arguments and directory continues after the last finished step and returns what an
uninterrupted run returns (on the same device and chunk size); other arguments, or other
data, raise ``ValueError``.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

Metric = Literal["cosine", "l2"]
Init = Literal["kmeans++", "random"]
Method = Literal["centers", "resampled"]
Progress = Callable[[str, int, int], None]
ArrayLike = torch.Tensor | np.ndarray

# k-means++ sees at most this many points per cluster; more only slows the seeding.
INIT_SAMPLE_PER_CLUSTER = 10
# k-means++ seeding draws its k centres in this many rounds of two matmuls each.
INIT_ROUNDS = 32
# Rows whose bounds fail are rescored against their own centre and the fastest-moving
# 1/8 of the centres before falling back to all of them.
_BIG_MOVERS_PER = 8
# Rows rechecked per batch (the row data is gathered, so this bounds the copy).
_RECHECK_ROWS = 2**15
# A pass whose probe of this many rows finds more than half of them needing a full
# scoring scores every row directly.
_PROBE_ROWS = 1024
_RESCORE_ALL_ABOVE = 0.5
# Elements (chunk rows x clusters) of one score matrix: 16 MiB stays in a CPU cache,
# 1 GiB keeps a GPU busy.
_CPU_SCORE_ELEMENTS = 2**22
_CUDA_SCORE_ELEMENTS = 2**28
_CHECKPOINT_FILE = "hierarchical_kmeans.pt"
_CHECKPOINT_FORMAT = 1


@dataclass(frozen=True, repr=False)
class KMeansResult:
    """One k-means fit, all tensors on the CPU.

    centers: [k, d] float32 (unit length for cosine); assignments: [n] int64 cluster id of
    every input row; distances: [n] float32 distance of every row to its centre (cosine
    distance 1 - cos, or squared L2); n_iter: Lloyd iterations run.
    """

    centers: torch.Tensor
    assignments: torch.Tensor
    distances: torch.Tensor
    n_iter: int

    def __len__(self) -> int:
        return self.centers.shape[0]

    def __repr__(self) -> str:
        k, d = self.centers.shape
        mean = self.distances.mean().item() if len(self.distances) else float("nan")
        return (
            f"KMeansResult(k={k}, d={d}, n={len(self.assignments)}, "
            f"n_iter={self.n_iter}, mean_distance={mean:.4f})"
        )


@dataclass(frozen=True, repr=False)
class HierarchicalLevel:
    """One level of a hierarchical k-means, all tensors on the CPU.

    centers: [k_l, d] float32. assignments: [n] int64, this level's cluster of every
    ORIGINAL point. input_assignments: [m_l] int64, this level's cluster of each of its
    inputs (the points at level 0, the level-(l-1) centres above: the parent of each
    child cluster). input_distances: [m_l] float32, distance of each input to its centre.
    n_iter: Lloyd iterations of the level's first k-means.
    """

    centers: torch.Tensor
    assignments: torch.Tensor
    input_assignments: torch.Tensor
    input_distances: torch.Tensor
    n_iter: int

    def __repr__(self) -> str:
        k, d = self.centers.shape
        return f"HierarchicalLevel(k={k}, d={d}, inputs={len(self.input_assignments)})"


@dataclass(frozen=True, repr=False)
class HierarchicalKMeansResult:
    """Levels of a hierarchical k-means, level 0 (finest) first."""

    levels: tuple[HierarchicalLevel, ...]

    def __len__(self) -> int:
        return len(self.levels)

    def __getitem__(self, level: int) -> HierarchicalLevel:
        return self.levels[level]

    def __repr__(self) -> str:
        sizes = "/".join(str(level.centers.shape[0]) for level in self.levels)
        n = len(self.levels[0].assignments) if self.levels else 0
        return f"HierarchicalKMeansResult(n={n}, clusters={sizes})"

    def assignment_matrix(self) -> np.ndarray:
        """[n, L] int64: column l is every point's cluster at level l (for sampling)."""
        return np.stack([level.assignments.numpy() for level in self.levels], axis=1)


# ----------------------------------------------------------------------------- data access


class _Rows:
    """Rows of a matrix served as float32 tensors on the compute device.

    For cosine the rows come out L2-normalised (``unit`` says they already are). ``data``
    is a tensor (used in place) or a NumPy array / memmap (read chunk by chunk).
    """

    def __init__(self, data: ArrayLike, *, device: torch.device, metric: str, unit: bool):
        self.data = data
        self.device = device
        self.metric = metric
        self.unit = unit
        self.n, self.d = data.shape

    def _prepare(self, rows: torch.Tensor) -> torch.Tensor:
        rows = rows.to(device=self.device, dtype=torch.float32)
        if self.metric == "cosine" and not self.unit:
            rows = F.normalize(rows, dim=1)
        return rows

    def slice(self, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop-1, [stop - start, d]."""
        if isinstance(self.data, torch.Tensor):
            return self._prepare(self.data[start:stop])
        return self._prepare(torch.from_numpy(np.array(self.data[start:stop], np.float32)))

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """Rows at ``index`` ([m] int64, any order), [m, d]."""
        if isinstance(self.data, torch.Tensor):
            return self._prepare(self.data[index.to(self.data.device)])
        picked = self.data[index.cpu().numpy()]
        return self._prepare(torch.from_numpy(np.array(picked, np.float32)))


def _resolve_device(x: ArrayLike, device: str | torch.device | None) -> torch.device:
    if device is None:
        return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    return torch.device(device)


def _fits_on_gpu(device: torch.device, n_bytes: int) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return n_bytes <= free // 2


def _place(x: ArrayLike, device: torch.device, metric: str) -> _Rows:
    """Wrap the input; copy it to a CUDA device once (normalised) when it fits there."""
    if isinstance(x, np.ndarray) and not isinstance(x, np.memmap):
        if x.dtype == np.float32 and x.flags.c_contiguous and x.flags.writeable:
            x = torch.from_numpy(x)
    rows = _Rows(x, device=device, metric=metric, unit=False)
    on_device = isinstance(x, torch.Tensor) and x.device == device
    if device.type != "cuda" or on_device or not _fits_on_gpu(device, rows.n * rows.d * 4):
        return rows
    resident = torch.empty((rows.n, rows.d), dtype=torch.float32, device=device)
    step = max(1, 2**26 // max(rows.d, 1))
    for start in range(0, rows.n, step):
        stop = min(rows.n, start + step)
        resident[start:stop] = rows.slice(start, stop)
    return _Rows(resident, device=device, metric=metric, unit=True)


def _chunk_rows(chunk_size: int | None, k: int, device: torch.device) -> int:
    if chunk_size is not None:
        return chunk_size
    if device.type == "cuda":
        return int(min(2**18, max(1024, _CUDA_SCORE_ELEMENTS // k)))
    return int(min(2**16, max(1024, _CPU_SCORE_ELEMENTS // k)))


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


@contextlib.contextmanager
def _fast_matmul(device: torch.device) -> Iterator[None]:
    """TF32 matmuls on CUDA (10-bit mantissa inputs, fp32 accumulation and output)."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    attribute = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    previous = getattr(matmul, attribute)
    setattr(matmul, attribute, "tf32" if attribute == "fp32_precision" else True)
    try:
        yield
    finally:
        setattr(matmul, attribute, previous)


def _as_callback(progress) -> Progress | None:
    """A progress callable from a callable, a tqdm-like bar, or None."""
    if progress is None or not hasattr(progress, "refresh"):
        return progress

    def show(stage: str, step: int, total: int) -> None:
        progress.set_description(stage, refresh=False)
        progress.total, progress.n = total, step
        progress.refresh()

    return show


def _report(progress: Progress | None, stage: str, step: int, total: int) -> None:
    if progress is not None:
        progress(stage, step, total)


# ----------------------------------------------------------------------------- one pass


@dataclass
class _Scorer:
    """Centres laid out for scoring: argmax of x @ weights + bias is the nearest centre.

    weights [d, k] for full matmuls, weight_rows [k, d] (the same numbers) for gathers,
    bias [k] or None. Cosine scores are cos(x, c); L2 scores are 2 x.c - |c|^2, since
    |x - c|^2 = |x|^2 - (2 x.c - |c|^2).
    """

    weights: torch.Tensor
    weight_rows: torch.Tensor
    bias: torch.Tensor | None
    metric: str

    @staticmethod
    def of(centers: torch.Tensor, metric: str) -> "_Scorer":
        if metric == "cosine":
            return _Scorer(centers.T.contiguous(), centers, None, metric)
        doubled = 2 * centers
        return _Scorer(doubled.T.contiguous(), doubled, -(centers * centers).sum(dim=1), metric)

    def scores(self, rows: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """[c, k] scores of rows [c, d], or [c, len(columns)] for some centres only."""
        if columns is None:
            weights, bias = self.weights, self.bias
        else:
            weights = self.weight_rows[columns].T
            bias = None if self.bias is None else self.bias[columns]
        return rows @ weights if bias is None else torch.addmm(bias, rows, weights)

    def distances(self, scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Metric distances (1 - cos, or squared L2) from scores [c] or [c, t] of rows [c, d]."""
        if self.metric == "cosine":
            return (1.0 - scores).clamp_(0.0, 2.0)
        norms = (rows * rows).sum(dim=1)
        return (norms.view(-1, *[1] * (scores.dim() - 1)) - scores).clamp_(min=0.0)


def _euclidean(distances: torch.Tensor, metric: str) -> torch.Tensor:
    """|x - c| from the metric's distance (unit vectors: |x - c|^2 = 2 (1 - cos))."""
    return (2.0 * distances if metric == "cosine" else distances).sqrt()


def _nearest(rows: torch.Tensor, scorer: _Scorer):
    """Score rows [c, d] against every centre with one matmul.

    Returns labels [c] int64 (nearest centre), distances [c] float32 to it, and lower [c]
    float32, the Euclidean distance to the second nearest (+inf with one centre).
    """
    scores = scorer.scores(rows)
    if scores.shape[1] == 1:
        labels = torch.zeros(len(rows), dtype=torch.int64, device=rows.device)
        lower = torch.full((len(rows),), math.inf, device=rows.device)
        return labels, scorer.distances(scores[:, 0], rows), lower
    top, index = scores.topk(2, dim=1)
    lower = _euclidean(scorer.distances(top[:, 1].contiguous(), rows), scorer.metric)
    return index[:, 0].contiguous(), scorer.distances(top[:, 0].contiguous(), rows), lower


def _own_distances(rows: torch.Tensor, centers: torch.Tensor, metric: str) -> torch.Tensor:
    """Distance of each row [c, d] to its own centre [c, d], row by row (no matmul)."""
    if metric == "cosine":
        return (1.0 - (rows * centers).sum(dim=1)).clamp_(0.0, 2.0)
    return ((rows - centers) ** 2).sum(dim=1)


def _segment_sums(labels: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum rows [c, d] per label in a fixed order: (distinct labels [u], sums [u, d]).

    Rows are sorted by label (stably) and summed with one cumulative sum, each label's
    total being the difference across its segment; no atomics, so the result is the
    same on every run, unlike CUDA ``index_add_``.
    """
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    totals = rows[order].cumsum(dim=0)
    last = torch.ones_like(sorted_labels, dtype=torch.bool)
    last[:-1] = sorted_labels[1:] != sorted_labels[:-1]
    ends = last.nonzero().squeeze(1)
    segments = totals[ends]
    segments[1:] -= totals[ends[:-1]]
    return sorted_labels[ends], segments


def _add_rows(sums: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, sign: float = 1.0) -> None:
    """sums[labels[i]] += sign * rows[i] in float64, in a fixed order on every device."""
    rows = rows.to(torch.float64) if sign == 1.0 else rows.to(torch.float64) * sign
    if sums.device.type == "cuda" and len(rows):
        sums.index_add_(0, *_segment_sums(labels, rows))  # distinct labels: no atomics race
    else:  # a serial loop in index order on the CPU (index_add_ there costs O(k d) a call)
        sums.index_put_((labels,), rows, accumulate=True)


@dataclass
class _Assignment:
    """Nearest centre of every row for ``centers`` [k, d], on the compute device.

    labels [n] int64. upper [n], lower [n] float32: bounds on the Euclidean distance from
    the row to its own centre (from above) and to every other centre (from below); while
    upper < lower the label is provably right (Hamerly 2010). distances [n] float32: metric
    distance to the own centre (1 - cos, or squared L2), exact where ``fresh`` [n] is set.
    """

    centers: torch.Tensor
    labels: torch.Tensor
    upper: torch.Tensor
    lower: torch.Tensor
    distances: torch.Tensor
    fresh: torch.Tensor


@dataclass
class _Sums:
    """Per-cluster float64 sums [k, d] and counts [k] of the rows assigned to them."""

    sums: torch.Tensor
    counts: torch.Tensor


def _unsure(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """Rows whose bounds do not prove the label; near ties count as unproven so that fp32
    rounding never decides a label."""
    return upper + 1e-4 * (1.0 + upper + lower.clamp(max=1e6)) > lower


def _score_all(rows: _Rows, centers: torch.Tensor, chunk: int, *,
               with_sums: bool = True) -> tuple[_Assignment, _Sums | None]:
    """One pass scoring every row against all centres, with the per-cluster sums."""
    k, d = centers.shape
    device = centers.device
    scorer = _Scorer.of(centers, rows.metric)
    labels = torch.empty(rows.n, dtype=torch.int64, device=device)
    distances, lower = torch.empty(rows.n, device=device), torch.empty(rows.n, device=device)
    sums = torch.zeros((k, d), dtype=torch.float64, device=device) if with_sums else None
    for start, stop in _chunks(rows.n, chunk):
        block = rows.slice(start, stop)
        labels[start:stop], distances[start:stop], lower[start:stop] = _nearest(block, scorer)
        if sums is not None:
            _add_rows(sums, labels[start:stop], block)
    upper = _euclidean(distances, rows.metric)
    fresh = torch.ones(rows.n, dtype=torch.bool, device=device)
    assignment = _Assignment(centers, labels, upper, lower, distances, fresh)
    return assignment, (_Sums(sums, torch.bincount(labels, minlength=k)) if with_sums else None)


def _recheck(rows: torch.Tensor, scorer: _Scorer, labels: torch.Tensor, lower: torch.Tensor,
             big: torch.Tensor, rest: float):
    """Score rows whose bounds failed against their own centre and the big movers.

    ``lower`` [c] is the bound from before the move; every centre outside ``big`` moved at
    most ``rest``, so it is still at least ``lower - rest`` away. Returns (sure [c] bool,
    labels, distances, lower); the rows that are not sure need a full scoring.
    """
    own = (rows * scorer.weight_rows[labels]).sum(dim=1, keepdim=True)
    if scorer.bias is not None:
        own += scorer.bias[labels].unsqueeze(1)
    big_scores = scorer.scores(rows, big)
    big_scores.masked_fill_(big.unsqueeze(0) == labels.unsqueeze(1), -math.inf)  # own centre once
    top, where = torch.cat([own, big_scores], dim=1).topk(2, dim=1)
    ids = torch.cat([labels.unsqueeze(1), big.expand(len(rows), -1)], dim=1)
    best_labels = ids.gather(1, where[:, :1]).squeeze(1)
    distances = scorer.distances(top[:, 0].contiguous(), rows)
    others = lower - rest
    sure = ~_unsure(_euclidean(distances, scorer.metric), others)
    runner_up = _euclidean(scorer.distances(top[:, 1].contiguous(), rows), scorer.metric)
    return sure, best_labels, distances, torch.minimum(others, runner_up)


def _keeps_label(rows: torch.Tensor, scorer: _Scorer, labels: torch.Tensor, upper: torch.Tensor,
                 lower: torch.Tensor, big: torch.Tensor, rest: float):
    """Rows whose own centre provably stays nearest, from exact big-mover scores alone.

    ``lower`` [c] is the bound from before the move: centres outside ``big`` moved at most
    ``rest``. Returns (keep [c] bool, new lower bound [c] on every centre but the own).
    """
    scores = scorer.scores(rows, big)
    scores.masked_fill_(big.unsqueeze(0) == labels.unsqueeze(1), -math.inf)  # not the own
    nearest_big = _euclidean(scorer.distances(scores.max(dim=1).values, rows), scorer.metric)
    bound = torch.minimum(lower - rest, nearest_big)
    return ~_unsure(upper, bound), bound


def _rescore(rows: torch.Tensor, scorer: _Scorer, labels: torch.Tensor, lower: torch.Tensor,
             big: torch.Tensor, rest: float, chunk: int):
    """Exact new (labels, distances, lower) of rows [c, d] whose bounds failed: against
    their own centre and the big movers, and against all centres where that is not enough.
    Returns them with the number of rows scored against all centres."""
    sure, new, near, bound = _recheck(rows, scorer, labels, lower, big, rest)
    unsure = (~sure).nonzero().squeeze(1)
    for start, stop in _chunks(len(unsure), chunk):
        some = unsure[start:stop]
        new[some], near[some], bound[some] = _nearest(rows[some], scorer)
    return new, near, bound, len(unsure)


def _move_centers(rows: _Rows, before: _Assignment, centers: torch.Tensor, chunk: int,
                  sums: _Sums | None) -> _Assignment:
    """Reassign every row to the moved ``centers`` [k, d], touching few rows when they
    moved little; updates ``sums`` in place for the rows that changed cluster.

    Tiers, cheapest first: (1) Hamerly's bounds (2010), no data read: a row keeps its label
    while its distance to its own centre (bounded from above, grown by that centre's move)
    stays below its bound to the others (shrunk by the largest move of another centre);
    (2) exact scores against the fastest-moving 1/8 of the centres (``big``) only, all
    other centres having moved at most ``rest``; (3) its own centre too; (4) all centres.
    When a probe shows that most rows would reach tier 4, one plain pass does it.
    """
    k = len(centers)
    moved = torch.linalg.vector_norm(centers - before.centers, dim=1)
    labels = before.labels.clone()
    upper = before.upper + moved[labels]
    lower = before.lower - _shrinks(moved, labels)
    if k == 1:
        return _Assignment(centers, labels, upper, lower, before.distances.clone(), before.fresh & (moved == 0))
    failing = _unsure(upper, lower).nonzero().squeeze(1)
    # the big movers: every centre that moved, up to 1/8 of them (late iterations move few)
    n_big = max(1, min(math.ceil(k / _BIG_MOVERS_PER), int((moved > 0).sum())))
    values, order = moved.topk(min(k, n_big + 1))
    big, rest = order[:n_big].contiguous(), float(values[-1]) if n_big < k else 0.0
    scorer = _Scorer.of(centers, rows.metric)
    if len(failing) > rows.n // 2:
        probe = failing[:: max(1, len(failing) // _PROBE_ROWS)]
        block = rows.take(probe)
        *_, n_full = _rescore(block, scorer, labels[probe], before.lower[probe], big, rest, chunk)
        if n_full > _RESCORE_ALL_ABOVE * len(probe):
            assignment, fresh_sums = _score_all(rows, centers, chunk, with_sums=sums is not None)
            if sums is not None:
                sums.sums, sums.counts = fresh_sums.sums, fresh_sums.counts
            return assignment
    distances = before.distances.clone()
    fresh = before.fresh & (moved[labels] == 0)
    # Few, large batches (on a busy CPU every tensor op has a fixed cost); when most rows
    # failed, read them from contiguous slices rather than gathering them.
    dense = len(failing) > rows.n // 2
    for start, stop in _chunks(rows.n if dense else len(failing), max(chunk, _RECHECK_ROWS)):
        index = torch.arange(start, stop, device=labels.device) if dense else failing[start:stop]
        block = rows.slice(start, stop) if dense else rows.take(index)
        keep, lower[index] = _keeps_label(block, scorer, labels[index], upper[index], before.lower[index], big, rest)
        redo = (~keep).nonzero().squeeze(1)
        index, block = index[redo], block[redo]
        old = labels[index]
        new, near, bound, _ = _rescore(block, scorer, old, before.lower[index], big, rest, chunk)
        if sums is not None:
            changed = (new != old).nonzero().squeeze(1)
            _add_rows(sums.sums, old[changed], block[changed], -1.0)
            _add_rows(sums.sums, new[changed], block[changed])
        labels[index], distances[index], lower[index] = new, near, bound
        upper[index] = _euclidean(near, rows.metric)
        fresh[index] = True
    if sums is not None:
        sums.counts = torch.bincount(labels, minlength=k)
    return _Assignment(centers, labels, upper, lower, distances, fresh)


def _shrinks(moved: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, the largest move among the centres other than its own."""
    if len(moved) == 1:
        return torch.zeros(len(labels), device=labels.device)
    values, index = moved.topk(2)
    return torch.where(labels == index[0], values[1], values[0])


def _refresh(rows: _Rows, assignment: _Assignment, chunk: int) -> _Assignment:
    """Make every distance exact (those of rows whose centre moved), tightening ``upper``."""
    stale = (~assignment.fresh).nonzero().squeeze(1)
    distances, upper = assignment.distances.clone(), assignment.upper.clone()
    for start, stop in _chunks(len(stale), max(chunk, _RECHECK_ROWS)):
        index = stale[start:stop]
        block = rows.take(index)
        centers = assignment.centers[assignment.labels[index]]
        distances[index] = _own_distances(block, centers, rows.metric)
        upper[index] = _euclidean(distances[index], rows.metric)
    fresh = torch.ones_like(assignment.fresh)
    return _Assignment(assignment.centers, assignment.labels, upper, assignment.lower, distances, fresh)


# ----------------------------------------------------------------------------- Lloyd


def _new_centers(rows: _Rows, sums: _Sums, assignment: _Assignment, chunk: int):
    """Cluster means (normalised for cosine); empty clusters get the farthest rows.

    Returns (centers [k, d], assignment, with exact distances if they were needed).
    """
    counts = sums.counts
    centers = (sums.sums / counts.clamp(min=1).unsqueeze(1).to(torch.float64)).to(torch.float32)
    empty = (counts == 0).nonzero().squeeze(1)
    if len(empty):
        assignment = _refresh(rows, assignment, chunk)
        farthest = torch.argsort(assignment.distances, descending=True, stable=True)[: len(empty)]
        centers[empty[: len(farthest)]] = rows.take(farthest)
    if rows.metric == "cosine":
        centers = F.normalize(centers, dim=1)
    return centers, assignment


def _lloyd(rows: _Rows, centers: torch.Tensor, *, max_iters: int, tol: float, chunk: int,
           progress: Progress | None, stage: str, final_assign: bool = True):
    """Lloyd iterations from ``centers`` until the relative centre shift is below ``tol``.

    Returns (centers [k, d], the assignment to them with exact distances, or None without
    ``final_assign``, n_iter).
    """
    assignment, sums = _score_all(rows, centers, chunk)
    n_iter = 0
    for n_iter in range(1, max_iters + 1):
        updated, assignment = _new_centers(rows, sums, assignment, chunk)
        shift = torch.linalg.norm(updated - centers) / torch.linalg.norm(centers).clamp(min=1e-12)
        centers = updated
        _report(progress, stage, n_iter, max_iters)
        done = shift.item() < tol or n_iter == max_iters
        if done and not final_assign:
            return centers, None, n_iter
        assignment = _move_centers(rows, assignment, centers, chunk, None if done else sums)
        if done:
            break
    return centers, _refresh(rows, assignment, chunk), n_iter


# ----------------------------------------------------------------------------- seeding


def _score_budget(device: torch.device) -> int:
    return _CUDA_SCORE_ELEMENTS if device.type == "cuda" else _CPU_SCORE_ELEMENTS


def _min_distances(sample: torch.Tensor, others: torch.Tensor, metric: str) -> torch.Tensor:
    """[m] distance from each sample row to the nearest of ``others`` [t, d], in chunks."""
    scorer = _Scorer.of(others, metric)
    out = torch.empty(len(sample), dtype=torch.float32, device=sample.device)
    for start, stop in _chunks(len(sample), max(1, _score_budget(sample.device) // len(others))):
        block = sample[start:stop]
        out[start:stop] = scorer.distances(scorer.scores(block).max(dim=1).values, block)
    return out


def _gains(sample: torch.Tensor, potential: torch.Tensor, candidates: torch.Tensor,
           metric: str) -> torch.Tensor:
    """[t] float64 drop of the k-means potential sum(potential) if each of the candidate
    rows [t, d] were added alone as a centre."""
    scorer = _Scorer.of(candidates, metric)
    gains = torch.zeros(len(candidates), dtype=torch.float64, device=sample.device)
    for start, stop in _chunks(len(sample), max(1, _score_budget(sample.device) // len(candidates))):
        block = sample[start:stop]
        closer = potential[start:stop].unsqueeze(1) - scorer.distances(scorer.scores(block), block)
        gains += closer.clamp_(min=0.0).sum(dim=0, dtype=torch.float64)
    return gains


def _seed_by_d2_rounds(sample: torch.Tensor, k: int, metric: str, generator: torch.Generator,
                       progress: Progress | None) -> torch.Tensor:
    """Greedy k-means++ seeding done in ``INIT_ROUNDS`` rounds (as k-means||, Bahmani et
    al. 2012, with the 2 + log k trials of greedy k-means++).

    sample: [m, d] rows on the compute device. Each round fills about k / INIT_ROUNDS
    slots: slot j draws its trials from the j-th equal slice of the cumulative distance to
    the nearest centre so far (D^2 sampling, stratified; inverse CDF on a float64 cumulative
    sum, so no ``torch.multinomial`` and its 2^24-row limit) and keeps the trial that lowers
    the potential most; one matmul scores all trials. Returns [k, d].
    """
    m = len(sample)
    trials = 2 + int(math.log(k))
    first = int(torch.randint(m, (1,), generator=generator))
    chosen = [torch.tensor([first])]
    potential = _min_distances(sample, sample[first : first + 1], metric)
    have, per_round = 1, max(1, math.ceil((k - 1) / INIT_ROUNDS))
    while have < k:
        cumulative = potential.to(torch.float64).cumsum(dim=0)
        want = min(per_round, k - have)
        uniforms = torch.rand((want, trials), generator=generator, dtype=torch.float64)
        if cumulative[-1].item() <= 0:  # every row sits on a centre: duplicates stand in
            chosen.append(torch.randperm(m, generator=generator)[: k - have])
            break
        targets = ((torch.arange(want, dtype=torch.float64).unsqueeze(1) + uniforms) / want).to(sample.device)
        # right=True never lands on a zero-potential row (an existing centre)
        candidates = torch.searchsorted(cumulative, targets.flatten() * cumulative[-1], right=True)
        candidates = candidates.clamp_(max=m - 1).view(want, trials)
        best = _gains(sample, potential, sample[candidates.flatten()], metric).view(want, trials).argmax(dim=1)
        picked = candidates.gather(1, best.unsqueeze(1)).squeeze(1).unique()
        potential = torch.minimum(potential, _min_distances(sample, sample[picked], metric))
        chosen.append(picked.cpu())
        have += len(picked)
        _report(progress, "init", min(have, k), k)
    return sample[torch.cat(chosen)[:k].to(sample.device)]


def _initial_centers(rows: _Rows, k: int, init: str, generator: torch.Generator,
                     progress: Progress | None) -> torch.Tensor:
    if init == "random":
        return rows.take(torch.randperm(rows.n, generator=generator)[:k].sort().values)
    size = min(rows.n, max(k, INIT_SAMPLE_PER_CLUSTER * k))
    picked = torch.randperm(rows.n, generator=generator)[:size].sort().values
    return _seed_by_d2_rounds(rows.take(picked), k, rows.metric, generator, progress)


def _fit(rows: _Rows, k: int, *, init: str, max_iters: int, tol: float, seed: int,
         chunk: int, progress: Progress | None, stage_prefix: str = ""):
    """Seed and run Lloyd: (centers [k, d], assignment, n_iter) on the compute device."""
    generator = torch.Generator().manual_seed(seed)
    report = None
    if progress is not None:
        report = lambda stage, step, total: progress(stage_prefix + stage, step, total)  # noqa: E731
    centers = _initial_centers(rows, k, init, generator, report)
    return _lloyd(rows, centers, max_iters=max_iters, tol=tol, chunk=chunk, progress=report, stage="lloyd")


# ----------------------------------------------------------------------------- checks


def _check_options(metric: str, init: str, max_iters: int, tol: float) -> None:
    if metric not in ("cosine", "l2"):
        raise ValueError(f"metric must be 'cosine' or 'l2', not {metric!r}")
    if init not in ("kmeans++", "random"):
        raise ValueError(f"init must be 'kmeans++' or 'random', not {init!r}")
    if max_iters < 1:
        raise ValueError(f"max_iters must be at least 1, not {max_iters}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0 (0 runs all max_iters iterations), not {tol}")


def _check_data(x: ArrayLike) -> None:
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise ValueError(f"x must be a torch tensor or a NumPy array, not {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x must be a non-empty [n, d] matrix, got shape {tuple(x.shape)}")


def _check_levels(n: int, n_clusters: Sequence[int], method: str,
                  n_samples: Sequence[int] | None, n_resamples: int) -> None:
    if len(n_clusters) == 0 or any(int(k) < 1 for k in n_clusters):
        raise ValueError(f"n_clusters must be a non-empty list of positive sizes, got {list(n_clusters)}")
    if any(a <= b for a, b in zip(n_clusters, n_clusters[1:])):
        raise ValueError(f"n_clusters must shrink from level to level (e.g. 45000 900 90), got {list(n_clusters)}")
    if n_clusters[0] > n:
        raise ValueError(f"n_clusters[0] = {n_clusters[0]} exceeds the {n} points; ask for at most {n}")
    if method not in ("centers", "resampled"):
        raise ValueError(f"method must be 'centers' or 'resampled', not {method!r}")
    if method == "resampled":
        if n_samples is None or len(n_samples) != len(n_clusters) or any(s < 0 for s in n_samples):
            raise ValueError(
                "method 'resampled' needs n_samples: one count >= 0 per level "
                f"(0 skips resampling there), e.g. {[10, 5, 3][: len(n_clusters)]}; got {n_samples}"
            )
        if n_resamples < 1:
            raise ValueError(f"n_resamples must be at least 1 for method 'resampled', not {n_resamples}")


# ----------------------------------------------------------------------------- public API


def kmeans(x: ArrayLike, k: int, *, metric: Metric = "cosine", init: Init = "kmeans++",
           max_iters: int = 50, tol: float = 1e-4, seed: int = 0, chunk_size: int | None = None,
           device: str | torch.device | None = None, progress: Progress | None = None) -> KMeansResult:
    """Cluster the rows of ``x`` into ``k`` groups with Lloyd's k-means.

    x: [n, d] tensor, NumPy array or memmap (any float dtype; cosine normalises rows).
    k: 1..n clusters. metric: "cosine" (spherical k-means, unit centres) or "l2".
    init: "kmeans++" (greedy k-means++ in rounds, on a random sample of 10 points per
    cluster) or "random" (k distinct rows). max_iters: most Lloyd iterations; tol: stop once
    ||C_new - C_old||_F / ||C_old||_F < tol. seed: makes the run reproducible.
    chunk_size: rows scored per matmul (default from k and the device). device: where to
    compute (default: x's device, the CPU for NumPy). progress: a callable taking (stage,
    step, total), stages "init" and "lloyd", or a tqdm-like bar.
    Returns a KMeansResult on the CPU; its assignments are exact nearest centres.
    """
    _check_data(x)
    _check_options(metric, init, max_iters, tol)
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be between 1 and the number of rows ({x.shape[0]}), not {k}")
    compute = _resolve_device(x, device)
    progress = _as_callback(progress)
    with torch.no_grad(), _fast_matmul(compute):
        rows = _place(x, compute, metric)
        chunk = _chunk_rows(chunk_size, k, compute)
        centers, assignment, n_iter = _fit(
            rows, k, init=init, max_iters=max_iters, tol=tol, seed=seed, chunk=chunk, progress=progress
        )
    return KMeansResult(centers.cpu(), assignment.labels.cpu(), assignment.distances.cpu(), n_iter)


def _closest_per_cluster(labels: torch.Tensor, distances: torch.Tensor, per_cluster: int,
                         k: int) -> torch.Tensor:
    """Indices of the ``per_cluster`` rows closest to their centre in every cluster.

    One ordering by (cluster, distance, row) built from two stable sorts; a row's rank in
    its cluster is its position minus the cluster's start. Returns sorted int64 indices.
    """
    order = torch.argsort(distances, stable=True)
    order = order[torch.argsort(labels[order], stable=True)]
    counts = torch.bincount(labels, minlength=k)
    starts = counts.cumsum(dim=0) - counts
    rank = torch.arange(len(order), device=order.device) - starts[labels[order]]
    return order[rank < per_cluster].sort().values


def _resample(rows: _Rows, assignment: _Assignment, per_cluster: int, *, max_iters: int,
              tol: float, chunk: int) -> _Assignment:
    """One resampling step (Vo et al. 2024): refit on the closest points, reassign all.

    The k-means refit on the ``per_cluster`` rows closest to each centre starts from the
    current centres (its first update is the mean of each cluster's selected rows); then
    every row of the level goes to its nearest refitted centre.
    """
    centers = assignment.centers
    chosen = _closest_per_cluster(assignment.labels, assignment.distances, per_cluster, len(centers))
    picked = _Rows(rows.take(chosen), device=centers.device, metric=rows.metric, unit=True)
    centers, _, _ = _lloyd(picked, centers, max_iters=max_iters, tol=tol, chunk=chunk,
                           progress=None, stage="refit", final_assign=False)
    return _refresh(rows, _move_centers(rows, assignment, centers, chunk, None), chunk)


def _level_seed(seed: int, level: int) -> int:
    return int(np.random.SeedSequence([seed, level]).generate_state(1)[0])


# ----------------------------------------------------------------------------- checkpoints


def _data_fingerprint(rows: _Rows) -> list[float]:
    """Sums over 64 evenly spaced rows: cheap, and different for different data."""
    index = torch.from_numpy(np.unique(np.linspace(0, rows.n - 1, 64).astype(np.int64)))
    taken = rows.take(index).to(torch.float64)
    weights = torch.arange(1, taken.shape[1] + 1, dtype=torch.float64, device=taken.device)
    return [float(taken.sum()), float((taken.abs() * weights).sum())]


class _Checkpoint:
    """One state file in ``directory``, replaced atomically after every finished step."""

    def __init__(self, directory: str | os.PathLike, arguments: dict):
        self.directory = Path(directory)
        self.path = self.directory / _CHECKPOINT_FILE
        self.arguments = arguments

    def load(self) -> dict | None:
        """The saved state, or None when there is none; ValueError if it is for another run."""
        if not self.path.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"{self.path} was written by another version; delete it to start over")
        saved = state["arguments"]
        differ = [key for key in self.arguments if not _same(saved.get(key), self.arguments[key])]
        if differ:
            details = ", ".join(f"{key}: saved {saved.get(key)!r}, now {self.arguments[key]!r}" for key in differ)
            raise ValueError(
                f"checkpoint_dir {self.directory} holds a run with other arguments or data ({details}); "
                "pass the same arguments and data to resume it, or use an empty checkpoint_dir to start over"
            )
        return state

    def save(self, state: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)  # readers see the old or the new state, never half


def _same(saved, current) -> bool:
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        return all(_same(a, b) for a, b in zip(saved, current))
    if isinstance(saved, float) and isinstance(current, float):
        return math.isclose(saved, current, rel_tol=1e-5, abs_tol=1e-6)
    return saved == current


# ----------------------------------------------------------------------------- hierarchy


_ASSIGNMENT_FIELDS = ("centers", "labels", "upper", "lower", "distances", "fresh")


def _run_level(inputs: _Rows, level: int, state: dict, save: Callable[[dict], None], *, k: int,
               per_cluster: int, n_resamples: int, init: str, max_iters: int, tol: float,
               seed: int, chunk_size: int | None, progress: Progress | None) -> None:
    """Cluster one level (k-means, then resampling steps), saving after each step.

    ``state["current"]`` holds the level's assignment on the CPU (with its bounds, so a
    resumed run takes exactly the steps an uninterrupted one takes).
    """
    device = inputs.device
    chunk = _chunk_rows(chunk_size, k, device)
    current = state["current"]
    if current is None or current["level"] != level:
        _, assignment, n_iter = _fit(
            inputs, k, init=init, max_iters=max_iters, tol=tol, seed=_level_seed(seed, level),
            chunk=chunk, progress=progress, stage_prefix=f"level {level} ",
        )
        current = {"level": level, "resamples_done": 0, "n_iter": n_iter}
        current.update({key: getattr(assignment, key).cpu() for key in _ASSIGNMENT_FIELDS})
        state["current"] = current
        save(state)
    assignment = _Assignment(*(current[key].to(device) for key in _ASSIGNMENT_FIELDS))
    for step in range(current["resamples_done"], n_resamples):
        assignment = _resample(inputs, assignment, per_cluster, max_iters=max_iters, tol=tol, chunk=chunk)
        current.update({key: getattr(assignment, key).cpu() for key in _ASSIGNMENT_FIELDS})
        current["resamples_done"] = step + 1
        save(state)
        _report(progress, f"level {level} resample", step + 1, n_resamples)
    state["levels"].append({"centers": current["centers"], "input_assignments": current["labels"],
                            "input_distances": current["distances"], "n_iter": current["n_iter"]})
    state["current"] = None
    save(state)


def _hierarchy(levels: list[dict]) -> HierarchicalKMeansResult:
    """Compose each level's assignment of its inputs into assignments of the points."""
    out = []
    assignments = None
    for level in levels:
        own = level["input_assignments"]
        assignments = own if assignments is None else own[assignments]
        out.append(HierarchicalLevel(level["centers"], assignments, own, level["input_distances"],
                                     level["n_iter"]))
    return HierarchicalKMeansResult(tuple(out))


def hierarchical_kmeans(
    x: ArrayLike, n_clusters: Sequence[int], *, method: Method,
    n_samples: Sequence[int] | None = None, n_resamples: int = 10, metric: Metric = "cosine",
    init: Init = "kmeans++", max_iters: int = 50, tol: float = 1e-4, seed: int = 0,
    chunk_size: int | None = None, device: str | torch.device | None = None,
    checkpoint_dir: str | os.PathLike | None = None, progress: Progress | None = None,
) -> HierarchicalKMeansResult:
    """Bottom-up hierarchical k-means (VDC, Vo et al. 2024).

    x: [n, d] tensor, NumPy array or memmap. n_clusters: clusters per level, strictly
    shrinking (e.g. [45000, 900, 90]); level 0 clusters the points, level l clusters the
    centres of level l-1. method "resampled": after a level's k-means, repeat n_resamples
    times: take the n_samples[l] inputs closest to each centre, refit k-means on them from
    the current centres, reassign all of the level's inputs (n_samples[l] = 0 skips the
    level). metric, init, max_iters, tol, seed, chunk_size, device: as in ``kmeans`` (level
    l seeds from (seed, l)). checkpoint_dir: resume point, see the module docstring.
    progress: a callable taking (stage, step, total), stages "level L init", "level L
    lloyd" and "level L resample", or a tqdm-like bar. Returns a HierarchicalKMeansResult
    on the CPU.
    """
    _check_data(x)
    _check_options(metric, init, max_iters, tol)
    resampled = method == "resampled"
    _check_levels(x.shape[0], n_clusters, method, n_samples, n_resamples)
    compute = _resolve_device(x, device)
    progress = _as_callback(progress)
    with torch.no_grad(), _fast_matmul(compute):
        rows = _place(x, compute, metric)
        arguments = {
            "n_clusters": [int(k) for k in n_clusters], "method": method,
            "n_samples": [int(s) for s in n_samples] if resampled else None,
            "n_resamples": int(n_resamples) if resampled else 0, "metric": metric, "init": init,
            "max_iters": int(max_iters), "tol": float(tol), "seed": int(seed),
            "shape": [rows.n, rows.d], "data": _data_fingerprint(rows),
        }
        checkpoint = _Checkpoint(checkpoint_dir, arguments) if checkpoint_dir is not None else None
        state = checkpoint.load() if checkpoint is not None else None
        if state is None:
            state = {"format": _CHECKPOINT_FORMAT, "arguments": arguments, "levels": [], "current": None}
        save = checkpoint.save if checkpoint is not None else (lambda _state: None)
        for level in range(len(state["levels"]), len(n_clusters)):
            inputs = rows if level == 0 else _Rows(
                state["levels"][-1]["centers"].to(compute), device=compute, metric=metric, unit=True
            )
            _run_level(
                inputs, level, state, save, k=int(n_clusters[level]),
                per_cluster=int(n_samples[level]) if resampled else 0,
                n_resamples=int(n_resamples) if resampled and n_samples[level] > 0 else 0,
                init=init, max_iters=max_iters, tol=tol, seed=seed, chunk_size=chunk_size,
                progress=progress,
            )
    return _hierarchy(state["levels"])
