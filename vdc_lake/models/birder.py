"""birder models: find checkpoints, load them with birder's loader, and run batched inference.

Models live in a models directory (default `models/`) as birder writes them: the file stem is
the birder weights name, `NETWORK[_TAG]`, e.g. `models/resnet_v1_50_c1_sscd.pt` is network
`resnet_v1_50_c1` with tag `sscd`. Checkpoints do not store the network name, so it is read
from the file name: the pretrained-weights manifest first, else the longest network name
birder's registry knows that prefixes the stem. Users get weights on a connected machine with
`MODELS_DIR=models python -m birder.tools download-model NAME`.

Preprocessing is birder's `inference_preset` (bicubic resize to the model size, centre crop
1.0, normalise with the checkpoint's RGB stats) on images decoded like birder's default "tv"
loader (torchvision `decode_image`, RGB, EXIF orientation NOT applied), so outputs match
`python -m birder.scripts.predict`. Formats torchvision cannot decode (TIFF, BMP) fall back
to Pillow, as birder's "pil" loader would read them. Inference is a decode pass (run_pass):
each image is decoded once for any number of models, each of which applies its own preset
steps to those pixels; JPEGs far larger than every model decode at reduced DCT scale only
when asked (draft_min_size), and on CUDA they can decode on the GPU (nvJPEG).

Three inference kinds: "rotation" (softmax over the 4 classes 0/90/180/270), "descriptor"
(raw logits; SSCD's 512-d copy-detection descriptor) and "embedding" (birder's pooled
`net.embedding(x)`). No catalog, no printing: callers own I/O and progress display.
"""

from __future__ import annotations

import functools
import json
import os
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vdc_lake.models.names import import_birder_quietly, known_networks
from vdc_lake.errors import VdcLakeError

# birder is imported lazily (it takes seconds): `import vdc_lake.models.birder` stays cheap for the CLI.

InferenceKind = Literal["rotation", "descriptor", "embedding"]
INFERENCE_KINDS: tuple[str, ...] = ("rotation", "descriptor", "embedding")
MODEL_SUFFIXES: tuple[str, ...] = (".pt", ".safetensors", ".pts")  # load preference order
ROTATION_CLASSES = ["0", "90", "180", "270"]  # birder's train_rotnet class_to_idx order


class ModelError(VdcLakeError):
    """A model cannot be found, read or used as asked."""


# ---------------------------------------------------------------------------- names and files


def split_model_name(name: str) -> tuple[str, str | None] | None:
    """Split a birder weights name `NETWORK[_TAG]` into (network, tag); None if no network fits.

    Known pretrained names come from birder's manifest; otherwise the longest registered
    network name that is `name` itself or a prefix of it ending at an underscore wins, so
    `resnet_v1_50_c1_sscd` gives ("resnet_v1_50_c1", "sscd"), not ("resnet_v1_50", "c1_sscd").
    """
    import_birder_quietly()
    from birder.model_registry import registry

    if registry.pretrained_exists(name):
        net = registry.get_pretrained_metadata(name)["net"]
        return net["network"], net.get("tag")
    lower = name.lower()
    for network in known_networks():
        if lower == network:
            return name, None
        if lower.startswith(network + "_"):
            return name[: len(network)], name[len(network) + 1 :]
    return None


def model_file(models_dir: str | Path, name: str, *, tag: str | None = None) -> Path | None:
    """The checkpoint for `name` (or `name_tag`, birder's naming) in models_dir, or None.

    Preference when several formats exist: .pt, then .safetensors, then .pts.
    """
    stem = name if tag is None else f"{name}_{tag}"
    for suffix in MODEL_SUFFIXES:
        path = Path(models_dir) / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def _is_checkpoint_file(path: Path) -> bool:
    # birder writes optimizer states next to checkpoints as NAME_states.pt: not a model.
    return path.suffix in MODEL_SUFFIXES and not path.name.endswith("_states.pt")


def _download_hint(name: str) -> str:
    import_birder_quietly()
    from birder.model_registry import registry

    if registry.pretrained_exists(name):
        return (
            f"download it on a connected machine with `MODELS_DIR=models python -m birder.tools "
            f"download-model {name}` and copy it there, or pass --models-dir"
        )
    return (
        f"'{name}' is not a birder pretrained name (see `python -m birder.tools list-models "
        f"--pretrained`); put your own checkpoint there as NETWORK_TAG.pt, or pass --models-dir"
    )


