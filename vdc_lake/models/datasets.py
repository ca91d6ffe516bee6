"""DataLoader datasets that decode image files in worker processes, never raising on a bad file."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vdc_lake.models.checkpoints import one_line
from vdc_lake.models.decoding import decode_for_pass, decode_rgb, gpu_jpeg_bytes
from vdc_lake.models.loading import LoadedModel, worker_transform
from vdc_lake.models.options import InferenceOptions, given_options

PREFETCH_BATCHES = 4  # batches each decoding worker keeps ready


class ImageFileDataset(Dataset):
    """Images by position in `paths`; item i -> (i, tensor, error), never raising on a bad file.

    error is "" on success; on failure it is a one-line reason and tensor is a zero image of
    the transform's output shape, so batches keep their shape and the caller records the
    failure (run_inference drops those rows from its outputs).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], transform: Callable[[Any], torch.Tensor],
                 max_pixels: int | None = None):
        # One numpy bytes array, not a list of str: forked workers would otherwise touch (and
        # copy) every Python object's refcount page.
        self._paths = np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)
        self.transform = transform
        self.max_pixels = max_pixels  # decompression-bomb limit; None: decode whatever the size
        self._blank: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, str]:
        path = os.fsdecode(self._paths[index])
        try:
            image = self.transform(decode_rgb(path, self.max_pixels))
        except Exception as e:  # any decoder or transform failure is a per-file finding
            return index, self._blank_image(), f"cannot decode: {one_line(e)}"
        blank = self._blank_image()
        if image.shape != blank.shape:  # would break the batch for every file in it
            return index, blank, f"unexpected decoded shape {tuple(image.shape)}"
        if image.dtype != blank.dtype:  # a 16-bit PNG when workers stop at uint8 (GPU path)
            from torchvision.transforms.v2.functional import to_dtype

            image = to_dtype(image, blank.dtype, scale=True)
        return index, image, ""

    def _blank_image(self) -> torch.Tensor:
        if self._blank is None:
            self._blank = torch.zeros_like(self.transform(torch.zeros(3, 8, 8, dtype=torch.uint8)))
        return self._blank


class PassDataset(Dataset):
    """Item i -> dict(index, error, inputs, full, jpeg) of paths[i] for a decode pass; never raises.

    inputs: uint8 [3, H_m, W_m] for each of `resizes` (zeros when the image did not decode);
    full: the decoded uint8 [3, h, w] when ship_full (the main process resizes it: on the
    device, or after turning it); jpeg: the file's bytes when gpu_jpeg and nvJPEG can decode
    it (inputs and full are then empty); error: "" or a one-line reason.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], resizes: Sequence[Callable[[torch.Tensor], torch.Tensor]],
                 sizes: Sequence[tuple[int, int]], *, ship_full: bool, gpu_jpeg: bool = False,
                 max_pixels: int | None = None, draft_size: int | None = None):
        self._paths = np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)  # see ImageFileDataset
        self.resizes = list(resizes)
        self.blanks = [torch.zeros(3, *size, dtype=torch.uint8) for size in sizes] if self.resizes else []
        self.ship_full, self.gpu_jpeg = ship_full, gpu_jpeg
        self.max_pixels, self.draft_size = max_pixels, draft_size

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> str:
        return os.fsdecode(self._paths[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"index": index, "error": "", "inputs": tuple(self.blanks), "full": None, "jpeg": None}
        path = self.path(index)
        try:
            if self.gpu_jpeg:
                item["jpeg"] = gpu_jpeg_bytes(path, self.max_pixels)
                if item["jpeg"] is not None:
                    return item
            pixels = decode_for_pass(path, max_pixels=self.max_pixels, draft_size=self.draft_size)
            item["inputs"] = tuple(self._resized(pixels))
        except Exception as e:  # any decoder or transform failure is a per-file finding
            item["error"] = f"cannot decode: {one_line(e)}"
            return item
        if self.ship_full:
            item["full"] = pixels
        return item

    def _resized(self, pixels: torch.Tensor) -> Iterator[torch.Tensor]:
        for resize, blank in zip(self.resizes, self.blanks):
            image = resize(pixels)
            if image.shape != blank.shape:
                raise ValueError(f"unexpected decoded shape {tuple(image.shape)}")
            yield image


def collate_pass(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "index": torch.tensor([item["index"] for item in items], dtype=torch.int64),
        "errors": [item["error"] for item in items],
        "inputs": tuple(torch.stack(images) for images in zip(*(item["inputs"] for item in items))),
        "full": [item["full"] for item in items],
        "jpeg": [item["jpeg"] for item in items],
    }


def image_loader(loaded: LoadedModel, paths: Sequence[str | os.PathLike], options: InferenceOptions | None = None,
                 **given: Any) -> DataLoader:
    """Batches (index int64 [b], images [b, 3, H, W], errors list[str]) for loaded's input alone.

    Images are float32 and normalised on CPU; on CUDA they are uint8 in pinned memory and
    `device_normalizer(loaded)` finishes them on the GPU. options (None: the bundled config's)
    with the values `given` on top give batch_size, num_workers and max_pixels: images over
    max_pixels (header) are not decoded, they come back as errors.
    """
    options = given_options(options, given)
    on_cuda = loaded.device.type == "cuda"
    return DataLoader(
        ImageFileDataset(paths, worker_transform(loaded), options.max_pixels),
        batch_size=options.batch_size,
        shuffle=False,
        num_workers=options.num_workers,
        pin_memory=on_cuda,
        prefetch_factor=PREFETCH_BATCHES if options.num_workers > 0 else None,
    )
