"""Data access for k-means: rows served on the compute device, chunking, TF32, progress.

``Rows`` reads a tensor in place or a NumPy array / memmap chunk by chunk; ``place`` copies
the data to a CUDA device once when it fits in half the free memory.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from vdc_lake.kernels.kmeans_results import ArrayLike, Progress

# Elements (chunk rows x clusters) of one score matrix: 16 MiB stays in a CPU cache,
# 1 GiB keeps a GPU busy.
_CPU_SCORE_ELEMENTS = 2**22
_CUDA_SCORE_ELEMENTS = 2**28


class Rows:
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


def resolve_device(x: ArrayLike, device: str | torch.device | None) -> torch.device:
    """Where to compute: ``device``, else x's device (the CPU for NumPy)."""
    if device is None:
        return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    return torch.device(device)


def _fits_on_gpu(device: torch.device, n_bytes: int) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return n_bytes <= free // 2


def place(x: ArrayLike, device: torch.device, metric: str) -> Rows:
    """Wrap the input; copy it to a CUDA device once (normalised) when it fits there."""
    if isinstance(x, np.ndarray) and not isinstance(x, np.memmap):
        if x.dtype == np.float32 and x.flags.c_contiguous and x.flags.writeable:
            x = torch.from_numpy(x)
    rows = Rows(x, device=device, metric=metric, unit=False)
    on_device = isinstance(x, torch.Tensor) and x.device == device
    if device.type != "cuda" or on_device or not _fits_on_gpu(device, rows.n * rows.d * 4):
        return rows
    resident = torch.empty((rows.n, rows.d), dtype=torch.float32, device=device)
    step = max(1, 2**26 // max(rows.d, 1))
    for start in range(0, rows.n, step):
        stop = min(rows.n, start + step)
        resident[start:stop] = rows.slice(start, stop)
    return Rows(resident, device=device, metric=metric, unit=True)


def score_budget(device: torch.device) -> int:
    """Elements of one score matrix (rows x centres) on ``device``."""
    return _CUDA_SCORE_ELEMENTS if device.type == "cuda" else _CPU_SCORE_ELEMENTS


def chunk_rows(chunk_size: int | None, k: int, device: torch.device) -> int:
    """Rows scored per matmul against ``k`` centres: ``chunk_size``, or one that fits the budget."""
    if chunk_size is not None:
        return chunk_size
    if device.type == "cuda":
        return int(min(2**18, max(1024, _CUDA_SCORE_ELEMENTS // k)))
    return int(min(2**16, max(1024, _CPU_SCORE_ELEMENTS // k)))


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive blocks of at most ``size`` of n rows."""
    for start in range(0, n, size):
        yield start, min(n, start + size)


@contextlib.contextmanager
def fast_matmul(device: torch.device) -> Iterator[None]:
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


def progress_callback(progress) -> Progress | None:
    """A progress callable from a callable, a tqdm-like bar, or None."""
    if progress is None or not hasattr(progress, "refresh"):
        return progress

    def show(stage: str, step: int, total: int) -> None:
        progress.set_description(stage, refresh=False)
        progress.total, progress.n = total, step
        progress.refresh()

    return show


def report_progress(progress: Progress | None, stage: str, step: int, total: int) -> None:
    """Tell ``progress`` (a callable or None) that ``stage`` is at step of total."""
    if progress is not None:
        progress(stage, step, total)
