"""birder checkpoint files: their names, and what each says about itself (without loading weights).

Models live in a models directory (default `models/`) as birder writes them: the file stem is
the birder weights name, `NETWORK[_TAG]`, e.g. `models/resnet_v1_50_c1_sscd.pt` is network
`resnet_v1_50_c1` with tag `sscd`. Checkpoints do not store the network name, so it is read
from the file name: the pretrained-weights manifest first, else the longest network name
birder's registry knows that prefixes the stem. Users get weights on a connected machine with
`MODELS_DIR=models python -m birder.tools download-model NAME`.
"""

from __future__ import annotations

import json
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vdc_lake.errors import VdcLakeError
from vdc_lake.models.names import import_birder_quietly, known_networks

# birder is imported lazily (it takes seconds): importing this module stays cheap for the CLI.

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


def is_checkpoint_file(path: Path) -> bool:
    # birder writes optimizer states next to checkpoints as NAME_states.pt: not a model.
    return path.suffix in MODEL_SUFFIXES and not path.name.endswith("_states.pt")


def download_hint(name: str) -> str:
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
    paths = sorted(p for p in models_dir.iterdir() if p.is_file() and is_checkpoint_file(p))
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
        return _replace(info, error=f"cannot read {path.name}: {one_line(e)}; re-download or re-export it")
    if split is None:
        return _replace(info, error=f"no birder network name fits '{path.stem}': name the file NETWORK[_TAG]")
    return _check_loads(info, meta, state)


def _replace(info: ModelInfo, **changes: Any) -> ModelInfo:
    return ModelInfo(**{**info.__dict__, **changes})


def one_line(e: BaseException) -> str:
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
            error=f"{info.path.name} does not fit network {info.network}: {one_line(e)}; "
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
