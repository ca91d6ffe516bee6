"""Process-parallel map over files (progress shown by vdc_lake.progress, silenced by `quiet`)."""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from vdc_lake.progress import progress_bar

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
    stages its parts in CATALOG.staging (vdc_lake.scale.ray_backend; Ray is imported only then)."""
    if backend == "local":
        return map_ordered
    if backend == "ray":
        from vdc_lake.scale.ray_backend import ray_map_ordered, staging_root

        return functools.partial(ray_map_ordered, staging_dir=staging_root(catalog_path))
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")


class LazyRows(Sequence):
    """The items of a work list made on demand from an Arrow table's rows: make(row as a dict)
    -> item, 8192 rows at a time when iterated. A Python object per row held for a whole run
    (a dict, a path, a tuple) was ~0.6 GB at 10^6 files; this holds the Arrow columns only."""

    def __init__(self, table: pa.Table, make: Callable[[dict[str, Any]], Any]):
        self._table, self._make = table, make

    def __len__(self) -> int:
        return self._table.num_rows

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return [self._make(row) for row in self._table.slice(start, max(stop - start, 0)).to_pylist()]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._make(self._table.slice(index, 1).to_pylist()[0])

    def __iter__(self) -> Iterator[Any]:
        for start in range(0, len(self), 8192):
            yield from self[start:start + 8192]


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
