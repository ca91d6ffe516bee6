"""Predict: run a birder model (or the built-in descriptor) over catalog images; import birder files.

Incremental: only present images without a row for their current version in the target set
are processed, and results are committed every few thousand images, so a killed run resumes
where it stopped with no duplicates.

Decompression bombs are never decoded: images whose stored size exceeds the pixel limit
(sanitize.max_pixels), and images sanitize decided to delete, are skipped with a reason (the
run's summary), and every decode re-checks the header against the limit.

An image a model could not compute (it does not decode) gets a row in predict_failures with
the reason, committed with the results; the next predict of that set leaves those bytes out
(a new version is tried again; so is an I/O failure, and everything with retry_failed).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa

from vdc_lake.catalog.connection import Catalog
from vdc_lake.fileops.confine import OUTSIDE_ROOT, ReadableRoots
from vdc_lake.kernels.descriptor import builtin_vectors_for
from vdc_lake.errors import StageError
from vdc_lake.progress import progress_bar
from vdc_lake.models.options import InferenceOptions, given_options
from vdc_lake.scale.parallel import BACKENDS, LazyRows, get_mapper
from vdc_lake.stages.sanitize import pixels_sql
from vdc_lake.catalog.vectors import VECTOR_TABLES
from vdc_lake.catalog.sets import (
    BUILTIN_SET, batch_rows_setting, missing_images, register_builtin_set, register_embedding_set,
    register_prediction_set, write_vectors,
)

BUILTIN_MODEL = BUILTIN_SET
COMMIT_EVERY_IMAGES = 4096
COMMIT_EVERY_SECONDS = 30.0
ROTATION_ORDER = ["0", "90", "180", "270"]
PREDICT_SHARD_BATCHES = 16  # Ray backend: batches per task at least
FAILURE_EXAMPLES = 5  # failures a summary names ("path: reason"); the catalog keeps them all
NO_REASON = "no result (no reason given)"
KIND_TABLE = {"rotation": "predictions", "descriptor": "embeddings", "embedding": "embeddings"}


@dataclass
class PredictSummary:
    run_id: int
    set_name: str
    kind: str
    todo: int = 0
    written: int = 0
    failed: int = 0
    skipped: int = 0       # blocked by sanitize (a pending delete, or over the pixel limit)
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[str] = field(default_factory=list)
    not_retried: int = 0   # failed on the same bytes before (predict_failures); retry_failed tries them
    seconds: float = 0.0
    images_per_second: float = 0.0
    errors: list[str] = field(default_factory=list)  # the first FAILURE_EXAMPLES failures, "path: reason"


@dataclass
class ImportSummary:
    run_id: int
    set_name: str
    kind: str
    rows: int = 0
    matched: int = 0
    unmatched: int = 0
    unmatched_examples: list[str] = field(default_factory=list)
    duplicates: int = 0    # rows naming an image an earlier row of the file named: the last row counts
    not_finite: int = 0    # rows with NaN or infinite values: not imported
    not_finite_examples: list[str] = field(default_factory=list)


def _rotation_columns(class_names: list[str]) -> list[int] | None:
    """Column order that puts probabilities as [0, 90, 180, 270], or None if names are not angles."""
    if sorted(class_names) == sorted(ROTATION_ORDER):
        return [class_names.index(c) for c in ROTATION_ORDER]
    return None


def _register(catalog: Catalog, set_name: str, kind: str, model: str, dim: int, class_names: list[str],
              preprocessing: dict[str, Any], run_id: int) -> None:
    if kind == "rotation":
        register_prediction_set(catalog, set_name, kind="rotation", model=model, class_names=class_names,
                                preprocessing=preprocessing, run_id=run_id)
    else:
        register_embedding_set(catalog, set_name, kind=kind, model=model, dim=dim, preprocessing=preprocessing,
                               run_id=run_id)


def _builtin_item(item: tuple[str, int], *, max_pixels: int) -> np.ndarray | str:
    """The builtin descriptor of (path, version), or why it could not be computed; the version
    keys Ray's staging (see _infer_shard)."""
    from vdc_lake.fileops.probe import decode_check

    result = decode_check(item[0], max_pixels=max_pixels, with_descriptor=True)
    if result.descriptor is not None:
        return result.descriptor
    return result.error or f"not decoded: more than the pixel limit of {max_pixels:,}"


def _skip_blocked(catalog: Catalog, work: pa.Table, max_pixels: int, summary: PredictSummary) -> pa.Table:
    """work without the images nobody should decode: stored size over max_pixels (a
    decompression bomb, sanitized or not, every frame counted), a pending sanitize delete (corrupt,
    truncated, not an image, ...) or a file outside the scanned roots (never read). Each skipped
    image is counted in summary by its reason."""
    pixels = pixels_sql("i")
    indexed = work.append_column("row", pa.array(np.arange(work.num_rows, dtype=np.int64)))
    with catalog.registered("predict_work", indexed):
        blocked = catalog.arrow(
            f"""
            SELECT w.row, w.path,
                   CASE WHEN {pixels} > $max_pixels THEN 'decompression_bomb'
                        ELSE 'sanitize delete: ' || a.rules END AS reason,
                   CASE WHEN {pixels} > $max_pixels
                        THEN format('{{:,}} pixels ({{}}x{{}}{{}}) exceed the limit of {{:,}}', {pixels},
                                    i.width, i.height, CASE WHEN {pixels} > i.width::BIGINT * i.height
                                    THEN format(', {{}} frames', i.n_frames) ELSE '' END, $max_pixels)
                        ELSE a.reason END AS detail
            FROM predict_work AS w
            JOIN images AS i ON i.image_id = w.image_id
            LEFT JOIN (SELECT image_id, version, rules, reason FROM sanitize_actions WHERE action = 'delete') AS a
                ON a.image_id = w.image_id AND a.version = w.version
            WHERE {pixels} > $max_pixels OR a.image_id IS NOT NULL
            ORDER BY w.row
            """,
            {"max_pixels": int(max_pixels)},
        ).to_pylist()
    blocked = _outside_roots(catalog, work, {row["row"] for row in blocked}) + blocked
    blocked.sort(key=lambda row: row["row"])
    if not blocked:
        return work
    summary.skipped = len(blocked)
    for row in blocked:
        summary.skipped_reasons[row["reason"]] = summary.skipped_reasons.get(row["reason"], 0) + 1
    summary.skipped_examples = [f"{row['path']}: skipped, {row['reason']} ({row['detail']})" for row in blocked[:10]]
    keep = np.ones(work.num_rows, bool)
    keep[[row["row"] for row in blocked]] = False
    return work.filter(pa.array(keep))


