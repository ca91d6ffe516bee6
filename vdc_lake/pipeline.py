"""Pipelines: a TOML file listing CLI steps, run in order, stopping at the first failure.

    [pipeline]
    catalog = "data/quickstart/catalog.duckdb"   # optional; --catalog wins

    [[step]]
    command = "scan"            # any vdc-lake command, "dedup report" style for groups
    args = ["data/quickstart/images"]
    workers = 2                 # other keys become --options (true -> flag, list -> values)

`apply` steps are dry runs unless the pipeline runs with --apply, so a first run shows
every plan and changes nothing.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vdc_lake.errors import ConfigError

Invoke = Callable[[list[str]], tuple[bool, str]]


@dataclass
class StepResult:
    index: int
    command: str
    ok: bool
    seconds: float
    last_line: str


@dataclass
class PipelineResult:
    path: str
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)


def load_pipeline(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read pipeline {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"pipeline {path} is not valid TOML: {e}") from e
    steps = data.get("step")
    if not isinstance(steps, list) or not steps:
        raise ConfigError(f"pipeline {path} has no [[step]] entries")
    for i, step in enumerate(steps, 1):
        if not isinstance(step, dict) or "command" not in step:
            raise ConfigError(f"pipeline {path}: step {i} has no `command`")
    return data


def step_arguments(step: dict[str, Any], *, apply: bool) -> list[str]:
    """CLI arguments for one step: command words, positional args, then --options."""
    words = str(step["command"]).split()
    args = [str(a) for a in step.get("args", [])]
    options: list[str] = []
    for key, value in step.items():
        if key in ("command", "args"):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            options += [flag] if value else []
        elif isinstance(value, list):
            options += [flag] + [str(v) for v in value]
        else:
            options += [flag, str(value)]
    if words[0] == "apply" and apply:
        options.append("--apply")
    return words + args + options


def run_pipeline(path: str | Path, invoke: Invoke, *, apply: bool = False) -> PipelineResult:
    """Run each step through `invoke(args) -> (ok, output)`; stop at the first failure."""
    data = load_pipeline(path)
    result = PipelineResult(str(path))
    for index, step in enumerate(data["step"], 1):
        args = step_arguments(step, apply=apply)
        started = time.monotonic()
        ok, output = invoke(args)
        lines = [line for line in output.strip().splitlines() if line.strip()]
        result.steps.append(StepResult(index, " ".join(args), ok, round(time.monotonic() - started, 2),
                                       lines[-1] if lines else ""))
        if not ok:
            break
    return result
