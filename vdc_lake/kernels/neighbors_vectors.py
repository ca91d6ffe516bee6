"""Descriptor vectors made ready for a range search: centred, L2-normalised, checked with their keys."""

import numpy as np


def prepare_vectors(
    x: np.ndarray, *, center: bool | np.ndarray, l2_normalize: bool, copy: bool = True,
    chunk_rows: int = 8192,
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


def check_vectors_keys(vectors: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
