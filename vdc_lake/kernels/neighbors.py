"""Near-duplicate pairs among descriptor vectors, and one keeper per duplicate group.

Pure array-in / array-out kernels; the dedup stage owns the catalog I/O.

    vectors, mean = prepare_vectors(x, center=True, l2_normalize=True)   # SSCD recipe
    index = build_index(vectors, keys)                  # usearch HNSW, CPU
    pairs = radius_pairs_ann(index, vectors, keys, threshold=0.5)
    pairs = radius_pairs_exact(vectors, keys, threshold=0.5, device="cuda")  # tiled matmul
    pairs = radius_pairs_new(vectors, keys, new_rows, threshold=0.5)  # only pairs with a new row
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

This module is the range search's public face; the code lives in modules of one idea each:
``neighbors_vectors`` (prepare_vectors), ``neighbors_pairs`` (PairSet, exact distances, caps,
merges), ``neighbors_ann`` (usearch), ``neighbors_exact`` (torch) and ``duplicate_groups``
(components, keepers).
"""

from vdc_lake.kernels.duplicate_groups import KEEP_STRATEGIES, KeepStrategy, choose_keepers, connected_components
from vdc_lake.kernels.neighbors_ann import (
    DEFAULT_BATCH_SIZE, DEFAULT_CONNECTIVITY, DEFAULT_DTYPE, DEFAULT_EXPANSION_ADD,
    DEFAULT_EXPANSION_SEARCH, DEFAULT_K, DEFAULT_METRIC, build_index, open_index, radius_pairs_ann, save_index,
)
from vdc_lake.kernels.neighbors_exact import (
    PRECISIONS, block_pairs_exact, default_precision, default_tile_rows, radius_pairs_exact, radius_pairs_new,
    score_error_bound,
)
from vdc_lake.kernels.neighbors_pairs import (
    PairSet, Progress, cap_pairs_per_image, cosine_distances, merge_pair_sets, view_pairs_kept,
)
from vdc_lake.kernels.neighbors_vectors import prepare_vectors

__all__ = [
    "KEEP_STRATEGIES", "KeepStrategy", "choose_keepers", "connected_components",
    "DEFAULT_BATCH_SIZE", "DEFAULT_CONNECTIVITY", "DEFAULT_DTYPE", "DEFAULT_EXPANSION_ADD",
    "DEFAULT_EXPANSION_SEARCH", "DEFAULT_K", "DEFAULT_METRIC", "build_index", "open_index", "radius_pairs_ann",
    "save_index", "PRECISIONS", "block_pairs_exact", "default_precision", "default_tile_rows",
    "radius_pairs_exact", "radius_pairs_new", "score_error_bound", "PairSet", "Progress", "cap_pairs_per_image",
    "cosine_distances", "merge_pair_sets", "view_pairs_kept", "prepare_vectors",
]
