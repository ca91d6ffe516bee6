"""The threshold explorer's data: what each value of a decision's threshold would do.

Every count comes from the decision's own query in the registry (review/decisions.py
decision_query: the SQL `plan STAGE --threshold T` runs), never from a copy of it, so a slider
position and `vdc-lake plan` agree. Decisions with a threshold: dedup (a cosine distance per
embedding set; pairs under it are duplicates), rotation (the top class's probability above it
rotates), examples (a distance to an unwanted example under it deletes), score (min_score: a
score under it deletes; max_score stays the setting).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from vdc_lake.catalog.connection import Catalog
from vdc_lake.config.loader import Config
from vdc_lake.errors import PlanError
from vdc_lake.review.decisions import DECISIONS, decision_query

SWEEP_STEPS = 20  # grid points of a default sweep (the slider's stops)

# The registry's decisions with a threshold, and where it lives in vdc-lake.toml
# (docs/configuration.md): the config key that checks --threshold, or a score's lower bound.
CONFIG_KEYS = {d.name: d.threshold_setting or ("filter_by_score", "min_score") for d in DECISIONS.values()
               if d.threshold_setting is not None or "min_score" in d.options}
SWEPT = tuple(CONFIG_KEYS)


def _check(decision: str) -> None:
    if decision not in SWEPT:
        raise PlanError(f"no threshold to sweep for {decision!r}; choose one of: {', '.join(SWEPT)}")


def _score_name(catalog: Catalog, name: str | None) -> str:
    name = name or catalog.scalar("SELECT setting('filter_by_score', 'name')")
    if not name:
        raise PlanError("a score sweep needs a score name (set_name), or [filter_by_score] name in vdc-lake.toml")
    return name


def _range(catalog: Catalog, decision: str, set_name: str | None) -> tuple[float, float]:
    """The span of stored values a default sweep covers."""
    if decision == "dedup":
        top = catalog.scalar(
            "SELECT max(TRY_CAST(json_extract(params, '$.threshold') AS DOUBLE)) FROM newest_runs "
            "WHERE stage = 'dedup-report' AND (? IS NULL OR set_name = ?)", [set_name, set_name])
        return 0.0, float(top) if top else 0.0
    if decision == "examples":
        top = catalog.scalar(
            "SELECT max(d.distance) FROM example_distances AS d JOIN newest_runs AS n ON n.run_id = d.run_id "
            "WHERE n.stage = 'filter-examples' AND (? IS NULL OR n.set_name = ?)", [set_name, set_name])
        return 0.0, float(top) if top is not None else 0.0
    if decision == "score":
        low, high = catalog.rows("SELECT min(score), max(score) FROM scores WHERE name = ?",
                                 [_score_name(catalog, set_name)])[0]
        return (float(low), float(high)) if low is not None else (0.0, 0.0)
    return 0.0, 1.0  # a probability (rotation)


def default_values(catalog: Catalog, decision: str, *, set_name: str | None = None) -> list[float]:
    """SWEEP_STEPS + 1 evenly spaced values over the stored range: distances from 0 to the
    searched distance (dedup) or the farthest stored one (examples), probabilities 0..1
    (rotation), the stored scores' span (score)."""
    _check(decision)
    low, high = _range(catalog, decision, set_name)
    if high <= low:
        return [round(low, 6)]
    return sorted({round(float(v), 6) for v in np.linspace(low, high, SWEEP_STEPS + 1)})


def _options(catalog: Catalog, decision: str, set_name: str | None, value: float) -> dict[str, Any]:
    """The plan options that set the threshold to value (and name the set, where it takes one)."""
    if "min_score" in DECISIONS[decision].options:
        return {"name": _score_name(catalog, set_name), "min_score": value}
    named = [o for o in ("embedding_set", "prediction_set") if o in DECISIONS[decision].options]
    return {"threshold": value, **{o: set_name for o in named}}