# ---------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class ModelInfo:
    """What one checkpoint file says about itself, read without building the model's weights.

    size is the input resolution (H, W) in pixels from birder's signature; num_classes is the
    classifier width (0 for embedding-only models); embedding_size is the pooled feature width.
    loads is True when birder can rebuild the network and every tensor of the file fits it
    (for TorchScript .pts: when its birder metadata reads; embedding_size is then None);
    otherwise error says why.
    """

    name: str
    path: Path
    format: str
    network: str | None = None
    tag: str | None = None
    task: str | None = None
    kind: str | None = None
    size: tuple[int, int] | None = None
    num_classes: int | None = None
    embedding_size: int | None = None
    rgb_stats: dict[str, Any] | None = None
    class_names: list[str] | None = field(default=None, repr=False)
    birder_version: str | None = None
    loads: bool = False
    error: str | None = None


def list_models(models_dir: str | Path) -> list[ModelInfo]:
    """Every birder checkpoint (.pt, .safetensors, .pts) in models_dir, sorted by file name.

    Never raises for a bad file: it is listed with loads=False and a readable error.
    Raises ModelError only when models_dir itself is missing.
    """
    models_dir = Path(models_dir).expanduser()
    if models_dir.is_file():
        raise ModelError(f"--models-dir {models_dir} is a file, not the models folder: pass its folder "
                         f"(--models-dir {models_dir.parent})")
    if not models_dir.is_dir():
        raise ModelError(
            f"models directory {models_dir} does not exist: create it and download models into it "
            f"(`MODELS_DIR={models_dir} python -m birder.tools download-model NAME`), or pass --models-dir"
        )
    paths = sorted(p for p in models_dir.iterdir() if p.is_file() and _is_checkpoint_file(p))
    return [inspect_model_file(p) for p in paths]


def inspect_model_file(path: str | Path) -> ModelInfo:
    """Read one checkpoint's birder metadata and check that its tensors fit the network."""
    path = Path(path)
    info = ModelInfo(name=path.stem, path=path, format=path.suffix.lstrip("."))
    split = split_model_name(path.stem)
    if split is not None:
        info = _replace(info, network=split[0], tag=split[1])
    try:
        meta, state = _read_checkpoint_metadata(path)
        info = _with_metadata(info, meta)
    except Exception as e:  # a broken file must not stop a listing
        return _replace(info, error=f"cannot read {path.name}: {_one_line(e)}; re-download or re-export it")
    if split is None:
        return _replace(info, error=f"no birder network name fits '{path.stem}': name the file NETWORK[_TAG]")
    return _check_loads(info, meta, state)


