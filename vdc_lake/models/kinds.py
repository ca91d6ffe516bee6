"""What a model is run for (rotation, descriptor, embedding): its forward call and output width.

"rotation" is the softmax over the 4 classes 0/90/180/270, "descriptor" the raw logits (SSCD's
512-d copy-detection descriptor) and "embedding" birder's pooled `net.embedding(x)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from vdc_lake.models.checkpoints import ROTATION_CLASSES, ModelError
from vdc_lake.models.loading import LoadedModel

InferenceKind = Literal["rotation", "descriptor", "embedding"]
INFERENCE_KINDS: tuple[str, ...] = ("rotation", "descriptor", "embedding")


def output_dim(loaded: LoadedModel, kind: str) -> int:
    """Width d of run_inference's outputs for this model and kind."""
    if kind == "embedding":
        if loaded.embedding_size is None:
            raise ModelError(f"{loaded.name} does not report an embedding size; use a .pt checkpoint")
        return int(loaded.embedding_size)
    return int(loaded.num_classes)


def check_kind(loaded: LoadedModel, kind: str) -> None:
    if kind not in INFERENCE_KINDS:
        raise ModelError(f"unknown inference kind {kind!r}: use one of {', '.join(INFERENCE_KINDS)}")
    if kind in ("rotation", "descriptor") and loaded.num_classes == 0:
        raise ModelError(f"{loaded.name} has no classifier head (0 classes): use kind 'embedding'")
    if kind == "rotation" and loaded.num_classes != 4:
        raise ModelError(
            f"{loaded.name} has {loaded.num_classes} classes, a rotation model has 4 (0/90/180/270): "
            f"use e.g. rope_vit_reg8_so150m_p14_swiglu_rms_ap_rotnet-capi"
        )
    if kind == "embedding" and not hasattr(loaded.net, "embedding"):
        raise ModelError(f"{loaded.name} ({loaded.path.suffix}) has no embedding method: use its .pt checkpoint")


def forward_fn(net: torch.nn.Module, kind: InferenceKind) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model call for a kind: normalised float32 [b, 3, H, W] -> float32 [b, d]."""
    if kind == "rotation":
        return lambda x: torch.softmax(net(x).float(), dim=1)
    if kind == "descriptor":
        return lambda x: net(x).float()
    return lambda x: net.embedding(x).float()


def rotation_order(loaded: LoadedModel) -> list[int]:
    names = list(loaded.class_names)
    if sorted(names) != sorted(ROTATION_CLASSES):
        return list(range(4))  # birder's train_rotnet order
    return [names.index(c) for c in ROTATION_CLASSES]


def rotation_angles(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Clockwise correction in degrees per row of probs [n, 4] ordered [0, 90, 180, 270]: the top
    class's angle when it is not 0 and its probability is above threshold, else 0. Same rule
    and tie-break (first maximum) as sql/views/20_decisions/rotation_actions.sql; compared in float64 like DuckDB."""
    probs = np.asarray(probs, dtype=np.float32)
    top = probs.argmax(axis=1)
    confident = probs[np.arange(len(probs)), top].astype(np.float64) > float(threshold)
    return np.where(confident & (top != 0), top * 90, 0).astype(np.int16)
