"""Decision views over real catalogs: dedup components and keepers, thresholds without
recomputation, rotation by each predicted angle, example and score filters; apply + restore."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tests.conftest import tree_hashes
from vdc_lake.catalog.connection import Catalog
from vdc_lake.catalog.sets import read_vectors, register_prediction_set, write_vectors


def _write_images(folder, sizes, seed=0):
    """Distinct noise images named a.png, b.png, ... with the given (w, h) sizes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (w, h) in enumerate(sizes):
        name = f"{chr(ord('a') + i)}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


@pytest.fixture
def graph_catalog(tmp_path, run_cli):
    """12 images with different sizes, scanned; returns (catalog path, {name: image_id})."""
    sizes = [(100 + 10 * i, 90 + 3 * i) for i in range(12)]  # area grows with the letter
    _write_images(tmp_path / "g", sizes)
    catalog = tmp_path / "g.duckdb"
    assert run_cli(["scan", tmp_path / "g"], catalog).exit_code == 0
    with Catalog(catalog, read_only=True) as c:
        ids = {rel: i for i, rel in c.rows("SELECT image_id, rel_path FROM images")}
    return catalog, ids


def _report(catalog_path, ids, edges, set_name="s"):
    """Record a finished dedup-report run holding these (name_a, name_b, distance) edges."""
    with Catalog(catalog_path) as c:
        run_id = c.begin_run("dedup-report", {"set": set_name})
        for a, b, d in edges:
            ia, ib = sorted((ids[a], ids[b]))
            c.execute("INSERT INTO dup_edges VALUES (?, ?, ?, ?, 1, 1, ?)", [run_id, set_name, ia, ib, d])
        c.finish_run(run_id)


def _groups(catalog_path, **params):
    args = ", ".join(f"{k} := ?" for k in params)
    with Catalog(catalog_path, read_only=True) as c:
        rows = c.rows(f"SELECT rel_path, group_id, action FROM dedup_actions({args}) JOIN images USING (image_id)",
                      list(params.values()))
    groups: dict[int, set[str]] = {}
    kept = set()
    for rel, group, action in rows:
        groups.setdefault(group, set()).add(rel)
        if action == "keep":
            kept.add(rel)
    return sorted(groups.values(), key=sorted), kept


CHAIN_STAR_TIE = [("a.png", "b.png", 0.1), ("b.png", "c.png", 0.1), ("c.png", "d.png", 0.3),
                  ("e.png", "f.png", 0.05), ("e.png", "g.png", 0.05), ("e.png", "h.png", 0.05),
                  ("i.png", "j.png", 0.2)]


def test_components_follow_chains_stars_and_the_threshold(graph_catalog):
    catalog, ids = graph_catalog
    _report(catalog, ids, CHAIN_STAR_TIE)
    groups, _ = _groups(catalog, threshold=0.25)
    assert groups == [{"a.png", "b.png", "c.png"}, {"e.png", "f.png", "g.png", "h.png"}, {"i.png", "j.png"}]
    groups, _ = _groups(catalog, threshold=0.5)
    assert groups[0] == {"a.png", "b.png", "c.png", "d.png"}
    groups, _ = _groups(catalog, threshold=0.08)
    assert groups == [{"e.png", "f.png", "g.png", "h.png"}]


def test_threshold_and_keep_changes_need_no_new_run(graph_catalog):
    catalog, ids = graph_catalog
    _report(catalog, ids, CHAIN_STAR_TIE)
    with Catalog(catalog, read_only=True) as c:
        runs_before = c.scalar("SELECT count(*) FROM runs")
    for threshold in (0.05, 0.15, 0.25, 0.5):
        for keep in ("random", "alphabetical", "largest-resolution", "largest-file"):
            _groups(catalog, threshold=threshold, keep=keep)
    with Catalog(catalog, read_only=True) as c:
        assert c.scalar("SELECT count(*) FROM runs") == runs_before


