"""Calibration: measure a dedup threshold's precision and recall on the user's own data.

The user labels a small sample of pairs ("duplicate or not?") and gets, for every candidate
threshold, how many of the pairs under it are real duplicates (precision) and how many of the
real duplicates it catches (recall), each with a 95% interval: no full ground truth needed.

Population and strata. The population is the set's stored pairs (`near_duplicate_edges`, the
newest `dedup report`) under the searched distance R: "precision and recall within the searched
range" (pairs the report never stored are not estimated). It is cut into B equal distance bins
over [0, R) (`calibration_design`, B = [calibration] bins); candidate thresholds are the bins'
upper edges, so every pair is wholly under or over each candidate. `labels draw` takes a
stratified sample: the n pairs are shared among the bins by water-filling (equal shares, a bin
with fewer pairs gives all it has), chosen uniformly at random (seeded hash order) within a bin;
the app's label mode continues the same order, always in the bin with the fewest labels. A
further stratum holds the chained pairs: images the dedup decision (at the set's apply
threshold in force) deletes as the duplicate of a keeper they have no stored pair with, paired
with that keeper; its share of real duplicates is estimated on its own (`Calibration.chained`).

Estimator (stratified, Horvitz-Thompson: each labelled pair stands for N_h / n_h pairs). Per bin
h: N_h stored pairs, n_h labelled, y_h duplicates, p_h = y_h / n_h. For the threshold t at the
top of bin k, with the bins j <= k under it:

    precision(t) = sum_j N_j p_j / sum_j N_j                (the denominator is known exactly)
    recall(t)    = sum_j N_j p_j / sum_h N_h p_h            (h over every bin: A / (A + B))

Variance: the stratified variance of each bin's total, N_h^2 (1 - n_h/N_h) p~_h (1 - p~_h) / n_h
(finite-population corrected), with p~_h = (y_h + z^2/2) / (n_h + z^2), z = 1.96: Agresti and
Coull's adjusted share, a small-sample correction that keeps a bin whose labels all agree from
claiming zero variance. Precision's variance is the sum of those over (sum_j N_j)^2; recall's is
the linearised (delta-method) variance of the ratio A / (A + B), A the bins under t and B the
others (independent strata): (B^2 V(A) + A^2 V(B)) / (A + B)^4, at the adjusted shares.
Interval (95%): the span of two. (1) The modified Wilson score interval (Brown, Cai & DasGupta
2001) on the effective sample size n_eff = p~ (1 - p~) / V (Kish's design effect turned around,
p~ the estimate at the adjusted shares; a single bin gives about the plain Wilson interval on its
labels), shrunk by (z / t)^2 with t Student's quantile at the Satterthwaite degrees of freedom of
V (Korn & Graubard 1998: few labels behind the variance). "Modified": where n_eff p (or
n_eff (1 - p)) is 3 or less, the bound on that side is the Poisson one when it reaches further,
since Wilson's alone is too tight there. (2) The normal interval, estimate +- t sqrt(V): Wilson
at the estimate with an n_eff taken at the adjusted shares is too narrow when those sit away from
the estimate, e.g. a recall of 0.95 whose missing 5% are a few duplicates spread over large
bins. Wilson keeps the interval sensible near 0 and 1, where the thresholds people want live
(precision 0.99); a bin labelled completely contributes no variance, and a census of every bin
gives the exact value. An estimate is missing (None) while a bin that holds pairs has no label.

tests/test_calibration.py checks the coverage: with labels drawn from a known truth, the 95%
intervals hold the true precision and recall in at least 90% of 100 seeded draws.

The estimates are the SQL macro `threshold_calibration(set)` (sql/views/30_marts): this module
reads it, and adds the images each candidate removes from plan's own query (dedup_actions, one
threshold at a time, through review.thresholds.threshold_sweep).

Labels go to the append-only `pair_labels` table, keyed by both images' versions (one `labels`
run per import or app action); a label whose image changed since is stale and no longer counts.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa

from vdc_lake.catalog.connection import Catalog
from vdc_lake.config import rules
from vdc_lake.errors import VdcLakeError
from vdc_lake.kernels.sampling import water_filling
from vdc_lake.fileops.csv_files import csv_rows, listed

DRAW_COLUMNS = ("image_a", "image_b", "path_a", "path_b", "distance", "bin", "weight")
LABEL_COLUMNS = ("image_a", "image_b", "is_duplicate")
CSV_COLUMNS = ("threshold", "precision", "precision_low", "precision_high", "recall", "recall_low",
               "recall_high", "removed")
TRUE_WORDS = ("true", "1", "yes", "y", "t")
FALSE_WORDS = ("false", "0", "no", "n", "f")


class LabelError(VdcLakeError):
    """Pair labels name images the catalog does not hold, or a labels CSV is malformed."""


# -- settings and checks -------------------------------------------------------------------------

def _setting(catalog: Catalog, key: str, value: Any, rule_name: str) -> Any:
    """value, else the catalog's [calibration] setting (the effective config); checked by its rule."""
    if value is None:
        text = catalog.scalar("SELECT setting('calibration', ?)", [key])
        value = float(text) if key == "target_precision" else int(text)
    return rules.check_value("calibration", key, value, rule_name)


