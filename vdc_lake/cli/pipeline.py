"""Pipelines: a TOML file listing CLI steps, run in order, stopping at the first failure.

    [pipeline]
    catalog = "data/quickstart/catalog.duckdb"   # optional; --catalog wins

    [[step]]
    command = "scan"            # any vdc-lake command, "dedup report" style for groups
    args = ["data/quickstart/images"]
    workers = 2                 # other keys become --options (true -> flag, list -> values,
                                # false -> --no-KEY where the command has it, else nothing)

`apply` steps are dry runs unless the pipeline runs with --apply, so a first run shows
every plan and changes nothing; in a dry run, a `sql` step runs only when it reads: no --output,
no --write, and nothing but SELECT statements (SHOW, DESCRIBE, SUMMARIZE and FROM-first queries
included). Any other statement (COPY, EXPORT, ATTACH, INSTALL and LOAD, which DuckDB classifies
alike, PRAGMA such as IMPORT DATABASE, SET, CALL such as CHECKPOINT, INSERT/UPDATE/CREATE ...)
skips the step with a note, as does SQL DuckDB cannot classify.

A `scan` step directly followed by a full `sanitize` step (no quick, no recheck) runs as
`scan --sanitize`: each file is read once for both (reads_for_next); the sanitize step then
judges the header rules with its own options and finds the decode verdicts made.

The whole file is checked before step 1 (`check_pipeline`): every step must name a known
command with known options (the CLI parses each step's arguments without running it), a
step may not pass --apply/--yes itself, and a `run` step may not run a pipeline that is
already running (directly or through other files).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vdc_lake.config.loader import read_toml
from vdc_lake.errors import ConfigError

Invoke = Callable[[list[str]], tuple[bool, str]]
# Parses one step's full argument list as the CLI would, without running it; raises
# ConfigError (message without the step's name) when the command or an option is unknown.
ParseStep = Callable[[list[str]], None]

# The off switches of a command ("dedup index" -> {"--no-center", ...}): `center = false` in a
# step passes --no-center to it; for a plain flag false passes nothing.
OffSwitches = Callable[[str], set[str]]

# Keys of the [pipeline] table and the value each takes.
PIPELINE_KEYS = {"catalog": 'text: a catalog path in quotes (e.g. catalog = "data/catalog.duckdb")'}

# Step keys that would let a step carry out changes in a dry run: only `run --apply` may.
FORBIDDEN_KEYS = {"apply": "--apply", "yes": "--yes"}


@dataclass
class StepResult:
    index: int
    command: str
    ok: bool
    seconds: float
    last_line: str
    skipped: bool = False

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else "ok" if self.ok else "FAILED"


@dataclass
class PipelineResult:
    path: str
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)


def load_pipeline(path: str | Path) -> dict[str, Any]:
    """The pipeline's TOML with a non-empty [[step]] list whose entries have a non-empty
    `command`, list `args` and scalar or list option values."""
    data = read_toml(path, "pipeline")
    unknown = sorted(set(data) - {"pipeline", "step"})
    if unknown:
        raise ConfigError(f"pipeline {path}: unknown table {unknown[0]!r}; a pipeline has [pipeline] and [[step]] only")
    settings = data.get("pipeline", {})
    if not isinstance(settings, dict):
        raise ConfigError(f"pipeline {path}: `pipeline` must be a table ([pipeline] with catalog = \"PATH\"), "
                          f"not {settings!r}")
    if set(settings) - set(PIPELINE_KEYS):
        bad = sorted(set(settings) - set(PIPELINE_KEYS))
        raise ConfigError(f"pipeline {path}: unknown key {bad[0]!r} in [pipeline]; known keys: {', '.join(PIPELINE_KEYS)}")
    for key, value in settings.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"[pipeline] {key} in {path} must be {PIPELINE_KEYS[key]}, not {value!r}")
    steps = data.get("step")
    if not isinstance(steps, list) or not steps:
        raise ConfigError(f"pipeline {path} has no [[step]] entries")
    for i, step in enumerate(steps, 1):
        where = f"pipeline {path}: step {i}"
        if not isinstance(step, dict) or "command" not in step:
            raise ConfigError(f"{where} has no `command`; add e.g. command = \"scan\"")
        if not isinstance(step["command"], str):
            raise ConfigError(f"{where}: `command` must be a vdc-lake command in quotes such as \"scan\" "
                              f"or \"dedup report\", not {step['command']!r}")
        if not step["command"].split():
            raise ConfigError(f"{where} has an empty `command`; give a vdc-lake command such as \"scan\" "
                              "or \"dedup report\"")
        if not isinstance(step.get("args", []), list):
            raise ConfigError(f"{where} ({step['command']}): `args` must be a list, e.g. args = [\"images\"]")
        for key, value in step.items():
            if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)):
                raise ConfigError(f"{where} ({step['command']}): `{key}` must be a value or a list of values")
    return data


def step_arguments(step: dict[str, Any], *, apply: bool, off_switches: OffSwitches | None = None) -> list[str]:
    """CLI arguments for one step: command words, positional args, then --options."""
    words = str(step["command"]).split()
    args = [str(a) for a in step.get("args", [])]
    off = off_switches(" ".join(words)) if off_switches is not None else set()
    options: list[str] = []
    for key, value in step.items():
        if key in ("command", "args"):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            negated = "--no-" + key.replace("_", "-")
            options += [flag] if value else [negated] if negated in off else []
        elif isinstance(value, list):
            options += [flag] + [str(v) for v in value]
        else:
            options += [flag, str(value)]
    if words[0] == "apply" and apply:
        options.append("--apply")
    return words + args + options


def _step_label(path: str | Path, index: int, step: dict[str, Any]) -> str:
    return f"pipeline {path}: step {index} ({step['command']})"


def check_pipeline(path: str | Path, parse_step: ParseStep, *, off_switches: OffSwitches | None = None,
                   _running: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Check the whole file before anything runs: commands, options, and `run` steps (each
    nested pipeline is checked too; one already on the way from the outermost file is an
    error, so a pipeline cannot run itself). Returns the loaded pipeline."""
    here = Path(path).resolve()
    chain = _running + (here,)
    data = load_pipeline(path)
    for index, step in enumerate(data["step"], 1):
        label = _step_label(path, index, step)
        for key, flag in FORBIDDEN_KEYS.items():
            if key in step:
                raise ConfigError(f"{label}: a step cannot pass {flag}; run the pipeline with "
                                  "`vdc-lake run FILE --apply` to carry out its apply steps")
        if step["command"].split() == ["sql"] and "-" in [str(a) for a in step.get("args", [])]:
            raise ConfigError(f"{label}: a step cannot read its query from stdin (`-`); put the query "
                              "in args, e.g. args = [\"SELECT count(*) FROM curated\"]")
        try:
            parse_step(step_arguments(step, apply=False, off_switches=off_switches))
        except ConfigError as e:
            raise ConfigError(f"{label}: {e}") from e
        if step["command"].split() == ["run"]:
            nested = Path(str(step["args"][0]))
            if nested.resolve() in chain:
                loop = " -> ".join(str(p) for p in chain[chain.index(nested.resolve()):] + (nested.resolve(),))
                raise ConfigError(f"{label}: runs {nested}, which is already running ({loop}); "
                                  "a pipeline cannot run itself")
            try:
                check_pipeline(nested, parse_step, off_switches=off_switches, _running=chain)
            except ConfigError as e:
                raise ConfigError(f"{label}: {e}") from e
    return data