def test_keep_strategies_pick_the_expected_image(graph_catalog):
    catalog, ids = graph_catalog
    _report(catalog, ids, CHAIN_STAR_TIE)
    _, kept = _groups(catalog, threshold=0.25, keep="alphabetical")
    assert kept == {"a.png", "e.png", "i.png"}
    # sizes grow with the letter, so the largest image of each group is its last letter
    _, kept = _groups(catalog, threshold=0.25, keep="largest-resolution")
    assert kept == {"c.png", "h.png", "j.png"}
    with Catalog(catalog, read_only=True) as c:
        sizes = dict(c.rows("SELECT rel_path, size_bytes FROM images"))
    _, kept = _groups(catalog, threshold=0.25, keep="largest-file")
    for group in ({"a.png", "b.png", "c.png"}, {"e.png", "f.png", "g.png", "h.png"}, {"i.png", "j.png"}):
        assert (kept & group) == {max(group, key=lambda g: (sizes[g], -ord(g[0])))}
    first, _ = _groups(catalog, threshold=0.25, keep="random", seed=1)
    _, kept_a = _groups(catalog, threshold=0.25, keep="random", seed=1)
    _, kept_b = _groups(catalog, threshold=0.25, keep="random", seed=1)
    assert kept_a == kept_b and len(kept_a) == 3


def test_unknown_keep_strategy_is_a_clear_error(graph_catalog, run_cli):
    catalog, ids = graph_catalog
    _report(catalog, ids, CHAIN_STAR_TIE)
    result = run_cli(["sql", "SELECT * FROM dedup_actions(keep := 'biggest')"], catalog)
    assert result.exit_code == 1
    assert "unknown keep strategy biggest" in result.output


def test_sql_components_equal_scipy_on_a_random_graph(graph_catalog):
    catalog, ids = graph_catalog
    names = sorted(ids)
    rng = np.random.default_rng(3)
    pairs = {tuple(sorted(rng.choice(len(names), 2, replace=False))) for _ in range(9)}
    _report(catalog, ids, [(names[a], names[b], 0.1) for a, b in pairs])
    groups, kept = _groups(catalog, threshold=0.2)
    a, b = np.array(sorted(pairs)).T
    n, labels = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(len(names),) * 2), directed=False)
    expected = [{names[i] for i in np.flatnonzero(labels == k)} for k in range(n)]
    assert groups == sorted([g for g in expected if len(g) > 1], key=sorted)
    assert len(kept) == len(groups)


def test_exact_copies_are_deduplicated_and_restored(sample_tree, catalog_path, run_cli, tmp_path):
    before = tree_hashes(sample_tree.root)
    assert run_cli(["scan", sample_tree.root], catalog_path).exit_code == 0
    result = run_cli(["apply", "dedup", "--backup-dir", tmp_path / "bk", "--apply"], catalog_path)
    assert result.exit_code == 0, result.output
    copies = sample_tree.kind("exact_copy")
    with Catalog(catalog_path, read_only=True) as c:
        present = dict(c.rows("SELECT rel_path, present FROM images"))
    for copy in copies:
        original = sample_tree.manifest["copy_of"][copy]
        assert present[copy] != present[original]  # exactly one of each identical pair survives
    assert run_cli(["restore"], catalog_path).exit_code == 0
    assert tree_hashes(sample_tree.root) == before


def _pixels(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32)


@pytest.mark.parametrize("angle", [90, 180, 270])
def test_rotation_by_the_predicted_angle_restores_the_orientation(sample_tree, catalog_path, run_cli, tmp_path, angle):
    original = sample_tree.path(sample_tree.manifest["clean"][0])
    turned = tmp_path / "turned" / f"turned_{angle}.jpg"
    turned.parent.mkdir()
    transpose = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    with Image.open(original) as img:
        img.transpose(transpose[angle]).save(turned, quality=95)  # turned `angle` degrees counter-clockwise
    before = tree_hashes(turned.parent)
    assert run_cli(["scan", turned.parent], catalog_path).exit_code == 0
    probs = np.full((1, 4), 0.02, np.float32)
    probs[0, [0, 90, 180, 270].index(angle)] = 0.94
    with Catalog(catalog_path) as c:
        image_id, version = c.rows("SELECT image_id, version FROM images")[0]
        run_id = c.begin_run("predict", {"set": "rot"})
        register_prediction_set(c, "rot", kind="rotation", model="test", class_names=["0", "90", "180", "270"],
                                preprocessing=None, run_id=run_id)
        write_vectors(c, "predictions", "rot", run_id, np.array([image_id]), np.array([version]), probs)
        c.finish_run(run_id)
    result = run_cli(["apply", "rotation", "--threshold", "0.9", "--backup-dir", tmp_path / "bk", "--apply"],
                     catalog_path)
    assert result.exit_code == 0, result.output
    assert "1 done" in result.output
    fixed, reference = _pixels(turned), _pixels(original)
    assert fixed.shape == reference.shape
    assert np.abs(fixed - reference).mean() < 6.0  # only JPEG re-encoding noise remains
    with Catalog(catalog_path, read_only=True) as c:
        assert c.scalar("SELECT version FROM images") == version + 1
        assert c.scalar("SELECT count(*) FROM rotation_actions()") == 0  # old prediction is stale now
    assert run_cli(["restore"], catalog_path).exit_code == 0
    assert tree_hashes(turned.parent) == before


