"""One decode, several models: batched inference over image files (run_pass).

A decode pass feeds every model of a `predict` from one decode of each image. Workers decode
(JPEG at reduced DCT scale when the file is far larger than any model needs: `draft_size`) and
either resize for every model themselves (CPU device: the workers are the parallel compute) or
ship the uint8 image (CUDA: resized per model on the device, or JPEG bytes that nvJPEG decodes
there). Each model's resize is birder's own preset steps on the same uint8 pixels, so a model
computes the same numbers in a pass as alone. With a rotation model and a threshold, the
rotation model runs first and the other models see each image turned by its predicted angle.
No catalog, no printing: callers own I/O and progress display.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from vdc_lake.models.checkpoints import ModelError, one_line
from vdc_lake.models.datasets import PREFETCH_BATCHES, PassDataset, collate_pass
from vdc_lake.models.decoding import (
    decode_for_pass, decode_jpegs_on_device, draft_size_for, resolve_decode, rotate_clockwise,
)
from vdc_lake.models.kinds import check_kind, forward_fn, output_dim, rotation_angles, rotation_order
from vdc_lake.models.loading import LoadedModel, preprocessing_steps
from vdc_lake.models.options import AMP_DTYPES, InferenceOptions, given_options


@dataclass(frozen=True)
class PassModel:
    """One model of a decode pass and the kind of output it gives (see run_inference)."""

    loaded: LoadedModel
    kind: str


@dataclass
class PassBatch:
    """One batch of a decode pass, rows in input order.

    indices: int64 [b] positions in the pass's paths; outputs[m]: float32 [b, d_m] for model m,
    valid where done[m] (a row is not done when the model was not asked for it, or the image
    did not decode); errors: [b] "" or why the image did not decode; angles: int16 [b] degrees
    clockwise the image was turned for the non-rotation models (0: as stored)."""

    indices: np.ndarray
    outputs: list[np.ndarray]
    done: np.ndarray
    errors: list[str]
    angles: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"PassBatch(n={len(self.indices)}, done={self.done.sum(axis=1).tolist()}, rotated={int((self.angles != 0).sum())})"


def _resize_on(images: list[torch.Tensor], resize: Callable[[torch.Tensor], torch.Tensor],
               size: tuple[int, int]) -> torch.Tensor:
    """uint8 [n, 3, H, W]: each image resized with `resize`, images of one shape in one call."""
    out = torch.empty((len(images), 3, *size), dtype=torch.uint8, device=images[0].device)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    for rows in groups.values():
        out[rows] = resize(torch.stack([images[i] for i in rows]))
    return out


@dataclass
class _PassStep:
    """What the pass needs per model: its preprocessing and compiled forward."""

    model: PassModel
    resize: Callable[[torch.Tensor], torch.Tensor]
    normalize: Callable[[torch.Tensor], torch.Tensor]
    forward: Callable[[torch.Tensor], torch.Tensor]
    rotation_order: list[int] | None  # columns of its probs as [0, 90, 180, 270] (the rotation model)


def run_pass(
    models: Sequence[PassModel],
    paths: Sequence[str | os.PathLike],
    options: InferenceOptions | None = None,
    *,
    needs: np.ndarray | None = None,
    rotation: int | None = None,
    known_rotation: np.ndarray | None = None,
    progress: Callable[[int], Any] | None = None,
    **given: Any,
) -> Iterator[PassBatch]:
    """PassBatch results of every model for `paths`, each image decoded once, in input order.

    options: how to run (InferenceOptions; None: the bundled config's); `given` are option
    values on top of them (batch_size=4, decode="cpu", ...).
    needs: bool [n_models, n_paths], which model must run on which image (default: all).
    rotation: index of the rotation model in `models`; with options.rotate_threshold, the other
    models see each image turned clockwise by its predicted angle when the probability is above
    the threshold (rotation_angles). Where the rotation model is not needed for an image another
    model needs, its probabilities come from known_rotation float32 [n_paths, 4] ([0, 90, 180,
    270]; NaN: unknown, then the rotation model runs anyway and its row is marked done).
    options.decode: "auto" | "cpu" | "gpu" (resolve_decode). All models must be on one device.
    options.draft_min_size: see draft_size_for (0: JPEGs decode at full size, as birder's loader).
    Decoding runs in options.num_workers DataLoader processes; on the CPU they also resize, on
    CUDA they ship uint8 pixels (or, with decode gpu/auto, JPEG bytes for nvJPEG) to pinned
    memory and resizing and normalisation happen on the GPU, copies are non-blocking and each
    batch's results are read back only after the next batch is queued, so the GPU never waits on
    decoding or on the host. amp autocasts to amp_dtype; fast_matmul allows TF32 for the
    duration; channels_last converts each net in place. progress(n) is called with the number
    of images finished after each batch. An image whose header gives more than max_pixels
    pixels is not decoded (a row that is not done, reason given).
    ModelError before anything runs when the options do not fit.
    """
    options = given_options(options, given)
    if not models:
        raise ModelError("a decode pass needs at least one model")
    device = models[0].loaded.device
    if any(m.loaded.device != device for m in models):
        raise ModelError("the models of one pass must be on one device")
    for m in models:
        check_kind(m.loaded, m.kind)
    if options.amp_dtype not in AMP_DTYPES:
        raise ModelError(f"unknown amp dtype {options.amp_dtype!r}: use {' or '.join(AMP_DTYPES)}")
    if rotation is not None and models[rotation].kind != "rotation":
        raise ModelError(f"{models[rotation].loaded.name} is not run as a rotation model (kind 'rotation')")
    n = len(paths)
    needs = np.ones((len(models), n), bool) if needs is None else np.asarray(needs, bool)
    turning = rotation is not None and options.rotate_threshold is not None and len(models) > 1
    if turning:
        known = np.full((n, 4), np.nan, np.float32) if known_rotation is None else np.asarray(known_rotation, np.float32)
        others = np.delete(needs, rotation, axis=0).any(axis=0)
        needs = needs.copy()
        needs[rotation] |= others & np.isnan(known).any(axis=1)  # an angle nobody stored: compute it
    on_cuda = device.type == "cuda"
    gpu_decode = resolve_decode(options.decode, device) == "gpu"
    steps = []
    for m in models:
        resize, normalize = preprocessing_steps(m.loaded)
        forward = forward_fn(m.loaded.net, m.kind)
        if options.compile:
            forward = torch.compile(forward)
        if options.channels_last:
            m.loaded.net.to(memory_format=torch.channels_last)
        order = rotation_order(m.loaded) if m.kind == "rotation" else None
        steps.append(_PassStep(m, resize, normalize, forward, order))
    dataset = PassDataset(
        paths, [] if on_cuda else [s.resize for s in steps], [m.loaded.size for m in models],
        ship_full=on_cuda or turning, gpu_jpeg=gpu_decode, max_pixels=options.max_pixels,
        draft_size=draft_size_for([m.loaded for m in models], options.draft_min_size),
    )
    workers = options.num_workers
    loader = DataLoader(dataset, batch_size=options.batch_size, shuffle=False, num_workers=workers,
                        pin_memory=on_cuda, prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
                        collate_fn=collate_pass)
    autocast = torch.autocast(device.type, dtype=getattr(torch, options.amp_dtype), enabled=options.amp)
    precision = "high" if (options.fast_matmul or options.amp) else None
    context = _PassContext(steps, dataset, device, needs, rotation if turning else None,
                           options.rotate_threshold, known if turning else None, options.max_pixels)
    return _pass_batches(context, loader, autocast, precision, options.channels_last, progress)


@dataclass
class _PassContext:
    steps: list[_PassStep]
    dataset: PassDataset
    device: torch.device
    needs: np.ndarray
    rotation: int | None
    threshold: float | None
    known: np.ndarray | None
    max_pixels: int | None


def _pass_batches(context: _PassContext, loader: DataLoader, autocast: torch.autocast, precision: str | None,
                  channels_last: bool, progress: Callable[[int], Any] | None) -> Iterator[PassBatch]:
    with _matmul_precision(precision):
        pending: _PendingPass | None = None
        for batch in loader:
            with torch.inference_mode(), autocast:
                current = _run_pass_batch(context, batch, channels_last)
            if pending is not None:  # read back batch i-1 while batch i runs
                yield pending.finish(progress)
            pending = current
        if pending is not None:
            yield pending.finish(progress)


def _device_images(context: _PassContext, batch: dict[str, Any], errors: list[str]) -> list[torch.Tensor | None]:
    """The batch's decoded images on the device (None where the image did not decode): shipped
    pixels copied, JPEG bytes decoded by nvJPEG, and what nvJPEG refuses decoded here on the CPU."""
    index = batch["index"].tolist()
    images: list[torch.Tensor | None] = [None] * len(index)
    jpeg_rows = [row for row, data in enumerate(batch["jpeg"]) if data is not None]
    decoded = decode_jpegs_on_device([batch["jpeg"][row] for row in jpeg_rows], context.device)
    for row, image in zip(jpeg_rows, decoded):
        if image is None:
            try:
                image = decode_for_pass(context.dataset.path(index[row]), max_pixels=context.max_pixels,
                                        draft_size=context.dataset.draft_size).to(context.device)
            except Exception as e:
                errors[row] = f"cannot decode: {one_line(e)}"
        images[row] = image
    for row, full in enumerate(batch["full"]):
        if full is not None:
            images[row] = full.to(context.device, non_blocking=True)
    return images


def _run_pass_batch(context: _PassContext, batch: dict[str, Any], channels_last: bool) -> _PendingPass:
    errors = list(batch["errors"])
    index = batch["index"].numpy()
    resized = bool(batch["inputs"])  # by the workers (CPU device), else here from the decoded images
    images = _device_images(context, batch, errors) if (not resized or context.rotation is not None) else None
    ok = np.array([e == "" for e in errors], bool)
    angles = np.zeros(len(index), np.int16)
    order = list(range(len(context.steps)))
    if context.rotation is not None:
        order.remove(context.rotation)
        order.insert(0, context.rotation)
    outputs: list[tuple[np.ndarray, torch.Tensor] | None] = [None] * len(context.steps)
    for m in order:
        step = context.steps[m]
        rows = np.flatnonzero(ok & context.needs[m, index])
        if m == context.rotation:
            probs = None
            if len(rows):
                probs = _forward_rows(step, context, batch, images, rows, angles, m, channels_last)
                outputs[m] = (rows, probs)
            angles = _pass_angles(context, index, ok, rows, probs)
            continue
        if len(rows):
            outputs[m] = (rows, _forward_rows(step, context, batch, images, rows, angles, m, channels_last))
    return _PendingPass.start(index, outputs, [s.model for s in context.steps], errors, angles)


def _pass_angles(context: _PassContext, index: np.ndarray, ok: np.ndarray, rows: np.ndarray,
                 probs: torch.Tensor | None) -> np.ndarray:
    """Clockwise angle per batch row for the models after the rotation model."""
    known = context.known[index].copy()
    if probs is not None:
        order = context.steps[context.rotation].rotation_order
        known[rows] = probs.float().cpu().numpy()[:, order]
    angles = np.zeros(len(index), np.int16)
    usable = ok & ~np.isnan(known).any(axis=1)
    angles[usable] = rotation_angles(known[usable], context.threshold)
    return angles


def _forward_rows(step: _PassStep, context: _PassContext, batch: dict[str, Any], images: list[torch.Tensor | None] | None,
                  rows: np.ndarray, angles: np.ndarray, m: int, channels_last: bool) -> torch.Tensor:
    """The model's outputs [len(rows), d] on the device for the batch rows `rows`."""
    turned = [] if m == context.rotation else [i for i, r in enumerate(rows) if angles[r]]
    if batch["inputs"]:  # resized by the workers; images they did not see turned are resized here
        x = batch["inputs"][m][torch.from_numpy(rows)]
        if turned:
            x = x.clone()
            x[turned] = _resize_on([rotate_clockwise(images[rows[i]], int(angles[rows[i]])) for i in turned],
                                   step.resize, step.model.loaded.size)
    else:
        pixels = [images[r] if m == context.rotation else rotate_clockwise(images[r], int(angles[r])) for r in rows]
        x = _resize_on(pixels, step.resize, step.model.loaded.size)
    x = step.normalize(x.to(context.device, non_blocking=True))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return step.forward(x)


@dataclass
class _PendingPass:
    """A batch whose outputs are still being computed / copied to the host."""

    index: np.ndarray
    outputs: list[tuple[np.ndarray, torch.Tensor] | None]
    dims: list[int]
    errors: list[str]
    angles: np.ndarray
    ready: torch.cuda.Event | None

    @classmethod
    def start(cls, index: np.ndarray, outputs: list[tuple[np.ndarray, torch.Tensor] | None],
              models: list[PassModel], errors: list[str], angles: np.ndarray) -> _PendingPass:
        dims = [output_dim(m.loaded, m.kind) for m in models]
        ready = None
        hosted: list[tuple[np.ndarray, torch.Tensor] | None] = []
        for item in outputs:
            if item is None or item[1].device.type != "cuda":
                hosted.append(item)
                continue
            host = torch.empty(item[1].shape, dtype=item[1].dtype, pin_memory=True)
            host.copy_(item[1], non_blocking=True)
            hosted.append((item[0], host))
        if any(item is not None and item[1].is_pinned() for item in hosted):
            ready = torch.cuda.Event()
            ready.record()
        return cls(index, hosted, dims, errors, angles, ready)

    def finish(self, progress: Callable[[int], Any] | None) -> PassBatch:
        if self.ready is not None:
            self.ready.synchronize()
        b = len(self.index)
        outputs = [np.zeros((b, d), np.float32) for d in self.dims]
        done = np.zeros((len(self.dims), b), bool)
        for m, item in enumerate(self.outputs):
            if item is not None:
                rows, values = item
                outputs[m][rows] = values.float().numpy()
                done[m, rows] = True
        if progress is not None:
            progress(b)
        return PassBatch(self.index.astype(np.int64), outputs, done, self.errors, self.angles)


@contextmanager
def _matmul_precision(precision: str | None) -> Iterator[None]:
    """Set torch's float32 matmul precision for the block (TF32 on Ampere+), then restore it."""
    if precision is None:
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
