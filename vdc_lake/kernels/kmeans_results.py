"""What k-means returns, and the types its arguments take.

Result dataclasses hold whole tensors on the CPU (see each docstring for shapes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch

Metric = Literal["cosine", "l2"]
Init = Literal["kmeans++", "random"]
Method = Literal["centers", "resampled"]
Progress = Callable[[str, int, int], None]
ArrayLike = torch.Tensor | np.ndarray


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

    @classmethod
    def from_levels(cls, levels: list[dict]) -> HierarchicalKMeansResult:
        """Compose each level's assignment of its inputs into assignments of the points.

        levels: finest first, dicts of centers [k_l, d], input_assignments [m_l],
        input_distances [m_l] and n_iter (what ``run_level`` records).
        """
        out = []
        assignments = None
        for level in levels:
            own = level["input_assignments"]
            assignments = own if assignments is None else own[assignments]
            out.append(HierarchicalLevel(level["centers"], assignments, own, level["input_distances"],
                                         level["n_iter"]))
        return cls(tuple(out))

    def assignment_matrix(self) -> np.ndarray:
        """[n, L] int64: column l is every point's cluster at level l (for sampling)."""
        return np.stack([level.assignments.numpy() for level in self.levels], axis=1)
