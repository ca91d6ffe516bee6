"""Valid values: one table of rules for every config option, shared by the CLI and the library.

A value is checked where it enters: a config file (`check_config`, naming the file, section
and key), a CLI option (`check_section` / `check_value`, naming the option), or a library call
(the same functions, naming the parameter). So `--threshold 5` and `threshold = 5` in
vdc-lake.toml get the same rule and the same words. Catalog references (run ids, set names,
score names) are checked against the catalog by `check_run`, `check_set` and `check_score_name`.

Every message says what is wrong and what is valid: "--threshold must be a cosine distance
between 0 and 2, not 5.0".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from vdc_lake.errors import InvalidValueError


# -- rules -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Number:
    """A finite number in [lo, hi] (either end open when None); `integer` for whole numbers."""

    lo: float | None = None
    hi: float | None = None
    integer: bool = False
    what: str = ""  # e.g. "a cosine distance"
    lo_open: bool = False  # lo itself is not allowed (> lo)

    def requirement(self) -> str:
        what = self.what or ("a whole number" if self.integer else "a number")
        if self.lo is not None and self.hi is not None:
            return f"{what} between {_num(self.lo)} and {_num(self.hi)}"
        if self.lo is not None:
            return f"{what} {'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.hi is not None:
            return f"{what} <= {_num(self.hi)}"
        return what

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and (isinstance(value, float) and not value.is_integer()):
            return False
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return self.hi is None or value <= self.hi


@dataclass(frozen=True)
class Bound:
    """A score bound: any number but NaN (-inf / inf = no bound)."""

    def requirement(self) -> str:
        return "a number (-inf or inf for no bound)"

    def ok(self, value: Any) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and not math.isnan(value)


@dataclass(frozen=True)
class Choice:
    choices: tuple[str, ...]

    def requirement(self) -> str:
        return "one of " + ", ".join(self.choices)

    def ok(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.choices


@dataclass(frozen=True)
class Flag:
    def requirement(self) -> str:
        return "true or false"

    def ok(self, value: Any) -> bool:
        return isinstance(value, bool)


@dataclass(frozen=True)
class Text:
    def requirement(self) -> str:
        return "a text value"

    def ok(self, value: Any) -> bool:
        return isinstance(value, str)


@dataclass(frozen=True)
class Levels:
    """Per-level counts of hierarchical k-means, finest level first."""

    lo: int
    shrinking: bool = False

    def requirement(self) -> str:
        if self.shrinking:
            return f"one or more whole numbers >= {self.lo}, largest first (e.g. 1000 50 5)"
        return f"one or more whole numbers >= {self.lo}, one per level (e.g. 10 5 3)"

    def ok(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)) or not value:
            return False
        if not all(Number(self.lo, integer=True).ok(v) for v in value):
            return False
        return not self.shrinking or all(a > b for a, b in zip(value, value[1:]))


@dataclass(frozen=True)
class Extensions:
    def requirement(self) -> str:
        return 'a list of file extensions such as [".jpg", ".png"]'

    def ok(self, value: Any) -> bool:
        return (isinstance(value, list) and bool(value)
                and all(isinstance(v, str) and v.startswith(".") and len(v) > 1 for v in value))


@dataclass(frozen=True)
class Formats:
    def requirement(self) -> str:
        return 'a list of Pillow format names such as ["JPEG", "PNG"]'

    def ok(self, value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)


@dataclass(frozen=True)
class JpegQuality:
    def requirement(self) -> str:
        return '"keep" or a whole number between 1 and 100'

    def ok(self, value: Any) -> bool:
        return value == "keep" or Number(1, 100, integer=True).ok(value)


Rule = Number | Bound | Choice | Flag | Text | Levels | Extensions | Formats | JpegQuality

COSINE_DISTANCE = Number(0, 2, what="a cosine distance")
PROBABILITY = Number(0, 1, what="a probability")
PIXELS = Number(1, integer=True, what="a whole number of pixels")
WORKERS = Number(0, integer=True, what="a whole number of processes (0 = one per CPU core)")
SEED = Number(0, 2**63 - 1, integer=True, what="a whole-number seed")
# [quality] thresholds (vdc_lake/kernels/quality.py units)
BRIGHTNESS = Number(0, 1, what="a brightness (0..1)")
SHARPNESS = Number(0, what="a sharpness (variance of the Laplacian / variance)")
ENTROPY = Number(0, 8, what="an entropy in bits")
CHROMA = Number(-1, 128, what="a chroma (0..128, -1 = none)")
KEEP_RULES = ("random", "alphabetical", "largest-resolution", "largest-file")

# (section, key) -> rule; keys without a rule are not checked here (their readers check them).
RULES: dict[tuple[str, str], Rule] = {
    ("scan", "extensions"): Extensions(),
    ("scan", "workers"): WORKERS,
    ("scale", "backend"): Choice(("local", "ray")),
    ("scale", "ray_address"): Text(),
    ("scale", "memory_budget_gb"): Number(0, what="a size in GB (0 = half of the RAM)"),
    ("scale", "vector_batch_rows"): Number(1, integer=True, what="a whole number of rows"),
    ("scale", "duckdb_memory_limit"): Text(),
    ("scale", "duckdb_temp_directory"): Text(),
    ("sanitize", "allowed_formats"): Formats(),
    ("sanitize", "min_width"): PIXELS,
    ("sanitize", "min_height"): PIXELS,
    ("sanitize", "max_width"): PIXELS,
    ("sanitize", "max_height"): PIXELS,
    ("sanitize", "min_aspect_ratio"): Number(0, what="an aspect ratio (width / height)", lo_open=True),
    ("sanitize", "max_aspect_ratio"): Number(0, what="an aspect ratio (width / height)", lo_open=True),
    ("sanitize", "max_file_size_mb"): Number(0, what="a size in MB", lo_open=True),
    ("sanitize", "max_pixels"): PIXELS,
    ("sanitize", "check_corruption"): Flag(),
    ("sanitize", "builtin_descriptor"): Flag(),
    ("sanitize", "recompress_format"): Choice(("WEBP", "JPEG", "PNG")),
    ("sanitize", "recompress_quality"): Number(1, 100, integer=True, what="an encoder quality"),
    ("rotation_correction", "threshold"): PROBABILITY,
    ("dedup", "metric"): Choice(("cosine",)),
    ("dedup", "center"): Flag(),
    ("dedup", "l2_normalize"): Flag(),
    ("dedup", "index_dtype"): Choice(("f32", "f16", "bf16", "i8")),
    ("dedup", "neighbors"): Number(1, integer=True, what="a whole number of neighbours"),
    ("dedup", "report_threshold"): COSINE_DISTANCE,
    ("dedup", "max_pairs_per_image"): Number(1, integer=True, what="a whole number of pairs"),
    ("dedup", "precision"): Choice(("auto", "bf16", "tf32", "fp32")),
    ("dedup", "ray_tile_rows"): Number(1, integer=True, what="a whole number of rows"),
    ("apply_deduplication", "threshold"): COSINE_DISTANCE,
    ("apply_deduplication", "keep"): Choice(KEEP_RULES),
    ("apply_deduplication", "seed"): SEED,
    ("calibration", "target_precision"): PROBABILITY,
    ("calibration", "pairs"): Number(1, integer=True, what="a whole number of pairs"),
    ("calibration", "bins"): Number(1, 1000, integer=True, what="a whole number of bins"),
    ("calibration", "seed"): SEED,
    ("quality", "dark"): BRIGHTNESS,
    ("quality", "bright"): BRIGHTNESS,
    ("quality", "blurry"): SHARPNESS,
    ("quality", "low_information"): ENTROPY,
    ("quality", "grayscale"): CHROMA,
    ("quality", "delete_dark"): BRIGHTNESS,
    ("quality", "delete_bright"): BRIGHTNESS,
    ("quality", "delete_blurry"): SHARPNESS,
    ("quality", "delete_low_information"): ENTROPY,
    ("quality", "delete_grayscale"): CHROMA,
    ("filter_by_examples", "metric"): Choice(("cosine",)),
    ("filter_by_examples", "threshold"): COSINE_DISTANCE,
    ("filter_by_score", "name"): Text(),
    ("filter_by_score", "min_score"): Bound(),
    ("filter_by_score", "max_score"): Bound(),
    ("hierarchical_kmeans", "n_clusters"): Levels(1, shrinking=True),
    ("hierarchical_kmeans", "method"): Choice(("centers", "resampled")),
    ("hierarchical_kmeans", "n_samples"): Levels(0),
    ("hierarchical_kmeans", "n_resamples"): Number(1, integer=True, what="a whole number of resamples"),
    ("hierarchical_kmeans", "metric"): Choice(("cosine", "l2")),
    ("hierarchical_kmeans", "init"): Choice(("kmeans++", "random")),
    ("hierarchical_kmeans", "max_iters"): Number(1, integer=True, what="a whole number of iterations"),
    ("hierarchical_kmeans", "tol"): Number(0, what="a relative change"),
    ("hierarchical_kmeans", "seed"): SEED,
    ("hierarchical_kmeans", "recluster_drift"): PROBABILITY,
    ("hierarchical_sampling", "allocation"): Choice(("water-filling", "largest-remainder")),
    ("hierarchical_sampling", "strategy"): Choice(("random", "closest")),
    ("hierarchical_sampling", "seed"): SEED,
    ("predict", "models_dir"): Text(),
    ("predict", "batch_size"): Number(1, integer=True, what="a whole number of images"),
    ("predict", "num_workers"): Number(0, integer=True, what="a whole number of processes (0 = in the main process)"),
    ("predict", "device"): Choice(("auto", "cpu", "cuda")),
    ("predict", "decode"): Choice(("auto", "cpu", "gpu")),
    ("predict", "draft_min_size"): Number(0, integer=True, what="a side in pixels (0 = never reduce)"),
    ("apply", "jpeg_quality"): JpegQuality(),
    ("export", "format"): Choice(("manifest", "symlink", "hardlink", "copy", "webdataset")),
    ("export", "shard_size_mb"): Number(0, what="a size in MB", lo_open=True),
    ("report", "thumbnails"): Number(0, integer=True, what="a whole number of images"),
    ("review", "host"): Text(),
    ("review", "port"): Number(1, 65535, integer=True, what="a TCP port"),
    ("review", "lock_wait_seconds"): Number(0, 600, what="seconds"),
    ("report", "page_size"): Number(1, integer=True, what="a whole number of items"),
    ("report", "max_pages"): Number(1, integer=True, what="a whole number of pages"),
}

# Pairs within a section where the first may not exceed the second.
ORDERED_PAIRS: dict[str, list[tuple[str, str]]] = {
    "sanitize": [("min_width", "max_width"), ("min_height", "max_height"),
                 ("min_aspect_ratio", "max_aspect_ratio")],
    "filter_by_score": [("min_score", "max_score")],
    # a deletion is also a finding: each delete threshold lies past its report threshold
    "quality": [("delete_dark", "dark"), ("bright", "delete_bright"), ("delete_blurry", "blurry"),
                ("delete_low_information", "low_information"), ("delete_grayscale", "grayscale")],
}

# Options that are not config keys, shared by several commands.
TOTAL = Number(1, integer=True, what="a whole number of images")
RUN_ID = Number(1, integer=True, what="a run id")
EXAMPLES_SHOWN = Number(0, integer=True, what="a whole number of examples")
PROCESSES = Number(1, integer=True, what="a whole number")
SCORE = Bound()


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else str(value)


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "(nothing)"
    if isinstance(value, str):
        return repr(value)
    return str(value)


# -- checks ----------------------------------------------------------------------------------------

def check(rule: Rule, value: Any, name: str) -> Any:
    """Return value when `rule` accepts it; else raise InvalidValueError naming `name`."""
    if value is None or rule.ok(value):
        return value
    raise InvalidValueError(f"{name} must be {rule.requirement()}, not {_show(value)}")


def config_origin(section: str, key: str, source: str | None) -> str:
    """How a config value is named in messages: its key and the file that set it."""
    if not source or source == "default":
        return f"[{section}] {key} (bundled default)"
    return f"[{section}] {key} in {source}"


def check_value(section: str, key: str, value: Any, name: str | None = None) -> Any:
    """Check one option's value by its config rule; `name` is how the message names it
    (default: the config key)."""
    rule = RULES.get((section, key))
    if rule is None:
        return value
    return check(rule, value, name or f"[{section}] {key}")


def check_section(section: str, values: dict[str, Any],
                  name_of: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Check every value of one section and the order of its min/max pairs.

    name_of(key) says how to name a key in the message (a CLI option or the config file's key)."""
    name_of = name_of or (lambda key: f"[{section}] {key}")
    for key, value in values.items():
        check_value(section, key, value, name_of(key))
    for low, high in ORDERED_PAIRS.get(section, []):
        lo, hi = values.get(low), values.get(high)
        if lo is not None and hi is not None and lo > hi:
            raise InvalidValueError(f"{name_of(low)} ({_num(lo)}) must not exceed {name_of(high)} ({_num(hi)}); "
                                    f"lower the first or raise the second")
    return values


