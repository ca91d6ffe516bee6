"""Ray backend for the per-file stages and predict: `map_ordered`'s drop-in for a cluster.

The work list is cut into shards; each shard is one Ray task that applies the stage's pure
per-file function (``inspect_header``, ``decode_check``, ``execute_op``) to its items and
writes the results as one Parquet part, ``STAGING/<desc>-<key>/part-NNNNN.parquet``. The
driver reads the parts back in shard order and yields the results one by one, so the stage
ingests them with exactly the catalog-writing code of the local backend. Workers never
open the catalog; they only read and write image files and staging parts (and predict's
tasks their vector parts in CATALOG.vectors), so STAGING, the catalog's .vectors folder and
the image roots must be on storage every node mounts at the same path (NFS).

Batched tasks (``batched=True``) call the function once per shard with the shard's item list
and get one result per item back. Shard tasks (``ray_map_shards``, predict's model inference)
call it once per shard with the items and the shard's name, and get one (small) result per
shard back: predict's tasks write their vectors as a vector part beside the catalog themselves
and return only where it is, so vectors never pass through the driver. Tasks may ask for
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
import stat
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from vdc_lake.errors import StageError
from vdc_lake.progress import progress_bar

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
    """Where parts of a catalog's stages are staged: CATALOG.staging next to the catalog; never a
    link (UnsafeCatalogError names it). Made, without following links, when a stage first stages."""
    from vdc_lake.catalog.side_files import side_folder

    return side_folder(catalog_path, ".staging")


def _make_stage_folder(folder: Path) -> None:
    """Make a stage's folder and the staging folder above it, following no link at either (a
    link or a file there is a StageError naming it)."""
    for path in (folder.parent, folder):
        try:
            path.mkdir(parents=path == folder.parent)
        except FileExistsError:
            pass
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise StageError(f"{path} is {'a symbolic link' if path.is_symlink() else 'not a folder'}; "
                             "vdc-lake stages parts only in folders it made: remove it and run the stage again")


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


def run_shard(func: Callable[..., Any], items: list[Any], start: int, path: str, mode: str = "item",
              task_args: dict[str, Any] | None = None) -> int:
    """The Ray task: func over one shard, written as one part; returns the item count.

    mode "item": ``func(item)`` per item; "batched": one call ``func(items)`` that must return
    a list of len(items) results; "shard": one call ``func(items, shard, **task_args)`` whose
    one result is the shard's (shard: ``shard_name``, unique to the shard and its inputs).
    Skips the work when the part exists already (a duplicate or late retry of a shard).
    """
    target = Path(path)
    if not target.exists():
        if mode == "shard":
            results = [func(items, shard_name(target), **(task_args or {}))]
        elif mode == "batched":
            results = _batch_results(func, items)
        else:
            results = [func(item) for item in items]
        write_part(target, start, results)
    return len(items)


def shard_name(part: Path) -> tuple[str, int]:
    """(stage folder name, shard index) of a shard's part: what names the shard's own outputs."""
    return part.parent.name, int(part.stem.split("-")[1])


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
    shards = _map_shards(func, items, "batched" if batched else "item", workers=workers, desc=desc, quiet=quiet,
                         staging_dir=staging_dir, shard_size=shard_size, max_retries=max_retries,
                         num_cpus=num_cpus, num_gpus=num_gpus)
    for _, _, results in shards:
        yield from results


def ray_map_shards(
    func: Callable[..., Any],
    items: Sequence[Any],
    *,
    desc: str,
    staging_dir: str | os.PathLike,
    quiet: bool = False,
    workers: int | None = None,
    shard_size: int | None = None,
    max_retries: int = MAX_RETRIES,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    task_args: dict[str, Any] | None = None,
    still_valid: Callable[[Any], bool] | None = None,
) -> Iterator[tuple[int, int, Any]]:
    """Yield (start, stop, func(items[start:stop], shard, **task_args)) for each shard, in order,
    computed by Ray tasks; for a func whose result per shard is small (where its output went).

    shard: ``(stage folder name, shard index)``, which names the shard's own outputs: the stage
    folder's name holds the key of the inputs, so a re-run with other items never takes them.
    task_args: given to every call but not part of the key (what differs between a run and its
    resume, e.g. predict's run id). still_valid(result): whether a staged result found when
    the map starts can still be used (its outputs are still there); one that cannot is computed
    again. The rest as ray_map_ordered.
    """
    for start, stop, results in _map_shards(func, items, "shard", workers=workers, desc=desc, quiet=quiet,
                                            staging_dir=staging_dir, shard_size=shard_size, max_retries=max_retries,
                                            num_cpus=num_cpus, num_gpus=num_gpus, task_args=task_args,
                                            still_valid=still_valid):
        yield start, stop, results[0]


def _map_shards(func, items, mode: str, *, workers, desc: str, quiet: bool, staging_dir, shard_size, max_retries: int,
                num_cpus, num_gpus, task_args=None, still_valid=None) -> Iterator[tuple[int, int, list[Any]]]:
    """(start, stop, the part's results) per shard, in order: ray_map_ordered's and ray_map_shards' body."""
    if not isinstance(items, Sequence):  # a work list made on demand (parallel.LazyRows) stays lazy:
        items = list(items)              # it is hashed as it is iterated and sliced per shard
    size = shard_size or shard_size_for(len(items))
    # the mode and the resources are not in the key: a function's contract (per item or per
    # shard) is part of it, and the parts hold func's results either way
    folder = Path(staging_dir) / f"{desc or 'map'}-{staging_key(func, items, size)}"
    shards = _shards(len(items), size)
    resources = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    with progress_bar(len(items), desc, quiet=quiet) as bar:
        if shards:
            _make_stage_folder(folder)
            if still_valid is not None:
                _drop_stale_parts(folder, len(shards), still_valid)
            for start, stop, results in _run_shards(func, items, shards, folder, workers, max_retries, mode,
                                                    resources, task_args):
                yield start, stop, results
                bar.update(stop - start)


def _drop_stale_parts(folder: Path, n_shards: int, still_valid: Callable[[Any], bool]) -> None:
    """Remove the staged shard results whose outputs are gone, so that they are computed again."""
    for shard in range(n_shards):
        path = part_path(folder, shard)
        if path.exists() and not all(still_valid(result) for result in read_part(path)):
            path.unlink()


def _run_shards(func, items, shards, folder: Path, workers, max_retries: int, mode: str,
                resources: dict[str, float | None], task_args) -> Iterator[tuple[int, int, list[Any]]]:
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
            pending[shard] = task.remote(func_ref, items[start:stop], start, str(part_path(folder, shard)), mode,
                                         task_args)

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
        if len(results) != (1 if mode == "shard" else stop - start):
            raise StageError(f"{part_path(folder, shard)} holds {len(results)} results, not "
                             f"{1 if mode == 'shard' else stop - start}; delete it and run the stage again")
        if shard == len(shards) - 1:
            # before the last yield: a caller that stops pulling at the last item (zip) never resumes us
            _remove_stage_folders(folder)
        yield start, stop, results


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


# -- the exact near-duplicate search as tiles ------------------------------------------------------
#
# The set's [n, d] rows are cut into blocks of tile_rows; a tile is one block pair (I <= J) and
# one Ray task (a GPU each when the cluster has GPUs), running neighbors.block_pairs_exact on
# its two blocks: the same kernel, precision and re-check as the local search, so the union of
# the tiles' pairs is the local search's result. Workers read the blocks from the staged
# vectors (STAGING/dedup-tiles-<key>/vectors.npy, memory-mapped; shared storage on a cluster)
# and write their pairs to tile-IIIII-JJJJJ.parquet; the driver merges every part once and the
# dedup stage ingests the result in one transaction. <key> hashes the vectors, keys and search
# parameters, so a crashed or interrupted report, run again, recomputes only missing tiles.

TILE_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("distance", pa.float32())])


