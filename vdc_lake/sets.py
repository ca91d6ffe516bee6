"""Embedding and prediction sets: registration, bulk writes and vector reads through Arrow.

Vectors are stored as FLOAT[] rows in one long table per kind (`embeddings`, `predictions`)
keyed by set name and (image_id, version); reads cast to FLOAT[dim] and take the flat Arrow
buffer, which is far faster than fetchnumpy for arrays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from vdc_lake.catalog import Catalog
from vdc_lake.errors import StageError


@dataclass
class VectorSet:
    """Vectors of one set for present images at their current version.

    image_ids [n] int64, versions [n] int32, vectors [n, d] float32, paths [n] (absolute).
    """

    name: str
    image_ids: np.ndarray
    versions: np.ndarray
    vectors: np.ndarray
    paths: list[str]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        return f"VectorSet({self.name!r}, n={len(self)}, dim={self.vectors.shape[1] if self.vectors.ndim == 2 else 0})"


def per_image_table(run_id: int, vs: VectorSet, **columns: Any) -> pa.Table:
    """An Arrow table of (run_id, image_id, version) for every row of vs, plus `columns`."""
    n = len(vs)
    return pa.table({
        "run_id": pa.array(np.full(n, run_id, np.int64)),
        "image_id": pa.array(vs.image_ids),
        "version": pa.array(vs.versions.astype(np.int32)),
        **{name: (values if isinstance(values, pa.Array) else pa.array(values)) for name, values in columns.items()},
    })


def _vector_column(vectors: np.ndarray) -> pa.Array:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    return fixed.cast(pa.list_(pa.float32()))


# SSCD (resnet_v1_50_c1_sscd): VDC's GLDv2 walkthrough applies at cosine distance 0.25, reports at 0.5.
SSCD_DEDUP_THRESHOLDS = (0.25, 0.5)


def recommended_dedup_thresholds(model: str | None) -> tuple[float | None, float | None]:
    """(apply, report) cosine-distance thresholds known to suit the model's vectors, or (None, None)
    without a recommendation (the config's [apply_deduplication] / [dedup] values apply)."""
    from vdc_lake.descriptor import DEDUP_APPLY_THRESHOLD, DEDUP_REPORT_THRESHOLD, DESCRIPTOR_NAME

    if model == DESCRIPTOR_NAME:
        return DEDUP_APPLY_THRESHOLD, DEDUP_REPORT_THRESHOLD
    if model and "sscd" in model.lower():
        return SSCD_DEDUP_THRESHOLDS
    return None, None


def register_embedding_set(catalog: Catalog, name: str, *, kind: str, model: str | None, dim: int,
                           preprocessing: dict[str, Any] | None, run_id: int) -> None:
    """Create the set's registry row (with the model's recommended dedup thresholds), or check
    that an existing one has the same dimension (and fill in thresholds it lacks)."""
    apply_threshold, report_threshold = recommended_dedup_thresholds(model)
    existing = catalog.rows("SELECT dim FROM embedding_sets WHERE name = ?", [name])
    if existing:
        if existing[0][0] != dim:
            raise StageError(f"embedding set {name!r} holds {existing[0][0]}-d vectors, not {dim}-d; "
                             "choose another --tag/--set name")
        catalog.execute("UPDATE embedding_sets SET apply_threshold = coalesce(apply_threshold, ?), "
                        "report_threshold = coalesce(report_threshold, ?) WHERE name = ?",
                        [apply_threshold, report_threshold, name])
        return
    catalog.execute("INSERT INTO embedding_sets (name, kind, model, dim, preprocessing, created_run, "
                    "apply_threshold, report_threshold) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [name, kind, model, dim, json.dumps(preprocessing or {}), run_id, apply_threshold,
                     report_threshold])


BUILTIN_SET = "builtin"