def _decimal_for_whole(rule: Rule | None, value: Any) -> bool:
    """A TOML float (2.0, 1e9) where the rule wants whole numbers: the readers would get a float."""
    values = value if isinstance(value, list) else [value]
    whole = ((isinstance(rule, Number) and rule.integer) or isinstance(rule, (Levels, JpegQuality)))
    return whole and any(isinstance(v, float) for v in values)


def check_config(described: Iterable[tuple[str, str, Any, str]]) -> None:
    """Check every value of a Config (rows of Config.describe()), naming file, section and key.
    A file's whole numbers must be written as such (2, not 2.0 or 2e0)."""
    by_section: dict[str, dict[str, Any]] = {}
    sources: dict[tuple[str, str], str] = {}
    for section, key, value, source in described:
        by_section.setdefault(section, {})[key] = value
        sources[(section, key)] = source
        rule = RULES.get((section, key))
        if _decimal_for_whole(rule, value):
            raise InvalidValueError(f"{config_origin(section, key, source)} must be {rule.requirement()}, "
                                    f"written without a decimal point or exponent, not {_show(value)}")
    for section, values in by_section.items():
        check_section(section, values, lambda key, s=section: config_origin(s, key, sources.get((s, key))))


def check_order(low_name: str, low: float | None, high_name: str, high: float | None) -> None:
    """low <= high when both are given (e.g. --min-score and --max-score)."""
    if low is not None and high is not None and low > high:
        raise InvalidValueError(f"{low_name} ({_num(low)}) must not exceed {high_name} ({_num(high)})")