def _replace(info: ModelInfo, **changes: Any) -> ModelInfo:
    return ModelInfo(**{**info.__dict__, **changes})


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _read_checkpoint_metadata(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """(metadata, state dict or None). Only .pt files give a state dict (memory-mapped)."""
    if path.suffix == ".safetensors":
        return _read_safetensors_metadata(path), None
    if path.suffix == ".pts":
        return _read_pts_metadata(path), None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # legacy, non-zip format
    if not isinstance(ckpt, dict) or "signature" not in ckpt or "state" not in ckpt:
        raise ValueError("not a birder checkpoint (no 'signature' / 'state' entries)")
    return ckpt, ckpt["state"]


def _read_safetensors_metadata(path: Path) -> dict[str, Any]:
    # The header is 8 bytes of little-endian length + JSON; reading it needs no safetensors install.
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError("not a safetensors file (header length is implausible)")
        header = json.loads(f.read(length))
    return _decode_json_fields(header.get("__metadata__") or {})


def _read_pts_metadata(path: Path) -> dict[str, Any]:
    # birder's save_pts stores its metadata as TorchScript "extra files" inside the zip archive.
    with zipfile.ZipFile(path) as z:
        extra = {Path(n).name: z.read(n).decode() for n in z.namelist() if "/extra/" in n}
    return _decode_json_fields(extra)


def _decode_json_fields(raw: dict[str, str]) -> dict[str, Any]:
    if "signature" not in raw:
        raise ValueError("no birder signature in the file's metadata")
    meta: dict[str, Any] = dict(raw)
    for key in ("signature", "class_to_idx", "rgb_stats", "config"):
        if isinstance(meta.get(key), str) and meta[key]:
            meta[key] = json.loads(meta[key])
    return meta


def _with_metadata(info: ModelInfo, meta: dict[str, Any]) -> ModelInfo:
    import_birder_quietly()
    from birder.common import lib

    signature = meta["signature"]
    class_to_idx = meta.get("class_to_idx") or {}
    class_names = lib.class_list_from_class_to_idx(class_to_idx)
    num_classes = lib.get_num_labels_from_signature(signature)
    return _replace(
        info,
        task=str(meta.get("task") or "") or None,
        size=tuple(int(v) for v in lib.get_size_from_signature(signature)),
        num_classes=int(num_classes),
        rgb_stats=meta.get("rgb_stats"),
        class_names=class_names,
        birder_version=meta.get("birder_version"),
        kind=guess_kind(info.name, num_classes=int(num_classes), class_names=class_names),
    )


def guess_kind(name: str, *, num_classes: int, class_names: Sequence[str]) -> str:
    """"rotation", "descriptor", "embedding" or "classifier", from a model's name and classes."""
    if list(class_names) == ROTATION_CLASSES or (num_classes == 4 and "rot" in name.lower()):
        return "rotation"
    if num_classes == 0:
        return "embedding"
    if "sscd" in name.lower():
        return "descriptor"
    return "classifier"


def _check_loads(info: ModelInfo, meta: dict[str, Any], state: dict[str, torch.Tensor] | None) -> ModelInfo:
    """Rebuild the network (on the meta device: no memory) and fit the file's tensors to it."""
    if info.task not in (None, "image_classification"):
        return _replace(info, error=f"task '{info.task}' is not image classification; vdc-lake cannot use it")
    if info.format == "safetensors" and not _has_safetensors():
        return _replace(info, error="reading .safetensors weights needs `pip install safetensors`")
    if info.format == "pts":
        # TorchScript carries its own graph but no birder config: nothing to rebuild or check
        # without loading it, and the embedding size is known only once loaded.
        return _replace(info, loads=True)
    try:
        net = _build_network(info, meta)
        if state is not None:
            net.load_state_dict(state, strict=True, assign=True)
    except Exception as e:
        return _replace(
            info,
            error=f"{info.path.name} does not fit network {info.network}: {_one_line(e)}; "
            f"check the file name (NETWORK_TAG) and the birder version",
        )
    return _replace(info, embedding_size=getattr(net, "embedding_size", None), loads=True)


def _build_network(info: ModelInfo, meta: dict[str, Any]) -> torch.nn.Module:
    import_birder_quietly()
    from birder.common import lib
    from birder.model_registry import registry

    def build() -> torch.nn.Module:
        channels = lib.get_channels_from_signature(meta["signature"])
        config = meta.get("config") or None
        return registry.net_factory(info.network, info.num_classes, channels, config=config, size=info.size)

    try:
        with torch.device("meta"):
            return build()
    except Exception:  # a network whose __init__ needs real tensor values: build it for real
        return build()


def _has_safetensors() -> bool:
    try:
        import safetensors  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------- loading


@dataclass
class LoadedModel:
    """A birder network in eval mode plus what inference needs to feed it.

    size: input (H, W) in pixels; rgb_stats: {"mean": (r, g, b), "std": (r, g, b)} on the
    [0, 1] scale; transform: PIL image or uint8 [3, h, w] tensor -> float32 [3, H, W].
    """

    name: str
    network: str
    tag: str | None
    path: Path
    net: torch.nn.Module
    device: torch.device
    size: tuple[int, int]
    rgb_stats: dict[str, Any]
    class_names: list[str]
    num_classes: int
    embedding_size: int | None
    kind: str
    transform: Callable[[Any], torch.Tensor]

    def __repr__(self) -> str:
        return (
            f"LoadedModel({self.name!r}, kind={self.kind!r}, size={self.size}, "
            f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, device={self.device})"
        )


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as torch understands it."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was asked for but torch sees no GPU: use --device cpu")
    return device