def _check_set(catalog: Catalog, set_name: str) -> dict[str, Any]:
    """The set's calibration design {bins, searched, width}; LabelError when it has no dedup report."""
    rules.check_set(catalog, "embeddings", set_name)
    rows = catalog.rows("SELECT bins, searched, width FROM calibration_design(?)", [set_name])
    if not rows:
        raise LabelError(f"set {set_name!r} has no dedup report yet, so no stored pairs to label; run "
                         f"`vdc-lake dedup report --set {set_name}` first")
    return dict(zip(("bins", "searched", "width"), rows[0]))


# -- drawing pairs ------------------------------------------------------------------------------

# The population: stored pairs by distance bin, plus the chained stratum (bin = bins).
_POPULATION_SQL = """
CREATE OR REPLACE TEMP TABLE calibration_population AS
WITH stored AS (
    SELECT image_a, image_b, distance, bin FROM calibration_pairs($set, bins := $bins)
),

chained AS (
    SELECT DISTINCT least(image_id, kept_image_id) AS image_a, greatest(image_id, kept_image_id) AS image_b,
           NULL::FLOAT AS distance, $bins AS bin
    FROM dedup_actions(embedding_set := $set)
    WHERE action = 'delete' AND kept_distance IS NULL
)

SELECT *, hash(image_a::VARCHAR || ':' || image_b::VARCHAR || ':' || $seed::VARCHAR) AS draw_order
FROM (SELECT * FROM stored UNION ALL SELECT * FROM chained)
"""

_PICK_SQL = """
WITH ranked AS (
    SELECT *, row_number() OVER (PARTITION BY bin ORDER BY draw_order, image_a, image_b) AS rank_in_bin
    FROM calibration_population
),

picked AS (
    SELECT r.*, list_extract($quotas, r.bin + 1) AS quota, list_extract($sizes, r.bin + 1) AS stratum_size
    FROM ranked AS r
    WHERE r.rank_in_bin <= list_extract($quotas, r.bin + 1)
)

SELECT row_number() OVER (ORDER BY p.rank_in_bin, p.bin) - 1 AS position,
       p.image_a, p.image_b, fa.version AS version_a, fb.version AS version_b,
       fa.path AS path_a, fb.path AS path_b, p.distance, p.bin, p.stratum_size / p.quota AS weight
FROM picked AS p
JOIN image_files AS fa ON fa.image_id = p.image_a
JOIN image_files AS fb ON fb.image_id = p.image_b
ORDER BY position
"""


