"""Resume state of a hierarchical k-means: one file, replaced atomically after every step."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from vdc_lake.kernels.kmeans_rows import Rows

_CHECKPOINT_FILE = "hierarchical_kmeans.pt"
_CHECKPOINT_FORMAT = 1


def data_fingerprint(rows: Rows) -> list[float]:
    """Sums over 64 evenly spaced rows: cheap, and different for different data."""
    index = torch.from_numpy(np.unique(np.linspace(0, rows.n - 1, 64).astype(np.int64)))
    taken = rows.take(index).to(torch.float64)
    weights = torch.arange(1, taken.shape[1] + 1, dtype=torch.float64, device=taken.device)
    return [float(taken.sum()), float((taken.abs() * weights).sum())]


class Checkpoint:
    """One state file in ``directory``, replaced atomically after every finished step."""

    def __init__(self, directory: str | os.PathLike, arguments: dict):
        self.directory = Path(directory)
        self.path = self.directory / _CHECKPOINT_FILE
        self.arguments = arguments

    def load(self) -> dict | None:
        """The saved state, or None when there is none; ValueError if it is for another run."""
        if not self.path.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"{self.path} was written by another version; delete it to start over")
        saved = state["arguments"]
        differ = [key for key in self.arguments if not _same(saved.get(key), self.arguments[key])]
        if differ:
            details = ", ".join(f"{key}: saved {saved.get(key)!r}, now {self.arguments[key]!r}" for key in differ)
            raise ValueError(
                f"checkpoint_dir {self.directory} holds a run with other arguments or data ({details}); "
                "pass the same arguments and data to resume it, or use an empty checkpoint_dir to start over"
            )
        return state

    def save(self, state: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)  # readers see the old or the new state, never half


def new_state(arguments: dict) -> dict:
    """The state of a run that has finished nothing yet."""
    return {"format": _CHECKPOINT_FORMAT, "arguments": arguments, "levels": [], "current": None}


def _same(saved, current) -> bool:
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        return all(_same(a, b) for a, b in zip(saved, current))
    if isinstance(saved, float) and isinstance(current, float):
        return math.isclose(saved, current, rel_tol=1e-5, abs_tol=1e-6)
    return saved == current