def load_model(
    models_dir: str | Path,
    name: str,
    *,
    tag: str | None = None,
    device: str | torch.device = "cpu",
    size: tuple[int, int] | None = None,
) -> LoadedModel:
    """Load `models_dir/NAME[_TAG].{pt,safetensors,pts}` with birder's own loader, in eval mode.

    name is a birder weights name (`resnet_v1_50_c1_sscd`) or a network name with `tag`
    (`resnet_v1_50_c1`, tag="sscd"). size overrides the input resolution (H, W) (birder
    adjusts position embeddings); default is the checkpoint's. Raises ModelError with the fix.
    """
    import_birder_quietly()
    from birder.common import fs_ops

    stem = name if tag is None else f"{name}_{tag}"
    path = model_file(models_dir, stem)
    if path is None:
        raise _missing_model_error(models_dir, stem)
    info = inspect_model_file(path)
    if not info.loads:
        raise ModelError(f"model {stem} ({path}) cannot be loaded: {info.error}")
    device = resolve_device(device)
    try:
        net, model_info = fs_ops.load_model(
            device,
            info.network,
            path=path,
            tag=info.tag,
            new_size=None if size is None else tuple(size),
            inference=True,
            pts=info.format == "pts",
            st=info.format == "safetensors",
        )
    except Exception as e:
        raise ModelError(f"birder could not load {path}: {_one_line(e)}; re-download the file") from e
    return _loaded_model(info, net, model_info, device, size)


def _not_a_folder(models_dir: Path) -> str:
    return (f"--models-dir {models_dir} is a file, not the models folder: pass its folder "
            f"(--models-dir {models_dir.parent}) and the model's name (--model {models_dir.stem})")


def _missing_model_error(models_dir: str | Path, stem: str) -> ModelError:
    models_dir = Path(models_dir).expanduser()
    if models_dir.is_file():
        return ModelError(_not_a_folder(models_dir))
    if not models_dir.is_dir():
        where = f"models directory {models_dir} does not exist"
    else:
        found = sorted(p.stem for p in models_dir.iterdir() if p.is_file() and _is_checkpoint_file(p))
        where = f"no model '{stem}' in {models_dir}/ (found: {', '.join(found) or 'none'})"
    return ModelError(f"{where}: {_download_hint(stem)}")


def _loaded_model(
    info: ModelInfo, net: torch.nn.Module, model_info: Any, device: torch.device, size: tuple[int, int] | None
) -> LoadedModel:
    import_birder_quietly()
    from birder.common import lib

    input_size = tuple(size) if size is not None else tuple(lib.get_size_from_signature(model_info.signature))
    class_names = lib.class_list_from_class_to_idx(model_info.class_to_idx)
    return LoadedModel(
        name=info.name,
        network=info.network or "",
        tag=info.tag,
        path=info.path,
        net=net,
        device=device,
        size=input_size,
        rgb_stats=model_info.rgb_stats,
        class_names=class_names,
        num_classes=int(lib.get_num_labels_from_signature(model_info.signature)),
        embedding_size=getattr(net, "embedding_size", info.embedding_size),
        kind=info.kind or "classifier",
        transform=inference_transform(input_size, model_info.rgb_stats),
    )


def inference_transform(
    size: tuple[int, int], rgb_stats: dict[str, Any], *, center_crop: float = 1.0
) -> Callable[[Any], torch.Tensor]:
    """birder's inference preset: bicubic resize to size/center_crop, centre crop, [0,1], normalise.

    Input: PIL image or uint8 tensor [C, h, w]. Output: float32 [C, H, W]. This is exactly
    what `birder.scripts.predict` uses (its --center-crop defaults to 1.0, i.e. no crop).
    """
    import_birder_quietly()
    from birder.data.transforms.classification import inference_preset

    return inference_preset(tuple(size), rgb_stats, center_crop)


# ---------------------------------------------------------------------------- data loading


def decode_rgb(path: str, max_pixels: int | None = None) -> torch.Tensor:
    """uint8 [3, h, w] RGB pixels of an image file, decoded like birder's default loader.

    torchvision's decoder first (JPEG/PNG/WebP/GIF, EXIF orientation not applied, as birder),
    Pillow for what it cannot read (TIFF, BMP). An animated GIF gives its first frame (birder
    would fail to batch its [frames, 3, h, w] tensor). 16-bit PNGs stay uint16, as in birder.
    With max_pixels, the header is read first and an image over the limit is never decoded
    (PixelLimitError): a decompression bomb costs a header read, not gigabytes.
    Raises on an undecodable file.
    """
    from torchvision.io import ImageReadMode, decode_image

    if max_pixels is not None:
        from vdc_lake.fileops.probe import check_pixels

        check_pixels(path, max_pixels)
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders (for TorchCodec) with a warning on every
            # call; birder decodes with them, and matching birder's pixels is what matters here.
            warnings.simplefilter("ignore", DeprecationWarning)
            pixels = decode_image(path, mode=ImageReadMode.RGB)
    except RuntimeError:
        return _pil_decode_rgb(path)
    return pixels[0] if pixels.ndim == 4 else pixels


