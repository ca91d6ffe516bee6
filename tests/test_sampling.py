"""Allocation (water-filling, largest remainder) and tree sampling: exact, capped, balanced."""

import numpy as np
import pytest

from vdc_lake.kernels.sampling import (
    hierarchical_allocation,
    hierarchical_sample,
    largest_remainder,
    water_filling,
)


def _random_tree(n, sizes, seed):
    """[n, L] assignments of a random tree: level-l cluster c has parent c % sizes[l+1]."""
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 1.5, sizes[0])
    leaf = rng.choice(sizes[0], size=n, p=weights / weights.sum())
    columns = [leaf]
    for size in sizes[1:]:
        columns.append(columns[-1] % size)
    return np.stack(columns, axis=1).astype(np.int64)


# ----------------------------------------------------------------------------- water-filling


@pytest.mark.parametrize(
    "capacities, total, expected",
    [
        ([5, 1, 10, 3], 10, [3, 1, 3, 3]),  # level 3 meets the budget exactly
        ([5, 1, 10, 3], 11, [3, 1, 4, 3]),  # one unit left: the most spare capacity gets it
        ([4, 4, 4], 7, [3, 2, 2]),  # equal spare capacity: the lower index gets it
        ([4, 0, 2], 6, [4, 0, 2]),  # the whole capacity
        ([4, 0, 2], 0, [0, 0, 0]),
        ([7], 3, [3]),
    ],
)
def test_water_filling_hand_made(capacities, total, expected):
    assert water_filling(np.array(capacities), total).tolist() == expected


def test_water_filling_equalises_on_random_capacities():
    rng = np.random.default_rng(0)
    for _ in range(200):
        capacities = rng.integers(0, 50, size=rng.integers(1, 30))
        total = int(rng.integers(0, capacities.sum() + 1))
        got = water_filling(capacities, total)
        assert got.sum() == total and (got >= 0).all() and (got <= capacities).all()
        spare = got < capacities
        if spare.any():  # nobody with spare capacity sits more than one unit below anyone
            assert got.max() <= got[spare].min() + 1


def test_water_filling_rejects_an_over_budget():
    with pytest.raises(ValueError, match="exceeds the 9 units of capacity; ask for at most 9"):
        water_filling(np.array([4, 5]), 10)
    with pytest.raises(ValueError, match="integers"):
        water_filling(np.array([1.5, 2.0]), 1)
    with pytest.raises(ValueError, match="not be negative"):
        water_filling(np.array([3, -1]), 1)


# ----------------------------------------------------------------------------- largest remainder


@pytest.mark.parametrize(
    "capacities, total, weights, expected",
    [
        ([10, 20, 30], 6, None, [1, 2, 3]),  # proportional to the capacities
        ([1, 1, 1], 2, None, [1, 1, 0]),  # equal remainders: lower index first
        ([9, 9, 9], 7, [5, 3, 2], [4, 2, 1]),  # 3.5 2.1 1.4: the .5 gets the unit
        ([1, 10, 10], 6, [10, 1, 1], [1, 3, 2]),  # capped at 1, the rest shared again
        ([1, 10, 10], 6, [10.0, 1.0, 1.0], [1, 3, 2]),  # float weights: same answer
    ],
)
def test_largest_remainder_hand_made(capacities, total, weights, expected):
    weights = None if weights is None else np.array(weights)
    got = largest_remainder(np.array(capacities), total, weights)
    assert got.tolist() == expected


def test_largest_remainder_is_exact_capped_and_proportional():
    rng = np.random.default_rng(1)
    for _ in range(200):
        capacities = rng.integers(0, 40, size=rng.integers(1, 25))
        total = int(rng.integers(0, capacities.sum() + 1))
        got = largest_remainder(capacities, total)
        assert got.sum() == total and (got <= capacities).all()
        shares = total * capacities / max(capacities.sum(), 1)
        assert np.abs(got - shares).max() < 1.0


def test_largest_remainder_rejects_bad_input():
    with pytest.raises(ValueError, match="ask for at most 3"):
        largest_remainder(np.array([1, 2]), 4)
    with pytest.raises(ValueError, match="non-negative numbers"):
        largest_remainder(np.array([1, 2]), 1, np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="positive weight"):
        largest_remainder(np.array([2, 2]), 3, np.array([1.0, 0.0]))