def range_staging_folder(staging_dir: str | os.PathLike, vectors, keys, *, threshold: float, tile_rows: int,
                         precision: str | None, max_pairs_per_image: int | None, views: int = 1) -> Path:
    """The staging folder of one tiled search: the same inputs give the same folder."""
    import numpy as np

    h = xxhash.xxh3_128()
    h.update(pickle.dumps((vectors.shape, float(threshold), int(tile_rows), precision, max_pairs_per_image)
                          + ((int(views),) if views != 1 else ()), protocol=5))
    h.update(np.ascontiguousarray(keys, np.int64).tobytes())
    for start in range(0, len(vectors), 65_536):
        h.update(np.ascontiguousarray(vectors[start:start + 65_536], np.float32).tobytes())
    return Path(staging_dir) / f"dedup-tiles-{h.hexdigest()[:16]}"


def tile_part_path(folder: Path, i: int, j: int) -> Path:
    return folder / f"tile-{i:05d}-{j:05d}.parquet"


def range_search(vectors, keys, *, threshold: float, staging_dir: str | os.PathLike, tile_rows: int,
                 precision: str | None = None, max_pairs_per_image: int | None = None, views: int = 1,
                 max_retries: int = MAX_RETRIES, quiet: bool = False):
    """Every pair of ``vectors`` under ``threshold`` (neighbors.radius_pairs_exact's result),
    computed as Ray tasks over block pairs of ``tile_rows`` rows.

    vectors [n, d] float32 (prepared: centred / normalised as wanted), keys [n] int64.
    precision: None = neighbors.default_precision of the task's device (bf16 on a GPU).
    views: > 1 for a multi-view set's rows (neighbors.view_pairs_kept, applied in each tile).
    Tiles whose part exists in the staging folder are not recomputed; the folder is removed
    once every part has been merged. Returns a neighbors.PairSet.
    """
    import numpy as np

    from vdc_lake.kernels import neighbors
    vectors = np.ascontiguousarray(vectors, np.float32)
    keys = np.ascontiguousarray(keys, np.int64)
    if tile_rows < 1:
        raise StageError(f"tile_rows must be at least 1, got {tile_rows}")
    folder = range_staging_folder(staging_dir, vectors, keys, threshold=threshold, tile_rows=tile_rows,
                                  precision=precision, max_pairs_per_image=max_pairs_per_image, views=views)
    _make_stage_folder(folder)
    _stage_array(folder / "vectors.npy", vectors)
    _stage_array(folder / "keys.npy", keys)
    starts = range(0, len(vectors), tile_rows)
    tiles = [(i, j) for i in range(len(starts)) for j in range(i, len(starts))]
    missing = [t for t in tiles if not tile_part_path(folder, *t).exists()]
    with progress_bar(len(tiles), "dedup tiles", quiet=quiet) as bar:
        bar.update(len(tiles) - len(missing))
        if missing:
            _run_tiles(folder, missing, tile_rows, threshold, precision, max_pairs_per_image, views, max_retries,
                       bar)
    parts = [_read_tile(tile_part_path(folder, *t)) for t in tiles]
    result = neighbors.merge_pair_sets(parts, max_pairs_per_image)
    _remove_stage_folders(folder)
    return result


