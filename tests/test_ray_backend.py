"""Ray backend: scan, sanitize, apply and predict on Ray tasks give the catalog the local backend
gives; a worker killed mid-shard is retried without duplicates or losses; a re-run resumes from
the staged parts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'vdc-lake[scale]'); Ray tests skipped")

from tests.conftest import default_config, ray_module_by_value  # noqa: E402
from tests.tiny_models import PE_CORE, ROTNET, TINY_SPECS, make_tiny_model, write_test_images  # noqa: E402
from vdc_lake.stages import scan as scan_module  # noqa: E402
from vdc_lake.effects.apply import apply_plan, make_plan  # noqa: E402
from vdc_lake.catalog.connection import Catalog  # noqa: E402
from vdc_lake.review.decisions import decision_query  # noqa: E402
from vdc_lake.errors import StageError  # noqa: E402
from vdc_lake.fileops.probe import inspect_header  # noqa: E402
from vdc_lake.scale.ray_backend import ray_map_ordered, staging_root  # noqa: E402
from vdc_lake.stages.sanitize import sanitize  # noqa: E402
from vdc_lake.stages.scan import scan  # noqa: E402
from vdc_lake.catalog.sets import read_vectors  # noqa: E402

# Set by a test before its function is shipped: cloudpickle copies these values to the workers.
CRASH_MARKER = ""
CRASH_PATH_SUFFIX = ""
CALLS_DIR = ""
POISON_FILE = ""


@pytest.fixture(scope="module", autouse=True)
def ray_instance(ray_cluster):
    yield from ray_module_by_value(ray_cluster, __name__)


def _copy(template_root: Path, where: Path) -> Path:
    shutil.copytree(template_root, where, symlinks=True)
    return where


def _normalised(value, replacements: dict[str, str]):
    if isinstance(value, str):
        for old, new in replacements.items():
            value = value.replace(old, new)
    return value


def _content(catalog_path: Path, replacements: dict[str, str]) -> dict[str, list[tuple]]:
    """Catalog tables row by row, without run ids, timestamps and this copy's paths."""
    queries = {
        "images": "SELECT * EXCLUDE (first_run, updated_run, mtime_ns) FROM images ORDER BY image_id",
        "findings": "SELECT * EXCLUDE (run_id) FROM findings ORDER BY image_id, version, rule, detail",
        "embeddings": "SELECT * EXCLUDE (run_id) FROM embeddings WHERE set_name = 'builtin' ORDER BY image_id, version",
        # params.file records each copy's own inode, owner and times (what restore gives back)
        "journal": "SELECT * EXCLUDE (run_id, ts, params), json_merge_patch(params, '{\"file\": null}') AS params "
                   "FROM journal ORDER BY op_id",
        "sanitize_checks": "SELECT * EXCLUDE (run_id) FROM sanitize_checks ORDER BY image_id, version",
    }
    with Catalog(catalog_path, read_only=True) as catalog:
        return {
            name: [tuple(_normalised(v, replacements) for v in row.values()) for row in catalog.arrow(sql).to_pylist()]
            for name, sql in queries.items()
        }


def _walkthrough(root: Path, catalog_path: Path, backup_dir: Path, backend: str) -> dict[str, list[tuple]]:
    config = default_config(catalog_path.parent)
    with Catalog(catalog_path) as catalog:
        scan(catalog, [root], extensions=config.values["scan"]["extensions"], workers=2, quiet=True, backend=backend)
        sanitize(catalog, config.section("sanitize"), workers=2, quiet=True, backend=backend)
        source_sql, params, options = decision_query("sanitize", config)
        plan = make_plan(catalog, "sanitize", source_sql, params, options)
        summary = apply_plan(catalog, plan, backup_dir=backup_dir, quiet=True, backend=backend)
    assert (summary.planned, summary.done, summary.failed) == (10, 10, 0)
    assert not staging_root(catalog_path).exists() or not any(staging_root(catalog_path).iterdir())
    return _content(catalog_path, {str(root.resolve()): "ROOT", str(backup_dir.resolve()): "BACKUP"})


def test_ray_backend_writes_the_same_catalog_as_the_local_backend(sample_template, tmp_path):
    local = _walkthrough(_copy(sample_template.root, tmp_path / "local" / "data"), tmp_path / "local" / "c.duckdb",
                         tmp_path / "local" / "backup", "local")
    on_ray = _walkthrough(_copy(sample_template.root, tmp_path / "ray" / "data"), tmp_path / "ray" / "c.duckdb",
                          tmp_path / "ray" / "backup", "ray")
    assert {name: len(rows) for name, rows in on_ray.items()} == {name: len(rows) for name, rows in local.items()}
    assert len(local["images"]) == len(sample_template.all_files())
    assert len(local["embeddings"]) > 0 and len(local["findings"]) > 0 and len(local["journal"]) == 10
    for name in local:
        assert on_ray[name] == local[name], name