def register_builtin_set(catalog: Catalog, run_id: int, name: str = BUILTIN_SET) -> None:
    """Register a set of the weight-free descriptor (sanitize's decode pass and
    `predict --model builtin` write the same vectors; the default set is shared)."""
    from vdc_lake.descriptor import DESCRIPTOR_DIM, DESCRIPTOR_NAME, THUMBNAIL_SIZE

    register_embedding_set(catalog, name, kind="descriptor", model=DESCRIPTOR_NAME, dim=DESCRIPTOR_DIM,
                           preprocessing={"thumbnail": THUMBNAIL_SIZE, "grayscale": True}, run_id=run_id)


def register_prediction_set(catalog: Catalog, name: str, *, kind: str, model: str | None,
                            class_names: list[str], preprocessing: dict[str, Any] | None, run_id: int) -> None:
    if catalog.scalar("SELECT count(*) FROM prediction_sets WHERE name = ?", [name]):
        return
    catalog.execute("INSERT INTO prediction_sets VALUES (?, ?, ?, ?, ?, ?)",
                    [name, kind, model, class_names, json.dumps(preprocessing or {}), run_id])


def write_vectors(catalog: Catalog, table: str, name: str, run_id: int, image_ids: np.ndarray,
                  versions: np.ndarray, vectors: np.ndarray) -> int:
    """Append rows to `embeddings` (column vector) or `predictions` (column probs)."""
    column = {"embeddings": "vector", "predictions": "probs"}[table]
    n = len(image_ids)
    return catalog.insert_arrow(table, pa.table({
        "set_name": pa.array([name] * n, pa.string()),
        "image_id": pa.array(np.asarray(image_ids, dtype=np.int64)),
        "version": pa.array(np.asarray(versions, dtype=np.int32)),
        "run_id": pa.array(np.full(n, run_id, dtype=np.int64)),
        column: _vector_column(vectors),
    }))


def set_dim(catalog: Catalog, table: str, name: str) -> int:
    registry = {"embeddings": "embedding_sets", "predictions": "prediction_sets"}[table]
    if not catalog.scalar(f"SELECT count(*) FROM {registry} WHERE name = ?", [name]):
        known = [r[0] for r in catalog.rows(f"SELECT name FROM {registry} ORDER BY name")]
        raise StageError(f"no set named {name!r}; known sets: {', '.join(known) or 'none yet'} "
                         "(create one with `vdc-lake predict` or `vdc-lake import`)")
    if table == "embeddings":
        return int(catalog.scalar("SELECT dim FROM embedding_sets WHERE name = ?", [name]))
    return int(catalog.scalar("SELECT len(class_names) FROM prediction_sets WHERE name = ?", [name]))


def read_vectors(catalog: Catalog, table: str, name: str) -> VectorSet:
    """Current-version vectors of present images; the newest run wins if computed twice."""
    column = {"embeddings": "vector", "predictions": "probs"}[table]
    dim = set_dim(catalog, table, name)
    data = catalog.arrow(
        f"""
        SELECT e.image_id, e.version, i.root || '/' || i.rel_path AS path, e.{column}::FLOAT[{dim}] AS v
        FROM {table} e JOIN images i ON i.image_id = e.image_id AND i.version = e.version AND i.present
        WHERE e.set_name = ?
        QUALIFY row_number() OVER (PARTITION BY e.image_id ORDER BY e.run_id DESC) = 1
        ORDER BY e.image_id
        """,
        [name],
    )
    flat = data.column("v").combine_chunks()
    vectors = flat.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    return VectorSet(
        name=name,
        image_ids=data.column("image_id").to_numpy(),
        versions=data.column("version").to_numpy(),
        vectors=vectors,
        paths=data.column("path").to_pylist(),
    )


def missing_images(catalog: Catalog, table: str, name: str) -> pa.Table:
    """Present images with no row in the set for their current version (work for predict)."""
    return catalog.arrow(
        f"""
        SELECT i.image_id, i.version, i.root || '/' || i.rel_path AS path
        FROM images i
        WHERE i.present AND i.header_error IS NULL
          AND NOT EXISTS (SELECT 1 FROM {table} e WHERE e.set_name = ? AND e.image_id = i.image_id
                          AND e.version = i.version)
        ORDER BY i.image_id
        """,
        [name],
    )