def threshold_sweep(catalog: Catalog, decision: str, *, set_name: str | None = None,
                    values: Sequence[float] | None = None) -> list[tuple[float, int]]:
    """[(value, images the decision acts on at that value)], one `plan` query per value: deletes
    for dedup, examples and score, rotations for rotation. set_name: the embedding set (dedup,
    examples; None = every set), prediction set (rotation; None = the newest) or score name
    (score; None = [filter_by_score] name). values: default default_values()."""
    _check(decision)
    if values is None:
        values = default_values(catalog, decision, set_name=set_name)
    config = Config.bundled()  # the queries read the catalog's settings; this only fills unused options
    swept = []
    for value in values:
        sql, params, _ = decision_query(decision, config, **_options(catalog, decision, set_name, float(value)))
        swept.append((value, int(catalog.scalar(f"SELECT count(*) FROM ({sql})", params))))
    return swept


# The members dedup_actions ranks, with its survival rank (0: kept by override and no other
# decision removes it, 1: no override and no other decision removes it, 2: kept by override but
# removed elsewhere, 3: removed elsewhere, 4: dropped by override); nodes of the pairs that are
# not present images are in no group's count (dedup_actions joins image_files).
_SURVIVAL_SQL = """
WITH removed_elsewhere AS (
    SELECT DISTINCT image_id, version FROM filter_removals WHERE decision <> 'override'
)
SELECT n.image_id,
       CASE WHEN o.override = 'keep' AND x.image_id IS NULL THEN 0
            WHEN o.override IS NULL AND x.image_id IS NULL THEN 1
            WHEN o.override = 'keep' THEN 2
            WHEN o.override IS NULL THEN 3
            ELSE 4 END AS survival_rank
FROM dedup_sweep_nodes AS n
JOIN image_files AS f ON f.image_id = n.image_id
LEFT JOIN override_actions AS o ON o.image_id = f.image_id AND o.version = f.version
LEFT JOIN removed_elsewhere AS x ON x.image_id = f.image_id AND x.version = f.version
"""


@dataclass
class DedupGraph:
    """What dedup_actions groups, as arrays: the exact copies' pairs and the set's stored pairs
    (node numbers into `nodes`, the image ids), each stored pair's distance (float64, as DuckDB
    compares a FLOAT distance with a DOUBLE threshold) and each node's survival rank (-1: not a
    present image, in no group's count)."""

    nodes: np.ndarray
    exact_a: np.ndarray
    exact_b: np.ndarray
    near_a: np.ndarray
    near_b: np.ndarray
    distance: np.ndarray
    rank: np.ndarray

    def removed(self, threshold: float) -> int:
        """Images dedup_actions(threshold := threshold, embedding_set := the set) deletes. The
        groups are the connected components of the exact copies and the pairs under the
        threshold; a group of present members deletes all but its keeper and the members kept by
        override. The keeper is one of those when the best-ranked member is (survival rank 0, or 2
        with no member of rank 0 or 1); else one more member stays."""
        from vdc_lake.kernels.duplicate_groups import connected_components

        under = self.distance < float(threshold)
        labels = connected_components(np.concatenate([self.exact_a, self.near_a[under]]),
                                      np.concatenate([self.exact_b, self.near_b[under]]), len(self.nodes))
        size, first, plain, second = (
            np.bincount(labels, weights=(self.rank == r) if r is not None else (self.rank >= 0),
                        minlength=len(self.nodes)) for r in (None, 0, 1, 2))
        extra = (first == 0) & ((plain > 0) | (second == 0))
        return int(round(np.where(size > 0, size - first - second - extra, 0).sum()))


def dedup_graph(catalog: Catalog, set_name: str, *, below: float | None = None) -> DedupGraph:
    """The set's DedupGraph (pairs under `below` only, when given: enough for thresholds up to it)."""
    exact = catalog.arrow("SELECT image_a, image_b FROM exact_duplicate_edges")
    near = catalog.arrow("SELECT image_a, image_b, distance FROM near_duplicate_edges "
                         "WHERE set_name = ? AND (? IS NULL OR distance < ?)", [set_name, below, below])
    ends = [np.asarray(t.column(c).to_numpy(zero_copy_only=False), np.int64)
            for t in (exact, near) for c in ("image_a", "image_b")]
    nodes = np.unique(np.concatenate(ends))
    with catalog.registered("dedup_sweep_nodes", pa.table({"image_id": pa.array(nodes, pa.int64())})):
        ranked = catalog.arrow(_SURVIVAL_SQL)
    rank = np.full(len(nodes), -1, np.int64)
    rank[np.searchsorted(nodes, ranked.column("image_id").to_numpy())] = ranked.column("survival_rank").to_numpy()
    exact_a, exact_b, near_a, near_b = (np.searchsorted(nodes, e) for e in ends)
    return DedupGraph(nodes, exact_a, exact_b, near_a, near_b,
                      near.column("distance").to_numpy(zero_copy_only=False).astype(np.float64), rank)