def test_rotation_threshold_is_respected(sample_tree, catalog_path, run_cli):
    assert run_cli(["scan", sample_tree.root], catalog_path).exit_code == 0
    with Catalog(catalog_path) as c:
        ids = c.arrow("SELECT image_id, version FROM images WHERE present ORDER BY image_id LIMIT 3")
        run_id = c.begin_run("predict", {"set": "rot"})
        register_prediction_set(c, "rot", kind="rotation", model="test", class_names=["0", "90", "180", "270"],
                                preprocessing=None, run_id=run_id)
        probs = np.array([[0.1, 0.8, 0.05, 0.05], [0.05, 0.05, 0.05, 0.85], [0.9, 0.05, 0.03, 0.02]], np.float32)
        write_vectors(c, "predictions", "rot", run_id, ids.column("image_id").to_numpy(),
                      ids.column("version").to_numpy(), probs)
        c.finish_run(run_id)
    with Catalog(catalog_path, read_only=True) as c:
        at_075 = sorted(r[0] for r in c.rows("SELECT action FROM rotation_actions() WHERE action <> 'none'"))
        at_09 = c.rows("SELECT action FROM rotation_actions(threshold := 0.9) WHERE action <> 'none'")
    assert at_075 == ["rotate_270", "rotate_90"]
    assert at_09 == []