def _inspect_or_die(path: str) -> dict:
    """inspect_header, except that the first attempt at one file kills its worker process."""
    if path.endswith(CRASH_PATH_SUFFIX) and not os.path.exists(CRASH_MARKER):
        Path(CRASH_MARKER).touch()
        os._exit(1)
    return inspect_header(path)


def test_a_killed_scan_task_is_retried_without_duplicates_or_losses(sample_template, tmp_path, monkeypatch):
    global CRASH_MARKER, CRASH_PATH_SUFFIX
    root = _copy(sample_template.root, tmp_path / "data")
    CRASH_MARKER, CRASH_PATH_SUFFIX = str(tmp_path / "crashed-once"), "sizes/tiny_40x60.jpg"
    monkeypatch.setattr(scan_module, "_inspect", _inspect_or_die)
    extensions = default_config(tmp_path).values["scan"]["extensions"]
    with Catalog(tmp_path / "c.duckdb") as catalog:
        summary = scan(catalog, [root], extensions=extensions, quiet=True, backend="ray")
        rows = catalog.arrow("SELECT rel_path, content_hash FROM images ORDER BY rel_path").to_pylist()
    assert Path(CRASH_MARKER).exists()  # the worker really died once
    files = sample_template.all_files()
    assert summary.listed == summary.new == len(files)
    assert [r["rel_path"] for r in rows] == sorted(files)  # each file once: no duplicates, no losses
    expected = {rel: inspect_header(str(root / rel))["content_hash"] for rel in files}
    assert {r["rel_path"]: r["content_hash"] for r in rows} == expected


def _record_call(item: int) -> int:
    """item * 10, leaving one file per call; fails on item 37 while the poison file exists."""
    Path(CALLS_DIR, f"{item}-{uuid.uuid4().hex}").touch()
    if item == 37 and os.path.exists(POISON_FILE):
        raise RuntimeError("poisoned")
    return item * 10


def _calls() -> dict[int, int]:
    counts: dict[int, int] = {}
    for name in os.listdir(CALLS_DIR):
        item = int(name.split("-")[0])
        counts[item] = counts.get(item, 0) + 1
    return counts


def test_a_rerun_after_a_failed_shard_only_runs_the_missing_shards(tmp_path):
    global CALLS_DIR, POISON_FILE
    CALLS_DIR, POISON_FILE = str(tmp_path / "calls"), str(tmp_path / "poison")
    os.mkdir(CALLS_DIR)
    Path(POISON_FILE).touch()
    staging = tmp_path / "catalog.duckdb.staging"
    with pytest.raises(StageError, match=r"map-[0-9a-f]{16}: shard 7 \(items 35\.\.39\) failed"):
        list(ray_map_ordered(_record_call, range(40), desc="map", quiet=True, staging_dir=staging, shard_size=5))
    parts = sorted(p.name for p in next(staging.iterdir()).glob("part-*.parquet"))
    assert parts == [f"part-{i:05d}.parquet" for i in range(7)]
    Path(POISON_FILE).unlink()
    stale = staging / "map-0123456789abcdef"  # left by a crashed run on other inputs
    stale.mkdir()
    (stale / "part-00000.parquet").touch()
    results = list(ray_map_ordered(_record_call, range(40), desc="map", quiet=True, staging_dir=staging,
                                   shard_size=5))
    assert results == [i * 10 for i in range(40)]
    calls = _calls()
    assert {i: calls[i] for i in range(35)} == {i: 1 for i in range(35)}  # staged shards were not redone
    assert calls[35] == 2 and calls[39] == 1  # shard 7 ran again from its first item
    assert list(staging.iterdir()) == []  # a finished map removes its parts, and stale ones of its stage


