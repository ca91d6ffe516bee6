"""Predict on Ray: each task writes its shard's vectors as a vector part beside the catalog and
hands back only where it is; the driver checks and adopts it. The set equals the local backend's;
a failed or interrupted run resumes without losing or registering anything twice; a staged part
changed after its task wrote it is refused."""

from __future__ import annotations

import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'vdc-lake[scale]'); Ray tests skipped")

from tests.conftest import default_config, ray_module_by_value  # noqa: E402
from tests.tiny_models import PE_CORE, TINY_SPECS, make_tiny_model, write_test_images  # noqa: E402
from vdc_lake.catalog import vectors as vectors_module  # noqa: E402
from vdc_lake.catalog.connection import Catalog  # noqa: E402
from vdc_lake.catalog.sets import read_vectors  # noqa: E402
from vdc_lake.catalog.vectors import set_folder, vectors_folder  # noqa: E402
from vdc_lake.errors import CatalogDamagedError, StageError, UnsafeCatalogError  # noqa: E402
from vdc_lake.scale import ray_backend  # noqa: E402
from vdc_lake.scale.ray_backend import staging_root  # noqa: E402
from vdc_lake.stages import predict as predict_module  # noqa: E402
from vdc_lake.stages.predict import ShardPart, predict  # noqa: E402
from vdc_lake.stages.scan import scan  # noqa: E402

N_IMAGES = 24  # and one truncated PNG: 25 items, two shards of 16 (batch size 1)
OPTIONS = dict(device="cpu", num_workers=0, batch_size=1)

# Set by a test before its function is shipped: cloudpickle copies these values to the workers.
CALLS_DIR = ""
POISON_FILE = ""
TAMPER = ""