@dataclass
class Draw:
    """A stratified draw: pairs (DRAW_COLUMNS plus position, version_a, version_b), and per stratum
    (bins 0..bins-1 by distance, then the chained stratum) its size and the pairs drawn from it."""

    set_name: str
    bins: int
    searched: float
    seed: int
    pairs: pa.Table
    stratum_sizes: list[int] = field(default_factory=list)
    stratum_drawn: list[int] = field(default_factory=list)
    run_id: int | None = None

    def __len__(self) -> int:
        return self.pairs.num_rows

    def __repr__(self) -> str:
        return f"Draw({self.set_name!r}, {len(self)} pairs over {self.bins} bins + chained, run {self.run_id})"


def _draw(catalog: Catalog, set_name: str, *, n: int | None, seed: int | None, bins: int | None) -> Draw:
    n = _setting(catalog, "pairs", n, "--n")
    seed = _setting(catalog, "seed", seed, "--seed")
    bins = _setting(catalog, "bins", bins, "--bins")
    design = _check_set(catalog, set_name)
    bins = int(bins)
    catalog.execute(_POPULATION_SQL, {"set": set_name, "bins": bins, "seed": seed})
    try:
        counts = dict(catalog.rows("SELECT bin, count(*) FROM calibration_population GROUP BY bin"))
        sizes = np.array([counts.get(b, 0) for b in range(bins + 1)], dtype=np.int64)
        quotas = water_filling(sizes, min(int(n), int(sizes.sum())))
        table = catalog.arrow(_PICK_SQL, {"quotas": quotas.tolist(), "sizes": sizes.tolist()})
    finally:
        catalog.execute("DROP TABLE IF EXISTS calibration_population")
    return Draw(set_name, bins, float(design["searched"]), int(seed), table, sizes.tolist(), quotas.tolist())


def draw_pairs(catalog: Catalog, set_name: str, *, n: int | None = None, seed: int | None = None,
               bins: int | None = None) -> pa.Table:
    """A stratified sample of the set's stored pairs for labelling: n pairs (default [calibration]
    pairs) shared among `bins` distance bins (default [calibration] bins) and the chained stratum
    (same duplicate group, no stored pair) by water-filling, random within each (seed, default
    [calibration] seed). Returns DRAW_COLUMNS: image_a < image_b, their paths, the stored distance
    (null for a chained pair), bin (0 = nearest; `bins` = chained) and weight (pairs in the stratum
    per pair drawn), in the order to label them (bins interleaved). Reads only."""
    return _draw(catalog, set_name, n=n, seed=seed, bins=bins).pairs.select(list(DRAW_COLUMNS))


def record_draw(catalog: Catalog, set_name: str, *, n: int | None = None, seed: int | None = None,
                bins: int | None = None) -> Draw:
    """draw_pairs, recorded: one `labels-draw` run (its bins and searched distance are the design
    `dedup calibrate` then uses) and its pairs in `pair_draws` at the images' current versions
    (so the app's label mode offers them, and an import can tell a label of a changed image)."""
    params = {"set": set_name, "n": n, "seed": seed, "bins": bins}
    with catalog.run("labels-draw", params) as run_id:
        draw = _draw(catalog, set_name, n=n, seed=seed, bins=bins)
        rows = draw.pairs
        with catalog.transaction():
            catalog.insert_arrow("pair_draws", pa.table({
                "run_id": pa.array([run_id] * rows.num_rows, pa.int64()),
                "set_name": pa.array([set_name] * rows.num_rows, pa.string()),
                "position": rows.column("position").cast(pa.int32()),
                "image_a": rows.column("image_a"), "version_a": rows.column("version_a"),
                "image_b": rows.column("image_b"), "version_b": rows.column("version_b"),
                "distance": rows.column("distance"), "bin": rows.column("bin").cast(pa.int32()),
                "weight": rows.column("weight").cast(pa.float64()),
            }))
            # the design the estimate must use: recorded in the run's params (calibration_design reads them)
            catalog.execute("UPDATE runs SET params = json_merge_patch(params, ?) WHERE run_id = ?",
                            [f'{{"n": {len(draw)}, "seed": {draw.seed}, "bins": {draw.bins}, '
                             f'"searched": {draw.searched!r}}}', run_id])
        catalog.finish_run(run_id, summary={"pairs": len(draw), "strata": draw.stratum_sizes,
                                            "drawn": draw.stratum_drawn})
    draw.run_id = run_id
    return draw


