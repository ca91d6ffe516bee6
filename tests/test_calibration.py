"""Calibration: stratified pair draws, pair labels keyed by versions, and the precision/recall
estimator with its 95% intervals (the threshold_calibration macro), validated against a known truth."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import catalog_rows, cli_fails, ok_output
from vdc_lake.catalog.connection import Catalog
from vdc_lake.kernels.sampling import water_filling
from vdc_lake.review.calibration import (CSV_COLUMNS, DRAW_COLUMNS, LabelError, calibration_rows, draw_pairs,
                                         next_unlabelled_pair, record_draw, record_pair_labels)

SEARCHED = 0.5
BINS = 10


def planted_catalog(path: Path, *, n_pairs: int, seed: int = 0, chains: bool = False) -> tuple[Catalog, dict]:
    """A real catalog whose set 's' has n_pairs stored pairs with known duplicate flags: distances
    skewed towards the searched distance, duplicates likely under 0.2 and rare beyond (a logistic
    truth). Pairs are disjoint (image 2i-1 with 2i) unless chains: then each image also pairs with
    the next one, so duplicate groups chain. Returns (catalog, {(a, b): (distance, is_duplicate)})."""
    rng = np.random.default_rng(seed)
    n_images = 2 * n_pairs
    ids = np.arange(1, n_images + 1)
    catalog = Catalog(path)
    catalog.insert_arrow("images", pa.table({
        "image_id": ids, "root": ["/planted"] * n_images, "rel_path": [f"{i}.jpg" for i in ids],
        "version": np.ones(n_images, np.int32), "present": [True] * n_images,
        "width": np.full(n_images, 100, np.int32), "height": np.full(n_images, 100, np.int32),
        "size_bytes": np.full(n_images, 1000), "format": ["JPEG"] * n_images,
        "content_hash": [f"h{i}" for i in ids]}))
    catalog.execute("INSERT INTO embedding_sets (name, kind, dim) VALUES ('s', 'embedding', 4)")
    a, b = ids[0::2], ids[1::2]
    if chains:
        a, b = np.concatenate([a, ids[1:-1:2]]), np.concatenate([b, ids[2::2]])
    distance = (rng.beta(1.2, 1.0, len(a)) * SEARCHED).astype(np.float32)
    with catalog.run("dedup-report", {"set": "s", "threshold": SEARCHED}) as run_id:
        catalog.insert_arrow("dup_edges", pa.table({
            "run_id": np.full(len(a), run_id), "set_name": ["s"] * len(a), "image_a": a, "image_b": b,
            "version_a": np.ones(len(a), np.int32), "version_b": np.ones(len(a), np.int32), "distance": distance}))
        catalog.finish_run(run_id)
    duplicate = rng.random(len(a)) < 1 / (1 + np.exp((distance - 0.2) / 0.03))
    truth = {(int(x), int(y)): (float(d), bool(t)) for x, y, d, t in zip(a, b, distance, duplicate)}
    return catalog, truth


def true_rates(truth: dict, thresholds: list[float]) -> tuple[np.ndarray, np.ndarray]:
    distance = np.array([d for d, _ in truth.values()])
    duplicate = np.array([t for _, t in truth.values()])
    under = [distance < t for t in thresholds]
    return (np.array([duplicate[u].sum() / max(u.sum(), 1) for u in under]),
            np.array([duplicate[u].sum() / duplicate.sum() for u in under]))


def write_labels(catalog: Catalog, pairs: list[tuple[int, int]], truth: dict) -> None:
    """Replace every label with the truth of these pairs (the estimator's input, straight in)."""
    catalog.execute("DELETE FROM pair_labels")
    k = len(pairs)
    catalog.insert_arrow("pair_labels", pa.table({
        "image_a": pa.array([p[0] for p in pairs], pa.int64()), "version_a": np.ones(k, np.int32),
        "image_b": pa.array([p[1] for p in pairs], pa.int64()), "version_b": np.ones(k, np.int32),
        "is_duplicate": [truth[p][1] for p in pairs], "source": ["truth"] * k,
        "labelled_at": [dt.datetime(2026, 1, 1)] * k, "run_id": np.zeros(k, np.int64)}))


def stratified_draw(truth: dict, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """The design of `labels draw` (water-filling over the distance bins, uniform within a bin), in
    NumPy, so that 100 draws stay fast; test_draw_follows_the_design checks draw_pairs against it."""
    keys = list(truth)
    bins = np.minimum(np.floor(np.array([truth[k][0] for k in keys], dtype=np.float64) / (SEARCHED / BINS)),
                      BINS - 1).astype(int)
    quotas = water_filling(np.bincount(bins, minlength=BINS), n)
    chosen = []
    for b in range(BINS):
        members = np.flatnonzero(bins == b)
        chosen += [keys[i] for i in rng.choice(members, quotas[b], replace=False)]
    return chosen


def test_intervals_cover_the_truth_in_90_percent_of_100_draws(tmp_path):
    catalog, truth = planted_catalog(tmp_path / "c.duckdb", n_pairs=1500)
    with catalog:
        thresholds = [r[0] for r in catalog.rows("SELECT threshold FROM threshold_calibration('s')")]
        precision, recall = true_rates(truth, thresholds)
        assert precision[0] > 0.95 and precision[-1] < 0.5 and 0.1 < recall[0] < 0.5 and recall[-1] == 1
        covered = np.zeros((len(thresholds), 2))
        rng = np.random.default_rng(7)
        for _ in range(100):
            write_labels(catalog, stratified_draw(truth, 200, rng), truth)
            rows = np.array(catalog.rows("SELECT precision_low, precision_high, recall_low, recall_high "
                                         "FROM threshold_calibration('s')"), dtype=float)
            covered[:, 0] += (rows[:, 0] <= precision + 1e-9) & (precision <= rows[:, 1] + 1e-9)
            covered[:, 1] += (rows[:, 2] <= recall + 1e-9) & (recall <= rows[:, 3] + 1e-9)
    assert covered.min() >= 90, covered  # every threshold, precision and recall alike


def test_a_census_gives_the_exact_values(tmp_path):
    catalog, truth = planted_catalog(tmp_path / "c.duckdb", n_pairs=300)
    with catalog:
        write_labels(catalog, list(truth), truth)
        rows = catalog.rows("SELECT threshold, precision, precision_low, precision_high, recall, recall_low, "
                            "recall_high, pairs, labelled FROM threshold_calibration('s')")
    precision, recall = true_rates(truth, [r[0] for r in rows])
    for row, p, r in zip(rows, precision, recall):
        assert row[1] == pytest.approx(p) and row[2] == pytest.approx(p) and row[3] == pytest.approx(p)
        assert row[4] == pytest.approx(r) and row[5] == pytest.approx(r) and row[6] == pytest.approx(r)
        assert row[7] == row[8]


def test_draw_follows_the_design(tmp_path):
    catalog, truth = planted_catalog(tmp_path / "c.duckdb", n_pairs=400, chains=True)
    with catalog:
        drawn = draw_pairs(catalog, "s", n=120, seed=3)
        assert drawn.column_names == list(DRAW_COLUMNS)
        assert draw_pairs(catalog, "s", n=120, seed=3).equals(drawn)  # seeded
        assert draw_pairs(catalog, "s", n=120, seed=4).column("image_a").to_pylist() != drawn.column("image_a").to_pylist()
        population = dict(catalog.rows("SELECT bin, count(*) FROM calibration_pairs('s') GROUP BY bin"))
        chained = catalog.scalar("SELECT count(*) FROM dedup_actions(embedding_set := 's') "
                                 "WHERE action = 'delete' AND kept_distance IS NULL")
        # groups chain here: members deleted with no stored pair to the image kept form the last stratum
        assert chained > 0
    sizes = np.array([population.get(b, 0) for b in range(BINS)] + [chained])
    quotas = water_filling(sizes, 120)
    rows = drawn.to_pylist()
    counts = np.bincount([r["bin"] for r in rows], minlength=BINS + 1)
    assert counts.tolist() == quotas.tolist()
    for r in rows:
        assert r["image_a"] < r["image_b"] and r["path_a"].endswith(f"/{r['image_a']}.jpg")
        assert r["weight"] == pytest.approx(sizes[r["bin"]] / quotas[r["bin"]])
        if r["bin"] < BINS:
            assert (r["image_a"], r["image_b"]) in truth
            assert r["bin"] == min(int(truth[(r["image_a"], r["image_b"])][0] // (SEARCHED / BINS)), BINS - 1)
        else:
            assert r["distance"] is None
    # the first pairs cycle through the strata, so labelling any prefix stays balanced
    assert sorted(r["bin"] for r in rows[:BINS + 1]) == list(range(BINS + 1))


def test_labels_are_keyed_by_versions_and_label_mode_continues_the_draw(tmp_path):
    catalog, truth = planted_catalog(tmp_path / "c.duckdb", n_pairs=200)
    with catalog:
        draw = record_draw(catalog, "s", n=20, seed=1)
        served = []
        while (pair := next_unlabelled_pair(catalog, "s")) is not None and len(served) < 30:
            served.append(pair)
            key = (pair["image_a"], pair["image_b"])
            assert record_pair_labels(catalog, [(key[1], key[0], truth[key][1])], source="app") == 1
        drawn = [(r["image_a"], r["image_b"]) for r in draw.pairs.to_pylist()]
        assert [(p["image_a"], p["image_b"]) for p in served[:20]] == drawn
        assert {p["origin"] for p in served[:20]} == {"draw"} and {p["origin"] for p in served[20:]} == {"stored"}
        assert catalog.scalar("SELECT count(*) FROM pair_labels_in_force") == 30
        # after the draw, label mode keeps the bins balanced: 20 + 10 labels over 10 bins
        per_bin = catalog.rows("SELECT count(*) FROM calibration_pairs('s') p JOIN pair_labels_in_force l "
                               "USING (image_a, image_b) GROUP BY p.bin")
        assert sorted(c for (c,) in per_bin) == [3] * 10
        # a changed file (a new version) makes its labels stale: no longer in force, kept as history
        a, b = drawn[0]
        catalog.execute("UPDATE images SET version = 2 WHERE image_id = ?", [a])
        assert catalog.scalar("SELECT count(*) FROM pair_labels_in_force WHERE image_a = ?", [a]) == 0
        assert catalog.scalar("SELECT count(*) FROM pair_labels WHERE image_a = ?", [a]) == 1
        catalog.execute("INSERT INTO embedding_sets (name, kind, dim) VALUES ('unsearched', 'embedding', 4)")
        with pytest.raises(LabelError, match=r"set 'unsearched' has no dedup report yet, so no stored pairs to "
                                             r"label; run `vdc-lake dedup report --set unsearched` first"):
            draw_pairs(catalog, "unsearched", n=10)
        with pytest.raises(LabelError, match="pair an image with itself"):
            record_pair_labels(catalog, [(5, 5, True)], source="app")
        with pytest.raises(LabelError, match="not among the catalog's present images"):
            record_pair_labels(catalog, [(1, 99999, True)], source="app")
        with pytest.raises(LabelError, match="labelled both ways"):
            record_pair_labels(catalog, [(1, 2, True), (2, 1, False)], source="app")


def test_calibration_rows_read_the_view(tmp_path):
    catalog, truth = planted_catalog(tmp_path / "c.duckdb", n_pairs=300, chains=True)
    with catalog:
        rng = np.random.default_rng(0)
        write_labels(catalog, stratified_draw(truth, 100, rng), truth)
        result = calibration_rows(catalog, "s", target_precision=0.9)
        view = catalog.rows("SELECT threshold, precision, precision_low, precision_high, recall, recall_low, "
                            "recall_high FROM threshold_calibration('s')")
        removed = [catalog.scalar("SELECT count(*) FROM dedup_actions(threshold := ?, embedding_set := 's') "
                                  "WHERE action = 'delete'", [r.threshold]) for r in result.rows]
    assert [tuple(r.csv_row()[:7]) for r in result.rows] == view
    assert [r.removed for r in result.rows] == removed and len(set(removed)) == len(removed)  # groups chain here
    meeting = [r.threshold for r in result.rows if r.precision >= 0.9]
    assert result.best is not None and result.best.threshold == max(meeting)
    assert result.labels == 100


# -- the commands, on the sample collection's planted copies ------------------------------------------

def family_truth(manifest: dict, root: Path) -> dict[str, str]:
    """{absolute path: the original it copies (itself for an original)}: two images are duplicates
    exactly when they share an original."""
    family = {str(root / rel): str(root / rel) for rel in manifest["clean"]}
    family.update({str(root / copy): str(root / original) for copy, original in manifest["copy_of"].items()})
    return family


def test_draw_import_calibrate_commands(sample_tree, catalog_path, run_cli, tmp_path):
    for args in (["scan", sample_tree.root], ["sanitize"], ["dedup", "report", "--set", "builtin"]):
        ok_output(run_cli(args, catalog_path))
    out = tmp_path / "pairs.csv"
    text = ok_output(run_cli(["labels", "draw", "--set", "builtin", "--n", "60", "--out", out, "--seed", "1"],
                             catalog_path))
    assert "pairs of set builtin over 10 distance bins" in text
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [*DRAW_COLUMNS, "is_duplicate"] and 0 < len(rows) <= 60
    family = family_truth(sample_tree.manifest, sample_tree.root.resolve())
    for row in rows:
        same = family.get(row["path_a"], row["path_a"]) == family.get(row["path_b"], row["path_b"])
        row["is_duplicate"] = "true" if same else "false"
    rows[-1]["is_duplicate"] = ""  # not judged yet: skipped
    labelled = tmp_path / "labelled.csv"
    with open(labelled, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = ok_output(run_cli(["labels", "import", labelled], catalog_path))
    assert f"{len(rows) - 1} pair labels from" in text
    assert catalog_rows(catalog_path, "SELECT count(*), count(DISTINCT run_id) FROM pair_labels") == [(len(rows) - 1, 1)]

    result = run_cli(["dedup", "calibrate", "--set", "builtin", "--format", "csv"], catalog_path)
    lines = list(csv.reader(ok_output(result).splitlines()))
    assert tuple(lines[0]) == CSV_COLUMNS and len(lines) == 11
    threshold, removed = float(lines[3][0]), int(lines[3][-1])
    assert removed == catalog_rows(catalog_path, "SELECT count(*) FROM dedup_actions(threshold := ?, embedding_set := "
                                                 "'builtin') WHERE action = 'delete'", [threshold])[0][0]
    table = ok_output(run_cli(["dedup", "calibrate", "--set", "builtin", "--target-precision", "0.9"], catalog_path))
    assert "threshold" in table.splitlines()[0] and "95% interval" in table.splitlines()[0]

    # a file that changed after the draw: its label is recorded as stale and does not count
    changed = Path(rows[0]["path_a"])
    from PIL import Image

    with Image.open(changed) as img:
        img.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed, format=img.format or "JPEG")
    ok_output(run_cli(["scan", sample_tree.root], catalog_path))
    again = tmp_path / "again.csv"
    with open(again, "w", newline="") as f:
        f.write(f"image_a,image_b,is_duplicate\n{rows[0]['image_a']},{rows[0]['image_b']},false\n")
    assert "1 stale" in ok_output(run_cli(["labels", "import", again], catalog_path))


def test_bad_label_files_are_refused_with_one_line(catalog_path, run_cli, tmp_path):
    planted_catalog(catalog_path, n_pairs=20)[0].close()
    bad = tmp_path / "bad.csv"
    bad.write_text("image_a,image_b,verdict\n1,2,true\n")
    cli_fails(run_cli(["labels", "import", bad], catalog_path),
              f"{bad}: the header row lacks the column(s) is_duplicate; a labels CSV has the columns image_a, "
              "image_b, is_duplicate (what `vdc-lake labels draw` writes, with is_duplicate filled in as true or false)")
    bad.write_text("image_a,image_b,is_duplicate\n1,2,maybe\n1,x,true\n")
    cli_fails(run_cli(["labels", "import", bad], catalog_path),
              f"{bad}: 2 rows are not valid: line 2: is_duplicate 'maybe', line 3: image ids '1', 'x'; each row "
              "needs two image ids and is_duplicate true or false (or empty for a pair not labelled yet)")
    bad.write_text("image_a,image_b,is_duplicate\n1,99999,true\n")
    cli_fails(run_cli(["labels", "import", bad], catalog_path),
              "1 labels name images that are not among the catalog's present images (and were not drawn): line 2; "
              "use the image ids of `vdc-lake labels draw`")
    assert catalog_rows(catalog_path, "SELECT count(*) FROM pair_labels") == [(0,)]
    cli_fails(run_cli(["labels", "draw", "--set", "builtin", "--out", tmp_path / "p.csv"], catalog_path),
              "--set 'builtin': no embedding set of that name; known embedding sets: s")
