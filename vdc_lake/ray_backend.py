"""Ray backend for the per-file stages and predict: `map_ordered`'s drop-in for a cluster.

The work list is cut into shards; each shard is one Ray task that applies the stage's pure
per-file function (``inspect_header``, ``decode_check``, ``execute_op``) to its items and
writes the results as one Parquet part, ``STAGING/<desc>-<key>/part-NNNNN.parquet``. The
driver reads the parts back in shard order and yields the results one by one, so the stage
ingests them with exactly the catalog-writing code of the local backend. Workers never
open the catalog; they only read and write image files and staging parts, so STAGING and
the image roots must be on storage every node mounts at the same path (NFS).

Batched tasks (``batched=True``, predict's model inference) call the function once per
shard with the shard's item list and get one result per item back. Tasks may ask for
resources (``num_cpus``, ``num_gpus``); workers are reused across tasks (``max_calls=0``,
where Ray would start a fresh process for every GPU task), so a model a function caches in
its module stays loaded for the next shard.

Failures: a task whose worker dies (OOM kill, lost node, ``os._exit``) is retried by Ray
up to ``max_retries`` times; a part is written to a temporary name and renamed, so a
retried or duplicated task never leaves half a part and two attempts of one shard write the
same file. ``<key>`` hashes the stage's inputs (function, its bound arguments, the items and
the shard size), so re-running a stage after a crash with the same work list skips every
shard whose part exists. Once every part has been read back the folder is removed, with
the folders of the same stage that crashed runs left under other inputs.

Ray is imported lazily: the local backend never needs it (``pip install 'vdc-lake[scale]'``).
"""

from __future__ import annotations

import functools
import math
import os
import pickle
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from vdc_lake.errors import StageError
from vdc_lake.parallel import progress_bar

# Shards hold at most this many items: ~1 s of work per task keeps Ray's per-task cost
# (~5 ms, more on a busy node) negligible while a retry redoes little.
SHARD_MAX = 1000
# A small work list is still cut into about this many shards so that every CPU gets some.
SHARD_TARGET_COUNT = 64
# Tasks submitted ahead of the one the driver waits for, per CPU of the cluster.
IN_FLIGHT_PER_CPU = 4
MAX_RETRIES = 3
PART_SCHEMA = pa.schema([("item", pa.int64()), ("result", pa.binary())])


def _ray():
    try:
        import ray
    except ImportError as e:
        raise StageError(
            "backend 'ray' needs Ray: pip install 'vdc-lake[scale]' (or pip install 'ray>=2.9'), "
            "or use --backend local"
        ) from e
    return ray


def connect(address: str | None = None) -> None:
    """Join the Ray cluster at ``address`` ("auto", "ray://host:10001"), or start a local
    instance when None and RAY_ADDRESS is unset; a no-op when Ray is already initialised."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")


def cluster_gpus() -> float:
    """GPUs of the Ray cluster, joining or starting it with ``connect`` if not yet done."""
    connect()
    return float(_ray().cluster_resources().get("GPU", 0))


def staging_root(catalog_path: str | os.PathLike) -> Path:
    """Where parts of a catalog's stages are staged: CATALOG.staging next to the catalog."""
    path = Path(catalog_path)
    return path.with_name(path.name + ".staging")


def shard_size_for(n_items: int) -> int:
    """Items per shard: a function of the work list's length only, so a re-run agrees."""
    return max(1, min(SHARD_MAX, math.ceil(n_items / SHARD_TARGET_COUNT)))


def _function_identity(func: Callable) -> tuple:
    """What names a function in the staging key: module.qualname plus bound arguments."""
    if isinstance(func, functools.partial):
        return (_function_identity(func.func), func.args, sorted(func.keywords.items()))
    return (getattr(func, "__module__", "?"), getattr(func, "__qualname__", repr(func)))


def staging_key(func: Callable, items: Sequence[Any], shard_size: int) -> str:
    """Hex hash of a stage's inputs; the same work list gives the same staging folder."""
    h = xxhash.xxh3_128()
    h.update(pickle.dumps((_function_identity(func), shard_size), protocol=5))
    for item in items:
        h.update(pickle.dumps(item, protocol=5))
    return h.hexdigest()[:16]


def part_path(folder: Path, shard: int) -> Path:
    return folder / f"part-{shard:05d}.parquet"


def write_part(path: Path, start: int, results: list[Any]) -> None:
    """Write one shard's results atomically: temp file in the same folder, then rename.

    Results are stored pickled, one row per item: the driver gets back exactly the objects
    the function returned (dataclasses, NumPy arrays, dicts with keys absent or present),
    so its ingest code cannot tell the Ray backend from the local one.
    """
    table = pa.table({
        "item": pa.array(range(start, start + len(results)), pa.int64()),
        "result": pa.array([pickle.dumps(r, protocol=5) for r in results], pa.binary()),
    }, schema=PART_SCHEMA)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_part(path: Path) -> list[Any]:
    table = pq.read_table(path, schema=PART_SCHEMA)
    return [pickle.loads(blob) for blob in table.column("result").to_pylist()]


def run_shard(func: Callable[[Any], Any], items: list[Any], start: int, path: str, batched: bool = False) -> int:
    """The Ray task: func over one shard, written as one part; returns the item count.

    batched: one call ``func(items)`` that must return a list of len(items) results, else
    ``func(item)`` per item. Skips the work when the part exists already (a duplicate or
    late retry of a shard).
    """
    target = Path(path)
    if not target.exists():
        write_part(target, start, _batch_results(func, items) if batched else [func(item) for item in items])
    return len(items)