def write_pairs_csv(pairs: pa.Table, path: str | os.PathLike) -> int:
    """Write a draw (DRAW_COLUMNS) as CSV with an empty is_duplicate column to fill in; returns rows."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*DRAW_COLUMNS, "is_duplicate"])
        for row in pairs.select(list(DRAW_COLUMNS)).to_pylist():
            distance = row["distance"]
            writer.writerow([row["image_a"], row["image_b"], row["path_a"], row["path_b"],
                             "" if distance is None else f"{distance:.6f}", row["bin"], f"{row['weight']:.6g}", ""])
    return pairs.num_rows


# -- recording labels -----------------------------------------------------------------------------

# Each incoming label with the versions it judged: the pair's versions in the newest draw that
# holds it (what the user was shown), else the images' current versions.
_RESOLVE_SQL = """
WITH drawn AS (
    SELECT image_a, image_b, arg_max(version_a, run_id) AS version_a, arg_max(version_b, run_id) AS version_b
    FROM pair_draws
    GROUP BY image_a, image_b
),

final AS (
    SELECT i.n, i.image_a, i.image_b, i.is_duplicate,
           coalesce(d.version_a, fa.version) AS version_a, coalesce(d.version_b, fb.version) AS version_b,
           fa.version AS current_a, fb.version AS current_b, d.image_a IS NOT NULL AS was_drawn
    FROM incoming_labels AS i
    LEFT JOIN drawn AS d ON d.image_a = i.image_a AND d.image_b = i.image_b
    LEFT JOIN image_files AS fa ON fa.image_id = i.image_a
    LEFT JOIN image_files AS fb ON fb.image_id = i.image_b
)

