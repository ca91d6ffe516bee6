"""Vectors for arbitrary image files with the model that made an embedding set (filter examples).

The files are embedded as `predict` embedded the set's images: the same model at the set's
input size, the same decode (InferenceOptions), or the built-in descriptor for its sets.
"""

from __future__ import annotations

import json

import numpy as np

from vdc_lake.catalog.connection import Catalog
from vdc_lake.catalog.sets import BUILTIN_SET
from vdc_lake.errors import StageError
from vdc_lake.kernels.descriptor import BUILTIN_MODELS, builtin_vectors_for
from vdc_lake.models.options import InferenceOptions


def builtin_descriptor(path: str, max_pixels: int) -> np.ndarray | None:
    """The builtin descriptor of one file, or None when it does not decode or exceeds max_pixels."""
    from vdc_lake.fileops.probe import decode_check

    return decode_check(path, max_pixels=max_pixels, with_descriptor=True).descriptor


def embed_paths(catalog: Catalog, set_name: str, paths: list[str],
                options: InferenceOptions | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vectors for arbitrary files with the model that made `set_name`: (vectors float32 [n, d],
    ok bool [n]). options: how the model runs (None: the bundled config's); a file over
    options.max_pixels is not decoded (not ok), nor is one that does not decode."""
    options = options or InferenceOptions.from_config()
    rows = catalog.rows("SELECT model, kind, dim, preprocessing FROM embedding_sets WHERE name = ?", [set_name])
    if not rows:
        raise StageError(f"no embedding set named {set_name!r}")
    model, kind, dim, preprocessing = rows[0]
    vectors = np.zeros((len(paths), dim), np.float32)
    ok = np.zeros(len(paths), bool)
    if set_name == BUILTIN_SET or model in BUILTIN_MODELS:
        for i, path in enumerate(paths):
            v = builtin_descriptor(path, options.max_pixels)
            if v is not None:
                vectors[i], ok[i] = builtin_vectors_for(dim, v), True
        return vectors, ok
    from vdc_lake.models.inference import run_inference
    from vdc_lake.models.loading import load_model

    loaded = load_model(options.models_dir, model, device=options.device)
    size = (json.loads(preprocessing) if isinstance(preprocessing, str) else preprocessing or {}).get("size")
    if size and tuple(size) != tuple(loaded.size):  # the set was computed at --size N: embed at N too
        loaded = load_model(options.models_dir, model, device=options.device, size=tuple(size))
    # examples are few: decoding processes would cost more to start than they save
    for batch in run_inference(loaded, paths, options, kind=kind, num_workers=0):
        vectors[batch.indices] = batch.outputs
        ok[batch.indices] = True
    return vectors, ok
