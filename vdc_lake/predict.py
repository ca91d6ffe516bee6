"""Predict: run a birder model (or the built-in descriptor) over catalog images; import birder files.

Incremental: only present images without a row for their current version in the target set
are processed, and results are committed every few thousand images, so a killed run resumes
where it stopped with no duplicates.

Decompression bombs are never decoded: images whose stored size exceeds the pixel limit
(sanitize.max_pixels), and images sanitize decided to delete, are skipped with a reason (the
run's summary), and every decode re-checks the header against the limit.
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

from vdc_lake.catalog import Catalog
from vdc_lake.descriptor import DESCRIPTOR_NAME
from vdc_lake.errors import StageError
from vdc_lake.parallel import BACKENDS, get_mapper, progress_bar
from vdc_lake.sets import (
    BUILTIN_SET, batch_rows_setting, missing_images, register_builtin_set, register_embedding_set,
    register_prediction_set, write_vectors,
)

BUILTIN_MODEL = BUILTIN_SET
COMMIT_EVERY_IMAGES = 4096
COMMIT_EVERY_SECONDS = 30.0
ROTATION_ORDER = ["0", "90", "180", "270"]
PREDICT_SHARD_BATCHES = 16  # Ray backend: batches per task at least
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
    seconds: float = 0.0
    images_per_second: float = 0.0
    errors: list[str] = field(default_factory=list)


@dataclass
class ImportSummary:
    run_id: int
    set_name: str
    kind: str
    rows: int = 0
    matched: int = 0
    unmatched: int = 0
    unmatched_examples: list[str] = field(default_factory=list)


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


def _builtin_item(item: tuple[str, int], *, max_pixels: int) -> np.ndarray | None:
    """The builtin descriptor of (path, version); the version keys Ray's staging (see _infer_shard)."""
    return _builtin_one(item[0], max_pixels)


def _builtin_one(path: str, max_pixels: int) -> np.ndarray | None:
    """The builtin descriptor, or None when the file does not decode or exceeds max_pixels."""
    from vdc_lake.files import decode_check

    return decode_check(path, max_pixels=max_pixels, with_descriptor=True).descriptor


def default_max_pixels() -> int:
    """The bundled pixel limit (sanitize.max_pixels), for callers that pass none."""
    from vdc_lake.config import _bundled_defaults

    return int(_bundled_defaults()["sanitize"]["max_pixels"])


def _skip_blocked(catalog: Catalog, work: pa.Table, max_pixels: int, summary: PredictSummary) -> pa.Table:
    """work without the images nobody should decode: stored size over max_pixels (a
    decompression bomb, sanitized or not) or a pending sanitize delete (corrupt, truncated,
    not an image, ...). Each skipped image is counted in summary by its reason."""
    indexed = work.append_column("row", pa.array(np.arange(work.num_rows, dtype=np.int64)))
    with catalog.registered("predict_work", indexed):
        blocked = catalog.arrow(
            """
            SELECT w.row, w.path,
                   CASE WHEN i.width::BIGINT * i.height > $max_pixels THEN 'decompression_bomb'
                        ELSE 'sanitize delete: ' || a.rules END AS reason,
                   CASE WHEN i.width::BIGINT * i.height > $max_pixels
                        THEN format('{:,} pixels ({}x{}) exceed the limit of {:,}', i.width::BIGINT * i.height,
                                    i.width, i.height, $max_pixels)
                        ELSE a.reason END AS detail
            FROM predict_work AS w
            JOIN images AS i ON i.image_id = w.image_id
            LEFT JOIN (SELECT image_id, version, rules, reason FROM sanitize_actions WHERE action = 'delete') AS a
                ON a.image_id = w.image_id AND a.version = w.version
            WHERE i.width::BIGINT * i.height > $max_pixels OR a.image_id IS NOT NULL
            ORDER BY w.row
            """,
            {"max_pixels": int(max_pixels)},
        ).to_pylist()
    if not blocked:
        return work
    summary.skipped = len(blocked)
    for row in blocked:
        summary.skipped_reasons[row["reason"]] = summary.skipped_reasons.get(row["reason"], 0) + 1
    summary.skipped_examples = [f"{row['path']}: skipped, {row['reason']} ({row['detail']})" for row in blocked[:10]]
    keep = np.ones(work.num_rows, bool)
    keep[[row["row"] for row in blocked]] = False
    return work.filter(pa.array(keep))