def _batch_results(func: Callable[[list[Any]], Any], items: list[Any]) -> list[Any]:
    results = func(items)
    if not isinstance(results, list) or len(results) != len(items):
        got = f"a list of {len(results)}" if isinstance(results, list) else type(results).__name__
        raise StageError(f"batched function {_function_name(func)} returned {got} for {len(items)} items; "
                         "it must return a list with one result per item")
    return results


def _function_name(func: Callable) -> str:
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__qualname__", repr(func))


def _shards(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(n, start + size)) for start in range(0, n, size)]


def ray_map_ordered(
    func: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    workers: int | None = None,
    desc: str = "",
    quiet: bool = False,
    staging_dir: str | os.PathLike,
    shard_size: int | None = None,
    max_retries: int = MAX_RETRIES,
    batched: bool = False,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
) -> Iterator[Any]:
    """Yield func(item) for each item, in order, computed by Ray tasks over shards.

    func must be importable on the workers (a module-level function or a functools.partial
    of one). staging_dir: shared folder for the parts (see ``staging_root``). workers: most
    tasks in flight (None or 0: IN_FLIGHT_PER_CPU per task the cluster can run at once,
    the whole cluster busy with some queued). shard_size: items per task (default
    ``shard_size_for``). batched: func takes a shard's list of items and returns a list of
    as many results (checked). num_cpus, num_gpus: Ray resources per task (None: Ray's
    default, 1 CPU). Raises StageError when a shard fails after its retries (finished parts
    stay for the next attempt), or when no node of the cluster has the resources of a task.
    """
    items = list(items)
    size = shard_size or shard_size_for(len(items))
    # batched and the resources are not in the key: the parts hold func's result for each
    # item either way, and a function's contract (per item or per shard) is part of it
    folder = Path(staging_dir) / f"{desc or 'map'}-{staging_key(func, items, size)}"
    shards = _shards(len(items), size)
    resources = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    with progress_bar(len(items), desc, quiet=quiet) as bar:
        if shards:
            folder.mkdir(parents=True, exist_ok=True)
            yield from _run_shards(func, items, shards, folder, workers, max_retries, bar, batched, resources)


def _run_shards(func, items, shards, folder: Path, workers, max_retries: int, bar, batched: bool,
                resources: dict[str, float | None]) -> Iterator[Any]:
    """Submit shards whose part is missing (a window at a time); yield parts in order."""
    missing = [i for i in range(len(shards)) if not part_path(folder, i).exists()]
    to_run = set(missing)
    pending: dict[int, Any] = {}
    if missing:
        ray = _ray()
        connect()
        resources = {k: v for k, v in resources.items() if v is not None}
        slots = _task_slots(ray, resources)
        # max_calls=0: reuse worker processes, also for GPU tasks (Ray's default there is one
        # task per process, which would reload a cached model for every shard)
        task = ray.remote(max_retries=max_retries, retry_exceptions=False, max_calls=0, **resources)(run_shard)
        func_ref = ray.put(func)
        window = workers or IN_FLIGHT_PER_CPU * slots
    queue = iter(missing)

    def submit_more() -> None:
        while len(pending) < window and (shard := next(queue, None)) is not None:
            start, stop = shards[shard]
            pending[shard] = task.remote(func_ref, items[start:stop], start, str(part_path(folder, shard)), batched)

    for shard, (start, stop) in enumerate(shards):
        if shard in to_run:
            submit_more()
            try:
                ray.get(pending.pop(shard))
            except Exception as e:  # noqa: BLE001 - Ray wraps worker errors in several types
                for ref in pending.values():
                    ray.cancel(ref)
                cause = getattr(e, "cause", None) or e  # RayTaskError: the function's own exception
                raise StageError(
                    f"{folder.name}: shard {shard} (items {start}..{stop - 1}) failed "
                    f"({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}); a lost worker is "
                    f"retried {max_retries} times, an error in the stage's function is not; finished shards "
                    "are kept: fix the cause and run the stage again to resume"
                ) from e
        results = read_part(part_path(folder, shard))
        if len(results) != stop - start:
            raise StageError(f"{part_path(folder, shard)} holds {len(results)} results, not {stop - start}; "
                             "delete it and run the stage again")
        if shard == len(shards) - 1:
            # before the last yield: a caller that stops pulling at the last item (zip) never resumes us
            _remove_stage_folders(folder)
        for result in results:
            yield result
            bar.update()


def _task_slots(ray, resources: dict[str, float]) -> int:
    """How many tasks with these resources the cluster's live nodes run at once (at least 1);
    StageError when no node could run one (the tasks would wait forever)."""
    wanted = {"CPU": resources.get("num_cpus", 1), "GPU": resources.get("num_gpus", 0)}
    slots = 0
    for node in ray.nodes():
        if node.get("Alive"):
            have = node.get("Resources", {})
            fits = [int(have.get(k, 0) // v) for k, v in wanted.items() if v]
            slots += min(fits) if fits else int(have.get("CPU", 1))
    if slots == 0:
        raise StageError(f"no live node of the Ray cluster has the {wanted['CPU']:g} CPU and {wanted['GPU']:g} GPU "
                         "that one task asks for: ask for less (predict: --num-workers, --device) or add such a node")
    return slots


def _remove_stage_folders(folder: Path) -> None:
    """Remove a finished map's parts, and those a crashed run of the same stage left under
    other inputs (the catalog's writer lock runs one stage at a time, so none is in use)."""
    stage = folder.name.rsplit("-", 1)[0]
    for stale in folder.parent.glob(f"{stage}-*"):
        if stale.name.rsplit("-", 1)[0] == stage:
            shutil.rmtree(stale, ignore_errors=True)
