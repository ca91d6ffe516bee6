"""Load a birder checkpoint for inference, and birder's preprocessing for it.

Preprocessing is birder's `inference_preset` (bicubic resize to the model size, centre crop
1.0, normalise with the checkpoint's RGB stats), so outputs match
`python -m birder.scripts.predict`. It is split in two where the pixels may cross to the GPU:
resize on uint8 pixels, then [0, 1] scaling and normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vdc_lake.models.checkpoints import (
    ModelError, ModelInfo, download_hint, inspect_model_file, is_checkpoint_file, model_file, one_line,
)
from vdc_lake.models.names import import_birder_quietly


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
        raise ModelError(f"birder could not load {path}: {one_line(e)}; re-download the file") from e
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
        found = sorted(p.stem for p in models_dir.iterdir() if p.is_file() and is_checkpoint_file(p))
        where = f"no model '{stem}' in {models_dir}/ (found: {', '.join(found) or 'none'})"
    return ModelError(f"{where}: {download_hint(stem)}")


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


def gpu_split(transform: Callable[[Any], torch.Tensor]) -> list[Any] | None:
    """birder's preset steps when its last two (ToDtype, Normalize) can run on the device."""
    steps = list(getattr(transform, "transforms", []))
    if [type(step).__name__ for step in steps[-2:]] != ["ToDtype", "Normalize"]:
        return None
    return steps


def worker_transform(loaded: LoadedModel) -> Callable[[Any], torch.Tensor]:
    # For the GPU, workers stop at uint8 pixels: 4x less pinned-memory and PCIe traffic than
    # float32, and the [0, 1] scaling + normalisation runs on the GPU (same float32 arithmetic).
    steps = gpu_split(loaded.transform)
    if loaded.device.type != "cuda" or steps is None:
        return loaded.transform
    from torchvision.transforms import v2

    return v2.Compose(steps[:-2])


def device_normalizer(loaded: LoadedModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """What image_loader's batches still need on the device: identity on CPU, else uint8
    [b, 3, H, W] -> float32 scaled to [0, 1] and normalised with the model's RGB stats."""
    steps = gpu_split(loaded.transform)
    if loaded.device.type != "cuda" or steps is None:
        return lambda x: x
    return normalizer(steps[-1].mean, steps[-1].std, loaded.device)


def normalizer(
    mean: Sequence[float], std: Sequence[float], device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return lambda x: x.to(torch.float32).div_(255.0).sub_(mean_t).div_(std_t)


def preprocessing_steps(loaded: LoadedModel) -> tuple[Callable[[torch.Tensor], torch.Tensor],
                                                       Callable[[torch.Tensor], torch.Tensor]]:
    """birder's preset split in two: (resize: uint8 [..., 3, h, w] -> uint8 [..., 3, H, W],
    normalise: uint8 [..., 3, H, W] -> float32), the very transforms birder composes."""
    from torchvision.transforms import v2

    steps = gpu_split(loaded.transform)
    if steps is None:
        raise ModelError(f"birder's inference preset for {loaded.name} no longer ends with ToDtype, Normalize; "
                         "vdc-lake needs an update for this birder version")
    return v2.Compose(steps[:-2]), v2.Compose(steps[-2:])