def _outside_roots(catalog: Catalog, work: pa.Table, blocked: set[int]) -> list[dict[str, Any]]:
    """_skip_blocked's rows for the work rows (not in `blocked` already) whose file may not be read:
    outside the scanned roots (confine.ReadableRoots)."""
    readable = ReadableRoots.of(catalog)
    rows = []
    for row, path in enumerate(work.column("path").to_pylist()):
        if row not in blocked and (why := readable.path_error(path)) is not None:
            rows.append({"row": row, "path": path, "reason": OUTSIDE_ROOT, "detail": why})
    return rows


def _skip_failed_before(catalog: Catalog, work: pa.Table, set_name: str, summary: PredictSummary) -> pa.Table:
    """work without the images whose current version failed in set_name before (their newest
    failure not transient: the bytes did not decode, and they are the same bytes); counted in
    summary.not_retried."""
    indexed = work.append_column("row", pa.array(np.arange(work.num_rows, dtype=np.int64)))
    with catalog.registered("predict_work", indexed):
        rows = catalog.arrow(
            """
            SELECT w.row
            FROM predict_work AS w
            JOIN predict_failures AS f ON f.image_id = w.image_id AND f.version = w.version AND f.set_name = ?
            QUALIFY row_number() OVER (PARTITION BY w.row ORDER BY f.run_id DESC) = 1 AND NOT f.transient
            """,
            [set_name],
        ).column("row").to_numpy()
    if not len(rows):
        return work
    summary.not_retried = len(rows)
    keep = np.ones(work.num_rows, bool)
    keep[rows] = False
    return work.filter(pa.array(keep))


def _todo(catalog: Catalog, table: str, set_name: str, max_pixels: int, retry_failed: bool,
          summary: PredictSummary) -> pa.Table:
    """(image_id, version, path) the set misses, less the images blocked by sanitize or the pixel
    limit and, unless retry_failed, those that failed on the same bytes before."""
    work = _skip_blocked(catalog, missing_images(catalog, table, set_name), max_pixels, summary)
    if not retry_failed:
        work = _skip_failed_before(catalog, work, set_name, summary)
    summary.todo = work.num_rows
    return work


def _is_io_failure(error: str) -> bool:
    """True for a failure to open or read the file (it says nothing about the bytes): decode_check's
    missing / unreadable, or an OSError with an errno from the decoding workers."""
    return error.startswith(("missing:", "unreadable:")) or "[Errno " in error


def _failure_table(run_id: int, set_name: str, ids: np.ndarray, versions: np.ndarray,
                   errors: list[str]) -> pa.Table:
    """predict_failures rows: one per (image_id, version) with its reason (ids, versions: [n])."""
    return pa.table({
        "run_id": pa.array(np.full(len(errors), run_id, np.int64)),
        "set_name": pa.array([set_name] * len(errors), pa.string()),
        "image_id": pa.array(np.asarray(ids, np.int64)),
        "version": pa.array(np.asarray(versions, np.int32)),
        "error": pa.array(errors, pa.string()),
        "transient": pa.array([_is_io_failure(e) for e in errors], pa.bool_()),
    })


def _note_failures(summary: PredictSummary, paths: list[str], errors: list[str]) -> None:
    """Count failures in summary, naming the first FAILURE_EXAMPLES as "path: reason"."""
    summary.failed += len(errors)
    room = max(FAILURE_EXAMPLES - len(summary.errors), 0)
    summary.errors += [f"{path}: {error}" for path, error in zip(paths[:room], errors[:room])]


@dataclass(frozen=True)
class ModelSpec:
    """A model and how to run it: all a Ray worker needs (picklable, hashable; Ray's staging
    key hashes it, so changing the model or an option starts a fresh staging folder)."""

    model: str
    tag: str | None
    size: int | None
    kind: str
    options: InferenceOptions

    def load(self) -> Any:
        from vdc_lake.models.loading import load_model

        return load_model(self.options.models_dir, self.model, tag=self.tag, device=self.options.device,
                          size=None if self.size is None else (self.size, self.size))


# The model of the last spec a Ray worker process ran: loaded once per process, not per shard.
_WORKER_MODELS: dict[ModelSpec, Any] = {}


def _per_image(batches: Iterable[Any], order: list[int] | None) -> Iterator[np.ndarray | str]:
    """run_inference's batches as one result per path, in order: the float32 output vector
    (rotation columns put in ROTATION_ORDER by `order`) or the reason it could not be decoded."""
    for batch in batches:
        outputs = batch.outputs[:, order] if order is not None else batch.outputs
        results: dict[int, np.ndarray | str] = dict(zip(batch.indices.tolist(), outputs))
        results.update(zip(batch.failed.tolist(), batch.errors))
        for index in sorted(results):  # a batch is a contiguous run of positions
            yield results[index]


def _rotation_order(loaded: Any, kind: str) -> list[int] | None:
    return _rotation_columns(loaded.class_names) if kind == "rotation" else None


@dataclass
class ShardPart:
    """What a Ray task of predict hands back for its shard (never the vectors): the positions in
    the shard whose vectors it wrote as one staged vector part, the positions that failed with
    their reasons, and that part's file name in the set's folder (None: no vector), rows and bytes."""

    done: np.ndarray                  # int64 [rows], ascending
    failed: list[int]
    errors: list[str]
    file: str | None
    rows: int = 0
    bytes: int = 0


def _infer_shard(spec: ModelSpec, table: str, folder: str, items: list[tuple[int, str, int]],
                 shard: tuple[str, int], *, run_id: int) -> ShardPart:
    """Ray task body for a shard of (image_id, path, version): run the model (loaded once per
    worker process), write the vectors as a staged part in `folder` (the set's folder in
    CATALOG.vectors, shared with the workers) under run_id, and return the ShardPart. shard: the
    map's (stage folder, shard index), which names the staged part; the versions are in the
    items so that the stage folder's key changes when a file does, and a part staged from older
    bytes is never adopted."""
    from vdc_lake.catalog.vectors import staged_name, write_staged_part
    from vdc_lake.models.inference import run_inference

    if spec not in _WORKER_MODELS:
        _WORKER_MODELS.clear()  # one model per worker process: free the previous one
        _WORKER_MODELS[spec] = spec.load()
    loaded = _WORKER_MODELS[spec]
    batches = run_inference(loaded, [path for _, path, _ in items], spec.options, kind=spec.kind)
    results = list(_per_image(batches, _rotation_order(loaded, spec.kind)))
    done = [i for i, r in enumerate(results) if isinstance(r, np.ndarray)]
    failed = [i for i, r in enumerate(results) if not isinstance(r, np.ndarray)]
    errors = [results[i] if isinstance(results[i], str) and results[i] else NO_REASON for i in failed]
    name = staged_name(*shard)
    written = None
    if done:
        written = write_staged_part(folder, name, table, run_id, np.array([items[i][0] for i in done], np.int64),
                                    np.array([items[i][2] for i in done], np.int32),
                                    np.stack([results[i] for i in done]))
    rows, size = written or (0, 0)
    return ShardPart(np.asarray(done, np.int64), failed, errors, name if written else None, rows, size)


def _ray_device(device: str) -> str:
    """Device of predict's Ray tasks: "cuda" when asked for, or for "auto" when the cluster
    has a GPU; else "cpu". Ray picks the task's GPU, so an index in "cuda:N" is dropped."""
    if device == "auto":
        from vdc_lake.scale.ray_backend import cluster_gpus

        return "cuda" if cluster_gpus() > 0 else "cpu"
    return "cuda" if device.startswith("cuda") else device


def _predict_on_ray(catalog: Catalog, spec: ModelSpec, work: pa.Table, summary: PredictSummary,
                    commit_every: int, quiet: bool) -> None:
    """Compute spec's model for the work rows in batched Ray tasks (1 GPU each on cuda,
    max(1, num_workers) CPUs for the decoding processes), each writing its shard's vectors as a
    staged part in the set's folder; adopt the parts and record the failures in shard order,
    committing every `commit_every` images and every COMMIT_EVERY_SECONDS. The vectors never
    pass through this process (but where a resumed run adopts a part an earlier run staged)."""
    from vdc_lake.catalog.vectors import remove_orphans, set_folder, staged_part_exists
    from vdc_lake.scale.ray_backend import ray_map_shards, shard_size_for, staging_root

    table, name = KIND_TABLE[spec.kind], summary.set_name
    folder = set_folder(catalog.path, table, name, create=True)
    items = LazyRows(work.select(["image_id", "path", "version"]),
                     lambda r: (r["image_id"], r["path"], r["version"]))
    # Whole batches, and at least PREDICT_SHARD_BATCHES of them: each shard starts its decoding
    # processes, and the model's first batches are slow, so small shards would pay that often.
    batch_size = spec.options.batch_size
    batches = max(PREDICT_SHARD_BATCHES, math.ceil(shard_size_for(len(items)) / batch_size))
    shards = ray_map_shards(
        partial(_infer_shard, spec, table, str(folder)), items, desc="predict", quiet=quiet,
        staging_dir=staging_root(catalog.path), shard_size=batches * batch_size,
        num_cpus=max(1, spec.options.num_workers), num_gpus=1 if spec.options.device == "cuda" else 0,
        task_args={"run_id": summary.run_id},
        still_valid=lambda part: part.file is None or staged_part_exists(catalog.path, table, name, part.file))
    waiting: list[tuple[int, ShardPart]] = []
    images, last_commit = 0, time.monotonic()
    for start, stop, part in shards:
        waiting.append((start, part))
        images += stop - start
        if images >= commit_every or time.monotonic() - last_commit > COMMIT_EVERY_SECONDS:
            _commit_parts(catalog, summary, table, work, waiting)
            waiting, images, last_commit = [], 0, time.monotonic()
    _commit_parts(catalog, summary, table, work, waiting)
    remove_orphans(catalog.con, catalog.path)  # what the tasks staged for maps that cannot resume any more
    catalog.release()


def _commit_parts(catalog: Catalog, summary: PredictSummary, table: str, work: pa.Table,
                  parts: list[tuple[int, ShardPart]]) -> None:
    """One transaction: adopt each shard's staged part (checked against the work rows it names)
    and record the shards' failures. parts: (the shard's first work row, its ShardPart)."""
    from vdc_lake.catalog.sets import set_dim
    from vdc_lake.catalog.vectors import adopt_staged_part

    if not parts:
        return
    ids, versions = work.column("image_id").to_numpy(), work.column("version").to_numpy()
    failed = np.array([start + i for start, part in parts for i in part.failed], np.int64)
    errors = [error for _, part in parts for error in part.errors]
    written = 0
    with catalog.transaction():
        dim = set_dim(catalog, table, summary.set_name)
        for start, part in parts:
            if part.file is not None:
                rows = start + part.done
                written += adopt_staged_part(catalog, table, summary.set_name, part.file, run_id=summary.run_id,
                                             image_ids=ids[rows], versions=versions[rows], dim=dim, size=part.bytes)
        if len(failed):
            catalog.insert_arrow("predict_failures", _failure_table(summary.run_id, summary.set_name, ids[failed],
                                                                    versions[failed], errors))
    catalog.release()
    summary.written += written
    _note_failures(summary, work.column("path").take(pa.array(failed[:FAILURE_EXAMPLES])).to_pylist(), errors)


def _ingest(catalog: Catalog, kind: str, work: pa.Table, results: Iterable[np.ndarray | str | None],
            summary: PredictSummary, commit_every: int) -> None:
    """Write one result per work row, in order, to the set: a vector is written, anything else
    (an error string, or None) is a failure, recorded in predict_failures with its reason and
    counted in summary. Commits every `commit_every` results and every COMMIT_EVERY_SECONDS,
    releasing the catalog in between."""
    done: list[int] = []
    vectors: list[np.ndarray] = []
    failed: list[int] = []
    errors: list[str] = []
    last_commit = time.monotonic()
    for row, result in enumerate(results):
        if isinstance(result, np.ndarray):
            done.append(row)
            vectors.append(result)
        else:
            failed.append(row)
            errors.append(result if isinstance(result, str) and result else NO_REASON)
        waiting = len(done) + len(failed)
        if waiting >= commit_every or (waiting and time.monotonic() - last_commit > COMMIT_EVERY_SECONDS):
            _commit(catalog, summary, kind, work, done, vectors, failed, errors)
            done, vectors, failed, errors, last_commit = [], [], [], [], time.monotonic()
    _commit(catalog, summary, kind, work, done, vectors, failed, errors)


def _commit(catalog: Catalog, summary: PredictSummary, kind: str, work: pa.Table, done: list[int],
            vectors: list[np.ndarray], failed: list[int], errors: list[str]) -> None:
    """One transaction: the vectors of work rows `done` and the failures (reasons `errors`) of rows `failed`."""
    if not done and not failed:
        return
    written, lost = work.take(pa.array(done, pa.int64())), work.take(pa.array(failed, pa.int64()))
    with catalog.transaction():
        if done:
            write_vectors(catalog, KIND_TABLE[kind], summary.set_name, summary.run_id,
                          written.column("image_id").to_numpy(), written.column("version").to_numpy(),
                          np.stack(vectors))
        if failed:
            catalog.insert_arrow("predict_failures", _failure_table(
                summary.run_id, summary.set_name, lost.column("image_id").to_numpy(),
                lost.column("version").to_numpy(), errors))
    catalog.release()
    summary.written += len(done)
    _note_failures(summary, lost.column("path").to_pylist(), errors)


@dataclass(frozen=True)
class PredictRequest:
    """One model of a predict pass: birder weights name (or 'builtin'), kind, and optionally its
    tag, result set name (default: the model's name) and input size (default: the model's)."""

    model: str
    kind: str
    tag: str | None = None
    set_name: str | None = None
    size: int | None = None


def _check_request(request: PredictRequest) -> None:
    if request.kind not in KIND_TABLE:
        raise StageError(f"unknown kind {request.kind!r}: use rotation, descriptor or embedding")
    if request.model == BUILTIN_MODEL and request.kind != "descriptor":
        raise StageError("the builtin model only computes descriptors: use --kind descriptor")
    if request.model == BUILTIN_MODEL and (request.tag is not None or request.size is not None):
        given = " and ".join(o for o, v in (("--tag", request.tag), ("--size", request.size)) if v is not None)
        raise StageError(f"the builtin descriptor takes no {given} (it has no weights and a fixed thumbnail "
                         f"size): leave {given} out, or give '' for it in a pass with other models")
    if "/" in request.model or os.sep in request.model or request.model.endswith(".pt"):
        folder, name = os.path.split(request.model)
        stem = name[:-3] if name.endswith(".pt") else name
        where = f" --models-dir {folder}" if folder else ""
        raise StageError(f"--model takes a weights name, not a file: use --model {stem}{where} "
                         "(the checkpoint is MODELS_DIR/NAME.pt)")


def _bundled_backend() -> str:
    from vdc_lake.config.loader import bundled_defaults

    return str(bundled_defaults()["scale"]["backend"])


def _run_params(request: PredictRequest, name: str, options: InferenceOptions, retry_failed: bool,
                rotation_set: str | None, pass_sets: list[str]) -> dict[str, Any]:
    """A predict run's params: the same keys whether the set was computed alone or in a pass."""
    return {"model": request.model, "tag": request.tag, "kind": request.kind, "set": name, "size": request.size,
            "device": options.device, "batch_size": options.batch_size, "amp": options.amp,
            "amp_dtype": options.amp_dtype, "compile": options.compile, "max_pixels": options.max_pixels,
            "decode": options.decode, "draft_min_size": options.draft_min_size, "retry_failed": retry_failed,
            "rotate_threshold": options.rotate_threshold if rotation_set is not None else None,
            "rotation_set": rotation_set, "pass_sets": pass_sets}


def predict(catalog: Catalog, *, model: str, kind: str, tag: str | None = None, set_name: str | None = None,
            size: int | None = None, options: InferenceOptions | None = None, commit_every: int = COMMIT_EVERY_IMAGES,
            quiet: bool = False, backend: str | None = None, retry_failed: bool = False, **given: Any) -> PredictSummary:
    """Compute `kind` outputs of `model` for every present image missing them; returns counts.

    options: how the model runs (InferenceOptions; None: the bundled config's), with the option
    values `given` on top (device="cpu", batch_size=4, ...). backend: "local" or "ray" (None:
    the bundled [scale] backend).
    Images over options.max_pixels or with a pending sanitize delete are skipped
    (summary.skipped, by reason); no decode exceeds the limit.
    An image that fails (does not decode) is recorded in predict_failures with its reason
    (summary.failed, summary.errors); a later predict of the set leaves out the images that
    failed on their current bytes (summary.not_retried) unless `retry_failed`.

    Results are committed every `commit_every` images (and every 30 s), so a killed run loses
    at most that much work and a re-run continues with the images still missing.
    backend "ray" runs the model in batched Ray tasks (a GPU each when the device is, or
    resolves to, cuda) and the builtin descriptor in per-file Ray tasks; this process only
    reads the work list and writes the results, as with "local". A birder model on "local" is
    a decode pass with one model (predict_pass), so it computes what a pass with others does.
    """
    request = PredictRequest(model, kind, tag, set_name, size)
    _check_request(request)
    backend = backend or _bundled_backend()
    if backend not in BACKENDS:
        raise StageError(f"unknown backend {backend!r}: use {' or '.join(BACKENDS)}")
    options = given_options(options, given)
    if model != BUILTIN_MODEL and backend == "local":
        return predict_pass(catalog, [request], options, commit_every=commit_every, quiet=quiet,
                            retry_failed=retry_failed)[0]
    return _predict_alone(catalog, request, options, backend=backend, commit_every=commit_every, quiet=quiet,
                          retry_failed=retry_failed)


