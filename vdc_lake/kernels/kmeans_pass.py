"""One k-means pass: assign every row to its nearest centre, and keep the assignment up to
date when the centres move (Hamerly's bounds, 2010), with per-cluster float64 sums.

A full pass scores each chunk of rows against all centres with one matmul and keeps the
best two (an N x K matrix never exists). After a move, rows whose bounds prove their label
read no data; the others are rechecked against the centres that moved most, then their own
centre, and only the rest are scored against all centres. Near ties (1e-4) are always
rescored, so labels are exact. Sums add in a fixed order on every device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vdc_lake.kernels.kmeans_rows import Rows, chunks

# Rows whose bounds fail are rescored against their own centre and the fastest-moving
# 1/8 of the centres before falling back to all of them.
_BIG_MOVERS_PER = 8
# Rows rechecked per batch (the row data is gathered, so this bounds the copy).
_RECHECK_ROWS = 2**15
# A pass whose probe of this many rows finds more than half of them needing a full
# scoring scores every row directly.
_PROBE_ROWS = 1024
_RESCORE_ALL_ABOVE = 0.5


@dataclass
class Scorer:
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
    def of(centers: torch.Tensor, metric: str) -> "Scorer":
        if metric == "cosine":
            return Scorer(centers.T.contiguous(), centers, None, metric)
        doubled = 2 * centers
        return Scorer(doubled.T.contiguous(), doubled, -(centers * centers).sum(dim=1), metric)

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


def euclidean(distances: torch.Tensor, metric: str) -> torch.Tensor:
    """|x - c| from the metric's distance (unit vectors: |x - c|^2 = 2 (1 - cos))."""
    return (2.0 * distances if metric == "cosine" else distances).sqrt()


def nearest(rows: torch.Tensor, scorer: Scorer):
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
    lower = euclidean(scorer.distances(top[:, 1].contiguous(), rows), scorer.metric)
    return index[:, 0].contiguous(), scorer.distances(top[:, 0].contiguous(), rows), lower


def _own_distances(rows: torch.Tensor, centers: torch.Tensor, metric: str) -> torch.Tensor:
    """Distance of each row [c, d] to its own centre [c, d], row by row (no matmul)."""
    if metric == "cosine":
        return (1.0 - (rows * centers).sum(dim=1)).clamp_(0.0, 2.0)
    return ((rows - centers) ** 2).sum(dim=1)


