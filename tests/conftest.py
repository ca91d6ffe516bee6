"""Shared fixtures: one generated sample collection per session, copied fresh for each test,
a CLI runner bound to a catalog, and helpers that read files and catalog state back."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import xxhash
from PIL import Image
from click.testing import CliRunner, Result

from examples.make_sample_data import PROBLEM_KINDS, make_sample_data
from vdc_lake.catalog.connection import Catalog
from vdc_lake.config.loader import Config

SAMPLE_N_BASE = 16  # 75 files: every planted problem, clean images and copies; ~15 MB
SAMPLE_SEED = 0


@dataclass
class SampleTree:
    """A private copy of the sample collection: its root and the generator's manifest."""

    root: Path
    manifest: dict[str, Any]

    def path(self, rel: str) -> Path:
        return self.root / rel

    def kind(self, kind: str) -> list[str]:
        return list(self.manifest[kind])

    def all_files(self) -> list[str]:
        """Every image file the generator wrote (manifest.json excluded), relative POSIX paths."""
        return sorted(self.manifest["clean"] + [p for k in PROBLEM_KINDS for p in self.manifest[k]])


def file_hash(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return xxhash.xxh3_128_hexdigest(f.read())


def tree_hashes(root: str | os.PathLike) -> dict[str, str]:
    """{relative path: content hash} of every file under root; a symlink maps to 'link:TARGET'."""
    root = Path(root)
    out: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_file():
                out[rel] = file_hash(path)
    return out


def image_rows(catalog_path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Every images row keyed by rel_path, read through a read-only Catalog."""
    with Catalog(catalog_path, read_only=True) as catalog:
        table = catalog.arrow("SELECT * FROM images ORDER BY image_id")
    return {row["rel_path"]: row for row in table.to_pylist()}


def default_config(search_dir: str | os.PathLike) -> Config:
    """The bundled defaults (search_dir must hold no vdc-lake.toml)."""
    return Config.load(search_dir=Path(search_dir))


@pytest.fixture
def chromium() -> str:
    """Path of the Debian chromium binary the browser tests drive (tests/browser.py); skips without one."""
    from tests.browser import chromium_binary

    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium; or set VDC_LAKE_CHROMIUM)")
    return binary


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance per test process for the modules that use Ray (they skip without
    it; CI installs it: .ci/run installs ".[test,scale]"). A module whose functions run on the
    workers ships them by value: ray_module_by_value."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[scale]'); Ray tests skipped")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def ray_module_by_value(ray, module_name: str):
    """Ship a test module's functions to Ray workers by value (the module is not importable
    there) while its tests run; a generator for a module-scoped fixture."""
    module = sys.modules[module_name]
    ray.cloudpickle.register_pickle_by_value(module)
    yield
    ray.cloudpickle.unregister_pickle_by_value(module)


@pytest.fixture(scope="session")
def sample_template(tmp_path_factory) -> SampleTree:
    """The generated sample collection, written once per session; never modify it."""
    root = tmp_path_factory.mktemp("sample_template") / "data"
    manifest = make_sample_data(root, n_base=SAMPLE_N_BASE, seed=SAMPLE_SEED)
    (root / "manifest.json").unlink()  # not an image; keeps every listed file an image
    return SampleTree(root, manifest)


@pytest.fixture
def sample_tree(tmp_path, sample_template) -> SampleTree:
    """A fresh, writable copy of the sample collection under tmp_path/data."""
    root = tmp_path / "data"
    shutil.copytree(sample_template.root, root, symlinks=True)
    return SampleTree(root, sample_template.manifest)


@pytest.fixture
def catalog_path(tmp_path) -> Path:
    return tmp_path / "catalog.duckdb"


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch) -> Path:
    """Run in tmp_path, so no stray vdc-lake.toml or default catalog is picked up."""
    work = tmp_path / "cwd"
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def run_cli(in_tmp_cwd) -> Callable[..., Result]:
    """run_cli(args, catalog, config=None, quiet=True) -> click Result of `vdc-lake ...`."""
    from vdc_lake.cli import cli

    runner = CliRunner()

    def run(args: list[str], catalog: str | os.PathLike | None = None, *, config: str | os.PathLike | None = None,
            quiet: bool = True) -> Result:
        argv: list[str] = []
        if catalog is not None:
            argv += ["--catalog", str(catalog)]
        if config is not None:
            argv += ["--config", str(config)]
        if quiet:
            argv.append("-q")
        return runner.invoke(cli, argv + [str(a) for a in args], prog_name="vdc-lake", catch_exceptions=True)

    return run


@pytest.fixture(scope="session")
def quickstart_catalogs(tmp_path_factory) -> tuple[Path, Path]:
    """The quickstart built once per test session as examples/quickstart.sh does it: the sample
    data, `vdc-lake run examples/quickstart.toml` (dry run), then again with --apply. Returns (a copy
    of the catalog as the dry run left it, the catalog after --apply). Read them only."""
    from examples.make_sample_data import make_sample_data
    from vdc_lake.cli import cli

    repo = Path(__file__).resolve().parent.parent
    work = tmp_path_factory.mktemp("quickstart")
    make_sample_data(work / "data/quickstart/images")
    (work / "data/quickstart/images/manifest.json").unlink()
    catalog, dry = work / "data/quickstart/catalog.duckdb", work / "dry-run.duckdb"
    cwd = os.getcwd()
    os.chdir(work)
    try:
        for extra in ([], ["--apply"]):
            result = CliRunner().invoke(cli, ["-q", "run", str(repo / "examples/quickstart.toml"), *extra],
                                        prog_name="vdc-lake", catch_exceptions=True)
            assert result.exit_code == 0, result.output
            if not extra:
                copy_catalog(catalog, dry)  # a catalog is its file and its vector files (docs/catalog.md)
    finally:
        os.chdir(cwd)
    return dry, catalog


def noise_jpeg(path: str | os.PathLike, seed: int, size: tuple[int, int] = (130, 120)) -> None:
    """A JPEG of uniform noise (width, height = size), folders made: distinct for each seed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


def random_image(path: str | os.PathLike, size: tuple[int, int] = (120, 100), seed: int = 0) -> Path:
    """An image of uniform noise in the format of path's suffix (quality 90 for JPEG); returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def ok_output(result) -> str:
    """The output of a CLI result that must have succeeded."""
    assert result.exit_code == 0, result.output
    return result.output


def copy_catalog(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy a catalog as a backup would (docs/catalog.md): its file and its vector files
    (CATALOG.vectors), replacing what target had; returns target."""
    target = Path(target)
    shutil.copy2(source, target)
    vectors, target_vectors = Path(f"{source}.vectors"), Path(f"{target}.vectors")
    shutil.rmtree(target_vectors, ignore_errors=True)
    if vectors.is_dir():
        shutil.copytree(vectors, target_vectors, symlinks=True)
    return target


def catalog_rows(catalog_path: str | os.PathLike, sql: str, params: list | None = None) -> list[tuple]:
    """Rows of a query on a catalog, opened read-only."""
    with Catalog(catalog_path, read_only=True) as catalog:
        return catalog.rows(sql, params or [])


def cli_fails(result, message: str) -> None:
    """Exit code 1 and exactly `Error: message` (click's format for a ClickException), no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.output == f"Error: {message}\n"