def _predict_alone(catalog: Catalog, request: PredictRequest, options: InferenceOptions, *, backend: str,
                   commit_every: int, quiet: bool, retry_failed: bool) -> PredictSummary:
    """The builtin descriptor (its own decode), or a model on Ray: one set, one run."""
    model, kind, size = request.model, request.kind, request.size
    builtin = model == BUILTIN_MODEL
    max_pixels = options.max_pixels
    loaded = spec = None
    if not builtin:
        # no turning alone; Ray picks the device of each task
        ray_options = replace(options, device=_ray_device(options.device), rotate_threshold=None)
        spec = ModelSpec(model, request.tag, size, kind, ray_options)
        # here only for its name, classes and preprocessing
        loaded = replace(spec, options=replace(ray_options, device="cpu")).load()
    name = request.set_name or (BUILTIN_MODEL if builtin else loaded.name)
    params = _run_params(request, name, options, retry_failed, None, [name])
    with catalog.run("predict", params) as run_id:
        started = time.monotonic()
        summary = PredictSummary(run_id, name, kind)
        if builtin:
            dim = register_builtin_set(catalog, run_id, name)  # a one-view set made before issue 15 stays one-view
        else:
            _register_model_set(catalog, name, kind, loaded, run_id)
        work = _todo(catalog, KIND_TABLE[kind], name, max_pixels, retry_failed, summary)
        if work.num_rows and not builtin:
            catalog.release()  # while the tasks run
            _predict_on_ray(catalog, spec, work, summary, commit_every, quiet)
        elif work.num_rows:
            items = LazyRows(work.select(["path", "version"]), lambda r: (r["path"], r["version"]))
            catalog.release()  # before workers fork (local) or while tasks run (ray)
            mapper = get_mapper(backend, catalog_path=catalog.path)
            results = mapper(partial(_builtin_item, max_pixels=max_pixels), items, workers=options.num_workers,
                             desc="builtin", quiet=quiet)
            results = (builtin_vectors_for(dim, r) if isinstance(r, np.ndarray) else r for r in results)
            _ingest(catalog, kind, work, results, summary, commit_every)
        _finish(catalog, summary, started)
    return summary


def _register_model_set(catalog: Catalog, name: str, kind: str, loaded: Any, run_id: int) -> None:
    from vdc_lake.models.kinds import output_dim

    _register(catalog, name, kind, loaded.name, output_dim(loaded, kind),
              ROTATION_ORDER if kind == "rotation" else loaded.class_names,
              {"size": list(loaded.size), "rgb_stats": loaded.rgb_stats}, run_id)


def _finish(catalog: Catalog, summary: PredictSummary, started: float) -> None:
    summary.seconds = round(time.monotonic() - started, 3)
    summary.images_per_second = round(summary.written / summary.seconds, 1) if summary.seconds else 0.0
    catalog.finish_run(summary.run_id, summary=asdict(summary))


# -- one decode pass, several models ----------------------------------------------------------

def predict_pass(catalog: Catalog, requests: list[PredictRequest], options: InferenceOptions | None = None, *,
                 commit_every: int = COMMIT_EVERY_IMAGES, quiet: bool = False, backend: str | None = None,
                 retry_failed: bool = False) -> list[PredictSummary]:
    """Run several models over the present images in one decode pass; one summary per request.

    options: how the models run (InferenceOptions; None: the bundled config's); backend as in predict.
    Each set gets its own predict run (params as if computed alone, plus the pass's sets) and
    exactly the rows a run of that model alone would write; the pass decodes each image that
    any set misses once and runs each model only on the images its set misses. Commits write
    every set together, so a killed pass resumes per set with no duplicates.

    options.rotate_threshold: with one rotation request and others, the other models see each
    image turned clockwise by the rotation model's predicted angle when its probability is above
    the threshold (rotation_actions' rule), and table applied_rotations records it; None: no
    turning. Where the rotation set already holds an image's probabilities, those are used.
    The builtin descriptor (it decodes on its own) and backend "ray" run each request alone,
    one after the other, without turning.

    Failures are recorded per set (predict_failures): an image that does not decode fails in
    every set that needed it, and a later pass leaves it out of those sets while its bytes stay
    the same, unless `retry_failed` (see predict).
    """
    for request in requests:
        _check_request(request)
    backend = backend or _bundled_backend()
    if backend not in BACKENDS:
        raise StageError(f"unknown backend {backend!r}: use {' or '.join(BACKENDS)}")
    if not requests:
        raise StageError("predict needs at least one --model with its --kind")
    options = options or InferenceOptions.from_config()
    run = dict(commit_every=commit_every, quiet=quiet, retry_failed=retry_failed)
    alone = [r for r in requests if r.model == BUILTIN_MODEL or backend == "ray"]
    together = [r for r in requests if r not in alone]
    summaries: dict[int, PredictSummary] = {}
    if together:
        for request, summary in zip(together, _predict_together(catalog, together, options, **run)):
            summaries[id(request)] = summary
    for request in alone:
        summaries[id(request)] = _predict_alone(catalog, request, options, backend=backend, **run)
    return [summaries[id(r)] for r in requests]


@dataclass
class _PassSet:
    """One set of a pass: its request, loaded model, summary (with its run) and work."""

    request: PredictRequest
    loaded: Any
    name: str
    summary: PredictSummary | None = None
    work: pa.Table | None = None  # (image_id, version, path) its set misses


