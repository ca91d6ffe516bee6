"""How models run over images: one frozen object, built once from the effective config.

The `predict` command, the predict stage (local and Ray), the filters stage (it embeds example
images) and the inference functions all take an InferenceOptions; none restates a default.
The defaults are [predict] in defaults.toml, sanitize.max_pixels (no decode over the pixel
limit) and rotation_correction.threshold (the in-memory turn of a pass); the flags that are
not config keys (amp, compile, fast_matmul, channels_last) are off unless given.
No torch here: the CLI imports this module to build its options.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vdc_lake.config.loader import Config

AMP_DTYPES: tuple[str, ...] = ("bfloat16", "float16")  # --amp-dtype choices; the first is the default
PREDICT_KEYS = ("models_dir", "device", "decode", "batch_size", "num_workers", "draft_min_size")  # [predict]


@dataclass(frozen=True)
class InferenceOptions:
    """Inference options (picklable and hashable: Ray's staging key hashes them).

    models_dir: folder of birder checkpoints, absolute (`~` expanded); device: "auto" | "cpu" |
    "cuda[:N]"; decode: "auto" | "cpu" | "gpu" (resolve_decode); batch_size: images per batch;
    num_workers: decoding processes (0: in the calling process); draft_min_size: px, a JPEG
    decodes at reduced DCT scale only down to this side and the largest model input (0: full
    size, as birder); max_pixels: an image whose header gives more is never decoded;
    rotate_threshold: in a pass with a rotation model, the others see each image turned by its
    angle when the probability is above this (None: never turned); amp / amp_dtype: autocast;
    compile: torch.compile; fast_matmul: TF32 matmuls; channels_last: channels_last memory.
    """

    models_dir: str
    device: str
    decode: str
    batch_size: int
    num_workers: int
    draft_min_size: int
    max_pixels: int
    rotate_threshold: float | None
    amp: bool
    amp_dtype: str
    compile: bool
    fast_matmul: bool
    channels_last: bool

    def __post_init__(self) -> None:
        # a config file's `~` is not expanded by a shell, and a Ray worker has another cwd
        object.__setattr__(self, "models_dir", os.path.abspath(os.path.expanduser(self.models_dir)))

    @classmethod
    def from_config(cls, config: Config | None = None, **given: Any) -> InferenceOptions:
        """The options in effect: config's values (None: the bundled defaults) with the given
        values on top; a given None means "not given". Unknown names raise TypeError."""
        from vdc_lake.config.loader import Config

        unknown = set(given) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown inference option(s): {', '.join(sorted(unknown))}")
        values = (config or Config.bundled()).values
        effective: dict[str, Any] = {key: values["predict"][key] for key in PREDICT_KEYS}
        effective.update(max_pixels=values["sanitize"]["max_pixels"],
                         rotate_threshold=values["rotation_correction"]["threshold"],
                         amp=False, amp_dtype=AMP_DTYPES[0], compile=False, fast_matmul=False, channels_last=False)
        effective.update({key: value for key, value in given.items() if value is not None})
        return cls(**effective)

    def with_values(self, **given: Any) -> InferenceOptions:
        """A copy with the given values (None: keep this one's)."""
        return replace(self, **{key: value for key, value in given.items() if value is not None})


def given_options(options: InferenceOptions | None, given: dict[str, Any]) -> InferenceOptions:
    """options (None: the bundled config's) with the keyword values a caller gave on top."""
    if options is None:
        return InferenceOptions.from_config(None, **given)
    return options.with_values(**given)
