"""One model over image files: run_inference, a decode pass with one model."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vdc_lake.models.kinds import InferenceKind
from vdc_lake.models.loading import LoadedModel
from vdc_lake.models.options import InferenceOptions
from vdc_lake.models.passes import PassBatch, PassModel, run_pass


@dataclass
class InferenceBatch:
    """One batch of results. indices: int64 [b] positions in the input paths that succeeded;
    outputs: float32 [b, d]; failed: int64 [f] positions that could not be decoded, with one
    reason each in errors."""

    indices: np.ndarray
    outputs: np.ndarray
    failed: np.ndarray
    errors: list[str]

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"InferenceBatch(n={len(self.indices)}, dim={self.outputs.shape[1]}, failed={len(self.failed)})"


def run_inference(
    loaded: LoadedModel,
    paths: Sequence[str | os.PathLike],
    options: InferenceOptions | None = None,
    *,
    kind: InferenceKind,
    progress: Callable[[int], Any] | None = None,
    **given: Any,
) -> Iterator[InferenceBatch]:
    """InferenceBatch results for `paths`, in input order, computed on loaded.device.

    Arguments are checked before anything runs (ModelError); batches come as iterated.

    kind: "rotation" -> softmax probabilities [b, 4]; "descriptor" -> raw logits [b, classes]
    (SSCD: 512); "embedding" -> birder's pooled embedding [b, embedding_size].
    options (None: the bundled config's) with the option values `given` on top: see run_pass,
    of which this is the one-model case. An image that does not decode, or whose header gives
    more than options.max_pixels pixels, is a failed position with its reason.
    """
    batches = run_pass([PassModel(loaded, kind)], paths, options, progress=progress, **given)
    return _single_model_batches(batches)

def _single_model_batches(batches: Iterator[PassBatch]) -> Iterator[InferenceBatch]:
    for batch in batches:
        ok = batch.done[0]
        yield InferenceBatch(
            indices=batch.indices[ok],
            outputs=np.ascontiguousarray(batch.outputs[0][ok]),
            failed=batch.indices[~ok],
            errors=[e for e, done in zip(batch.errors, ok) if not done],
        )