def _predict_together(catalog: Catalog, requests: list[PredictRequest], options: InferenceOptions, *,
                      commit_every: int, quiet: bool, retry_failed: bool) -> list[PredictSummary]:
    from contextlib import ExitStack

    from vdc_lake.models.loading import load_model, resolve_device

    torch_device = resolve_device(options.device)
    sets = []
    for r in requests:
        loaded = load_model(options.models_dir, r.model, tag=r.tag, device=torch_device,
                            size=None if r.size is None else (r.size, r.size))
        sets.append(_PassSet(r, loaded, r.set_name or loaded.name))
    names = [s.name for s in sets]
    if len(set(names)) < len(names):
        raise StageError(f"two models of one pass write the same set ({', '.join(names)}); give each its own --set")
    rotation = _turning_model(sets, options.rotate_threshold)
    rotation_set = sets[rotation].name if rotation is not None else None
    with ExitStack() as runs:
        started = time.monotonic()
        for s in sets:
            params = _run_params(s.request, s.name, options, retry_failed, rotation_set, names)
            run_id = runs.enter_context(catalog.run("predict", params))
            s.summary = PredictSummary(run_id, s.name, s.request.kind)
            _register_model_set(catalog, s.name, s.request.kind, s.loaded, run_id)
            s.work = _todo(catalog, KIND_TABLE[s.request.kind], s.name, options.max_pixels, retry_failed, s.summary)
        images = _pass_images([s.work for s in sets])
        if images.num_rows:
            ids = images.column("image_id").to_numpy()
            needs = np.stack([np.isin(ids, s.work.column("image_id").to_numpy()) for s in sets])
            known = _known_rotation(catalog, sets[rotation].name, ids) if rotation is not None else None
            catalog.release()  # before the decoding workers fork
            from vdc_lake.models.passes import PassModel, run_pass

            label = "+".join(s.loaded.name for s in sets)
            with progress_bar(images.num_rows, f"predict {label}", unit="img", quiet=quiet) as bar:
                batches = run_pass(
                    [PassModel(s.loaded, s.request.kind) for s in sets],
                    LazyRows(images.select(["path"]), lambda r: r["path"]), options,
                    needs=needs, rotation=rotation, known_rotation=known, progress=bar.update)
                _ingest_pass(catalog, sets, images, needs, batches, commit_every)
        for s in sets:
            _finish(catalog, s.summary, started)
    return [s.summary for s in sets]


def _turning_model(sets: list[_PassSet], rotate_threshold: float | None) -> int | None:
    """Index of the pass's rotation model when it turns images for the others, else None."""
    rotations = [i for i, s in enumerate(sets) if s.request.kind == "rotation"]
    if rotate_threshold is None or not rotations or len(sets) == len(rotations):
        return None
    if len(rotations) > 1:
        raise StageError("a pass that turns images in memory takes one rotation model; run the others in "
                         "their own predict, or pass --rotate-threshold 1 to turn no image")
    if not 0.0 <= float(rotate_threshold) <= 1.0:
        raise StageError(f"--rotate-threshold {rotate_threshold} is not a probability: use 0..1 (1 turns no image)")
    return rotations[0]


def _pass_images(works: list[pa.Table]) -> pa.Table:
    """(image_id, version, path) of every image some set of the pass misses, by image_id."""
    table = pa.concat_tables([w.select(["image_id", "version", "path"]) for w in works])
    if table.num_rows == 0:
        return table
    ids = table.column("image_id").to_numpy()
    _, first = np.unique(ids, return_index=True)  # sorted by image_id
    return table.take(pa.array(first))


def _known_rotation(catalog: Catalog, set_name: str, ids: np.ndarray) -> np.ndarray:
    """float32 [n, 4] probabilities ([0, 90, 180, 270]) the rotation set holds for the current
    version of each image in ids, the newest run's as rotation_actions reads them; NaN: none."""
    known = np.full((len(ids), 4), np.nan, np.float32)
    table = pa.table({"image_id": pa.array(ids, pa.int64()), "row": pa.array(np.arange(len(ids), dtype=np.int64))})
    with catalog.registered("pass_images", table):
        stored = catalog.arrow(
            """
            SELECT w.row, p.probs::FLOAT[4] AS probs
            FROM pass_images AS w
            JOIN images AS i ON i.image_id = w.image_id AND i.present
            JOIN predictions AS p ON p.image_id = i.image_id AND p.version = i.version AND p.set_name = ?
            QUALIFY row_number() OVER (PARTITION BY p.image_id ORDER BY p.run_id DESC, p.rowid DESC) = 1
            """,
            [set_name],
        )
    if stored.num_rows:
        rows = stored.column("row").to_numpy()
        known[rows] = stored.column("probs").combine_chunks().flatten().to_numpy().reshape(-1, 4)
    return known


@dataclass
class _Pending:
    """Rows of one set waiting for the next commit, as blocks: positions in the pass's images,
    their vectors and the angle (clockwise) each was computed on; positions that failed and why."""

    rows: list[np.ndarray] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    angles: list[np.ndarray] = field(default_factory=list)
    failed: list[np.ndarray] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _ingest_pass(catalog: Catalog, sets: list[_PassSet], images: pa.Table, needs: np.ndarray,
                 batches: Iterable[Any], commit_every: int) -> None:
    """Write each PassBatch's rows to their sets, and its failures to the sets that needed the
    image; commit every set together every `commit_every` images of the pass (and every
    COMMIT_EVERY_SECONDS)."""
    ids = images.column("image_id").to_numpy()
    versions = images.column("version").to_numpy()
    paths = images.column("path")
    pending = [_Pending() for _ in sets]
    waiting, last_commit = 0, time.monotonic()
    for batch in batches:
        for m, s in enumerate(sets):
            done = batch.done[m]
            pending[m].rows.append(batch.indices[done])
            pending[m].vectors.append(batch.outputs[m][done])
            turned = batch.angles[done] if s.request.kind != "rotation" else np.zeros(int(done.sum()), np.int16)
            pending[m].angles.append(turned)
            failed = np.flatnonzero(~done & needs[m, batch.indices])
            pending[m].failed.append(batch.indices[failed])
            pending[m].errors += [batch.errors[i] or NO_REASON for i in failed]
        waiting += len(batch)
        if waiting >= commit_every or time.monotonic() - last_commit > COMMIT_EVERY_SECONDS:
            _commit_pass(catalog, sets, pending, ids, versions, paths)
            pending, waiting, last_commit = [_Pending() for _ in sets], 0, time.monotonic()
    _commit_pass(catalog, sets, pending, ids, versions, paths)