def fit_levels(n_clusters: Sequence[int], n_samples: Sequence[int] | None, *, explicit: bool,
               clusters_name: str = "--n-clusters", samples_name: str = "--n-samples") -> tuple[list[int], str | None]:
    """n_samples with one count per level of n_clusters, and a note when it was adapted.

    The user's own n_samples (explicit: CLI or config file) must match n_clusters' length: an
    error otherwise. The bundled default (10 5 3, for three levels) is fitted to the levels
    asked for: cut to the first counts, or extended by repeating its last count."""
    n_samples = list(n_samples or [])
    if len(n_samples) == len(n_clusters):
        return n_samples, None
    levels = len(n_clusters)
    fitted = (n_samples + [n_samples[-1]] * levels)[:levels] if n_samples else []
    if explicit or not n_samples:
        example = " ".join(map(str, fitted or [10, 5, 3][:levels]))
        raise InvalidValueError(
            f"{samples_name} has {len(n_samples)} values but {clusters_name} has {levels} levels; "
            f"give one count per level, e.g. {samples_name} {example}")
    note = (f"note: n_samples {_show(n_samples)} (default) has {len(n_samples)} values for {levels} levels; "
            f"using {_show(fitted)} (pass {samples_name} to choose)")
    return fitted, note


# -- catalog references ----------------------------------------------------------------------------