# ----------------------------------------------------------------------------- down the tree


def test_allocation_follows_the_tree():
    # 3 top clusters with 2, 2 and 1 children; leaves 0..4 hold 1, 6, 2, 2, 9 images
    leaf = np.repeat(np.arange(5), [1, 6, 2, 2, 9])
    middle = np.array([0, 0, 1, 1, 2])[leaf]
    top = np.array([0, 1, 2])[middle]
    assignments = np.stack([leaf, middle, top], axis=1)
    level0, level1, level2 = hierarchical_allocation(assignments, 9)
    assert level2.tolist() == [3, 3, 3]  # capacities 7, 4, 9
    assert level1.tolist() == [3, 3, 3]
    assert level0.tolist() == [1, 2, 2, 1, 3]  # 1 + 2 under parent 0 (cap 1, 6), 2 + 1 under 1
    flat = hierarchical_allocation(leaf, 9)  # one column: a flat clustering
    assert flat[0].tolist() == [1, 2, 2, 2, 2]


def test_sample_is_exact_distinct_and_matches_the_allocation():
    assignments = _random_tree(20_000, [300, 30, 5], seed=2)
    for allocation in ("water-filling", "largest-remainder"):
        quotas = hierarchical_allocation(assignments, 7_000, allocation=allocation)
        picked = hierarchical_sample(assignments, 7_000, allocation=allocation, seed=3)
        assert len(picked) == 7_000 and len(np.unique(picked)) == 7_000
        assert (np.diff(picked) > 0).all() and picked.dtype == np.int64
        counts = np.bincount(assignments[picked, 0], minlength=300)
        assert (counts == quotas[0]).all()
        assert (counts <= np.bincount(assignments[:, 0], minlength=300)).all()
        for level in range(3):  # every level's quota is met, and sums to the budget
            assert (np.bincount(assignments[picked, level], minlength=len(quotas[level])) == quotas[level]).all()
            assert quotas[level].sum() == 7_000


def test_closest_strategy_takes_the_nearest_images():
    assignments = _random_tree(5_000, [50, 10], seed=4)
    distances = np.random.default_rng(5).random(5_000)
    picked = hierarchical_sample(assignments, 1_000, strategy="closest", distances=distances)
    chosen = np.zeros(5_000, dtype=bool)
    chosen[picked] = True
    for cluster in range(50):
        inside = assignments[:, 0] == cluster
        if chosen[inside].any() and (~chosen[inside]).any():
            assert distances[inside & chosen].max() <= distances[inside & ~chosen].min()


def test_sampling_is_deterministic_for_a_seed():
    assignments = _random_tree(10_000, [100, 10], seed=6)
    first = hierarchical_sample(assignments, 3_000, seed=7)
    assert np.array_equal(first, hierarchical_sample(assignments, 3_000, seed=7))
    assert not np.array_equal(first, hierarchical_sample(assignments, 3_000, seed=8))


def test_sampling_everything_or_nothing():
    assignments = _random_tree(1_000, [20, 4], seed=9)
    assert np.array_equal(hierarchical_sample(assignments, 1_000), np.arange(1_000))
    assert len(hierarchical_sample(assignments, 0)) == 0


def test_sampling_rejects_bad_requests():
    assignments = _random_tree(100, [10, 2], seed=10)
    with pytest.raises(ValueError, match="exceeds the 100 images; ask for at most 100"):
        hierarchical_sample(assignments, 101)
    with pytest.raises(ValueError, match="needs distances"):
        hierarchical_sample(assignments, 10, strategy="closest")
    with pytest.raises(ValueError, match="strategy must be"):
        hierarchical_sample(assignments, 10, strategy="nearest")
    with pytest.raises(ValueError, match="allocation must be"):
        hierarchical_sample(assignments, 10, allocation="even")
    broken = assignments.copy()
    broken[0, 1] = (broken[0, 1] + 1) % 2  # one image's leaf now has two parents
    with pytest.raises(ValueError, match="not a tree"):
        hierarchical_sample(broken, 10)