def _commit_pass(catalog: Catalog, sets: list[_PassSet], pending: list[_Pending], ids: np.ndarray,
                 versions: np.ndarray, paths: pa.ChunkedArray) -> None:
    """One transaction: every set's waiting rows, the rotations they were computed on, and
    every set's failures."""
    blocks = [(s, np.concatenate(p.rows), p) for s, p in zip(sets, pending) if p.rows]
    if not any(len(rows) for _, rows, _ in blocks) and not any(p.errors for p in pending):
        return
    turned: list[pa.Table] = []
    failures = [(s, np.concatenate(p.failed), p.errors) for s, p in zip(sets, pending) if p.errors]
    with catalog.transaction():
        for s, rows, errors in failures:
            catalog.insert_arrow("predict_failures", _failure_table(s.summary.run_id, s.name, ids[rows],
                                                                    versions[rows], errors))
        for s, rows, p in blocks:
            if not len(rows):
                continue
            s.summary.written += write_vectors(catalog, KIND_TABLE[s.request.kind], s.name, s.summary.run_id,
                                               ids[rows], versions[rows], np.concatenate(p.vectors))
            angles = np.concatenate(p.angles)
            at = angles != 0
            if at.any():
                turned.append(pa.table({
                    "run_id": pa.array(np.full(int(at.sum()), s.summary.run_id, np.int64)),
                    "image_id": pa.array(ids[rows[at]].astype(np.int64)),
                    "version": pa.array(versions[rows[at]].astype(np.int32)),
                    "angle": pa.array(angles[at].astype(np.int16)),
                }))
        if turned:
            catalog.insert_arrow("applied_rotations", pa.concat_tables(turned))
    catalog.release()
    for s, rows, errors in failures:
        _note_failures(s.summary, paths.take(pa.array(rows[:FAILURE_EXAMPLES], pa.int64())).to_pylist(), errors)


def carry_rotated_results(catalog: Catalog, ops: Iterable[dict[str, Any]]) -> int:
    """After `apply rotation` turned files: give each turned image's new version the results a
    predict pass computed on pixels turned the same way (applied_rotations), since they were
    computed on exactly the new version's pixels (for lossless formats; a JPEG is re-encoded by
    the turn, within its quantisation). Only a set's current row (newest run) at the old
    version is carried, under its own run_id. Call inside the transaction that bumps the
    versions, after the bump. ops: dicts with image_id, version (the old one) and action
    (rotate_90/180/270; other actions are ignored). Returns the number of rows carried."""
    turned = [(int(op["image_id"]), int(op["version"]), int(op["action"].split("_")[1]))
              for op in ops if str(op.get("action", "")).startswith("rotate_")]
    if not turned:
        return 0
    table = pa.table({
        "image_id": pa.array([t[0] for t in turned], pa.int64()),
        "old_version": pa.array([t[1] for t in turned], pa.int32()),
        "angle": pa.array([t[2] for t in turned], pa.int16()),
    })
    carried = 0
    with catalog.registered("rotated_images", table):
        for result_table, column in VECTOR_TABLES.items():
            rows = catalog.arrow(
                f"""
                WITH current AS (
                    SELECT r.set_name, r.image_id, r.run_id, r.{column}, t.angle
                    FROM {result_table} AS r
                    JOIN rotated_images AS t ON t.image_id = r.image_id AND t.old_version = r.version
                    QUALIFY row_number() OVER (PARTITION BY r.set_name, r.image_id ORDER BY r.run_id DESC, r.rowid DESC) = 1
                )
                SELECT c.set_name, c.image_id, i.version, c.run_id, c.{column} AS v
                FROM current AS c
                JOIN images AS i ON i.image_id = c.image_id
                JOIN rotated_images AS t ON t.image_id = c.image_id
                WHERE i.version <> t.old_version
                  AND EXISTS (SELECT 1 FROM applied_rotations AS a WHERE a.run_id = c.run_id AND a.image_id = c.image_id
                              AND a.version = t.old_version AND a.angle = c.angle)
                ORDER BY c.set_name, c.image_id
                """
            )
            names = rows.column("set_name").to_numpy(zero_copy_only=False)
            for name in dict.fromkeys(names):
                part = rows.filter(pa.array(names == name))
                vectors = np.array(part.column("v").to_pylist(), dtype=np.float32)
                carried += write_vectors(catalog, result_table, str(name), part.column("run_id").to_numpy(),
                                         part.column("image_id").to_numpy(), part.column("version").to_numpy(),
                                         vectors)
    return carried


# -- import of birder result files --------------------------------------------------------------

# A sample that os.path.abspath would change beyond prefixing the cwd: "~", "." or ".." components,
# doubled or trailing slashes. Only those go through Python; the rest is one vectorised concatenation.
_NEEDS_NORMPATH = r"^~|(^|/)\.\.?(/|$)|//|/$"


def _paths_from_cwd(samples: pa.Array) -> pa.Array:
    """os.path.abspath(os.path.expanduser(s)) of every sample (None for null or empty), computed
    with Arrow kernels: a Python call per sample cost ~1 s per 10^6 samples, ~100 s at 10^8."""
    import pyarrow.compute as pc

    cwd = os.getcwd().rstrip("/")
    absolute = pc.starts_with(samples, "/")
    out = pc.if_else(absolute, samples, pc.binary_join_element_wise(cwd, samples, "/"))
    odd = pc.fill_null(pc.match_substring_regex(samples, _NEEDS_NORMPATH), False)
    out = pc.if_else(pc.fill_null(pc.equal(samples, ""), True), pa.scalar(None, pa.string()), out)
    if not pc.any(odd).as_py():
        return out
    # only the odd rows go through Python; the rest of the column is not converted
    fixed = [os.path.abspath(os.path.expanduser(t)) for t in samples.filter(odd).to_pylist()]
    return pc.replace_with_mask(out, odd, pa.array(fixed, pa.string()))


