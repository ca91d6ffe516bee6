"""The threshold explorer's data: sweeps count what the decision macros (plan's queries) count,
the pairs around a threshold, deletions only through other group members, the config line."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tests.test_calibration import SEARCHED, planted_catalog
from vdc_lake.catalog.sets import register_prediction_set, write_vectors
from vdc_lake.config.loader import Config
from vdc_lake.errors import PlanError
from vdc_lake.review.thresholds import (SWEEP_STEPS, chain_only, config_line, default_values, pairs_near,
                                        dedup_removed_sweep, threshold_sweep)
from vdc_lake.stages.overrides import set_overrides


@pytest.fixture
def chained(tmp_path):
    catalog, truth = planted_catalog(tmp_path / "c.duckdb", n_pairs=150, chains=True)
    with catalog:
        yield catalog, truth


def test_dedup_sweep_counts_what_dedup_actions_deletes(chained):
    catalog, _ = chained
    values = default_values(catalog, "dedup", set_name="s")
    assert len(values) == SWEEP_STEPS + 1 and values[0] == 0 and values[-1] == SEARCHED
    swept = threshold_sweep(catalog, "dedup", set_name="s", values=values[::4])
    expected = [catalog.scalar("SELECT count(*) FROM dedup_actions(threshold := ?, embedding_set := 's') "
                               "WHERE action = 'delete'", [v]) for v in values[::4]]
    assert [removed for _, removed in swept] == expected
    assert expected == sorted(expected) and expected[-1] > expected[1] > 0  # a larger threshold joins more


def test_the_one_pass_dedup_sweep_equals_dedup_actions_with_overrides_and_gone_images(chained):
    catalog, _ = chained
    values = default_values(catalog, "dedup", set_name="s")

    def expected() -> list[int]:
        return [catalog.scalar("SELECT count(*) FROM dedup_actions(threshold := ?, embedding_set := 's') "
                               "WHERE action = 'delete'", [v]) for v in values]

    assert [n for _, n in dedup_removed_sweep(catalog, "s", values)] == expected()
    # overrides: several kept in one chain, a dropped one, a kept one that is gone; an exact copy
    set_overrides(catalog, ["3", "4", "40"], "keep", reason="distinct")
    set_overrides(catalog, ["7", "8", "9", "10"], "drop")
    catalog.execute("UPDATE images SET present = false WHERE image_id IN (40, 41, 60)")
    catalog.execute("UPDATE images SET content_hash = 'h100' WHERE image_id = 250")
    truth = expected()
    assert [n for _, n in dedup_removed_sweep(catalog, "s", values)] == truth
    assert truth == sorted(truth) and truth[-1] > truth[1] > 0


def test_rotation_score_and_example_sweeps_count_their_macros(chained):
    catalog, _ = chained
    rng = np.random.default_rng(0)
    ids = np.arange(1, 101)
    probs = rng.dirichlet(np.ones(4) * 0.5, len(ids)).astype(np.float32)
    with catalog.run("predict", {"set": "rotation"}) as run_id:
        register_prediction_set(catalog, "rotation", kind="rotation", model=None,
                                class_names=["0", "90", "180", "270"], preprocessing=None, run_id=run_id)
        write_vectors(catalog, "predictions", "rotation", run_id, ids, np.ones(len(ids), np.int32), probs)
        catalog.finish_run(run_id)
    with catalog.run("score", {"set": "s", "name": "aesthetic"}) as run_id:
        catalog.insert_arrow("scores", pa.table({"run_id": np.full(100, run_id), "name": ["aesthetic"] * 100,
                                                 "image_id": ids, "version": np.ones(100, np.int32),
                                                 "score": rng.normal(5, 1, 100).astype(np.float32)}))
        catalog.finish_run(run_id)
    with catalog.run("filter-examples", {"set": "s"}) as run_id:
        catalog.insert_arrow("example_distances", pa.table({
            "run_id": np.full(100, run_id), "set_name": ["s"] * 100, "image_id": ids,
            "version": np.ones(100, np.int32), "distance": rng.random(100).astype(np.float32), "example": ["e"] * 100}))
        catalog.finish_run(run_id)
    macros = {
        "rotation": "SELECT count(*) FROM rotation_actions(threshold := ?) WHERE action <> 'none'",
        "examples": "SELECT count(*) FROM example_actions(threshold := ?) WHERE action = 'delete'",
        "score": "SELECT count(*) FROM score_actions('aesthetic', min_score := ?) WHERE action = 'delete'",
    }
    for decision, sql in macros.items():
        swept = threshold_sweep(catalog, decision, set_name="aesthetic" if decision == "score" else None)
        assert len(swept) == SWEEP_STEPS + 1
        assert [removed for _, removed in swept] == [catalog.scalar(sql, [v]) for v, _ in swept], decision
        assert len({removed for _, removed in swept}) > 3, decision  # the grid spans the stored values
    with pytest.raises(PlanError, match="no threshold to sweep for 'sample'"):
        threshold_sweep(catalog, "sample")


def test_pairs_near_a_threshold(chained):
    catalog, truth = chained
    near = pairs_near(catalog, "s", 0.2, k=5).to_pylist()
    distances = np.sort(np.array([d for d, _ in truth.values()], dtype=np.float32))
    below, above = distances[distances < 0.2][-5:], distances[distances >= 0.2][:5]
    assert [r["distance"] for r in near] == pytest.approx(np.concatenate([below, above]).tolist())
    assert [r["side"] for r in near] == ["below"] * 5 + ["above"] * 5
    assert all(r["is_duplicate"] is None and r["path_a"].endswith(f"/{r['image_a']}.jpg") for r in near)


def test_chain_only_deletions_have_no_pair_under_the_threshold_with_the_kept_image(chained):
    catalog, truth = chained
    only = chain_only(catalog, "s", 0.3).to_pylist()
    assert only  # the planted chains make some
    deletes = catalog.rows("SELECT image_id, kept_image_id FROM dedup_actions(threshold := 0.3, embedding_set := 's') "
                           "WHERE action = 'delete'")
    direct = {(a, b) for (a, b), (d, _) in truth.items() if d < 0.3}
    expected = sorted(image for image, kept in deletes if (min(image, kept), max(image, kept)) not in direct)
    assert sorted(r["image_id"] for r in only) == expected
    assert len(expected) < len(deletes)


def test_config_line_makes_the_value_the_setting(tmp_path):
    line = config_line("dedup", "s", 0.12)
    assert line == "[apply_deduplication]\nthreshold = 0.12"
    (tmp_path / "vdc-lake.toml").write_text(line + "\n")
    assert Config.load(search_dir=tmp_path).section("apply_deduplication")["threshold"] == 0.12
    assert config_line("rotation", None, 0.9) == "[rotation_correction]\nthreshold = 0.9"
    assert config_line("score", "aesthetic", 4.5) == '[filter_by_score]\nname = "aesthetic"\nmin_score = 4.5'