@pytest.fixture(scope="module", autouse=True)
def ray_instance(ray_cluster):
    yield from ray_module_by_value(ray_cluster, __name__)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    make_tiny_model(folder, TINY_SPECS[PE_CORE])
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    good = write_test_images(folder, N_IMAGES)[1]
    (folder / "truncated.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return folder


def _scanned(images: Path, catalog_path: Path) -> Path:
    catalog_path.parent.mkdir(parents=True, exist_ok=True)
    with Catalog(catalog_path) as catalog:
        scan(catalog, [images], extensions=default_config(catalog_path.parent).values["scan"]["extensions"],
             quiet=True)
    return catalog_path


def _predict(catalog_path: Path, models_dir: Path, backend: str = "ray", **kwargs):
    with Catalog(catalog_path) as catalog:
        return predict(catalog, model=PE_CORE, kind="embedding", backend=backend, models_dir=str(models_dir),
                       commit_every=1, quiet=True, **OPTIONS, **kwargs)


def _set_files(catalog_path: Path) -> tuple[list[str], list[str]]:
    """(registered part paths, every file in the set's folder), both relative to CATALOG.vectors."""
    with Catalog(catalog_path, read_only=True) as catalog:
        registered = [r[0] for r in catalog.rows("SELECT path FROM vector_parts ORDER BY part_id")]
    folder = set_folder(catalog_path, "embeddings", PE_CORE)
    on_disk = sorted(f"embeddings/{PE_CORE}/{name}" for name in os.listdir(folder))
    return registered, on_disk


def _assert_whole_and_clean(catalog_path: Path, reference) -> None:
    """The set holds every decodable image once, as `reference`; each file registered once, no other file."""
    with Catalog(catalog_path, read_only=True) as catalog:
        got = read_vectors(catalog, "embeddings", PE_CORE)
        assert catalog.scalar("SELECT count(*) FROM embeddings") == N_IMAGES  # no image twice
        assert catalog.scalar("SELECT count(*) FROM predict_failures") >= 1
    np.testing.assert_array_equal(got.image_ids, reference.image_ids)
    # the local backend computes a birder model in its decode pass (models.passes), Ray tasks with
    # models.inference: the same network, a float32 rounding apart at most
    np.testing.assert_allclose(got.vectors, reference.vectors, rtol=0, atol=1e-6)
    registered, on_disk = _set_files(catalog_path)
    assert len(set(registered)) == len(registered) and sorted(registered) == on_disk
    assert not staging_root(catalog_path).exists() or not any(staging_root(catalog_path).iterdir())


@pytest.fixture(scope="module")
def local_set(tmp_path_factory, images, models_dir):
    """The set the local backend writes."""
    catalog_path = _scanned(images, tmp_path_factory.mktemp("local") / "c.duckdb")
    summary = _predict(catalog_path, models_dir, backend="local")
    assert (summary.written, summary.failed) == (N_IMAGES, 1)
    with Catalog(catalog_path, read_only=True) as catalog:
        return read_vectors(catalog, "embeddings", PE_CORE)


def test_ray_tasks_write_the_parts_and_the_driver_gets_no_vector(tmp_path, images, models_dir, local_set,
                                                                monkeypatch):
    catalog_path = _scanned(images, tmp_path / "c.duckdb")
    received: list[tuple[ShardPart, int, int]] = []  # what the driver got, its pickled size, the staged file's inode
    shards = ray_backend.ray_map_shards

    def recording(*args, **kwargs):
        for start, stop, part in shards(*args, **kwargs):
            inode = os.lstat(set_folder(catalog_path, "embeddings", PE_CORE) / part.file).st_ino if part.file else None
            received.append((part, len(pickle.dumps(part)), inode))
            yield start, stop, part

    monkeypatch.setattr(ray_backend, "ray_map_shards", recording)
    summary = _predict(catalog_path, models_dir)
    assert (summary.written, summary.failed) == (N_IMAGES, 1)
    assert "truncated" in summary.errors[0]
    assert [part.rows for part, _, _ in received] == [16, 8]  # the truncated PNG failed in its task
    assert all(part.file.startswith(".staged-predict-") for part, _, _ in received)
    dim = local_set.vectors.shape[1]
    for part, size, _ in received:  # a receipt, not the shard's vectors
        assert size < part.rows * dim * 4
        assert not any(isinstance(v, np.ndarray) and v.dtype.kind == "f" for v in vars(part).values())
    # the files registered are the very files the tasks wrote (renamed, not rewritten)
    registered, _ = _set_files(catalog_path)
    inodes = [os.lstat(vectors_folder(catalog_path) / path).st_ino for path in registered]
    assert inodes == [inode for _, _, inode in received]
    _assert_whole_and_clean(catalog_path, local_set)


def _infer_once_or_fail(spec, table, folder, items, shard, *, run_id):
    """_infer_shard, recording each call; shard 0 fails while the poison file exists, once the
    other shard has staged its part (so the re-run finds it staged)."""
    Path(CALLS_DIR, f"{shard[1]}-{time.monotonic_ns()}").touch()
    if shard[1] == 0 and os.path.exists(POISON_FILE):
        staged = Path(folder) / f".staged-{shard[0]}-00001.parquet"
        deadline = time.monotonic() + 120
        while not staged.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the other task writes its receipt right after its part
        raise RuntimeError("poisoned")
    return predict_module._infer_shard(spec, table, folder, items, shard, run_id=run_id)


def _calls() -> list[int]:
    return sorted(int(name.split("-")[0]) for name in os.listdir(CALLS_DIR))


def test_a_failed_ray_predict_resumes_with_the_part_another_task_staged(tmp_path, images, models_dir, local_set,
                                                                       monkeypatch):
    global CALLS_DIR, POISON_FILE
    CALLS_DIR, POISON_FILE = str(tmp_path / "calls"), str(tmp_path / "poison")
    os.mkdir(CALLS_DIR)
    Path(POISON_FILE).touch()
    catalog_path = _scanned(images, tmp_path / "c.duckdb")
    monkeypatch.setattr(predict_module, "_infer_shard", _infer_once_or_fail)
    with pytest.raises(StageError, match=r"predict-[0-9a-f]{16}: shard 0 \(items 0\.\.15\) failed"):
        _predict(catalog_path, models_dir)
    assert _calls() == [0, 1]
    registered, on_disk = _set_files(catalog_path)
    assert registered == [] and len(on_disk) == 1 and ".staged-predict-" in on_disk[0]  # staged, not adopted
    Path(POISON_FILE).unlink()
    folder = set_folder(catalog_path, "embeddings", PE_CORE)
    (folder / ".staged-predict-0123456789abcdef-00000.parquet").touch()  # staged for a map that cannot resume
    (folder / ".staged-predict-0123456789abcdef-00001.parquet.123-abc.tmp").touch()  # a task killed mid-write
    summary = _predict(catalog_path, models_dir)  # opening the catalog removes both, keeps the resumable part
    assert (summary.written, summary.failed) == (N_IMAGES, 1)
    assert _calls() == [0, 0, 1]  # the staged shard was not computed again
    with Catalog(catalog_path, read_only=True) as catalog:
        runs = catalog.rows("SELECT DISTINCT run_id FROM embeddings")
    assert runs == [(summary.run_id,)]  # the earlier run's part is adopted under the run that adopts it
    _assert_whole_and_clean(catalog_path, local_set)


def test_a_run_killed_between_adopting_and_committing_registers_nothing_twice(tmp_path, images, models_dir,
                                                                              local_set, monkeypatch):
    catalog_path = _scanned(images, tmp_path / "c.duckdb")
    register = vectors_module._register
    adopted = []

    def killed_after_the_second(*args, **kwargs):
        register(*args, **kwargs)
        adopted.append(args[4])
        if len(adopted) == 2:  # the second shard's part renamed and registered, not committed
            raise KeyboardInterrupt

    monkeypatch.setattr(vectors_module, "_register", killed_after_the_second)
    with pytest.raises(KeyboardInterrupt):
        _predict(catalog_path, models_dir)
    monkeypatch.setattr(vectors_module, "_register", register)
    registered, on_disk = _set_files(catalog_path)
    assert len(registered) == 1 and len(on_disk) == 2  # the renamed part of the rolled-back transaction is left
    summary = _predict(catalog_path, models_dir)  # opening the catalog removes it; its shard is computed again
    assert (summary.written, summary.failed) == (8, 1)
    _assert_whole_and_clean(catalog_path, local_set)


def _infer_then_tamper(spec, table, folder, items, shard, *, run_id):
    """_infer_shard, then the staged part is changed as TAMPER says."""
    part = predict_module._infer_shard(spec, table, folder, items, shard, run_id=run_id)
    path = Path(folder, part.file)
    if TAMPER == "link":
        moved = path.with_name("elsewhere.parquet")
        os.replace(path, moved)
        os.symlink(moved, path)
    else:
        data = pq.read_table(path)
        if TAMPER == "rows":
            data = data.slice(1)
        else:  # dim: the vectors cut to half their length
            dim = data.schema.field("vector").type.list_size
            flat = data.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, dim)[:, : dim // 2]
            data = data.set_column(3, "vector", pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim // 2))
        pq.write_table(data, path)
    return part


@pytest.mark.parametrize("tamper, error, says", [
    ("link", UnsafeCatalogError, "is a symbolic link (to "),
    ("rows", CatalogDamagedError, "15 rows in"),
    ("dim", CatalogDamagedError, "its columns are"),
])
def test_a_staged_part_changed_after_its_task_wrote_it_is_refused(tmp_path, images, models_dir, monkeypatch,
                                                                  run_cli, tamper, error, says):
    global TAMPER
    TAMPER = tamper
    catalog_path = _scanned(images, tmp_path / "c.duckdb")
    monkeypatch.setattr(predict_module, "_infer_shard", _infer_then_tamper)
    with pytest.raises(error, match=r"\.staged-predict-[0-9a-f]{16}-00000\.parquet") as refused:
        _predict(catalog_path, models_dir)
    assert says in str(refused.value) and "run the command again" in str(refused.value)
    with Catalog(catalog_path, read_only=True) as catalog:
        assert catalog.scalar("SELECT count(*) FROM vector_parts") == 0  # nothing of it registered
    result = run_cli(["predict", "--model", PE_CORE, "--kind", "embedding", "--models-dir", models_dir,
                      "--device", "cpu", "--num-workers", "0", "--batch-size", "1", "--backend", "ray"], catalog_path)
    assert result.exit_code == 1 and result.output.startswith("Error: ") and says in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


KILLED_DRIVER = '''
import os, signal, sys, time
import ray
from vdc_lake.catalog.connection import Catalog
from vdc_lake.stages import predict as predict_module

address, catalog_path, models_dir = sys.argv[1:4]
DRIVER = os.getpid()
infer = predict_module._infer_shard


def infer_or_kill_the_driver(spec, table, folder, items, shard, *, run_id):
    """Shard 1 kills the driver once shard 0's part is adopted (renamed into place)."""
    if shard[1] == 1:
        deadline = time.monotonic() + 120
        while not any(n.startswith("part-") for n in os.listdir(folder)) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        os.kill(DRIVER, signal.SIGKILL)
        time.sleep(60)
    return infer(spec, table, folder, items, shard, run_id=run_id)


predict_module._infer_shard = infer_or_kill_the_driver
ray.init(address=address, log_to_driver=False, logging_level="WARNING")
with Catalog(catalog_path) as catalog:
    predict_module.predict(catalog, model=sys.argv[4], kind="embedding", backend="ray", models_dir=models_dir,
                           commit_every=1, quiet=True, device="cpu", num_workers=0, batch_size=1)
'''


def test_a_ray_predict_killed_with_sigkill_resumes_and_loses_nothing(tmp_path, images, models_dir, local_set):
    import subprocess

    catalog_path = _scanned(images, tmp_path / "c.duckdb")
    script = tmp_path / "driver.py"
    script.write_text(KILLED_DRIVER)
    address = ray.get_runtime_context().gcs_address
    killed = subprocess.run([sys.executable, str(script), address, str(catalog_path), str(models_dir), PE_CORE],
                            cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    with Catalog(catalog_path) as catalog:  # a writer's open removes what the killed one left unregistered
        assert catalog.scalar("SELECT count(*) FROM vector_parts") == 1  # shard 0, committed before the kill
    summary = _predict(catalog_path, models_dir)
    assert (summary.written, summary.failed) == (N_IMAGES - 16, 1)
    _assert_whole_and_clean(catalog_path, local_set)