# What a dry run's `sql` step may run: statements that only read. DuckDB 2 gives INSTALL the type
# LOAD; FILE_WRITING names the kinds that write files outside the catalog, for the note.
DRY_RUN_STATEMENTS = ("SELECT",)
FILE_WRITING = {"COPY": "COPY", "COPY_DATABASE": "COPY", "EXPORT": "EXPORT", "ATTACH": "ATTACH",
                "LOAD": "INSTALL/LOAD"}


def statements_not_reading(query: str) -> list[str]:
    """Kinds of the statements of `query` that are not SELECTs (LOAD is named INSTALL/LOAD, the
    two share a type); ['unrecognised SQL'] when DuckDB knows a statement but not its type, [] when
    the query does not parse (running it fails before anything is done)."""
    import duckdb

    try:
        kinds = [s.type.name for s in duckdb.extract_statements(query)]
    except duckdb.Error:
        return []
    except ValueError:  # a statement type this duckdb module cannot name
        return ["unrecognised SQL"]
    return [FILE_WRITING.get(kind, kind) for kind in kinds if kind not in DRY_RUN_STATEMENTS]


def dry_run_skip(step: dict[str, Any]) -> str | None:
    """Why a step is skipped in a dry run (it would write files, the catalog, or anything else),
    or None to run it."""
    if step["command"].split() != ["sql"]:
        return None
    if "output" in step:
        return "skipped in a dry run: it writes --output; run with --apply to write it"
    if step.get("write") is True:
        return "skipped in a dry run: it opens the catalog to write (--write); run with --apply to run it"
    kinds = sorted(set().union(*(statements_not_reading(str(a)) for a in step.get("args", []))))
    if kinds and set(kinds) <= set(FILE_WRITING.values()):
        return f"skipped in a dry run: its SQL writes files ({', '.join(kinds)}); run with --apply to write them"
    if kinds:
        return (f"skipped in a dry run: its SQL does more than read ({', '.join(kinds)}); "
                "run with --apply to run it")
    return None


def reads_for_next(steps: list[dict[str, Any]], index: int) -> bool:
    """Whether step `index` (1-based) is a scan directly followed by a full sanitize (no --quick,
    no --recheck): it then runs as `scan --sanitize`, reading each file once for both, and the
    sanitize step finds every decode verdict made (it judges the header rules with its own
    options and decodes only what the scan did not)."""
    if index >= len(steps) or steps[index - 1]["command"].split() != ["scan"]:
        return False
    after = steps[index]
    return after["command"].split() == ["sanitize"] and not after.get("quick") and not after.get("recheck")


def run_pipeline(path: str | Path, invoke: Invoke, *, apply: bool = False, parse_step: ParseStep | None = None,
                 off_switches: OffSwitches | None = None, note: Callable[[str], None] | None = None) -> PipelineResult:
    """Check the file (when parse_step is given), then run each step through
    `invoke(args) -> (ok, output)`; stop at the first failure. In a dry run, steps that
    would write files are skipped and `note` is told why."""
    data = (check_pipeline(path, parse_step, off_switches=off_switches) if parse_step is not None
            else load_pipeline(path))
    result = PipelineResult(str(path))
    for index, step in enumerate(data["step"], 1):
        args = step_arguments(step, apply=apply, off_switches=off_switches)
        if reads_for_next(data["step"], index) and "--sanitize" not in args:
            args.append("--sanitize")
        skip = None if apply else dry_run_skip(step)
        if skip is not None:
            if note is not None:
                note(f"step {index} ({' '.join(args)}): {skip}")
            result.steps.append(StepResult(index, " ".join(args), True, 0.0, skip, skipped=True))
            continue
        started = time.monotonic()
        ok, output = invoke(args)
        lines = [line for line in output.strip().splitlines() if line.strip()]
        result.steps.append(StepResult(index, " ".join(args), ok, round(time.monotonic() - started, 2),
                                       lines[-1] if lines else ""))
        if not ok:
            break
    return result