def _pil_decode_rgb(path: str) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        array = np.array(image.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1)


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
            return index, self._blank_image(), f"cannot decode: {_one_line(e)}"
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


# ---------------------------------------------------------------------------- inference


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


def output_dim(loaded: LoadedModel, kind: str) -> int:
    """Width d of run_inference's outputs for this model and kind."""
    if kind == "embedding":
        if loaded.embedding_size is None:
            raise ModelError(f"{loaded.name} does not report an embedding size; use a .pt checkpoint")
        return int(loaded.embedding_size)
    return int(loaded.num_classes)


def image_loader(
    loaded: LoadedModel,
    paths: Sequence[str | os.PathLike],
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    prefetch_factor: int = 4,
    max_pixels: int | None = None,
) -> DataLoader:
    """Batches (index int64 [b], images [b, 3, H, W], errors list[str]) for loaded's input.

    Images are float32 and normalised on CPU; on CUDA they are uint8 in pinned memory and
    `device_normalizer(loaded)` finishes them on the GPU. num_workers default: CPU count, <= 8.
    Images over max_pixels (header) are not decoded: they come back as errors.
    """
    on_cuda = loaded.device.type == "cuda"
    workers = _default_workers() if num_workers is None else num_workers
    return DataLoader(
        ImageFileDataset(paths, _worker_transform(loaded), max_pixels),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=on_cuda,
        prefetch_factor=prefetch_factor if workers > 0 else None,
    )


def run_inference(
    loaded: LoadedModel,
    paths: Sequence[str | os.PathLike],
    *,
    kind: InferenceKind,
    batch_size: int = 64,
    num_workers: int | None = None,
    amp: bool = False,
    amp_dtype: str = "bfloat16",
    compile: bool = False,
    fast_matmul: bool = False,
    channels_last: bool = False,
    prefetch_factor: int = 4,
    progress: Callable[[int], Any] | None = None,
    max_pixels: int | None = None,
    decode: str = "auto",
    draft_min_size: int = 0,
) -> Iterator[InferenceBatch]:
    """InferenceBatch results for `paths`, in input order, computed on loaded.device.

    Arguments are checked before anything runs (ModelError); batches come as iterated.

    kind: "rotation" -> softmax probabilities [b, 4]; "descriptor" -> raw logits [b, classes]
    (SSCD: 512); "embedding" -> birder's pooled embedding [b, embedding_size].
    This is a decode pass with one model (run_pass): decoding runs in num_workers DataLoader
    processes; on the CPU they also resize, on CUDA they ship uint8 pixels (or, with decode
    gpu/auto, JPEG bytes for nvJPEG) to pinned memory and resizing and normalisation happen on
    the GPU, copies are non-blocking and each batch's results are read back only after the next
    batch is queued, so the GPU never waits on decoding or on the host. amp autocasts to
    amp_dtype; fast_matmul allows TF32 for the duration; channels_last converts loaded.net in
    place. progress(n) is called with the number of images finished after each batch. An image
    whose header gives more than max_pixels pixels is not decoded (a failed position, reason
    given). draft_min_size: JPEG DCT scaling (draft_size_for; 0: full decode, as birder).
    """
    batches = run_pass(
        [PassModel(loaded, kind)], paths, decode=decode, batch_size=batch_size, num_workers=num_workers, amp=amp,
        amp_dtype=amp_dtype, compile=compile, fast_matmul=fast_matmul, channels_last=channels_last,
        prefetch_factor=prefetch_factor, progress=progress, max_pixels=max_pixels, draft_min_size=draft_min_size,
    )
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


def _check_kind(loaded: LoadedModel, kind: str) -> None:
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


def _default_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0))))


def forward_fn(net: torch.nn.Module, kind: InferenceKind) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model call for a kind: normalised float32 [b, 3, H, W] -> float32 [b, d]."""
    if kind == "rotation":
        return lambda x: torch.softmax(net(x).float(), dim=1)
    if kind == "descriptor":
        return lambda x: net(x).float()
    return lambda x: net.embedding(x).float()


def _gpu_split(transform: Callable[[Any], torch.Tensor]) -> list[Any] | None:
    """birder's preset steps when its last two (ToDtype, Normalize) can run on the device."""
    steps = list(getattr(transform, "transforms", []))
    if [type(step).__name__ for step in steps[-2:]] != ["ToDtype", "Normalize"]:
        return None
    return steps