# Stages whose runs an option may name; apply runs are recorded as 'apply:<decision>'.
RUN_STAGES = {"sample": "sample", "cluster": "cluster", "apply": "apply:"}


def check_run(catalog: Any, run_id: int | None, stage: str, *, name: str = "--run",
              finished: bool = True) -> int | None:
    """run_id must name a run of `stage` ('apply' matches every apply run) that finished
    (unless finished=False: restore undoes interrupted apply runs too)."""
    if run_id is None:
        return None
    check(RUN_ID, run_id, name)
    row = catalog.rows("SELECT stage, status FROM runs WHERE run_id = ?", [run_id])
    if not row:
        raise InvalidValueError(f"there is no run {run_id}; list runs with `vdc-lake sql \"SELECT * FROM runs\"`")
    actual, status = row[0]
    prefix = RUN_STAGES.get(stage, stage)
    right_stage = actual.startswith(prefix) if prefix.endswith(":") else actual == prefix
    where = (f"stage LIKE '{prefix}%'" if prefix.endswith(":") else f"stage = '{prefix}'")
    newest = catalog.scalar(f"SELECT max(run_id) FROM runs WHERE {where}"
                            + (" AND status = 'done'" if finished else ""))
    hint = f"newest: {newest}" if newest is not None else f"there is none yet: run `vdc-lake {stage}` first"
    if not right_stage:
        raise InvalidValueError(f"{name} {run_id} is {_a(actual)} run, not {_a(stage)} run; "
                                f"give {_a(stage)} run ({hint})")
    if finished and status != "done":
        raise InvalidValueError(f"{name} {run_id}: {stage} run {run_id} did not finish (status {status}); "
                                f"give a finished {stage} run ({hint})")
    return run_id