def segment_sums(labels: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
        sums.index_add_(0, *segment_sums(labels, rows))  # distinct labels: no atomics race
    else:  # a serial loop in index order on the CPU (index_add_ there costs O(k d) a call)
        sums.index_put_((labels,), rows, accumulate=True)


@dataclass
class Assignment:
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
class Sums:
    """Per-cluster float64 sums [k, d] and counts [k] of the rows assigned to them."""

    sums: torch.Tensor
    counts: torch.Tensor


def _unsure(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """Rows whose bounds do not prove the label; near ties count as unproven so that fp32
    rounding never decides a label."""
    return upper + 1e-4 * (1.0 + upper + lower.clamp(max=1e6)) > lower


def score_all(rows: Rows, centers: torch.Tensor, chunk: int, *,
              with_sums: bool = True) -> tuple[Assignment, Sums | None]:
    """One pass scoring every row against all centres, with the per-cluster sums."""
    k, d = centers.shape
    device = centers.device
    scorer = Scorer.of(centers, rows.metric)
    labels = torch.empty(rows.n, dtype=torch.int64, device=device)
    distances, lower = torch.empty(rows.n, device=device), torch.empty(rows.n, device=device)
    sums = torch.zeros((k, d), dtype=torch.float64, device=device) if with_sums else None
    for start, stop in chunks(rows.n, chunk):
        block = rows.slice(start, stop)
        labels[start:stop], distances[start:stop], lower[start:stop] = nearest(block, scorer)
        if sums is not None:
            _add_rows(sums, labels[start:stop], block)
    upper = euclidean(distances, rows.metric)
    fresh = torch.ones(rows.n, dtype=torch.bool, device=device)
    assignment = Assignment(centers, labels, upper, lower, distances, fresh)
    return assignment, (Sums(sums, torch.bincount(labels, minlength=k)) if with_sums else None)


def _recheck(rows: torch.Tensor, scorer: Scorer, labels: torch.Tensor, lower: torch.Tensor,
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
    sure = ~_unsure(euclidean(distances, scorer.metric), others)
    runner_up = euclidean(scorer.distances(top[:, 1].contiguous(), rows), scorer.metric)
    return sure, best_labels, distances, torch.minimum(others, runner_up)


def _keeps_label(rows: torch.Tensor, scorer: Scorer, labels: torch.Tensor, upper: torch.Tensor,
                 lower: torch.Tensor, big: torch.Tensor, rest: float):
    """Rows whose own centre provably stays nearest, from exact big-mover scores alone.

    ``lower`` [c] is the bound from before the move: centres outside ``big`` moved at most
    ``rest``. Returns (keep [c] bool, new lower bound [c] on every centre but the own).
    """
    scores = scorer.scores(rows, big)
    scores.masked_fill_(big.unsqueeze(0) == labels.unsqueeze(1), -math.inf)  # not the own
    nearest_big = euclidean(scorer.distances(scores.max(dim=1).values, rows), scorer.metric)
    bound = torch.minimum(lower - rest, nearest_big)
    return ~_unsure(upper, bound), bound


def _rescore(rows: torch.Tensor, scorer: Scorer, labels: torch.Tensor, lower: torch.Tensor,
             big: torch.Tensor, rest: float, chunk: int):
    """Exact new (labels, distances, lower) of rows [c, d] whose bounds failed: against
    their own centre and the big movers, and against all centres where that is not enough.
    Returns them with the number of rows scored against all centres."""
    sure, new, near, bound = _recheck(rows, scorer, labels, lower, big, rest)
    unsure = (~sure).nonzero().squeeze(1)
    for start, stop in chunks(len(unsure), chunk):
        some = unsure[start:stop]
        new[some], near[some], bound[some] = nearest(rows[some], scorer)
    return new, near, bound, len(unsure)


def move_centers(rows: Rows, before: Assignment, centers: torch.Tensor, chunk: int,
                 sums: Sums | None) -> Assignment:
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
        return Assignment(centers, labels, upper, lower, before.distances.clone(), before.fresh & (moved == 0))
    failing = _unsure(upper, lower).nonzero().squeeze(1)
    # the big movers: every centre that moved, up to 1/8 of them (late iterations move few)
    n_big = max(1, min(math.ceil(k / _BIG_MOVERS_PER), int((moved > 0).sum())))
    values, order = moved.topk(min(k, n_big + 1))
    big, rest = order[:n_big].contiguous(), float(values[-1]) if n_big < k else 0.0
    scorer = Scorer.of(centers, rows.metric)
    if len(failing) > rows.n // 2:
        probe = failing[:: max(1, len(failing) // _PROBE_ROWS)]
        block = rows.take(probe)
        *_, n_full = _rescore(block, scorer, labels[probe], before.lower[probe], big, rest, chunk)
        if n_full > _RESCORE_ALL_ABOVE * len(probe):
            assignment, fresh_sums = score_all(rows, centers, chunk, with_sums=sums is not None)
            if sums is not None:
                sums.sums, sums.counts = fresh_sums.sums, fresh_sums.counts
            return assignment
    distances = before.distances.clone()
    fresh = before.fresh & (moved[labels] == 0)
    # Few, large batches (on a busy CPU every tensor op has a fixed cost); when most rows
    # failed, read them from contiguous slices rather than gathering them.
    dense = len(failing) > rows.n // 2
    for start, stop in chunks(rows.n if dense else len(failing), max(chunk, _RECHECK_ROWS)):
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
        upper[index] = euclidean(near, rows.metric)
        fresh[index] = True
    if sums is not None:
        sums.counts = torch.bincount(labels, minlength=k)
    return Assignment(centers, labels, upper, lower, distances, fresh)


def _shrinks(moved: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, the largest move among the centres other than its own."""
    if len(moved) == 1:
        return torch.zeros(len(labels), device=labels.device)
    values, index = moved.topk(2)
    return torch.where(labels == index[0], values[1], values[0])


def refresh(rows: Rows, assignment: Assignment, chunk: int) -> Assignment:
    """Make every distance exact (those of rows whose centre moved), tightening ``upper``."""
    stale = (~assignment.fresh).nonzero().squeeze(1)
    distances, upper = assignment.distances.clone(), assignment.upper.clone()
    for start, stop in chunks(len(stale), max(chunk, _RECHECK_ROWS)):
        index = stale[start:stop]
        block = rows.take(index)
        centers = assignment.centers[assignment.labels[index]]
        distances[index] = _own_distances(block, centers, rows.metric)
        upper[index] = euclidean(distances[index], rows.metric)
    fresh = torch.ones_like(assignment.fresh)
    return Assignment(assignment.centers, assignment.labels, upper, assignment.lower, distances, fresh)
