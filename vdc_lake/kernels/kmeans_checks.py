"""Argument checks of the k-means entry points: one ValueError that says what to pass."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from vdc_lake.kernels.kmeans_results import ArrayLike


def check_options(metric: str, init: str, max_iters: int, tol: float) -> None:
    if metric not in ("cosine", "l2"):
        raise ValueError(f"metric must be 'cosine' or 'l2', not {metric!r}")
    if init not in ("kmeans++", "random"):
        raise ValueError(f"init must be 'kmeans++' or 'random', not {init!r}")
    if max_iters < 1:
        raise ValueError(f"max_iters must be at least 1, not {max_iters}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0 (0 runs all max_iters iterations), not {tol}")


def check_data(x: ArrayLike) -> None:
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise ValueError(f"x must be a torch tensor or a NumPy array, not {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x must be a non-empty [n, d] matrix, got shape {tuple(x.shape)}")


def check_levels(n: int, n_clusters: Sequence[int], method: str,
                 n_samples: Sequence[int] | None, n_resamples: int | None) -> None:
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
        if n_resamples is None or n_resamples < 1:
            raise ValueError(f"n_resamples must be at least 1 for method 'resampled', not {n_resamples}")
