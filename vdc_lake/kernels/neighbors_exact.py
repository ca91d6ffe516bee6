"""Exact range search with torch: tiled matmuls (bf16/tf32/fp32 scores), every score near the
threshold re-checked in float64, so the result is every pair under it."""

import contextlib
import math
from collections.abc import Callable

import numpy as np
import torch

from vdc_lake.kernels.neighbors_pairs import (
    PairSet, Progress, cap_pairs_per_image, check_cap, check_threshold, check_views, merge_pair_sets, view_pairs_kept,
)
from vdc_lake.kernels.neighbors_vectors import check_vectors_keys

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
    vectors, keys = check_vectors_keys(vectors, keys)
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
    vectors_a, keys_a = check_vectors_keys(vectors_a, keys_a)
    same = vectors_b is None
    if not same:
        vectors_b, keys_b = check_vectors_keys(vectors_b, keys_b)
        if vectors_b.shape[1] != vectors_a.shape[1]:
            raise ValueError(f"blocks of {vectors_a.shape[1]} and {vectors_b.shape[1]} dims; pass one set's rows")
    check_threshold(threshold)
    check_cap(max_pairs_per_image)
    check_views(views)
    device, precision, margin, tile = _search_settings(device, precision, vectors_a.shape[1], tile_rows)
    with _matmul_precision(precision, device):
        a = _Block(vectors_a, device, precision)
        b = a if same else _Block(vectors_b, device, precision)
        keys_b_rows = keys_a if same else keys_b
        keep = None if views == 1 else (lambda r, c: view_pairs_kept(keys_a[r], keys_b_rows[c], views))
        found = _search_blocks(a, b, same, threshold, margin, tile, progress, keep)
    ka, kb = keys_a[found[0]], keys_b_rows[found[1]]
    pairs = PairSet(np.minimum(ka, kb), np.maximum(ka, kb), found[2])
    return cap_pairs_per_image(pairs, max_pairs_per_image)


def radius_pairs_new(
    vectors: np.ndarray,
    keys: np.ndarray,
    new_rows: np.ndarray,
    *,
    threshold: float,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    tile_rows: int | None = None,
    max_pairs_per_image: int | None = None,
    views: int = 1,
    progress: Progress | None = None,
) -> PairSet:
    """EVERY pair closer than ``threshold`` that has at least one new row: the new rows
    searched against all rows (an incremental range search; the pairs among the other rows
    are what an earlier search found).

    vectors [n, d], keys [n] unique: the whole set; new_rows [n] bool marks the rows to
    search. Costs m x n products for m new rows (m n d FLOP against n^2 d for
    radius_pairs_exact). The pairs between two new rows are kept once (the one found from
    the smaller key). Other arguments as radius_pairs_exact, whose result restricted to the
    pairs with a new row this equals (pairs, distances, and the cap when merged with the
    old rows' capped pairs by merge_pair_sets).
    Returns a PairSet of keys; progress counts blocks.
    """
    vectors, keys = check_vectors_keys(vectors, keys)
    new_rows = np.asarray(new_rows, bool)
    if new_rows.shape != keys.shape:
        raise ValueError(f"new_rows must be [{len(keys)}] booleans, one per row, got shape {new_rows.shape}")
    check_threshold(threshold)
    check_cap(max_pairs_per_image)
    check_views(views)
    if not new_rows.any():
        return PairSet.empty()
    keys_new = keys[new_rows]
    device, precision, margin, tile = _search_settings(device, precision, vectors.shape[1], tile_rows)

    def keep(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        # a pair of two new rows is met from both sides (and a new row meets itself): keep one
        kept = ~new_rows[c] | (keys_new[r] < keys[c])
        return kept & view_pairs_kept(keys_new[r], keys[c], views) if views > 1 else kept

    with _matmul_precision(precision, device):
        a = _Block(vectors[new_rows], device, precision)
        b = _Block(vectors, device, precision)
        found = _search_blocks(a, b, False, threshold, margin, tile, progress, keep)
    ka, kb = keys_new[found[0]], keys[found[1]]
    order = np.lexsort((np.maximum(ka, kb), np.minimum(ka, kb)))
    pairs = PairSet(np.minimum(ka, kb)[order], np.maximum(ka, kb)[order], found[2][order])
    return cap_pairs_per_image(pairs, max_pairs_per_image)


def _search_settings(device: str | torch.device, precision: str | None, dim: int,
                     tile_rows: int | None) -> tuple[torch.device, str, float, int]:
    """(device, precision, re-check margin, tile edge) of a search, defaults filled in."""
    device = torch.device(device)
    precision = precision or default_precision(device)
    tile = tile_rows or default_tile_rows(device)
    if tile < 1:
        raise ValueError("tile_rows must be at least 1")
    return device, precision, RECHECK_SAFETY * score_error_bound(precision, dim), tile


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