def test_example_filter_finds_planted_examples(sample_tree, catalog_path, run_cli, tmp_path):
    assert run_cli(["scan", sample_tree.root], catalog_path).exit_code == 0
    assert run_cli(["sanitize"], catalog_path).exit_code == 0
    unwanted = sample_tree.manifest["clean"][:3]
    examples = tmp_path / "unwanted"
    examples.mkdir()
    for i, rel in enumerate(unwanted):
        with Image.open(sample_tree.path(rel)) as img:
            img.convert("RGB").resize((img.width // 2, img.height // 2)).save(examples / f"ex{i}.jpg", quality=70)
    result = run_cli(["filter", "examples", "--set", "builtin", "--examples", examples], catalog_path)
    assert result.exit_code == 0, result.output
    with Catalog(catalog_path, read_only=True) as c:
        hits = {r[0] for r in c.rows("SELECT rel_path FROM example_actions(threshold := 0.05) JOIN images "
                                     "USING (image_id) WHERE action = 'delete'")}
    planted_and_copies = set(unwanted) | {c for c, o in sample_tree.manifest["copy_of"].items() if o in unwanted
                                          and c not in sample_tree.manifest["rotated_copy"]}
    assert set(unwanted) <= hits
    assert hits <= planted_and_copies


def test_score_head_drives_score_actions(sample_tree, catalog_path, run_cli, tmp_path):
    assert run_cli(["scan", sample_tree.root], catalog_path).exit_code == 0
    assert run_cli(["sanitize"], catalog_path).exit_code == 0
    with Catalog(catalog_path, read_only=True) as c:
        vs = read_vectors(c, "embeddings", "builtin")
    head = torch.nn.Sequential(torch.nn.Linear(vs.vectors.shape[1], 4), torch.nn.Linear(4, 1))
    torch.manual_seed(0)
    head.apply(lambda m: torch.nn.init.normal_(m.weight) if isinstance(m, torch.nn.Linear) else None)
    torch.save(head.state_dict(), tmp_path / "head.pt")
    result = run_cli(["score", "--head", tmp_path / "head.pt", "--set", "builtin", "--name", "aesthetic"],
                     catalog_path)
    assert result.exit_code == 0, result.output
    with torch.no_grad():
        x = torch.nn.functional.normalize(torch.tensor(vs.vectors), dim=1)
        expected = head(x)[:, 0].numpy()
    cut = float(np.median(expected))
    with Catalog(catalog_path, read_only=True) as c:
        removed = {r[0] for r in c.rows("SELECT image_id FROM score_actions('aesthetic', min_score := ?) "
                                        "WHERE action = 'delete'", [cut])}
    assert removed == set(vs.image_ids[expected < cut].tolist())
    plan = run_cli(["plan", "score", "--name", "aesthetic", "--min-score", str(cut)], catalog_path)
    assert plan.exit_code == 0 and f"{len(removed)} operations" in plan.output


def test_resize_uses_the_limits_of_the_sanitize_run_that_found_the_image(sample_tree, catalog_path, run_cli, tmp_path):
    assert run_cli(["scan", sample_tree.root], catalog_path).exit_code == 0
    assert run_cli(["sanitize", "--max-width", "2000"], catalog_path).exit_code == 0
    huge = sample_tree.kind("oversized_pixels")[0]
    result = run_cli(["apply", "sanitize", "--backup-dir", tmp_path / "bk", "--apply"], catalog_path)
    assert result.exit_code == 0, result.output
    with Image.open(sample_tree.path(huge)) as img:
        assert img.width == 2000


@pytest.mark.parametrize("command", [["apply", "sanitize", "--backup-dir", "b", "--apply"], ["restore"],
                                     ["sanitize"], ["sql", "SELECT 1", "--write"]])
def test_only_scan_creates_a_catalog(tmp_path, run_cli, command):
    missing = tmp_path / "missing.duckdb"
    result = run_cli(command, missing)
    assert result.exit_code == 1
    assert "run `vdc-lake scan ROOT` first" in result.output
    assert not missing.exists()


def test_dedup_report_ann_and_exact_find_the_same_copies(sample_tree, catalog_path, run_cli):
    assert run_cli(["scan", sample_tree.root], catalog_path).exit_code == 0
    assert run_cli(["sanitize"], catalog_path).exit_code == 0
    found = {}
    for method in ("ann", "exact"):
        result = run_cli(["dedup", "report", "--set", "builtin", "--report-threshold", "0.1", "--method", method],
                         catalog_path)
        assert result.exit_code == 0, result.output
        assert f"({method}," in result.output
        with Catalog(catalog_path, read_only=True) as c:
            found[method] = set(c.rows("SELECT image_a, image_b, round(distance, 4) FROM near_duplicate_edges"))
    assert found["ann"] == found["exact"]
    with Catalog(catalog_path, read_only=True) as c:
        paths = dict(c.rows("SELECT image_id, rel_path FROM images"))
        assert c.scalar("SELECT count(*) FROM ann_indexes") == 1
    pairs = {frozenset((paths[a], paths[b])) for a, b, _ in found["exact"]}
    for kind in ("resized_copy", "recompressed_copy"):
        for copy in sample_tree.kind(kind):
            assert frozenset((copy, sample_tree.manifest["copy_of"][copy])) in pairs, copy


# -- one source of truth for decision parameters (issue 10 item 1) -----------------------------------

def _bundled_text() -> dict[tuple[str, str], str]:
    from vdc_lake.config.loader import Config
    from vdc_lake.catalog.settings import setting_text

    return {(s, k): setting_text(v) for s, k, v, _ in Config.bundled().describe()}


def test_a_fresh_catalog_holds_defaults_toml_and_every_macro_parameter_defaults_to_it(tmp_path):
    import duckdb

    from vdc_lake.catalog.package_sql import sql_dir

    catalog = tmp_path / "fresh.duckdb"
    Catalog(catalog).close()
    bundled = _bundled_text()
    with duckdb.connect(str(catalog), read_only=True) as con:  # what a notebook sees
        stored = {(s, k): v for s, k, v in con.execute("SELECT section, key, value FROM settings").fetchall()}
        thresholds = con.execute("SELECT apply_threshold, report_threshold FROM dedup_thresholds "
                                 "WHERE set_name IS NULL").fetchone()
        keep, seed = con.execute("SELECT setting('apply_deduplication', 'keep'), "
                                 "setting('apply_deduplication', 'seed')::INTEGER").fetchone()
        rotation = con.execute("SELECT setting('rotation_correction', 'threshold')::DOUBLE").fetchone()[0]
        examples = con.execute("SELECT setting('filter_by_examples', 'threshold')::DOUBLE").fetchone()[0]
    assert stored == bundled
    assert thresholds == (float(bundled["apply_deduplication", "threshold"]),
                          float(bundled["dedup", "report_threshold"]))
    assert (keep, str(seed)) == (bundled["apply_deduplication", "keep"], bundled["apply_deduplication", "seed"])
    assert rotation == float(bundled["rotation_correction", "threshold"])
    assert examples == float(bundled["filter_by_examples", "threshold"])
    # No macro carries a default of its own: every optional parameter is NULL (= the setting).
    for path in sorted((sql_dir() / "views").rglob("*.sql")):
        for signature in re.findall(r"CREATE OR REPLACE MACRO \w+\((.*?)\) AS", path.read_text(), re.S):
            defaults = re.findall(r":=\s*([^,)]+)", signature)
            assert all(d.strip() == "NULL" for d in defaults), (path.name, defaults)


def _all_commands(group, prefix=()):
    import click

    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _all_commands(command, prefix + (name,))
        else:
            yield prefix + (name,), command


def test_help_texts_and_stage_signatures_carry_no_default_of_their_own():
    """Defaults live in defaults.toml only: --help shows them from there, stage functions that
    have a literal default agree with it, and no source file writes one into a help text."""
    import ast
    from pathlib import Path

    import vdc_lake
    from vdc_lake.cli import cli

    bundled = _bundled_text()
    shown = 0
    for name, command in _all_commands(cli):
        for param in command.params:
            text = getattr(param, "help", None) or ""
            for section, key, value in re.findall(r"\[config ([a-z_]+)\.([a-z_]+): (\[[^\]]*\]|[^\];]*)", text):
                expected = bundled[section, key]
                assert value in (expected, f'"{expected}"'), (name, param.name, value, expected)
                shown += 1
            assert not re.search(r"\[-?\d[\d.e-]*\]", text), (name, param.name, text)  # a bare [0.75]
    assert shown >= 30
    package = Path(vdc_lake.__file__).parent
    source = "".join(p.read_text() for p in sorted((package / "cli").glob("*.py")))
    assert not re.search(r"\[config [a-z_]+\.[a-z_]+: ", source)  # help texts take values through _cfg()
    keys: dict[str, set] = {}
    for (section, key), value in bundled.items():
        keys.setdefault(key, set()).add(value)
    aliases = {"dtype": "index_dtype", "neighbors_k": "neighbors", "fmt": "format"}
    stage_modules = ("cluster", "dedup", "predict", "report", "export", "filters", "sanitize", "scan", "apply")
    from vdc_lake.catalog.settings import setting_text

    unrelated = {("dedup", "method"), ("filters", "batch_size")}  # same name, not that option
    disagree = []
    for module in stage_modules:
        tree = ast.parse("".join(p.read_text() for p in sorted(package.rglob(f"{module}*.py"))
                                 if p.parent.name in ("stages", "review", "effects")))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            args = node.args
            pairs = list(zip(args.args[len(args.args) - len(args.defaults):], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            for arg, default in pairs:
                key = aliases.get(arg.arg, arg.arg)
                if key in keys and isinstance(default, ast.Constant) and default.value is not None \
                        and (module, arg.arg) not in unrelated and setting_text(default.value) not in keys[key]:
                    disagree.append((module, node.name, arg.arg, default.value, sorted(keys[key])))
    assert disagree == []


def test_a_busy_catalog_is_read_with_its_settings_and_the_command_says_so(graph_catalog, run_cli, in_tmp_cwd):
    catalog, _ = graph_catalog
    (in_tmp_cwd / "vdc-lake.toml").write_text("[rotation_correction]\nthreshold = 0.9\n")
    with Catalog(catalog) as busy:  # another command holds the writer lock
        busy.release()
        result = run_cli(["status"], catalog)
    assert result.exit_code == 0, result.output
    assert "note: the config or vdc-lake version differs from the catalog's (rotation_correction.threshold: 0.75 -> 0.9" \
        in result.output
    with Catalog(catalog, read_only=True) as c:
        assert c.scalar("SELECT setting('rotation_correction', 'threshold')") == "0.75"
    result = run_cli(["plan", "rotation"], catalog)  # the catalog is free: the config is recorded first
    assert result.exit_code == 0, result.output
    assert "settings recorded in the catalog: rotation_correction.threshold: 0.75 -> 0.9" in result.output
    with Catalog(catalog, read_only=True) as c:
        value, source = c.rows("SELECT value, source FROM settings WHERE section = 'rotation_correction'")[0]
        assert (value, source) == ("0.9", str(in_tmp_cwd / "vdc-lake.toml"))
    # CLI options are for one invocation: they are recorded in the run, not in the settings.
    with Catalog(catalog) as c:
        run_id = c.begin_run("probe", {"threshold": 0.1})
        c.finish_run(run_id)
        params = json.loads(c.scalar("SELECT params FROM runs WHERE run_id = ?", [run_id]))
    assert params["threshold"] == 0.1 and params["settings"]["rotation_correction.threshold"] == "0.9"


# -- each embedding set's own dedup thresholds (issue 10 item 7) -------------------------------------

def _deleted(catalog) -> set[str]:
    with Catalog(catalog, read_only=True) as c:
        return {r[0] for r in c.rows("SELECT rel_path FROM dedup_actions() JOIN images USING (image_id) "
                                     "WHERE action = 'delete'")}


def test_a_set_records_its_thresholds_and_an_explicit_config_value_wins(graph_catalog, run_cli, in_tmp_cwd):
    from vdc_lake.kernels.descriptor import DEDUP_THRESHOLDS, MULTI_VIEW_NAME

    DEDUP_APPLY_THRESHOLD, DEDUP_REPORT_THRESHOLD = DEDUP_THRESHOLDS[MULTI_VIEW_NAME]
    from vdc_lake.catalog.sets import register_builtin_set

    catalog, ids = graph_catalog
    with Catalog(catalog) as c:
        run_id = c.begin_run("predict", {"set": "builtin"})
        register_builtin_set(c, run_id)
        c.finish_run(run_id)
        assert c.rows("SELECT apply_threshold, report_threshold FROM embedding_sets") == [
            (DEDUP_APPLY_THRESHOLD, DEDUP_REPORT_THRESHOLD)]
    _report(catalog, ids, [("a.png", "b.png", 0.05), ("c.png", "d.png", 0.12), ("e.png", "f.png", 0.3)], "builtin")
    _report(catalog, ids, [("g.png", "h.png", 0.2)], "other")  # no recommendation: the bundled 0.25
    assert _deleted(catalog) == {"a.png", "g.png"}  # the larger image of each pair is kept
    (in_tmp_cwd / "vdc-lake.toml").write_text("[apply_deduplication]\nthreshold = 0.15\n")
    result = run_cli(["plan", "dedup"], catalog)
    assert result.exit_code == 0 and "plan dedup: 2 operations" in result.output, result.output
    assert _deleted(catalog) == {"a.png", "c.png"}  # the user's value, for every set
    with Catalog(catalog, read_only=True) as c:
        assert c.rows("SELECT apply_threshold, apply_source FROM dedup_thresholds WHERE set_name = 'builtin'") == [
            (0.15, str(in_tmp_cwd / "vdc-lake.toml"))]


# -- keep-rule ties and the kept image in the plan (issue 10 item 8) ----------------------------------

@pytest.mark.parametrize("webp", [{"quality": 50}, {"quality": 100}, {"lossless": True}],
                         ids=["q50", "q100", "lossless"])
def test_equal_resolution_keeps_the_better_file_and_the_plan_names_it(tmp_path, run_cli, webp):
    from PIL import ImageDraw, ImageEnhance

    from examples.make_sample_data import photo
    from vdc_lake.kernels.descriptor import DEDUP_THRESHOLDS, MULTI_VIEW_NAME

    DEDUP_REPORT_THRESHOLD = DEDUP_THRESHOLDS[MULTI_VIEW_NAME][1]

    root = tmp_path / "t"
    (root / "a_copies").mkdir(parents=True)
    (root / "originals").mkdir()
    original = photo(np.random.default_rng(5), 480, 360)
    original.save(root / "originals" / "photo.jpg", quality=95)
    copy = ImageEnhance.Brightness(original).enhance(1.15)
    ImageDraw.Draw(copy).text((12, 330), "www.example.com", fill=(255, 255, 255))
    copy.save(root / "a_copies" / "photo.webp", **webp)  # same size, sorts first, a derived copy (even lossless)
    catalog = tmp_path / "c.duckdb"
    for args in (["scan", root], ["sanitize"], ["dedup", "report", "--set", "builtin"]):
        assert run_cli(args, catalog).exit_code == 0
    with Catalog(catalog, read_only=True) as c:
        rows = c.rows("SELECT action, path, kept_path FROM dedup_actions() ORDER BY action")
        searched = json.loads(c.scalar("SELECT params FROM runs WHERE stage = 'dedup-report'"))["threshold"]
    original_path = str((root / "originals" / "photo.jpg").resolve())
    assert rows == [("delete", str((root / "a_copies" / "photo.webp").resolve()), original_path),
                    ("keep", original_path, original_path)]
    assert searched == DEDUP_REPORT_THRESHOLD  # the builtin set's own report threshold
    result = run_cli(["plan", "dedup"], catalog)
    assert f"duplicate of {original_path} (image " in result.output, result.output


# -- sampling among the images the other decisions keep (issue 10 item 5) ------------------------------

def test_sample_chooses_among_surviving_images_and_export_holds_the_total(sample_tree, catalog_path, run_cli):
    from vdc_lake.stages.cluster import sample
    from vdc_lake.errors import StageError

    for args in (["scan", sample_tree.root], ["sanitize"], ["dedup", "report", "--set", "builtin"],
                 ["cluster", "--set", "builtin", "--n-clusters", "4", "2", "--method", "centers"]):
        assert run_cli(args, catalog_path).exit_code == 0, args
    with Catalog(catalog_path, read_only=True) as c:
        clustered = c.scalar("SELECT count(DISTINCT image_id) FROM assignments")
        survivors = c.scalar("SELECT count(DISTINCT a.image_id) FROM assignments a JOIN surviving_images s "
                             "USING (image_id, version)")
    assert 10 < survivors < clustered  # pending sanitize / dedup deletes among the clustered images
    result = run_cli(["sample", "--total", survivors + 1], catalog_path)
    assert result.exit_code == 1
    assert f"only {survivors} of the {clustered} present images clustered in run" in result.output
    result = run_cli(["sample", "--total", survivors], catalog_path)
    assert result.exit_code == 0, result.output
    with Catalog(catalog_path, read_only=True) as c:
        assert c.scalar("SELECT count(*) FROM curated") == survivors
        assert c.scalar("SELECT count(*) FROM samples s JOIN surviving_images USING (image_id, version) "
                        "WHERE s.run_id = (SELECT max(run_id) FROM samples)") == survivors
    with Catalog(catalog_path) as c:
        for total in (0, -5):
            with pytest.raises(StageError, match=">= 1"):
                sample(c, total, allocation="water-filling", strategy="random", seed=0)


def test_keep_ties_break_by_format_then_bytes_per_pixel_then_path(graph_catalog):
    catalog, ids = graph_catalog
    _report(catalog, ids, [("a.png", "b.png", 0.01), ("c.png", "d.png", 0.01), ("e.png", "f.png", 0.01)])
    facts = {  # (width, height, size_bytes, format): equal pixels in every pair
        "a.png": (100, 100, 9000, "WEBP"), "b.png": (100, 100, 5000, "JPEG"),  # the format wins over bytes
        "c.png": (100, 100, 5000, "JPEG"), "d.png": (100, 100, 9000, "JPEG"),  # then more bytes per pixel
        "e.png": (100, 100, 9000, "JPEG"), "f.png": (100, 100, 9000, "JPEG"),  # then the path
    }
    with Catalog(catalog) as c:
        for name, (w, h, size, fmt) in facts.items():
            c.execute("UPDATE images SET width = ?, height = ?, size_bytes = ?, format = ? WHERE image_id = ?",
                      [w, h, size, fmt, ids[name]])
    for keep, expected in (("largest-resolution", {"b.png", "d.png", "e.png"}),
                           ("largest-file", {"a.png", "d.png", "e.png"})):  # its own key first: more bytes
        _, kept = _groups(catalog, threshold=0.05, keep=keep)
        assert kept == expected, keep


def test_status_and_export_warn_when_the_sample_no_longer_survives(sample_tree, catalog_path, run_cli, tmp_path):
    for args in (["scan", sample_tree.root], ["sanitize"], ["dedup", "report", "--set", "builtin", "--report-threshold", "0.6"],
                 ["cluster", "--set", "builtin", "--n-clusters", "4", "2", "--method", "centers"], ["sample", "--total", "20"]):
        assert run_cli(args, catalog_path).exit_code == 0, args
    assert "warning: sample run" not in run_cli(["status"], catalog_path).output
    looser = tmp_path / "looser.toml"
    looser.write_text("[apply_deduplication]\nthreshold = 0.6\n")  # a looser dedup after sampling
    status = run_cli(["status"], catalog_path, config=looser)
    with Catalog(catalog_path, read_only=True) as c:
        curated = c.scalar("SELECT count(*) FROM curated")
    assert curated < 20
    assert f"warning: sample run 5 selected 20 images but only {curated} still survive" in status.output, status.output
    exported = run_cli(["export", "-o", tmp_path / "out"], catalog_path, config=looser)
    assert exported.exit_code == 0 and f"only {curated} still survive" in exported.output, exported.output


def test_the_registry_is_the_only_list_of_decisions(tmp_path):
    """plan's STAGE list, status' pending rows, the report's galleries, the decision SQL files and
    the SQL union of removals all name exactly the registry's decisions."""
    from vdc_lake.catalog.package_sql import package_objects, sql_dir
    from vdc_lake.cli import cli
    from vdc_lake.review import galleries
    from vdc_lake.review.decisions import DECISIONS
    from vdc_lake.review.galleries import GalleryInputs
    from vdc_lake.review.pages import Limits
    from vdc_lake.review.sections import decisions_section
    from vdc_lake.review.status import catalog_status

    names = list(DECISIONS)
    listed = re.search(r"STAGE is one of (.*?) \(", " ".join(cli.commands["plan"].help.split())).group(1)
    assert listed.replace(",", "").split() == names
    # status asks each decision's view, and nothing else names one
    asked = []
    with Catalog(tmp_path / "c.duckdb") as catalog:
        rows = catalog.rows
        catalog.rows = lambda sql, params=None: asked.append(sql) or rows(sql, params)
        catalog_status(catalog)
        catalog.rows = rows
        # the report: one gallery and one table row per decision, in the registry's order
        shown = [d.gallery(catalog, GalleryInputs(Limits(0, 10, 1))) for d in DECISIONS.values()]
    assert all(any(d.view in sql for sql in asked) for d in DECISIONS.values())
    section = decisions_section(dict(zip(names, shown)), Limits(0, 10, 1), [])
    table = next(b for b in section.body if "<table" in str(b))
    assert re.findall(r"<tr><td>(\w+)</td>", table) == names
    assert {d.gallery for d in DECISIONS.values()} == {
        f for name, f in vars(galleries).items() if name.endswith("_gallery") and name != "near_miss_gallery"}
    # one SQL file per decision (its view or macro), in the decisions' layer
    objects = {path.stem for path in (sql_dir() / "views" / "20_decisions").glob("*.sql")}
    assert {d.view.split("(")[0] for d in DECISIONS.values()} <= objects <= set(package_objects())
    # the union of removals names the decisions that remove (and unreadable files, which no decision deletes)
    union = "".join(package_objects()[name][1] for name in ("filter_removals", "removals"))
    assert sorted(set(re.findall(r"'(\w+)' AS decision", union)) - {"unreadable"}) == sorted(
        name for name, d in DECISIONS.items() if d.removes)


def test_views_are_created_in_dependency_order():
    from vdc_lake.catalog.package_sql import dependency_order, object_reads, package_objects

    objects = package_objects()
    order = list(objects)
    for name, (_, text, _) in objects.items():
        assert all(order.index(read) < order.index(name) for read in object_reads(text, set(objects) - {name}))
    assert {"newest_runs", "newest_stage_runs", "filter_removals", "removals"} <= set(objects)
    with pytest.raises(FileNotFoundError, match="cycle"):
        dependency_order({"a": {"b"}, "b": {"a"}})