def test_the_local_backend_does_not_import_ray():
    code = ("import sys, vdc_lake.stages.scan, vdc_lake.stages.sanitize, vdc_lake.effects.apply, vdc_lake.scale.parallel as p; "
            "p.get_mapper('local', catalog_path='c.duckdb'); assert 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def _times_ten(items: list[int]) -> list[int]:
    return [item * 10 for item in items]


def _drops_one(items: list[int]) -> list[int]:
    return [item * 10 for item in items[1:]]


def test_a_batched_map_calls_the_function_once_per_shard_and_checks_its_length(tmp_path):
    staging = tmp_path / "catalog.duckdb.staging"
    results = ray_map_ordered(_times_ten, range(23), desc="map", quiet=True, staging_dir=staging, shard_size=5,
                              batched=True, num_cpus=1, num_gpus=0)
    assert list(results) == [i * 10 for i in range(23)]
    with pytest.raises(StageError, match=r"_drops_one returned a list of 4 for 5 items"):
        list(ray_map_ordered(_drops_one, range(10), desc="map", quiet=True, staging_dir=staging, shard_size=5,
                             batched=True))


def test_a_task_no_node_can_run_is_an_error_not_a_hang(tmp_path):
    too_many = ray.cluster_resources().get("GPU", 0) + 1
    with pytest.raises(StageError, match=rf"no live node of the Ray cluster has the 1 CPU and {too_many:g} GPU"):
        list(ray_map_ordered(_times_ten, range(3), quiet=True, staging_dir=tmp_path, batched=True, num_gpus=too_many))


# -- predict -------------------------------------------------------------------------------------

N_PREDICT_IMAGES = 24


@pytest.fixture(scope="module")
def tiny_models_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    for name in (PE_CORE, ROTNET):
        make_tiny_model(folder, TINY_SPECS[name])
    return folder


@pytest.fixture(scope="module")
def predict_images(tmp_path_factory) -> Path:
    """N_PREDICT_IMAGES small images and one PNG whose header reads but whose pixels do not."""
    folder = tmp_path_factory.mktemp("predict_images")
    good = write_test_images(folder, N_PREDICT_IMAGES)[1]
    (folder / "truncated.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return folder


def _predict_twice(run_cli, images: Path, catalog: Path, backend: str, *args: str) -> tuple[str, str]:
    """Scan images into a new catalog, then predict twice on backend: both outputs."""
    catalog.parent.mkdir(exist_ok=True)  # scan makes the catalog, never its folder
    scanned = run_cli(["scan", images], catalog)
    assert scanned.exit_code == 0, scanned.output
    outputs = []
    for _ in range(2):
        result = run_cli(["predict", *args, "--backend", backend], catalog)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert not staging_root(catalog).exists() or not any(staging_root(catalog).iterdir())
    return outputs[0], outputs[1]


@pytest.mark.parametrize("model, kind, table", [(PE_CORE, "embedding", "embeddings"),
                                                (ROTNET, "rotation", "predictions")])
def test_predict_on_ray_writes_the_set_the_local_backend_writes_and_reruns_compute_nothing(
        run_cli, tmp_path, tiny_models_dir, predict_images, model, kind, table):
    args = ["--model", model, "--kind", kind, "--models-dir", tiny_models_dir, "--device", "cpu",
            "--num-workers", "0", "--batch-size", "4"]
    sets = {}
    for backend in ("local", "ray"):
        first, again = _predict_twice(run_cli, predict_images, tmp_path / backend / "c.duckdb", backend, *args)
        assert f"{N_PREDICT_IMAGES} of {N_PREDICT_IMAGES + 1} images written, 1 failed" in first
        assert "cannot decode: image file is truncated" in first  # the worker's error reaches the summary
        assert "0 of 0 images written, 0 failed" in again and "1 not tried again" in again  # failed on these bytes
        with Catalog(tmp_path / backend / "c.duckdb", read_only=True) as catalog:
            sets[backend] = read_vectors(catalog, table, model)
            assert catalog.scalar(f"SELECT count(*) FROM {table} WHERE set_name = ?", [model]) == N_PREDICT_IMAGES
    local, on_ray = sets["local"], sets["ray"]
    assert local.vectors.shape[0] == N_PREDICT_IMAGES
    np.testing.assert_array_equal(on_ray.image_ids, local.image_ids)
    np.testing.assert_array_equal(on_ray.versions, local.versions)
    assert on_ray.vectors.dtype == np.float32
    np.testing.assert_allclose(on_ray.vectors, local.vectors, rtol=0, atol=1e-5)
    if kind == "rotation":
        np.testing.assert_allclose(on_ray.vectors.sum(axis=1), 1.0, atol=1e-5)


def test_builtin_predict_on_ray_equals_local_exactly(run_cli, tmp_path, predict_images):
    sets = {}
    for backend in ("local", "ray"):
        first, again = _predict_twice(run_cli, predict_images, tmp_path / backend / "c.duckdb", backend,
                                      "--model", "builtin", "--kind", "descriptor", "--num-workers", "2")
        assert f"{N_PREDICT_IMAGES} of {N_PREDICT_IMAGES + 1} images written, 1 failed" in first
        assert "0 of 0 images written, 0 failed" in again and "1 not tried again" in again  # failed on these bytes
        with Catalog(tmp_path / backend / "c.duckdb", read_only=True) as catalog:
            sets[backend] = read_vectors(catalog, "embeddings", "builtin")
    assert len(sets["local"]) == N_PREDICT_IMAGES
    np.testing.assert_array_equal(sets["ray"].image_ids, sets["local"].image_ids)
    np.testing.assert_array_equal(sets["ray"].versions, sets["local"].versions)
    np.testing.assert_array_equal(sets["ray"].vectors, sets["local"].vectors)
