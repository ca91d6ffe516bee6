"""Filters: distance to unwanted examples, and scores from small torch heads over embeddings.

Both store per-image numbers (`example_distances`, `scores`); the decisions are table macros
(`example_actions(threshold)`, `score_actions(name, min_score, max_score)`), so moving a
threshold is a query, not a recomputation.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch

from vdc_lake.catalog.connection import Catalog
from vdc_lake.fileops.confine import check_name
from vdc_lake.errors import StageError
from vdc_lake.catalog.sets import VectorBatch, iter_vectors, per_image_table, set_dim
from vdc_lake.models.options import InferenceOptions, given_options

CHUNK_ROWS = 65536


@dataclass
class FilterSummary:
    run_id: int
    name: str
    n_images: int
    n_examples: int = 0


def nearest_distance(x: np.ndarray, examples: np.ndarray, *, chunk_rows: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distance from each row of x [n, d] to its nearest row of examples [m, d].

    Returns (distance [n] float32, index of the nearest example [n] int64). Chunked matmul.
    """
    e = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(examples, np.float32)), dim=1)
    distances = np.empty(len(x), np.float32)
    nearest = np.empty(len(x), np.int64)
    for start in range(0, len(x), chunk_rows):
        chunk = torch.tensor(x[start:start + chunk_rows], dtype=torch.float32)  # x may be a read-only Arrow view
        sims = torch.nn.functional.normalize(chunk, dim=1) @ e.T
        best, idx = sims.max(dim=1)
        distances[start:start + len(chunk)] = (1.0 - best).numpy()
        nearest[start:start + len(chunk)] = idx.numpy()
    return distances, nearest


def _example_vectors(catalog: Catalog, set_name: str, examples: Path,
                     options: InferenceOptions) -> tuple[np.ndarray, list[str]]:
    """Examples as vectors of the same kind as the set: a birder embeddings file, or a folder."""
    if examples.is_file():
        from vdc_lake.models.result_files import read_result_file

        result = read_result_file(examples)
        return result.values.astype(np.float32), list(result.samples)
    if not examples.is_dir():
        raise StageError(f"examples {examples} is neither a folder of images nor a birder embeddings file")
    from vdc_lake.models.embed import embed_paths

    paths = sorted(str(p) for p in examples.rglob("*") if p.is_file())
    if not paths:
        raise StageError(f"no example images in {examples}")
    vectors, ok = embed_paths(catalog, set_name, paths, options)
    return vectors[ok], [p for p, good in zip(paths, ok) if good]


def filter_by_examples(catalog: Catalog, set_name: str, examples: str | Path, *, metric: str | None = None,
                       options: InferenceOptions | None = None, **given: Any) -> FilterSummary:
    """Store each present image's distance to its nearest unwanted example.

    options: how example images are embedded (InferenceOptions; None: the bundled config's),
    with the option values `given` on top (models_dir=..., device=...). metric: None: the bundled
    filter_by_examples.metric."""
    from vdc_lake.config.loader import bundled_defaults

    check_name(set_name)
    metric = metric or bundled_defaults()["filter_by_examples"]["metric"]
    if metric != "cosine":
        raise StageError(f"metric {metric!r} is not supported; use cosine")
    options = given_options(options, given)
    params = {"set": set_name, "examples": str(examples), "metric": metric}
    with catalog.run("filter-examples", params) as run_id:
        dim = set_dim(catalog, "embeddings", set_name)
        example_vectors, names = _example_vectors(catalog, set_name, Path(examples), options)
        if example_vectors.shape[1] != dim:
            raise StageError(f"examples are {example_vectors.shape[1]}-d but set {set_name!r} is "
                             f"{dim}-d: embed them with the same model")
        rows, (distance, nearest) = _per_batch(
            catalog, set_name, lambda batch: nearest_distance(batch.vectors, example_vectors), 2)
        with catalog.transaction():
            catalog.insert_arrow("example_distances", per_image_table(
                run_id, rows, set_name=pa.repeat(pa.scalar(set_name, pa.string()), len(rows)), distance=distance,
                example=pa.array(names, pa.string()).take(pa.array(nearest))))
        summary = FilterSummary(run_id, set_name, len(rows), len(names))
        catalog.finish_run(run_id, summary=asdict(summary))
    return summary


