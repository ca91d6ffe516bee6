"""Tiny random-initialised stand-ins for the walkthrough's three birder models.

Same network names, tags, class lists and checkpoint format as the real weights, shrunk with
birder config overrides (depth / width) and a small input size so each file is well under
1 MB. They are saved with birder's own `fs_ops.checkpoint_model` (which records the config
override in the file, so birder's `load_model` rebuilds the same shape), and tests load them
through the same vdc_lake.models.birder code path users take.

    resnet_v1_50_c1_sscd                                 512 classes, descriptor (real: 320 px)
    rope_vit_reg8_so150m_p14_swiglu_rms_ap_rotnet-capi   4 classes, rotation   (real: 252 px)
    rope_i_vit_b16_pn_aps_c1_pe-core                     0 classes, embedding  (real: 224 px)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TinySpec:
    """One tiny model: birder network + tag, classes, input size (H, W) and config override."""

    network: str
    tag: str
    class_names: tuple[str, ...]
    size: tuple[int, int]
    rgb_mode: str
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.network}_{self.tag}"


TINY_VIT = {"num_layers": 1, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}

TINY_SPECS: dict[str, TinySpec] = {
    s.name: s
    for s in (
        TinySpec(
            "resnet_v1_50_c1",
            "sscd",
            tuple(str(i) for i in range(512)),
            (64, 64),
            "imagenet",
            {"filter_list": [8, 16, 16, 32, 32], "units": [1, 1, 1, 1]},
        ),
        TinySpec(
            "rope_vit_reg8_so150m_p14_swiglu_rms_ap",
            "rotnet-capi",
            ("0", "90", "180", "270"),
            (56, 56),
            "birder",
            dict(TINY_VIT),
        ),
        TinySpec(
            "rope_i_vit_b16_pn_aps_c1",
            "pe-core",
            (),
            (64, 64),
            "clip",
            {**TINY_VIT, "attn_pool_num_heads": 2},
        ),
    )
}

SSCD = "resnet_v1_50_c1_sscd"
ROTNET = "rope_vit_reg8_so150m_p14_swiglu_rms_ap_rotnet-capi"
PE_CORE = "rope_i_vit_b16_pn_aps_c1_pe-core"
TINY_EMBEDDING_SIZE = 32  # pooled width of all three tiny nets


@contextmanager
def _birder_models_dir(models_dir: Path) -> Iterator[None]:
    # birder's checkpoint_model writes to settings.MODELS_DIR; point it at models_dir for the call.
    from birder.conf import settings

    before = settings.MODELS_DIR
    settings.MODELS_DIR = models_dir
    try:
        yield
    finally:
        settings.MODELS_DIR = before


def make_tiny_model(models_dir: str | Path, spec: TinySpec, *, seed: int = 0) -> Path:
    """Build spec's net with fixed seed, save it as models_dir/NETWORK_TAG.pt; return the path."""
    import torch
    from birder.common import fs_ops
    from birder.data.transforms.classification import get_rgb_stats
    from birder.model_registry import registry
    from birder.net.base import get_signature

    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    num_classes = len(spec.class_names)
    net = registry.net_factory(spec.network, num_classes, 3, config=spec.config, size=spec.size).eval()
    signature = get_signature(input_shape=(1, 3, *spec.size), num_outputs=num_classes)
    class_to_idx = {name: i for i, name in enumerate(spec.class_names)}
    with _birder_models_dir(models_dir):
        fs_ops.checkpoint_model(
            spec.name,
            None,  # no epoch: the file is NETWORK_TAG.pt, as downloaded weights are named
            net,
            signature,
            class_to_idx,
            get_rgb_stats(spec.rgb_mode),
            None,
            None,
            None,
            None,
            external_config=spec.config,
        )
    return models_dir / f"{spec.name}.pt"


def make_tiny_models(models_dir: str | Path) -> dict[str, Path]:
    """All three walkthrough models, tiny, in models_dir: {weights name: checkpoint path}."""
    return {name: make_tiny_model(models_dir, spec) for name, spec in TINY_SPECS.items()}


def write_test_images(
    directory: str | Path, count: int, *, size: tuple[int, int] = (96, 80), seed: int = 0
) -> list[Path]:
    """count small random RGB JPEG/PNG files (alternating) in directory; returns their paths."""
    import numpy as np
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        path = directory / (f"img_{i:03d}.jpg" if i % 2 == 0 else f"img_{i:03d}.png")
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths
