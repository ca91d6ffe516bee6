"""Process-parallel map over files with a progress bar that `quiet` silences."""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TextIO

import pyarrow as pa
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


# When stderr is not a terminal (a piped log, CI), progress is one plain line at most this often.
LOG_PROGRESS_EVERY_S = 10.0


class LogProgress:
    """tqdm's interface as used here (update, set_description, total, n, refresh), for piped
    output: no carriage returns, one line at most every LOG_PROGRESS_EVERY_S seconds, and none
    for work that ends sooner than that."""

    def __init__(self, total: int | None, desc: str, unit: str, stream: TextIO,
                 every_s: float = LOG_PROGRESS_EVERY_S):
        self.total, self.n, self.desc, self.unit = total, 0, desc, unit
        self._stream, self._every_s = stream, every_s
        self._start = self._last = time.monotonic()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc
        if refresh:
            self.refresh()

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._last >= self._every_s:
            self._last = now
            self._write(now)

    def close(self) -> None:
        now = time.monotonic()
        if now - self._start >= self._every_s:
            self._write(now)

    def _write(self, now: float) -> None:
        elapsed = now - self._start
        of_total = f"/{self.total}" if self.total else ""
        rate = f", {self.n / elapsed:.1f} {self.unit}/s" if elapsed > 0 and self.n else ""
        print(f"{self.desc}: {self.n}{of_total} {self.unit}{rate}, {elapsed:.0f} s", file=self._stream, flush=True)


def progress_bar(total: int | None, desc: str, *, unit: str = "file", quiet: bool = False) -> tqdm | LogProgress:
    """A tqdm bar on a terminal; plain periodic lines when stderr is piped; nothing when quiet."""
    if not quiet and not sys.stderr.isatty():
        return LogProgress(total, desc, unit, sys.stderr)
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
