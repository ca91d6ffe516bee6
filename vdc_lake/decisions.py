"""Decisions: which SQL view feeds `plan`/`apply` for each stage, with its options.

Each entry returns (SQL selecting image_id, version, action, reason; bound parameters;
options the file operations need). Adding a stage's decision is one function here.
"""

from __future__ import annotations

from typing import Any, Callable

from vdc_lake.config import Config
from vdc_lake.errors import PlanError

DecisionQuery = tuple[str, list[Any], dict[str, Any]]


def sanitize_decision(config: Config, **_: Any) -> DecisionQuery:
    rules = config.section("sanitize")
    options = {key: rules[key] for key in ("max_width", "max_height", "recompress_format", "recompress_quality")}
    return "SELECT image_id, version, action, reason FROM sanitize_actions", [], options


DECISIONS: dict[str, Callable[..., DecisionQuery]] = {
    "sanitize": sanitize_decision,
}


def decision_query(name: str, config: Config, **options: Any) -> DecisionQuery:
    if name not in DECISIONS:
        raise PlanError(f"unknown stage {name!r}; choose one of: {', '.join(sorted(DECISIONS))}")
    return DECISIONS[name](config, **options)