SET_REGISTRIES = {"embeddings": ("embedding_sets", "embedding set"), "predictions": ("prediction_sets", "prediction set")}


def check_set(catalog: Any, table: str, name: str | None, *, option: str = "--set") -> str | None:
    """name must be a registered embedding set (table 'embeddings') or prediction set ('predictions')."""
    if name is None:
        return None
    registry, what = SET_REGISTRIES[table]
    known = [r[0] for r in catalog.rows(f"SELECT name FROM {registry} ORDER BY name")]
    if name not in known:
        raise InvalidValueError(f"{option} {name!r}: no {what} of that name; known {what}s: "
                                f"{', '.join(known) or 'none yet (create one with `vdc-lake predict`)'}")
    return name


def check_score_name(catalog: Any, name: str | None, *, option: str = "--name") -> str | None:
    if name is None:
        return None
    known = [r[0] for r in catalog.rows("SELECT DISTINCT name FROM scores ORDER BY name")]
    if name not in known:
        raise InvalidValueError(f"{option} {name!r}: no score of that name; known scores: "
                                f"{', '.join(known) or 'none yet (create one with `vdc-lake score`)'}")
    return name


def check_decision_values(threshold_setting: tuple[str, str] | None, *, score_bounds: bool = False,
                          threshold: float | None = None, seed: int | None = None,
                          min_score: float | None = None, max_score: float | None = None, **_: Any) -> None:
    """The values given to `plan/apply STAGE` by their config rules: --threshold by the rule of
    threshold_setting (the decision's config key, see vdc_lake.review.decisions), --seed, and
    --min-score / --max-score when score_bounds (a decision that takes them)."""
    if threshold is not None and threshold_setting is not None:
        check_value(*threshold_setting, threshold, "--threshold")
    check(SEED, seed, "--seed")
    if score_bounds:
        check(SCORE, min_score, "--min-score")
        check(SCORE, max_score, "--max-score")
        check_order("--min-score", min_score, "--max-score", max_score)