def _stage_matches(catalog: Catalog, result) -> None:
    """Match every sample of the file to a present catalog image, in one join for the whole file,
    into the temp table import_matches (row, image_id, version), ordered by row.

    A sample matches by absolute path, by path relative to a scanned root, or as a path
    relative to the current directory (in that order; the lowest image_id on a tie). Column
    `first` is false for a row naming an image an earlier row named (a sample listed twice, or
    one image by its absolute and its relative path): counted, and the last row is current
    (readers take a run's last written row). One join
    per file, not one join of every image per batch (that grew as N^2 / batch); only the
    sample strings are staged, and DuckDB spills the join past its memory limit.
    """
    con = catalog.con
    con.execute("CREATE OR REPLACE TEMP TABLE import_samples (row BIGINT, sample VARCHAR, from_cwd VARCHAR)")
    offset = 0
    for samples in result.sample_batches(batch_rows=batch_rows_setting(catalog)):
        texts = samples.to_pylist()
        catalog.insert_arrow("import_samples", pa.table({
            "row": pa.array(np.arange(offset, offset + len(texts), dtype=np.int64)),
            "sample": pa.array(texts, pa.string()),
            "from_cwd": _paths_from_cwd(pa.array(texts, pa.string())),
        }))
        offset += len(texts)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE import_matches AS
        WITH files AS (SELECT image_id, version, root || '/' || rel_path AS path, rel_path FROM images WHERE present),
        candidates AS (
            SELECT s.row, f.image_id, f.version, 1 AS priority FROM import_samples s JOIN files f ON f.path = s.sample
            UNION ALL
            SELECT s.row, f.image_id, f.version, 2 FROM import_samples s JOIN files f ON f.rel_path = s.sample
            UNION ALL
            SELECT s.row, f.image_id, f.version, 3 FROM import_samples s JOIN files f ON f.path = s.from_cwd
        )
        SELECT row, best.image_id, best.version,
               row_number() OVER (PARTITION BY best.image_id ORDER BY row) = 1 AS first
        FROM (SELECT row, arg_min({'image_id': image_id, 'version': version}, (priority, image_id)) AS best
              FROM candidates GROUP BY row)
        ORDER BY row
        """
    )
    con.execute("DROP TABLE import_samples")


def _batch_matches(catalog: Catalog, start: int, n: int) -> pa.Table:
    """The staged matches of file rows start .. start + n - 1, rows counted from the batch's first."""
    return catalog.arrow(
        "SELECT row - ? AS row, image_id, version, first FROM import_matches WHERE row >= ? AND row < ? ORDER BY row",
        [start, start, start + n],
    )


def import_results(catalog: Catalog, path: str, *, set_name: str | None = None, kind: str | None = None,
                   model: str | None = None) -> ImportSummary:
    """Import a birder `*_output|logits|embeddings.(parquet|csv)` file (or VDC's / pandas'
    `logits.parquet`, `embeddings.parquet`, with `kind` and `model` saying what birder's name
    would) into a set: the whole file
    or nothing (one transaction: a file damaged half-way leaves no partial set behind). Rows
    with NaN or infinite values are not imported (counted, the first few named); a second row
    for one image is counted as a duplicate (the last one is current, as for any set)."""
    from vdc_lake.models.result_files import open_result_file

    result = open_result_file(path, kind=kind)
    default_kind = {"embeddings": "embedding", "logits": "descriptor"}.get(result.kind, "rotation")
    kind = kind or default_kind
    if kind not in KIND_TABLE:
        raise StageError(f"unknown kind {kind!r}: use rotation, descriptor or embedding")
    class_names = result.class_names or []
    order = _rotation_columns(class_names) if kind == "rotation" else None
    if kind == "rotation" and order is None:
        raise StageError(f"{path}: classes {class_names} are not rotation angles 0/90/180/270; "
                         "pass --kind descriptor to import them as a vector set")
    model = model or (result.name.model if result.name is not None else None)
    name = set_name or model or os.path.basename(path).split(".")[0]
    batch_rows = batch_rows_setting(catalog)
    source = str(result.path.resolve())
    with catalog.run("import", {"file": source, "set": name, "kind": kind}) as run_id:
        summary = ImportSummary(run_id, name, kind)
        with catalog.transaction():
            _register(catalog, name, kind, model or name, result.dim,
                      ROTATION_ORDER if kind == "rotation" else class_names, {"imported_from": source}, run_id)
            _stage_matches(catalog, result)
            start = 0
            for batch in result.batches(batch_rows=batch_rows):
                matches = _batch_matches(catalog, start, len(batch.samples))
                start += len(batch.samples)
                _import_batch(catalog, summary, KIND_TABLE[kind], batch, matches, order)
            catalog.execute("DROP TABLE import_matches")
        catalog.finish_run(run_id, summary=asdict(summary))
    return summary


def _import_batch(catalog: Catalog, summary: ImportSummary, table: str, batch: Any, matches: pa.Table,
                  order: list[int] | None) -> None:
    """Write the batch's matched rows with finite values; count duplicates and the rest in summary."""
    rows = matches.column("row").to_numpy()
    first = matches.column("first").to_numpy(zero_copy_only=False).astype(bool)
    values = batch.values[:, order] if order is not None else batch.values
    finite = np.isfinite(values).all(axis=1)[rows]
    keep = finite
    taken = rows[keep]
    # every row matched and finite, in file order (the usual case): the batch as it is, no copy
    whole = len(taken) == len(values) and (len(taken) == 0 or (taken[0] == 0 and (np.diff(taken) == 1).all()))
    write_vectors(catalog, table, summary.set_name, summary.run_id, matches.column("image_id").to_numpy()[keep],
                  matches.column("version").to_numpy()[keep], values if whole else values[taken])
    summary.rows += len(batch.samples)
    summary.matched += int(keep.sum())
    summary.duplicates += int((~first & finite).sum())
    bad = rows[~finite]
    summary.not_finite += len(bad)
    room = max(FAILURE_EXAMPLES - len(summary.not_finite_examples), 0)
    summary.not_finite_examples += [batch.samples[int(i)].as_py() for i in bad[:room]]
    unmatched = np.setdiff1d(np.arange(len(batch.samples)), rows)
    summary.unmatched += len(unmatched)
    room = max(FAILURE_EXAMPLES - len(summary.unmatched_examples), 0)
    summary.unmatched_examples += [batch.samples[int(i)].as_py() for i in unmatched[:room]]
