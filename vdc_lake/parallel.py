"""Process-parallel map over files with a progress bar that `quiet` silences."""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
from typing import Any, Callable, Iterable, Iterator, Sequence

from tqdm import tqdm

# Below this many items a process pool costs more than it saves.
INLINE_BELOW = 64


def worker_count(requested: int | None) -> int:
    """0 or None means one worker per CPU core available to this process."""
    if requested:
        return max(1, int(requested))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def progress_bar(total: int | None, desc: str, *, unit: str = "file", quiet: bool = False) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, dynamic_ncols=True, leave=False)


def map_ordered(
    func: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    workers: int | None = None,
    desc: str = "",
    quiet: bool = False,
    chunksize: int = 32,
) -> Iterator[Any]:
    """Yield func(item) for each item, in order, using a fork pool when it pays off.

    The caller must not hold a DuckDB connection open across this call (fork safety):
    `Catalog.release()` first.
    """
    n_workers = worker_count(workers)
    with progress_bar(len(items), desc, quiet=quiet) as bar:
        if n_workers == 1 or len(items) < INLINE_BELOW:
            for item in items:
                yield func(item)
                bar.update()
            return
        ctx = mp.get_context("fork")
        with ctx.Pool(n_workers) as pool:
            for result in pool.imap(func, items, chunksize=chunksize):
                yield result
                bar.update()


BACKENDS = ("local", "ray")


def get_mapper(backend: str, *, catalog_path: str | os.PathLike) -> Callable[..., Iterator[Any]]:
    """The ordered map of a backend: `map_ordered` ("local"), or the Ray map ("ray") that
    stages its parts in CATALOG.staging (vdc_lake.ray_backend; Ray is imported only then)."""
    if backend == "local":
        return map_ordered
    if backend == "ray":
        from vdc_lake.ray_backend import ray_map_ordered, staging_root

        return functools.partial(ray_map_ordered, staging_dir=staging_root(catalog_path))
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