def _per_batch(catalog: Catalog, set_name: str, compute: Callable[[VectorBatch], tuple[np.ndarray, ...]],
               width: int) -> tuple[VectorBatch, list[np.ndarray]]:
    """Run compute over the set's current vectors a batch at a time ([scale] vector_batch_rows);
    returns the rows' ids (vectors empty) and compute's `width` per-row outputs joined, in that order.
    Memory: one batch of vectors plus the per-row outputs, whatever the set's size."""
    ids, versions, outputs = [], [], []
    for batch in iter_vectors(catalog, "embeddings", set_name):
        ids.append(batch.image_ids)
        versions.append(batch.versions)
        outputs.append(compute(batch))
    dim = set_dim(catalog, "embeddings", set_name)
    rows = VectorBatch(np.concatenate(ids) if ids else np.zeros(0, np.int64),
                       np.concatenate(versions) if versions else np.zeros(0, np.int32), np.zeros((0, dim), np.float32))
    joined = [np.concatenate([o[i] for o in outputs]) if outputs else np.zeros(0) for i in range(width)]
    return rows, joined


def load_head(path: str | Path, *, activation: str = "none") -> torch.nn.Module:
    """A score head: TorchScript, a pickled nn.Module, or a state dict of Linear layers.

    A state dict is read as Linear layers in key order (weight [out, in] + bias), joined by
    `activation` (none | relu | gelu); LAION's aesthetic MLP is such a stack with no activation.
    """
    path = Path(path)
    if not path.is_file():
        raise StageError(f"score head {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript heads are still common; its deprecation is noise here
            return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError):
        pass
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise StageError(f"{path} is not a state dict or TorchScript module")
    return _mlp_from_state_dict(obj, activation).eval()


def _mlp_from_state_dict(state: dict[str, Any], activation: str) -> torch.nn.Module:
    weights = [k for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    if not weights:
        raise StageError("the score head's state dict has no Linear weights")
    layers: list[torch.nn.Module] = []
    act = {"none": None, "relu": torch.nn.ReLU, "gelu": torch.nn.GELU}[activation]
    for i, key in enumerate(weights):
        w = state[key]
        layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=key[:-6] + "bias" in state)
        layer.weight.data.copy_(w)
        if layer.bias is not None:
            layer.bias.data.copy_(state[key[:-6] + "bias"])
        layers.append(layer)
        if act is not None and i < len(weights) - 1:
            layers.append(act())
    return torch.nn.Sequential(*layers)


def score_images(catalog: Catalog, set_name: str, head_path: str | Path, name: str, *, activation: str = "none",
                 l2_normalize: bool = True, output_index: int = 0, batch_size: int = 65536) -> FilterSummary:
    """Run a head over the set's vectors and store one score per image under `name`."""
    check_name(set_name)
    check_name(name, "score name")
    head = load_head(head_path, activation=activation)
    params = {"set": set_name, "head": str(head_path), "name": name, "activation": activation,
              "l2_normalize": l2_normalize, "output_index": output_index}
    with catalog.run("score", params) as run_id:
        def score_batch(batch: VectorBatch) -> tuple[np.ndarray]:
            scores = np.empty(len(batch), np.float32)
            with torch.inference_mode():
                for start in range(0, len(batch), batch_size):
                    x = torch.from_numpy(batch.vectors[start:start + batch_size])
                    if l2_normalize:
                        x = torch.nn.functional.normalize(x, dim=1)
                    try:
                        out = head(x)
                    except RuntimeError as e:
                        raise StageError(f"score head does not fit {batch.vectors.shape[1]}-d vectors of "
                                         f"{set_name!r}: {e}") from e
                    scores[start:start + len(x)] = out.reshape(len(x), -1)[:, output_index].float().numpy()
            return (scores,)

        rows, (scores,) = _per_batch(catalog, set_name, score_batch, 1)
        with catalog.transaction():
            catalog.insert_arrow("scores", per_image_table(
                run_id, rows, name=pa.repeat(pa.scalar(name, pa.string()), len(rows)), score=scores))
        summary = FilterSummary(run_id, name, len(rows))
        catalog.finish_run(run_id, summary=asdict(summary))
    return summary