SELECT * FROM final ORDER BY n
"""


@dataclass
class LabelSummary:
    """What one `labels` run recorded: labels written, of them stale (an image changed or went away
    since the pair was drawn: recorded at the drawn versions, not counted), duplicates among them."""

    run_id: int | None
    source: str
    recorded: int = 0
    stale: int = 0
    duplicates: int = 0


def _record(catalog: Catalog, rows: Sequence[tuple[int, int, bool]], source: str,
            names: Sequence[str] | None = None) -> LabelSummary:
    names = list(names) if names is not None else [f"row {i + 1}" for i in range(len(rows))]
    same = [names[i] for i, (a, b, _) in enumerate(rows) if a == b]
    if same:
        raise LabelError(f"{len(same)} labels pair an image with itself: {listed(same)}; a label names two images")
    pairs: dict[tuple[int, int], int] = {}
    conflicts = []
    for i, (a, b, is_duplicate) in enumerate(rows):
        key = (min(a, b), max(a, b))
        if key in pairs and rows[pairs[key]][2] != is_duplicate:
            conflicts.append(f"{names[pairs[key]]} and {names[i]} (images {key[0]}, {key[1]})")
        pairs[key] = i
    if conflicts:
        raise LabelError(f"{len(conflicts)} pairs are labelled both ways: {listed(conflicts)}; keep one label per pair")
    order = list(pairs.values())
    incoming = pa.table({"n": pa.array(order, pa.int64()),
                         "image_a": pa.array([k[0] for k in pairs], pa.int64()),
                         "image_b": pa.array([k[1] for k in pairs], pa.int64()),
                         "is_duplicate": pa.array([bool(rows[i][2]) for i in order], pa.bool_())})
    with catalog.registered("incoming_labels", incoming):
        found = catalog.arrow(_RESOLVE_SQL)
    unknown = [names[r["n"]] for r in found.to_pylist()
               if r["version_a"] is None or r["version_b"] is None]
    if unknown:
        raise LabelError(f"{len(unknown)} labels name images that are not among the catalog's present images "
                         f"(and were not drawn): {listed(unknown)}; use the image ids of `vdc-lake labels draw`")
    stale = [r["current_a"] != r["version_a"] or r["current_b"] != r["version_b"] for r in found.to_pylist()]
    summary = LabelSummary(None, source, recorded=found.num_rows, stale=sum(stale),
                           duplicates=sum(found.column("is_duplicate").to_pylist()))
    with catalog.run("labels", {"source": source, "labels": found.num_rows}) as run_id:
        summary.run_id = run_id
        now = dt.datetime.now()
        with catalog.transaction():
            catalog.insert_arrow("pair_labels", pa.table({
                "image_a": found.column("image_a"), "version_a": found.column("version_a").cast(pa.int32()),
                "image_b": found.column("image_b"), "version_b": found.column("version_b").cast(pa.int32()),
                "is_duplicate": found.column("is_duplicate"),
                "source": pa.array([source] * found.num_rows, pa.string()),
                "labelled_at": pa.array([now] * found.num_rows, pa.timestamp("us")),
                "run_id": pa.array([run_id] * found.num_rows, pa.int64()),
            }))
        catalog.finish_run(run_id, summary={"recorded": summary.recorded, "stale": summary.stale,
                                            "duplicates": summary.duplicates})
    return summary


def record_pair_labels(catalog: Catalog, rows: Iterable[tuple[int, int, bool]], *, source: str) -> int:
    """Record labels (image_a, image_b, is_duplicate) in `pair_labels`, one `labels` run; returns
    how many. A pair is judged at its versions in the newest draw holding it, else the images'
    current ones. LabelError (nothing recorded) for an unknown image, a pair of one image, or a
    pair labelled both ways."""
    rows = [(int(a), int(b), bool(d)) for a, b, d in rows]
    if not rows:
        return 0
    return _record(catalog, rows, source).recorded


def _truth(text: str) -> bool | None:
    word = text.strip().lower()
    return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None


def _read_labels_csv(path: Path) -> tuple[list[tuple[int, int, bool]], list[str]]:
    rows, names, bad, blank = [], [], [], 0
    columns = (f"a labels CSV has the columns {', '.join(LABEL_COLUMNS)} (what `vdc-lake labels draw` writes, "
               "with is_duplicate filled in as true or false)")
    for line, row in csv_rows(path, LABEL_COLUMNS, LabelError, columns):
        a, b = (row.get("image_a") or "").strip(), (row.get("image_b") or "").strip()
        verdict = _truth(row.get("is_duplicate") or "")
        if not a and not b:
            continue  # a blank line
        if not (a.isdigit() and b.isdigit()):
            bad.append(f"line {line}: image ids {a!r}, {b!r}")
        elif verdict is None:
            if not (row.get("is_duplicate") or "").strip():
                blank += 1  # not labelled yet: left out
                continue
            bad.append(f"line {line}: is_duplicate {row.get('is_duplicate')!r}")
        else:
            rows.append((int(a), int(b), verdict))
            names.append(f"line {line}")
    if bad:
        raise LabelError(f"{path}: {len(bad)} rows are not valid: {listed(bad)}; each row needs two image ids and "
                         "is_duplicate true or false (or empty for a pair not labelled yet)")
    return rows, names


def import_pair_labels(catalog: Catalog, csv_path: str | os.PathLike) -> LabelSummary:
    """Record every label of a CSV (columns image_a, image_b, is_duplicate: true/false, yes/no or
    1/0; rows left empty are skipped), one `labels` run. Labels of pairs whose images changed since
    the draw are recorded as stale (they judged other bytes) and do not count; the summary says how
    many. Nothing is recorded when a row is invalid or names an unknown image."""
    path = Path(csv_path)
    if not path.is_file():
        raise LabelError(f"{path} is not a file; give the CSV of `vdc-lake labels draw` with is_duplicate filled in")
    rows, names = _read_labels_csv(path)
    if not rows:
        raise LabelError(f"{path} holds no labels; fill in is_duplicate (true or false) for the pairs you judged")
    return _record(catalog, rows, f"import:{path.resolve()}", names)


# -- label mode ------------------------------------------------------------------------------------

_NEXT_DRAWN_SQL = """
WITH newest AS (
    SELECT max(run_id) AS run_id FROM newest_runs WHERE stage = 'labels-draw' AND set_name = $set
)

