"""Balanced sampling to a budget: allocate it down a cluster tree, then pick the images.

Kernels over NumPy arrays, no catalog and no printing. The budget goes from the top level of
a hierarchical k-means down to the level-0 clusters: at every node it is split among the
node's children, whose capacities are the numbers of images under them, by

- water-filling (VDC's default, Vo et al. 2024): every child gets min(capacity, level) with
  the level raised until the budget is met exactly, so small clusters are kept whole and
  large ones are cut to the same size; or
- largest remainder (Hamilton's method): shares proportional to a weight (the capacity by
  default), capped by the capacity, rounded so the total is exact.

Inside each level-0 cluster the quota is filled at random (seeded) or with the images
closest to the cluster centre. Everything is set-based: the splits of all nodes of a level
are computed together with sorts and cumulative sums, never one cluster at a time.
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np

Allocation = Literal["water-filling", "largest-remainder"]
Strategy = Literal["random", "closest"]


def _as_counts(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D array of integers, got {array.dtype} with shape {array.shape}")
    if (array < 0).any():
        raise ValueError(f"{name} must not be negative")
    return array.astype(np.int64)


def _check_total(total: int, available: int, what: str) -> int:
    if int(total) != total or total < 0:
        raise ValueError(f"total must be a non-negative integer, not {total!r}")
    if total > available:
        raise ValueError(
            f"total {int(total):,} exceeds the {available:,} {what}; ask for at most {available:,}"
        )
    return int(total)


def _rank_in_groups(groups_in_order: np.ndarray, n_groups: int) -> np.ndarray:
    """Position of each element within its group, for elements already sorted by group."""
    sizes = np.bincount(groups_in_order, minlength=n_groups)
    starts = np.cumsum(sizes) - sizes
    return np.arange(len(groups_in_order)) - starts[groups_in_order]


def _give_remainders(base: np.ndarray, groups: np.ndarray, budgets: np.ndarray,
                     eligible: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """Add one unit to the ``budgets - sum(base)`` eligible members of each group with the
    highest ``priority`` (ties: lower index first)."""
    missing = budgets - np.bincount(groups, weights=base, minlength=len(budgets)).astype(np.int64)
    index = np.arange(len(base))
    order = np.lexsort((index, -priority, ~eligible, groups))
    rank = _rank_in_groups(groups[order], len(budgets))
    gets_one = order[(rank < missing[groups[order]]) & eligible[order]]
    out = base.copy()
    out[gets_one] += 1
    return out


def _water_fill_groups(capacities: np.ndarray, groups: np.ndarray, budgets: np.ndarray) -> np.ndarray:
    """Water-filling inside every group at once.

    capacities [m], groups [m] (group id of each member, 0..G-1), budgets [G] (each at most
    its group's capacity). Returns allocations [m] int64: min(capacity, level of the group),
    plus one unit for the members with the largest capacity (ties: lower index) where the
    level does not divide the budget.
    """
    n_groups = len(budgets)
    if len(capacities) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(len(capacities)), capacities, groups))
    sorted_caps, sorted_groups = capacities[order], groups[order]
    sizes = np.bincount(groups, minlength=n_groups)
    starts = np.cumsum(sizes) - sizes
    position = np.arange(len(order)) - starts[sorted_groups]
    # before[j]: capacity of the members sorted below j in the same group
    exclusive = np.cumsum(sorted_caps) - sorted_caps
    before = exclusive - exclusive[np.minimum(starts, len(order) - 1)][sorted_groups]
    unfilled = sizes[sorted_groups] - position
    # with the j smallest members full, the others share what is left evenly
    levels = (budgets[sorted_groups] - before) // unfilled
    # below the level of a member, every larger member is below it too (monotone per group)
    n_full = np.bincount(sorted_groups, weights=levels >= sorted_caps, minlength=n_groups).astype(np.int64)
    group_level = np.full(n_groups, np.iinfo(np.int64).max)
    cut = n_full < sizes
    group_level[cut] = levels[starts[cut] + n_full[cut]]
    base = np.minimum(capacities, group_level[groups])
    return _give_remainders(base, groups, budgets, capacities > base, (capacities - base).astype(np.float64))


def _group_sums(groups: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    sums = np.bincount(groups, weights=values, minlength=n_groups)
    return sums.astype(np.int64) if np.issubdtype(values.dtype, np.integer) else sums


def _largest_remainder_groups(capacities: np.ndarray, groups: np.ndarray, budgets: np.ndarray,
                              weights: np.ndarray) -> np.ndarray:
    """Hamilton's method inside every group at once, with caps.

    Shares are budget * weight / group weight. Members whose share reaches their capacity
    get the capacity, and the rest of the budget is shared again among the others, until
    no share overflows. Then every member gets the floor of its share, and the units left
    go to the largest fractional parts (ties: lower index). Integer weights are handled in
    exact integer arithmetic. Returns [m] int64.
    """
    n_groups = len(budgets)
    exact = np.issubdtype(weights.dtype, np.integer)
    full = np.zeros(len(capacities), dtype=bool)
    while True:
        left = budgets - _group_sums(groups, np.where(full, capacities, 0), n_groups)
        open_weight = _group_sums(groups, np.where(full, 0, weights), n_groups)
        if ((left > 0) & (open_weight <= 0)).any():
            raise ValueError(
                "the budget cannot be met by the clusters with positive weight; "
                "give every cluster that may receive samples a positive weight"
            )
        numerators = np.where(full, 0, left[groups] * weights)
        denominators = np.maximum(open_weight[groups], 1 if exact else np.finfo(float).tiny)
        if exact:
            floors, remainders = np.divmod(numerators, denominators)
            overflow = ~full & (numerators >= capacities * denominators) & (numerators > 0)
        else:
            shares = numerators / denominators
            floors = np.floor(shares).astype(np.int64)
            remainders = shares - floors
            overflow = ~full & (shares >= capacities) & (shares > 0)
        if not overflow.any():
            break
        full |= overflow
    base = np.where(full, capacities, floors)
    return _give_remainders(base, groups, budgets, ~full, remainders.astype(np.float64))


def water_filling(capacities, total: int) -> np.ndarray:
    """Split ``total`` units over clusters as evenly as their capacities allow.

    capacities: [c] non-negative integers (images per cluster). Returns [c] int64 that sums
    to ``total``: each cluster gets min(capacity, level), the largest level that does not
    overshoot, and the units left over go one each to the clusters with the most capacity
    left (ties: lower index). So no cluster stays below the level while another gets more.
    Raises ValueError when total exceeds capacities.sum().
    """
    capacities = _as_counts(capacities, "capacities")
    total = _check_total(total, int(capacities.sum()), "units of capacity")
    groups = np.zeros(len(capacities), dtype=np.int64)
    return _water_fill_groups(capacities, groups, np.array([total], dtype=np.int64))


def largest_remainder(capacities, total: int, weights=None) -> np.ndarray:
    """Split ``total`` units proportionally to ``weights`` with Hamilton's method, capped.

    capacities: [c] non-negative integers. weights: [c] non-negative numbers (default: the
    capacities, which gives stratified proportional sampling). Returns [c] int64 that sums
    to ``total`` and never exceeds a capacity; the share above a cluster's capacity goes to
    the others in proportion. Raises ValueError when total exceeds capacities.sum().
    """
    capacities = _as_counts(capacities, "capacities")
    total = _check_total(total, int(capacities.sum()), "units of capacity")
    if weights is None:
        weights = capacities
    weights = np.asarray(weights)
    if not np.issubdtype(weights.dtype, np.integer):
        weights = weights.astype(np.float64)
    if weights.shape != capacities.shape or not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"weights must be {len(capacities)} finite non-negative numbers, one per cluster")
    groups = np.zeros(len(capacities), dtype=np.int64)
    return _largest_remainder_groups(capacities, groups, np.array([total], dtype=np.int64), weights)


def _check_assignments(assignments) -> np.ndarray:
    array = np.asarray(assignments)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"assignments must be an [n, levels] integer array, got {array.dtype} {array.shape}")
    if len(array) and array.min() < 0:
        raise ValueError("assignments must hold cluster ids >= 0 (-1 or other negatives are not clusters)")
    return array.astype(np.int64, copy=False)


def _parents(child: np.ndarray, parent: np.ndarray, level: int) -> np.ndarray:
    """[k] parent id of every child id (0 for ids no image uses); ValueError if not a tree."""
    parents = np.zeros(int(child.max()) + 1, dtype=np.int64)
    parents[child] = parent
    if not np.array_equal(parents[child], parent):
        bad = int(child[parents[child] != parent][0])
        raise ValueError(
            f"assignments are not a tree: level-{level} cluster {bad} has images in several "
            f"level-{level + 1} clusters; pass the columns of one hierarchical k-means run"
        )
    return parents


def hierarchical_allocation(assignments, total: int, *,
                            allocation: Allocation = "water-filling") -> list[np.ndarray]:
    """Split ``total`` down the cluster tree, top level first.

    assignments: [n, L] integers, column l = cluster id of each image at level l (level 0
    finest, level L-1 top; one column is a flat clustering). Returns one array per level,
    level 0 first: [max id + 1] int64 images to take from each cluster of that level.
    At each node the budget is split among its children with capacity = images under each.
    """
    columns = _check_assignments(assignments)
    total = _check_total(total, len(columns), "images")
    split = _split_function(allocation)
    n_levels = columns.shape[1]
    top = columns[:, -1]
    capacities = np.bincount(top) if len(top) else np.zeros(0, dtype=np.int64)
    quotas = split(capacities, np.zeros(len(capacities), dtype=np.int64), np.array([total]))
    out = [quotas]
    for level in range(n_levels - 2, -1, -1):
        child, parent = columns[:, level], columns[:, level + 1]
        capacities = np.bincount(child)
        parents = _parents(child, parent, level)
        quotas = split(capacities, parents, quotas)
        out.append(quotas)
    return out[::-1]


def _split_function(allocation: str) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    if allocation == "water-filling":
        return _water_fill_groups
    if allocation == "largest-remainder":
        return lambda caps, groups, budgets: _largest_remainder_groups(caps, groups, budgets, caps)
    raise ValueError(f"allocation must be 'water-filling' or 'largest-remainder', not {allocation!r}")


def hierarchical_sample(assignments, total: int, *, allocation: Allocation = "water-filling",
                        strategy: Strategy = "random", distances=None, seed: int = 0) -> np.ndarray:
    """Pick exactly ``total`` distinct images, balanced over a cluster tree.

    assignments: [n, L] integers (see ``hierarchical_allocation``). allocation: how each
    node's budget is split among its children. strategy: inside each level-0 cluster take
    its quota at random ("random", reproducible for ``seed``) or the images nearest to the
    centre ("closest", needs ``distances``: [n] distance of each image to its level-0
    centre; ties by row). Returns sorted [total] int64 row indices into ``assignments``.
    """
    # stable_sample with no earlier selection: the same quotas and the same order inside each cluster
    n = len(_check_assignments(assignments))
    return stable_sample(assignments, total, np.zeros(n, dtype=bool), allocation=allocation, strategy=strategy,
                         distances=distances, seed=seed)


def stable_sample(assignments, total: int, previous, *, allocation: Allocation = "water-filling",
                  strategy: Strategy = "random", distances=None, seed: int = 0) -> np.ndarray:
    """``hierarchical_sample`` that keeps an earlier selection where the quotas allow.

    previous: [n] bool, the rows selected before (and still eligible). The quotas are
    hierarchical_sample's (the same balance over the tree); inside each level-0 cluster the
    previously selected rows come first, so a cluster keeps min(quota, previous) of them and
    the fewest rows enter or leave that exact balance allows. Among the previous rows of a
    cluster, and among the others, the order is the strategy's (random for ``seed``, or
    nearest to the centre). With no previous row this is hierarchical_sample.
    Returns sorted [total] int64 row indices into ``assignments``.
    """
    columns = _check_assignments(assignments)
    n = len(columns)
    total = _check_total(total, n, "images")
    before = np.asarray(previous, dtype=bool)
    if before.shape != (n,):
        raise ValueError(f"previous must be [{n}] booleans, one per row, got shape {before.shape}")
    if strategy not in ("random", "closest"):
        raise ValueError(f"strategy must be 'random' or 'closest', not {strategy!r}")
    quotas = hierarchical_allocation(columns, total, allocation=allocation)[0]
    leaf = columns[:, 0]
    group = leaf * 2 + ~before  # previous rows first inside each leaf
    if strategy == "closest":
        if distances is None:
            raise ValueError("strategy 'closest' needs distances: each image's distance to its level-0 centre")
        key = np.asarray(distances, dtype=np.float64)
        if key.shape != (n,):
            raise ValueError(f"distances must have shape ({n},), got {key.shape}")
        order = np.lexsort((key, group))
    else:
        shuffled = np.random.default_rng(seed).permutation(n)
        order = shuffled[np.argsort(group[shuffled], kind="stable")]
    sorted_leaf = leaf[order]
    rank = _rank_in_groups(sorted_leaf, len(quotas))
    return np.sort(order[rank < quotas[sorted_leaf]])