@dataclass(frozen=True)
class ModelSpec:
    """A model and how to run it: all a Ray worker needs (picklable, hashable; Ray's staging
    key hashes it, so changing the model or an option starts a fresh staging folder)."""

    models_dir: str
    model: str
    tag: str | None
    size: int | None
    device: str
    kind: str
    batch_size: int
    amp: bool
    amp_dtype: str
    channels_last: bool
    fast_matmul: bool
    compile: bool
    num_workers: int | None
    max_pixels: int | None = None

    def load(self) -> Any:
        from vdc_lake.models import load_model

        return load_model(self.models_dir, self.model, tag=self.tag, device=self.device,
                          size=None if self.size is None else (self.size, self.size))

    def inference_options(self) -> dict[str, Any]:
        return dict(kind=self.kind, batch_size=self.batch_size, num_workers=self.num_workers, amp=self.amp,
                    amp_dtype=self.amp_dtype, compile=self.compile, fast_matmul=self.fast_matmul,
                    channels_last=self.channels_last, max_pixels=self.max_pixels)


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


def _infer_shard(spec: ModelSpec, items: list[tuple[str, int]]) -> list[np.ndarray | str]:
    """Ray task body for a shard of (path, version): one result per path (see _per_image).
    The version is not used here; it is in the items so that Ray's staging key (a hash of the
    items) changes when a file does, and a staged result of older bytes is never ingested."""
    from vdc_lake.models import run_inference

    paths = [path for path, _ in items]
    if spec not in _WORKER_MODELS:
        _WORKER_MODELS.clear()  # one model per worker process: free the previous one
        _WORKER_MODELS[spec] = spec.load()
    loaded = _WORKER_MODELS[spec]
    batches = run_inference(loaded, paths, **spec.inference_options())
    return list(_per_image(batches, _rotation_order(loaded, spec.kind)))


def _ray_device(device: str) -> str:
    """Device of predict's Ray tasks: "cuda" when asked for, or for "auto" when the cluster
    has a GPU; else "cpu". Ray picks the task's GPU, so an index in "cuda:N" is dropped."""
    if device == "auto":
        from vdc_lake.ray_backend import cluster_gpus

        return "cuda" if cluster_gpus() > 0 else "cpu"
    return "cuda" if device.startswith("cuda") else device


def _model_results_on_ray(catalog: Catalog, spec: ModelSpec, items: list[tuple[str, int]],
                          quiet: bool) -> Iterator[Any]:
    """Results of spec's model for paths (as _per_image gives them), computed by batched Ray
    tasks: 1 GPU each on cuda, max(1, num_workers) CPUs for the decoding processes."""
    from vdc_lake.ray_backend import ray_map_ordered, shard_size_for, staging_root

    # Whole batches, and at least PREDICT_SHARD_BATCHES of them: each shard starts its decoding
    # processes, and the model's first batches are slow, so small shards would pay that often.
    batches = max(PREDICT_SHARD_BATCHES, math.ceil(shard_size_for(len(items)) / spec.batch_size))
    shard_size = batches * spec.batch_size
    return ray_map_ordered(partial(_infer_shard, spec), items, desc="predict", quiet=quiet,
                           staging_dir=staging_root(catalog.path), shard_size=shard_size, batched=True,
                           num_cpus=max(1, spec.num_workers or 1), num_gpus=1 if spec.device == "cuda" else 0)


def _model_results(loaded: Any, spec: ModelSpec, paths: list[str], quiet: bool) -> Iterator[np.ndarray | str]:
    """Results of the model loaded here for paths (as _per_image gives them), with a progress bar."""
    from vdc_lake.models import run_inference

    with progress_bar(len(paths), f"predict {spec.model}", unit="img", quiet=quiet) as bar:
        yield from _per_image(run_inference(loaded, paths, progress=bar.update, **spec.inference_options()),
                              _rotation_order(loaded, spec.kind))


def _ingest(catalog: Catalog, run_id: int, kind: str, set_name: str, work: pa.Table,
            results: Iterable[np.ndarray | str | None], summary: PredictSummary, commit_every: int) -> None:
    """Write one result per work row, in order, to the set: a vector is written, anything else
    (None, or an error string kept in summary.errors up to 10) counts as failed. Commits every
    `commit_every` vectors and every COMMIT_EVERY_SECONDS, releasing the catalog in between."""
    ids = work.column("image_id").to_numpy()
    versions = work.column("version").to_numpy()
    done: list[int] = []
    vectors: list[np.ndarray] = []
    last_commit = time.monotonic()
    for row, result in enumerate(results):
        if isinstance(result, np.ndarray):
            done.append(row)
            vectors.append(result)
        else:
            summary.failed += 1
            if isinstance(result, str) and len(summary.errors) < 10:
                summary.errors.append(result)
        if len(done) >= commit_every or (done and time.monotonic() - last_commit > COMMIT_EVERY_SECONDS):
            summary.written += _commit(catalog, run_id, kind, set_name, ids[done], versions[done], vectors)
            done, vectors, last_commit = [], [], time.monotonic()
    summary.written += _commit(catalog, run_id, kind, set_name, ids[done], versions[done], vectors)


