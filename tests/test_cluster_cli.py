"""`vdc-lake cluster`: in one process, and as torch.distributed processes launched with torchrun."""

from __future__ import annotations

import shutil

import pytest

from vdc_lake.catalog.connection import Catalog

# resampled, with a level whose clusters are smaller than n_samples
CLUSTER_ARGS = ["cluster", "--set", "builtin", "--n-clusters", "12", "3", "--method", "resampled",
                "--n-samples", "4", "2", "--n-resamples", "2", "--seed", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def described(tmp_path_factory, sample_template):
    """A catalog of the sample collection with the builtin descriptor set."""
    from click.testing import CliRunner

    from vdc_lake.cli import cli

    base = tmp_path_factory.mktemp("cluster")
    root = base / "data"
    shutil.copytree(sample_template.root, root, symlinks=True)
    catalog = base / "catalog.duckdb"
    for args in (["scan", str(root)], ["predict", "--model", "builtin", "--kind", "descriptor"]):
        result = CliRunner().invoke(cli, ["--catalog", str(catalog), "-q", *args])
        assert result.exit_code == 0, result.output
    return catalog


def _assignments(catalog_path) -> list[tuple]:
    with Catalog(catalog_path, read_only=True) as catalog:
        run = catalog.scalar("SELECT max(run_id) FROM runs WHERE stage = 'cluster' AND status = 'done'")
        return catalog.rows("SELECT image_id, level, cluster_id FROM assignments WHERE run_id = ? ORDER BY ALL", [run])


def _centers(catalog_path) -> list[tuple]:
    with Catalog(catalog_path, read_only=True) as catalog:
        run = catalog.scalar("SELECT max(run_id) FROM runs WHERE stage = 'cluster' AND status = 'done'")
        return catalog.rows("SELECT level, cluster_id, parent_id, size, center FROM clusters WHERE run_id = ? "
                            "ORDER BY ALL", [run])


def test_torchrun_processes_write_the_clustering_of_one_process(described, tmp_path, run_cli):
    local, distributed = tmp_path / "local.duckdb", tmp_path / "distributed.duckdb"
    shutil.copy(described, local)
    shutil.copy(described, distributed)
    result = run_cli(CLUSTER_ARGS, local)
    assert result.exit_code == 0, result.output
    result = run_cli(CLUSTER_ARGS + ["--nproc-per-node", "2"], distributed)
    assert result.exit_code == 0, result.output

    want, got = _assignments(local), _assignments(distributed)
    assert len(want) == 2 * len({r[0] for r in want}) > 0
    assert got == want
    for (*key_w, center_w), (*key_g, center_g) in zip(_centers(local), _centers(distributed), strict=True):
        assert key_g == key_w
        assert center_g == pytest.approx(center_w, abs=1e-5)
    with Catalog(distributed, read_only=True) as catalog:
        params = catalog.scalar("SELECT params FROM runs WHERE stage = 'cluster'")
    assert '"nproc_per_node": 2' in params
    # the exported vectors are removed once the result exists
    assert not list(distributed.parent.glob(f"{distributed.name}.kmeans/*/embeddings*.npy"))


def test_several_nodes_without_a_rendezvous_endpoint_is_a_clear_error(described, tmp_path, run_cli):
    catalog = tmp_path / "c.duckdb"
    shutil.copy(described, catalog)
    result = run_cli(CLUSTER_ARGS + ["--nproc-per-node", "2", "--nnodes", "2"], catalog)
    assert result.exit_code == 1
    assert "--rdzv-endpoint" in result.output
    with Catalog(catalog, read_only=True) as c:
        assert c.scalar("SELECT status FROM runs WHERE stage = 'cluster'") == "failed"