SELECT d.image_a, d.image_b, d.version_a, d.version_b, fa.path AS path_a, fb.path AS path_b,
       d.distance, d.bin, 'draw' AS origin
FROM pair_draws AS d
JOIN newest AS w ON w.run_id = d.run_id
JOIN image_files AS fa ON fa.image_id = d.image_a AND fa.version = d.version_a
JOIN image_files AS fb ON fb.image_id = d.image_b AND fb.version = d.version_b
LEFT JOIN pair_labels_in_force AS l ON l.image_a = d.image_a AND l.image_b = d.image_b
WHERE l.image_a IS NULL
ORDER BY d.position
LIMIT 1
"""

# After the draw: the same seeded order, in the distance bin with the fewest labels.
_NEXT_STORED_SQL = """
WITH pairs AS (
    SELECT p.image_a, p.image_b, p.distance, p.bin, l.image_a IS NOT NULL AS labelled,
           hash(p.image_a::VARCHAR || ':' || p.image_b::VARCHAR || ':' || $seed::VARCHAR) AS draw_order
    FROM calibration_pairs($set) AS p
    LEFT JOIN pair_labels_in_force AS l ON l.image_a = p.image_a AND l.image_b = p.image_b
),

chosen AS (
    SELECT bin FROM pairs GROUP BY bin HAVING bool_or(NOT labelled)
    ORDER BY count(*) FILTER (WHERE labelled), bin
    LIMIT 1
)

SELECT p.image_a, p.image_b, fa.version AS version_a, fb.version AS version_b, fa.path AS path_a,
       fb.path AS path_b, p.distance, p.bin, 'stored' AS origin
FROM pairs AS p
JOIN chosen AS c ON c.bin = p.bin
JOIN image_files AS fa ON fa.image_id = p.image_a
JOIN image_files AS fb ON fb.image_id = p.image_b
WHERE NOT p.labelled
ORDER BY p.draw_order, p.image_a, p.image_b
LIMIT 1
"""


def next_unlabelled_pair(catalog: Catalog, set_name: str) -> dict[str, Any] | None:
    """The next pair to label for the set: the newest draw's next unlabelled pair (its images
    unchanged), else a stored pair of the distance bin with the fewest labels (continuing the
    draw's seeded order, so the labels stay a stratified random sample); None when every stored
    pair is labelled. A dict: image_a, image_b, version_a, version_b, path_a, path_b, distance,
    bin, origin ('draw' or 'stored')."""
    _check_set(catalog, set_name)
    table = catalog.arrow(_NEXT_DRAWN_SQL, {"set": set_name})
    if table.num_rows == 0:
        table = catalog.arrow(_NEXT_STORED_SQL, {"set": set_name, "seed": _setting(catalog, "seed", None, "seed")})
    return table.to_pylist()[0] if table.num_rows else None


# -- estimates -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CalibrationRow:
    """One candidate threshold (the top of a distance bin): stored pairs under it and labels among
    them, estimated precision and recall with 95% intervals (None until every bin holding pairs
    has a label), and the images dedup_actions removes at it."""

    threshold: float
    precision: float | None
    precision_low: float | None
    precision_high: float | None
    recall: float | None
    recall_low: float | None
    recall_high: float | None
    removed: int
    pairs: int
    labelled: int

    def csv_row(self) -> list[Any]:
        return [getattr(self, name) for name in CSV_COLUMNS]


@dataclass(frozen=True)
class ChainedEstimate:
    """The chained stratum at the apply threshold in force: images deleted as duplicates of a keeper
    they have no stored pair with (pairs), labels among them, and the share of real duplicates."""

    pairs: int
    labelled: int
    share: float | None
    share_low: float | None
    share_high: float | None


@dataclass
class Calibration:
    """calibration_rows' result: rows per candidate threshold, best (the largest threshold whose
    estimated precision reaches target_precision, or None), the chained stratum's estimate."""

    set_name: str
    target_precision: float
    rows: list[CalibrationRow]
    best: CalibrationRow | None
    labels: int
    chained: ChainedEstimate

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> CalibrationRow:
        return self.rows[i]

    def __repr__(self) -> str:
        best = f"{self.best.threshold:g}" if self.best else "none"
        return f"Calibration({self.set_name!r}, {len(self.rows)} thresholds, {self.labels} labels, best {best})"