def _commit(catalog: Catalog, run_id: int, kind: str, set_name: str, ids: np.ndarray, versions: np.ndarray,
            vectors: list[np.ndarray]) -> int:
    if not vectors:
        return 0
    with catalog.transaction():
        write_vectors(catalog, KIND_TABLE[kind], set_name, run_id, ids, versions, np.stack(vectors))
    catalog.release()
    return len(vectors)


def predict(catalog: Catalog, *, model: str, kind: str, tag: str | None = None, set_name: str | None = None,
            models_dir: str = "models", size: int | None = None, device: str = "auto", batch_size: int = 64,
            num_workers: int | None = None, amp: bool = False, amp_dtype: str = "bfloat16", compile: bool = False,
            fast_matmul: bool = False, channels_last: bool = False, commit_every: int = COMMIT_EVERY_IMAGES,
            quiet: bool = False, backend: str = "local", max_pixels: int | None = None) -> PredictSummary:
    """Compute `kind` outputs of `model` for every present image missing them; returns counts.

    Images over `max_pixels` (default: the bundled sanitize.max_pixels) or with a pending
    sanitize delete are skipped (summary.skipped, by reason); no decode exceeds the limit.

    Results are committed every `commit_every` images (and every 30 s), so a killed run loses
    at most that much work and a re-run continues with the images still missing.
    backend "ray" runs the model in batched Ray tasks (a GPU each when the device is, or
    resolves to, cuda) and the builtin descriptor in per-file Ray tasks; this process only
    reads the work list and writes the results, as with "local".
    """
    if kind not in KIND_TABLE:
        raise StageError(f"unknown kind {kind!r}: use rotation, descriptor or embedding")
    if backend not in BACKENDS:
        raise StageError(f"unknown backend {backend!r}: use {' or '.join(BACKENDS)}")
    builtin = model == BUILTIN_MODEL
    if builtin and kind != "descriptor":
        raise StageError("the builtin model only computes descriptors: use --kind descriptor")
    max_pixels = default_max_pixels() if max_pixels is None else int(max_pixels)
    loaded = spec = None
    if not builtin:
        spec = ModelSpec(os.path.abspath(models_dir), model, tag, size, device, kind, batch_size, amp, amp_dtype,
                         channels_last, fast_matmul, compile, num_workers, max_pixels)
        if backend == "ray":
            spec = replace(spec, device=_ray_device(device))
            loaded = replace(spec, device="cpu").load()  # here only for its name, classes and preprocessing
        else:
            loaded = spec.load()
    name = set_name or (BUILTIN_MODEL if builtin else loaded.name)
    params = {"model": model, "tag": tag, "kind": kind, "set": name, "size": size, "device": device,
              "batch_size": batch_size, "amp": amp, "amp_dtype": amp_dtype, "compile": compile,
              "max_pixels": max_pixels}
    with catalog.run("predict", params) as run_id:
        started = time.monotonic()
        summary = PredictSummary(run_id, name, kind)
        if builtin:
            register_builtin_set(catalog, run_id, name)
        else:
            from vdc_lake.models import output_dim

            _register(catalog, name, kind, loaded.name, output_dim(loaded, kind),
                      ROTATION_ORDER if kind == "rotation" else loaded.class_names,
                      {"size": list(loaded.size), "rgb_stats": loaded.rgb_stats}, run_id)
        work = _skip_blocked(catalog, missing_images(catalog, KIND_TABLE[kind], name), max_pixels, summary)
        summary.todo = work.num_rows
        if work.num_rows:
            paths = work.column("path").to_pylist()
            items = list(zip(paths, work.column("version").to_pylist()))
            catalog.release()  # before workers fork (local) or while tasks run (ray)
            if builtin:
                mapper = get_mapper(backend, catalog_path=catalog.path)
                results = mapper(partial(_builtin_item, max_pixels=max_pixels), items, workers=num_workers,
                                 desc="builtin", quiet=quiet)
            elif backend == "ray":
                results = _model_results_on_ray(catalog, spec, items, quiet)
            else:
                results = _model_results(loaded, spec, paths, quiet)
            _ingest(catalog, run_id, kind, name, work, results, summary, commit_every)
        summary.seconds = round(time.monotonic() - started, 3)
        summary.images_per_second = round(summary.written / summary.seconds, 1) if summary.seconds else 0.0
        catalog.finish_run(run_id, summary=asdict(summary))
    return summary


