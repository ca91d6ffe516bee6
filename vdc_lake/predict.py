"""Predict: run a birder model (or the built-in descriptor) over catalog images; import birder files.

Incremental: only present images without a row for their current version in the target set
are processed, and results are committed every few thousand images, so a killed run resumes
where it stopped with no duplicates.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa

from vdc_lake.catalog import Catalog
from vdc_lake.errors import StageError
from vdc_lake.parallel import batched, map_ordered, progress_bar
from vdc_lake.sets import missing_images, register_embedding_set, register_prediction_set, write_vectors

BUILTIN_MODEL = "builtin"
COMMIT_EVERY_IMAGES = 4096
COMMIT_EVERY_SECONDS = 30.0
ROTATION_ORDER = ["0", "90", "180", "270"]
KIND_TABLE = {"rotation": "predictions", "descriptor": "embeddings", "embedding": "embeddings"}


@dataclass
class PredictSummary:
    run_id: int
    set_name: str
    kind: str
    todo: int = 0
    written: int = 0
    failed: int = 0
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


def _builtin_one(path: str) -> np.ndarray | None:
    from vdc_lake.files import decode_check

    return decode_check(path, max_pixels=1 << 62, with_descriptor=True).descriptor


def _predict_builtin(catalog: Catalog, run_id: int, set_name: str, work: pa.Table, summary: PredictSummary,
                     workers: int | None, quiet: bool) -> None:
    rows = work.to_pylist()
    catalog.release()
    results = map_ordered(_builtin_one, [r["path"] for r in rows], workers=workers, desc="builtin", quiet=quiet)
    for batch in batched(zip(rows, results), COMMIT_EVERY_IMAGES):
        good = [(r, v) for r, v in batch if v is not None]
        summary.failed += len(batch) - len(good)
        if good:
            with catalog.transaction():
                write_vectors(catalog, "embeddings", set_name, run_id, np.array([r["image_id"] for r, _ in good]),
                              np.array([r["version"] for r, _ in good]), np.stack([v for _, v in good]))
            summary.written += len(good)
        catalog.release()


def _predict_model(catalog: Catalog, run_id: int, loaded: Any, kind: str, set_name: str, work: pa.Table,
                   summary: PredictSummary, options: dict[str, Any], commit_every: int, quiet: bool) -> None:
    from vdc_lake.models import run_inference

    ids = work.column("image_id").to_numpy()
    versions = work.column("version").to_numpy()
    order = _rotation_columns(loaded.class_names) if kind == "rotation" else None
    catalog.release()
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    pending_n, last_commit = 0, time.monotonic()
    with progress_bar(len(ids), f"predict {set_name}", unit="img", quiet=quiet) as bar:
        for batch in run_inference(loaded, work.column("path").to_pylist(), kind=kind,
                                   progress=lambda n: bar.update(n), **options):
            outputs = batch.outputs[:, order] if order is not None else batch.outputs
            pending.append((batch.indices, outputs))
            pending_n += len(batch.indices)
            summary.failed += len(batch.failed)
            summary.errors.extend(batch.errors[: max(0, 10 - len(summary.errors))])
            if pending_n >= commit_every or time.monotonic() - last_commit > COMMIT_EVERY_SECONDS:
                summary.written += _commit(catalog, run_id, kind, set_name, ids, versions, pending)
                pending, pending_n, last_commit = [], 0, time.monotonic()
    summary.written += _commit(catalog, run_id, kind, set_name, ids, versions, pending)


def _commit(catalog: Catalog, run_id: int, kind: str, set_name: str, ids: np.ndarray, versions: np.ndarray,
            pending: list[tuple[np.ndarray, np.ndarray]]) -> int:
    if not pending:
        return 0
    index = np.concatenate([i for i, _ in pending])
    outputs = np.concatenate([o for _, o in pending])
    with catalog.transaction():
        write_vectors(catalog, KIND_TABLE[kind], set_name, run_id, ids[index], versions[index], outputs)
    catalog.release()
    return len(index)


def predict(catalog: Catalog, *, model: str, kind: str, tag: str | None = None, set_name: str | None = None,
            models_dir: str = "models", size: int | None = None, device: str = "auto", batch_size: int = 64,
            num_workers: int | None = None, amp: bool = False, amp_dtype: str = "bfloat16", compile: bool = False,
            fast_matmul: bool = False, channels_last: bool = False, commit_every: int = COMMIT_EVERY_IMAGES,
            quiet: bool = False) -> PredictSummary:
    """Compute `kind` outputs of `model` for every present image missing them; returns counts.

    Results are committed every `commit_every` images (and every 30 s), so a killed run loses
    at most that much work and a re-run continues with the images still missing.
    """
    if kind not in KIND_TABLE:
        raise StageError(f"unknown kind {kind!r}: use rotation, descriptor or embedding")
    builtin = model == BUILTIN_MODEL
    if builtin and kind != "descriptor":
        raise StageError("the builtin model only computes descriptors: use --kind descriptor")
    loaded = None
    if not builtin:
        from vdc_lake.models import load_model

        loaded = load_model(models_dir, model, tag=tag, device=device,
                            size=None if size is None else (size, size))
    name = set_name or (BUILTIN_MODEL if builtin else loaded.name)
    params = {"model": model, "tag": tag, "kind": kind, "set": name, "size": size, "device": device,
              "batch_size": batch_size, "amp": amp, "amp_dtype": amp_dtype, "compile": compile}
    with catalog.run("predict", params) as run_id:
        started = time.monotonic()
        summary = PredictSummary(run_id, name, kind)
        if builtin:
            from vdc_lake.descriptor import DESCRIPTOR_DIM, DESCRIPTOR_NAME

            _register(catalog, name, kind, DESCRIPTOR_NAME, DESCRIPTOR_DIM, [], {"thumbnail": 32}, run_id)
        else:
            from vdc_lake.models import output_dim

            _register(catalog, name, kind, loaded.name, output_dim(loaded, kind),
                      ROTATION_ORDER if kind == "rotation" else loaded.class_names,
                      {"size": list(loaded.size), "rgb_stats": loaded.rgb_stats}, run_id)
        work = missing_images(catalog, KIND_TABLE[kind], name)
        summary.todo = work.num_rows
        if builtin:
            _predict_builtin(catalog, run_id, name, work, summary, num_workers, quiet)
        elif work.num_rows:
            options = dict(batch_size=batch_size, num_workers=num_workers, amp=amp, amp_dtype=amp_dtype,
                           compile=compile, fast_matmul=fast_matmul, channels_last=channels_last)
            _predict_model(catalog, run_id, loaded, kind, name, work, summary, options, commit_every, quiet)
        summary.seconds = round(time.monotonic() - started, 3)
        summary.images_per_second = round(summary.written / summary.seconds, 1) if summary.seconds else 0.0
        catalog.finish_run(run_id, summary=asdict(summary))
    return summary


def embed_paths(catalog: Catalog, set_name: str, paths: list[str], *, models_dir: str = "models",
                device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Vectors for arbitrary files with the model that made `set_name`: (vectors [n, d], ok mask [n])."""
    rows = catalog.rows("SELECT model, kind, dim FROM embedding_sets WHERE name = ?", [set_name])
    if not rows:
        raise StageError(f"no embedding set named {set_name!r}")
    model, kind, dim = rows[0]
    vectors = np.zeros((len(paths), dim), np.float32)
    ok = np.zeros(len(paths), bool)
    if set_name == BUILTIN_MODEL or model == "builtin-dct":
        for i, path in enumerate(paths):
            v = _builtin_one(path)
            if v is not None:
                vectors[i], ok[i] = v, True
        return vectors, ok
    from vdc_lake.models import load_model, run_inference

    loaded = load_model(models_dir, model, device=device)
    for batch in run_inference(loaded, paths, kind=kind, num_workers=0):
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
        for batch in result.batches():
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