def _worker_transform(loaded: LoadedModel) -> Callable[[Any], torch.Tensor]:
    # For the GPU, workers stop at uint8 pixels: 4x less pinned-memory and PCIe traffic than
    # float32, and the [0, 1] scaling + normalisation runs on the GPU (same float32 arithmetic).
    steps = _gpu_split(loaded.transform)
    if loaded.device.type != "cuda" or steps is None:
        return loaded.transform
    from torchvision.transforms import v2

    return v2.Compose(steps[:-2])


def device_normalizer(loaded: LoadedModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """What image_loader's batches still need on the device: identity on CPU, else uint8
    [b, 3, H, W] -> float32 scaled to [0, 1] and normalised with the model's RGB stats."""
    steps = _gpu_split(loaded.transform)
    if loaded.device.type != "cuda" or steps is None:
        return lambda x: x
    return _normalizer(steps[-1].mean, steps[-1].std, loaded.device)


def _normalizer(
    mean: Sequence[float], std: Sequence[float], device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return lambda x: x.to(torch.float32).div_(255.0).sub_(mean_t).div_(std_t)


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



# ---------------------------------------------------------------------------- one decode, several models
#
# A decode pass feeds every model of a `predict` from one decode of each image. Workers decode
# (JPEG at reduced DCT scale when the file is far larger than any model needs: `draft_size`) and
# either resize for every model themselves (CPU device: the workers are the parallel compute) or
# ship the uint8 image (CUDA: resized per model on the device, or JPEG bytes that nvJPEG decodes
# there). Each model's resize is birder's own preset steps on the same uint8 pixels, so a model
# computes the same numbers in a pass as alone. With a rotation model and a threshold, the
# rotation model runs first and the other models see each image turned by its predicted angle.

DECODE_MODES: tuple[str, ...] = ("auto", "cpu", "gpu")
GPU_JPEG_MODES = ("RGB", "L")  # JPEG colour modes nvJPEG decodes like libjpeg; CMYK/YCCK go to the CPU
JPEG_MAGIC = b"\xff\xd8\xff"


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


def preprocessing_steps(loaded: LoadedModel) -> tuple[Callable[[torch.Tensor], torch.Tensor],
                                                       Callable[[torch.Tensor], torch.Tensor]]:
    """birder's preset split in two: (resize: uint8 [..., 3, h, w] -> uint8 [..., 3, H, W],
    normalise: uint8 [..., 3, H, W] -> float32), the very transforms birder composes."""
    from torchvision.transforms import v2

    steps = _gpu_split(loaded.transform)
    if steps is None:
        raise ModelError(f"birder's inference preset for {loaded.name} no longer ends with ToDtype, Normalize; "
                         "vdc-lake needs an update for this birder version")
    return v2.Compose(steps[:-2]), v2.Compose(steps[-2:])


def draft_size_for(models: Sequence[LoadedModel], min_size: int) -> int | None:
    """Side (px) a JPEG may be reduced to by DCT scaling in a pass: the largest model input, and
    at least min_size (0: never reduce). Keeping min_size above every model's input makes a
    model's inputs independent of the other models of its pass."""
    if min_size <= 0:
        return None
    return max([min_size] + [max(m.size) for m in models])


def decode_for_pass(path: str, *, max_pixels: int | None = None, draft_size: int | None = None) -> torch.Tensor:
    """uint8 [3, h, w] RGB pixels as decode_rgb gives them, but a JPEG whose sides are both at
    least twice draft_size is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both
    sides >= draft_size (Pillow's draft). Other files decode exactly like birder's loader."""
    if max_pixels is not None:
        from vdc_lake.fileops.probe import check_pixels

        check_pixels(path, max_pixels)
    if draft_size:
        drafted = _draft_decode(path, draft_size)
        if drafted is not None:
            return drafted
    pixels = decode_rgb(path)
    if pixels.dtype != torch.uint8:  # a 16-bit PNG: every model takes 8-bit pixels
        from torchvision.transforms.v2.functional import to_dtype

        pixels = to_dtype(pixels, torch.uint8, scale=True)
    return pixels


def _draft_decode(path: str, draft_size: int) -> torch.Tensor | None:
    from PIL import Image

    with Image.open(path) as image:
        if image.format != "JPEG" or min(image.size) < 2 * draft_size:
            return None
        full = image.size
        image.draft("RGB", (draft_size, draft_size))
        if image.size == full:
            return None
        array = np.array(image.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1)


def _gpu_jpeg_bytes(path: str, max_pixels: int | None) -> bytes | None:
    """The file's bytes when nvJPEG should decode it (a baseline or progressive JPEG in RGB or
    greyscale, within max_pixels), else None (decode it on the CPU). Plain bytes, so the
    DataLoader does not pin them (nvJPEG reads them from pageable memory)."""
    from vdc_lake.fileops.probe import open_image

    with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as f:
        if f.read(len(JPEG_MAGIC)) != JPEG_MAGIC:
            return None
    try:  # the header first, within the header limits: a file of junk is never read whole
        with open_image(path, max_pixels if max_pixels is not None else 1 << 62) as image:
            ok = image.format == "JPEG" and image.mode in GPU_JPEG_MODES
    except Exception:  # the CPU path reports why it does not decode
        return None
    if not ok:
        return None
    with open(path, "rb") as f:
        return f.read()


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
                item["jpeg"] = _gpu_jpeg_bytes(path, self.max_pixels)
                if item["jpeg"] is not None:
                    return item
            pixels = decode_for_pass(path, max_pixels=self.max_pixels, draft_size=self.draft_size)
            item["inputs"] = tuple(self._resized(pixels))
        except Exception as e:  # any decoder or transform failure is a per-file finding
            item["error"] = f"cannot decode: {_one_line(e)}"
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


def _collate_pass(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "index": torch.tensor([item["index"] for item in items], dtype=torch.int64),
        "errors": [item["error"] for item in items],
        "inputs": tuple(torch.stack(images) for images in zip(*(item["inputs"] for item in items))),
        "full": [item["full"] for item in items],
        "jpeg": [item["jpeg"] for item in items],
    }


def resolve_decode(decode: str, device: torch.device) -> str:
    """"cpu" or "gpu" for a --decode choice. auto: gpu when the device is CUDA and torchvision's
    nvJPEG decoder works there (JPEG files then decode on the GPU, every other file on the CPU),
    else cpu. gpu without CUDA is an error."""
    if decode not in DECODE_MODES:
        raise ModelError(f"unknown decode mode {decode!r}: use {', '.join(DECODE_MODES)}")
    if decode == "cpu":
        return "cpu"
    if device.type != "cuda":
        if decode == "gpu":
            raise ModelError("--decode gpu needs a CUDA device (nvJPEG): use --device cuda, or --decode cpu")
        return "cpu"
    if decode == "gpu" or _nvjpeg_works(device):
        return "gpu"
    return "cpu"


@functools.cache
def _nvjpeg_works(device: torch.device) -> bool:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="JPEG")
    try:
        return decode_jpegs_on_device([buffer.getvalue()], device)[0] is not None
    except Exception:
        return False


def decode_jpegs_on_device(datas: Sequence[bytes | torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """uint8 [3, h, w] RGB on `device` for each JPEG's bytes (or uint8 [n] on the CPU), decoded by
    nvJPEG in one batched call; EXIF orientation is not applied (as on the CPU, like birder).
    A file nvJPEG cannot decode gives None (the caller decodes it on the CPU): the batch is
    retried one file at a time when the batched call fails."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    datas = [torch.frombuffer(bytearray(d), dtype=torch.uint8) if isinstance(d, bytes) else d for d in datas]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return list(decode_jpeg(list(datas), mode=ImageReadMode.RGB, device=device))
        except Exception:
            pass
        decoded: list[torch.Tensor | None] = []
        for data in datas:
            try:
                decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except Exception:
                decoded.append(None)
    return decoded


def rotate_clockwise(image: torch.Tensor, angle: int) -> torch.Tensor:
    """image [..., h, w] turned `angle` degrees clockwise (a multiple of 90), like the apply
    engine's rotate_<angle> turns the stored pixels."""
    return torch.rot90(image, -(int(angle) // 90) % 4, dims=(-2, -1)) if angle % 360 else image


def rotation_angles(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Clockwise correction in degrees per row of probs [n, 4] ordered [0, 90, 180, 270]: the top
    class's angle when it is not 0 and its probability is above threshold, else 0. Same rule
    and tie-break (first maximum) as sql/views/rotation_actions.sql; compared in float64 like DuckDB."""
    probs = np.asarray(probs, dtype=np.float32)
    top = probs.argmax(axis=1)
    confident = probs[np.arange(len(probs)), top].astype(np.float64) > float(threshold)
    return np.where(confident & (top != 0), top * 90, 0).astype(np.int16)


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
    *,
    needs: np.ndarray | None = None,
    rotation: int | None = None,
    rotate_threshold: float | None = None,
    known_rotation: np.ndarray | None = None,
    decode: str = "auto",
    batch_size: int = 64,
    num_workers: int | None = None,
    amp: bool = False,
    amp_dtype: str = "bfloat16",
    compile: bool = False,
    fast_matmul: bool = False,
    channels_last: bool = False,
    prefetch_factor: int = 4,
    progress: Callable[[int], Any] | None = None,
    max_pixels: int | None = None,
    draft_min_size: int = 0,
) -> Iterator[PassBatch]:
    """PassBatch results of every model for `paths`, each image decoded once, in input order.

    needs: bool [n_models, n_paths], which model must run on which image (default: all).
    rotation: index of the rotation model in `models`; with rotate_threshold, the other models
    see each image turned clockwise by its predicted angle when the probability is above the
    threshold (rotation_angles). Where the rotation model is not needed for an image another
    model needs, its probabilities come from known_rotation float32 [n_paths, 4] ([0, 90, 180,
    270]; NaN: unknown, then the rotation model runs anyway and its row is marked done).
    decode: "auto" | "cpu" | "gpu" (resolve_decode). All models must be on one device.
    draft_min_size: see draft_size_for (0: JPEGs decode at full size, as birder's loader).
    Other options as run_inference; ModelError before anything runs when they do not fit.
    """
    if not models:
        raise ModelError("a decode pass needs at least one model")
    device = models[0].loaded.device
    if any(m.loaded.device != device for m in models):
        raise ModelError("the models of one pass must be on one device")
    for m in models:
        _check_kind(m.loaded, m.kind)
    if amp_dtype not in ("bfloat16", "float16"):
        raise ModelError(f"unknown amp dtype {amp_dtype!r}: use bfloat16 or float16")
    if rotation is not None and models[rotation].kind != "rotation":
        raise ModelError(f"{models[rotation].loaded.name} is not run as a rotation model (kind 'rotation')")
    n = len(paths)
    needs = np.ones((len(models), n), bool) if needs is None else np.asarray(needs, bool)
    turning = rotation is not None and rotate_threshold is not None and len(models) > 1
    if turning:
        known = np.full((n, 4), np.nan, np.float32) if known_rotation is None else np.asarray(known_rotation, np.float32)
        others = np.delete(needs, rotation, axis=0).any(axis=0)
        needs = needs.copy()
        needs[rotation] |= others & np.isnan(known).any(axis=1)  # an angle nobody stored: compute it
    on_cuda = device.type == "cuda"
    gpu_decode = resolve_decode(decode, device) == "gpu"
    steps = []
    for m in models:
        resize, normalize = preprocessing_steps(m.loaded)
        forward = forward_fn(m.loaded.net, m.kind)
        if compile:
            forward = torch.compile(forward)
        if channels_last:
            m.loaded.net.to(memory_format=torch.channels_last)
        order = _rotation_order(m.loaded) if m.kind == "rotation" else None
        steps.append(_PassStep(m, resize, normalize, forward, order))
    dataset = PassDataset(
        paths, [] if on_cuda else [s.resize for s in steps], [m.loaded.size for m in models],
        ship_full=on_cuda or turning, gpu_jpeg=gpu_decode, max_pixels=max_pixels,
        draft_size=draft_size_for([m.loaded for m in models], draft_min_size),
    )
    workers = _default_workers() if num_workers is None else num_workers
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=on_cuda,
                        prefetch_factor=prefetch_factor if workers > 0 else None, collate_fn=_collate_pass)
    autocast = torch.autocast(device.type, dtype=getattr(torch, amp_dtype), enabled=amp)
    precision = "high" if (fast_matmul or amp) else None
    context = _PassContext(steps, dataset, device, needs, rotation if turning else None,
                           rotate_threshold, known if turning else None, max_pixels)
    return _pass_batches(context, loader, autocast, precision, channels_last, progress)


def _rotation_order(loaded: LoadedModel) -> list[int]:
    names = list(loaded.class_names)
    if sorted(names) != sorted(ROTATION_CLASSES):
        return list(range(4))  # birder's train_rotnet order
    return [names.index(c) for c in ROTATION_CLASSES]


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
                errors[row] = f"cannot decode: {_one_line(e)}"
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