def _stage_array(path: Path, array) -> None:
    """Write ``array`` as .npy once (temp name, then rename); a staged file is kept on resume."""
    import numpy as np

    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _run_tiles(folder: Path, tiles: list[tuple[int, int]], tile_rows: int, threshold: float,
               precision: str | None, max_pairs_per_image: int | None, views: int, max_retries: int, bar) -> None:
    ray = _ray()
    connect()
    resources = {"num_gpus": 1} if cluster_gpus() > 0 else {"num_cpus": 1}
    task = ray.remote(max_retries=max_retries, retry_exceptions=False, max_calls=0, **resources)(range_tile)
    window = IN_FLIGHT_PER_CPU * _task_slots(ray, resources)
    queue = iter(tiles)
    pending: dict[Any, tuple[int, int]] = {}
    while True:
        while len(pending) < window and (tile := next(queue, None)) is not None:
            pending[task.remote(str(folder), tile[0], tile[1], tile_rows, threshold, precision,
                                max_pairs_per_image, views)] = tile
        if not pending:
            return
        done, _ = ray.wait(list(pending), num_returns=1)
        tile = pending.pop(done[0])
        try:
            ray.get(done[0])
        except Exception as e:  # noqa: BLE001 - Ray wraps worker errors in several types
            for ref in pending:
                ray.cancel(ref)
            cause = getattr(e, "cause", None) or e
            raise StageError(
                f"{folder.name}: tile {tile} failed ({type(cause).__name__}: "
                f"{str(cause).splitlines()[0] if str(cause) else ''}); finished tiles are kept: fix the cause "
                "and run the report again to resume"
            ) from e
        bar.update()


_BLOCKS: dict[tuple[str, int], Any] = {}  # per worker process: the last blocks read (a row block is reused)


def _block(folder: str, start: int, stop: int):
    import numpy as np

    key = (folder, start)
    if key not in _BLOCKS:
        while len(_BLOCKS) >= 2:
            _BLOCKS.pop(next(iter(_BLOCKS)))
        vectors = np.load(Path(folder) / "vectors.npy", mmap_mode="r")
        keys = np.load(Path(folder) / "keys.npy", mmap_mode="r")
        _BLOCKS[key] = (np.array(vectors[start:stop]), np.array(keys[start:stop]))
    return _BLOCKS[key]


def range_tile(folder: str, i: int, j: int, tile_rows: int, threshold: float, precision: str | None,
               max_pairs_per_image: int | None, views: int = 1) -> int:
    """The Ray task: pairs between blocks i and j (within block i when i == j), written as one
    part; returns the pair count. Skips the work when the part exists (a late retry)."""
    import torch

    from vdc_lake.kernels import neighbors
    target = tile_part_path(Path(folder), i, j)
    if target.exists():
        return -1
    device = "cuda" if torch.cuda.is_available() else "cpu"
    va, ka = _block(folder, i * tile_rows, (i + 1) * tile_rows)
    if i == j:
        pairs = neighbors.block_pairs_exact(va, ka, None, None, threshold=threshold, device=device,
                                            precision=precision, max_pairs_per_image=max_pairs_per_image,
                                            views=views)
    else:
        vb, kb = _block(folder, j * tile_rows, (j + 1) * tile_rows)
        pairs = neighbors.block_pairs_exact(va, ka, vb, kb, threshold=threshold, device=device,
                                            precision=precision, max_pairs_per_image=max_pairs_per_image,
                                            views=views)
    table = pa.table({"a": pairs.a, "b": pairs.b, "distance": pairs.distance}, schema=TILE_SCHEMA)
    table = table.replace_schema_metadata({"truncated": pairs.truncated.tobytes().hex()})
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, target)
    return len(pairs)


def _read_tile(path: Path):
    import numpy as np

    from vdc_lake.kernels.neighbors import PairSet

    table = pq.read_table(path, schema=TILE_SCHEMA)
    meta = (pq.read_schema(path).metadata or {}).get(b"truncated", b"")
    truncated = np.frombuffer(bytes.fromhex(meta.decode()), np.int64) if meta else np.empty(0, np.int64)
    return PairSet(table.column("a").to_numpy(), table.column("b").to_numpy(),
                   table.column("distance").to_numpy(), truncated)