_CHAINED_SQL = """
WITH chained AS (
    SELECT DISTINCT least(image_id, kept_image_id) AS image_a, greatest(image_id, kept_image_id) AS image_b
    FROM dedup_actions(embedding_set := $set)
    WHERE action = 'delete' AND kept_distance IS NULL
),

counted AS (
    SELECT count(*)::DOUBLE AS pairs, count(l.is_duplicate)::DOUBLE AS labelled,
           (count(*) FILTER (WHERE l.is_duplicate))::DOUBLE AS duplicates
    FROM chained AS c
    LEFT JOIN pair_labels_in_force AS l ON l.image_a = c.image_a AND l.image_b = c.image_b
),

shared AS (
    SELECT pairs, labelled, CASE WHEN labelled > 0 THEN duplicates / labelled END AS share,
           -- the finite-population corrected effective size (NULL: every pair labelled, exact)
           CASE WHEN labelled < pairs THEN labelled / (1 - labelled / pairs) END AS trials
    FROM counted
)

SELECT pairs::BIGINT, labelled::BIGINT, share, wilson_bound(share, trials, -1), wilson_bound(share, trials, 1)
FROM shared
"""


def _finite(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def calibration_rows(catalog: Catalog, set_name: str, *, target_precision: float | None = None,
                     bins: int | None = None) -> Calibration:
    """Estimated precision and recall (within the searched range) per candidate threshold of the
    set, from the labels in force (the threshold_calibration macro), with the images each removes
    (dedup_actions, as `plan dedup --threshold T --set S` counts them, all thresholds from one read
    of the pairs: thresholds.dedup_removed_sweep). target_precision: default
    [calibration] target_precision; bins: default the newest draw's, else [calibration] bins."""
    from vdc_lake.review.thresholds import dedup_removed_sweep

    target = _setting(catalog, "target_precision", target_precision, "--target-precision")
    if bins is not None:
        bins = _setting(catalog, "bins", bins, "--bins")
    _check_set(catalog, set_name)
    found = catalog.arrow("SELECT * FROM threshold_calibration(?, bins := ?)", [set_name, bins]).to_pylist()
    removed = dict(dedup_removed_sweep(catalog, set_name, [r["threshold"] for r in found]))
    rows = [CalibrationRow(threshold=float(r["threshold"]), precision=_finite(r["precision"]),
                           precision_low=_finite(r["precision_low"]), precision_high=_finite(r["precision_high"]),
                           recall=_finite(r["recall"]), recall_low=_finite(r["recall_low"]),
                           recall_high=_finite(r["recall_high"]), removed=removed[r["threshold"]],
                           pairs=int(r["pairs"]), labelled=int(r["labelled"])) for r in found]
    meeting = [r for r in rows if r.precision is not None and r.pairs > 0 and r.precision >= target]
    labels = catalog.scalar(
        "SELECT count(*) FROM calibration_pairs(?, bins := ?) AS p JOIN pair_labels_in_force AS l "
        "ON l.image_a = p.image_a AND l.image_b = p.image_b", [set_name, bins])
    chained = ChainedEstimate(*[_finite(v) if i >= 2 else int(v)
                                for i, v in enumerate(catalog.rows(_CHAINED_SQL, {"set": set_name})[0])])
    return Calibration(set_name, float(target), rows, meeting[-1] if meeting else None, int(labels), chained)