def embed_paths(catalog: Catalog, set_name: str, paths: list[str], *, models_dir: str = "models",
                device: str = "auto", max_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vectors for arbitrary files with the model that made `set_name`: (vectors [n, d], ok mask [n]).
    A file over max_pixels (default: the bundled sanitize.max_pixels) is not decoded (not ok)."""
    max_pixels = default_max_pixels() if max_pixels is None else int(max_pixels)
    rows = catalog.rows("SELECT model, kind, dim FROM embedding_sets WHERE name = ?", [set_name])
    if not rows:
        raise StageError(f"no embedding set named {set_name!r}")
    model, kind, dim = rows[0]
    vectors = np.zeros((len(paths), dim), np.float32)
    ok = np.zeros(len(paths), bool)
    if set_name == BUILTIN_MODEL or model == DESCRIPTOR_NAME:
        for i, path in enumerate(paths):
            v = _builtin_one(path, max_pixels)
            if v is not None:
                vectors[i], ok[i] = v, True
        return vectors, ok
    from vdc_lake.models import load_model, run_inference

    loaded = load_model(models_dir, model, device=device)
    for batch in run_inference(loaded, paths, kind=kind, num_workers=0, max_pixels=max_pixels):
        vectors[batch.indices] = batch.outputs
        ok[batch.indices] = True
    return vectors, ok


# -- import of birder result files --------------------------------------------------------------

def _match_samples(catalog: Catalog, samples: pa.Array) -> pa.Table:
    """Rows (row, image_id, version) for samples that name a present catalog image.

    A sample matches by absolute path, by path relative to a scanned root, or as a path
    relative to the current directory.
    """
    texts = samples.to_pylist()
    table = pa.table({
        "row": pa.array(np.arange(len(texts), dtype=np.int64)),
        "sample": pa.array(texts, pa.string()),
        "from_cwd": pa.array([os.path.abspath(os.path.expanduser(t)) if t else None for t in texts], pa.string()),
    })
    with catalog.registered("import_samples", table):
        return catalog.arrow(
            """
            WITH files AS (SELECT image_id, version, root || '/' || rel_path AS path, rel_path FROM images WHERE present),
            candidates AS (
                SELECT s.row, f.image_id, f.version, 1 AS priority FROM import_samples s JOIN files f ON f.path = s.sample
                UNION ALL
                SELECT s.row, f.image_id, f.version, 2 FROM import_samples s JOIN files f ON f.rel_path = s.sample
                UNION ALL
                SELECT s.row, f.image_id, f.version, 3 FROM import_samples s JOIN files f ON f.path = s.from_cwd
            )
            SELECT row, image_id, version FROM candidates
            QUALIFY row_number() OVER (PARTITION BY row ORDER BY priority, image_id) = 1
            ORDER BY row
            """
        )


def import_results(catalog: Catalog, path: str, *, set_name: str | None = None, kind: str | None = None) -> ImportSummary:
    """Import a birder `*_output|logits|embeddings.(parquet|csv)` file into a set."""
    from vdc_lake.birder_results import open_result_file

    result = open_result_file(path)
    default_kind = {"embeddings": "embedding", "logits": "descriptor"}.get(result.kind, "rotation")
    kind = kind or default_kind
    if kind not in KIND_TABLE:
        raise StageError(f"unknown kind {kind!r}: use rotation, descriptor or embedding")
    class_names = result.class_names or []
    order = _rotation_columns(class_names) if kind == "rotation" else None
    if kind == "rotation" and order is None:
        raise StageError(f"{path}: classes {class_names} are not rotation angles 0/90/180/270; "
                         "pass --kind descriptor to import them as a vector set")
    name = set_name or (result.name.model if result.name is not None else os.path.basename(path).split(".")[0])
    with catalog.run("import", {"file": str(path), "set": name, "kind": kind}) as run_id:
        summary = ImportSummary(run_id, name, kind)
        _register(catalog, name, kind, result.name.model if result.name else name, result.dim,
                  ROTATION_ORDER if kind == "rotation" else class_names, {"imported_from": str(path)}, run_id)
        for batch in result.batches(batch_rows=batch_rows_setting(catalog)):
            matches = _match_samples(catalog, batch.samples)
            rows = matches.column("row").to_numpy()
            values = batch.values[:, order] if order is not None else batch.values
            with catalog.transaction():
                write_vectors(catalog, KIND_TABLE[kind], name, run_id, matches.column("image_id").to_numpy(),
                              matches.column("version").to_numpy(), values[rows])
            summary.rows += len(batch.samples)
            summary.matched += len(rows)
            unmatched = np.setdiff1d(np.arange(len(batch.samples)), rows)
            summary.unmatched += len(unmatched)
            room = 5 - len(summary.unmatched_examples)
            summary.unmatched_examples += [batch.samples[int(i)].as_py() for i in unmatched[:max(room, 0)]]
        catalog.finish_run(run_id, summary=asdict(summary))
    return summary