def dedup_removed_sweep(catalog: Catalog, set_name: str, values: Sequence[float]) -> list[tuple[float, int]]:
    """[(threshold, images dedup_actions(threshold := T, embedding_set := set_name) deletes)] for
    every value, from one read of the pairs (DedupGraph): the same numbers as threshold_sweep's
    one dedup_actions query per value (tests/test_thresholds.py compares them), at the cost of one."""
    values = [float(v) for v in values]
    if not values:
        return []
    graph = dedup_graph(catalog, set_name, below=max(values))
    return [(value, graph.removed(value)) for value in values]


_PAIRS_NEAR_SQL = """
WITH pairs AS (
    SELECT e.image_a, e.image_b, e.distance, e.distance < $threshold AS below
    FROM near_duplicate_edges AS e
    WHERE e.set_name = $set
),

nearest AS (
    (SELECT * FROM pairs WHERE below ORDER BY distance DESC, image_a, image_b LIMIT $k)
    UNION ALL
    (SELECT * FROM pairs WHERE NOT below ORDER BY distance, image_a, image_b LIMIT $k)
)

SELECT n.image_a, n.image_b, fa.path AS path_a, fb.path AS path_b, n.distance,
       CASE WHEN n.below THEN 'below' ELSE 'above' END AS side, l.is_duplicate
FROM nearest AS n
JOIN image_files AS fa ON fa.image_id = n.image_a
JOIN image_files AS fb ON fb.image_id = n.image_b
LEFT JOIN pair_labels_in_force AS l ON l.image_a = n.image_a AND l.image_b = n.image_b
ORDER BY n.distance, n.image_a, n.image_b
"""


def pairs_near(catalog: Catalog, set_name: str, threshold: float, k: int = 10) -> pa.Table:
    """The set's k stored pairs just under the threshold (duplicates at it) and the k just over
    (not), by distance: image_a, image_b, path_a, path_b, distance, side ('below'/'above'),
    is_duplicate (the user's label in force, null when unlabelled)."""
    return catalog.arrow(_PAIRS_NEAR_SQL, {"set": set_name, "threshold": float(threshold), "k": int(k)})


def chain_only(catalog: Catalog, set_name: str, threshold: float) -> pa.Table:
    """Images dedup_actions deletes at the threshold only through other members of their group:
    no stored pair under the threshold joins them to the image kept (kept_distance null or not
    under it). image_id, path, group_id, kept_image_id, kept_path, kept_distance, nearest_distance."""
    return catalog.arrow(
        "SELECT image_id, path, group_id, kept_image_id, kept_path, kept_distance, nearest_distance "
        "FROM dedup_actions(threshold := ?, embedding_set := ?) "
        "WHERE action = 'delete' AND (kept_distance IS NULL OR kept_distance >= ?) ORDER BY group_id, image_id",
        [float(threshold), set_name, float(threshold)])


def config_line(decision: str, set_name: str | None, value: float) -> str:
    """The vdc-lake.toml lines that make value the decision's setting. Dedup's threshold is one
    value for every embedding set (it wins over each set's own recommendation), rotation's for
    every prediction set; a score's min_score holds for the configured score name."""
    _check(decision)
    section, key = CONFIG_KEYS[decision]
    lines = [f"[{section}]"]
    if decision == "score" and set_name:
        lines.append(f'name = "{set_name}"')
    lines.append(f"{key} = {float(value):g}")
    return "\n".join(lines)
