"""`vdc-lake cluster` and `vdc-lake sample`: clustering in one process and as torch.distributed processes
launched with torchrun; sampling to an exact budget from the CLI."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from tests.conftest import copy_catalog, file_hash
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
    copy_catalog(described, local)
    copy_catalog(described, distributed)
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
    copy_catalog(described, catalog)
    result = run_cli(CLUSTER_ARGS + ["--nproc-per-node", "2", "--nnodes", "2"], catalog)
    assert result.exit_code == 1
    assert "--rdzv-endpoint" in result.output
    with Catalog(catalog, read_only=True) as c:
        assert c.scalar("SELECT status FROM runs WHERE stage = 'cluster'") == "failed"


# Sampling to an exact budget, attacked from the CLI: budgets at and past the survivors, overrides,
# a second clustering, files changed or added after the sample, unfinished cluster runs, resume.


CLUSTER = ["cluster", "--set", "builtin", "--n-clusters", "6", "2", "--method", "centers", "--device", "cpu"]


@pytest.fixture(scope="module")
def clustered(tmp_path_factory, sample_template):
    """(root, catalog) of the sample collection scanned, sanitized, dedup-reported and clustered once."""
    from click.testing import CliRunner

    from vdc_lake.cli import cli

    base = tmp_path_factory.mktemp("sampled")
    root = base / "data"
    shutil.copytree(sample_template.root, root, symlinks=True)
    catalog = base / "catalog.duckdb"
    for args in (["scan", root], ["sanitize"], ["dedup", "report", "--set", "builtin"], CLUSTER):
        result = CliRunner().invoke(cli, ["--catalog", str(catalog), "-q", *map(str, args)])
        assert result.exit_code == 0, result.output
    return root, catalog


@pytest.fixture
def work(clustered, tmp_path):
    """A private copy of the clustered catalog and its images: (root, catalog)."""
    root, catalog = clustered
    shutil.copytree(root, tmp_path / "data", symlinks=True)
    with Catalog(catalog, read_only=True) as c:
        old_root = c.scalar("SELECT any_value(root) FROM images")
    copy_catalog(catalog, tmp_path / "catalog.duckdb")
    new = tmp_path / "catalog.duckdb"
    with Catalog(new) as c:  # the copy's images live under the copied root
        c.execute("UPDATE images SET root = replace(root, ?, ?)", [old_root, str((tmp_path / "data").resolve())])
    return tmp_path / "data", new


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def _scalar(catalog, sql, params=None):
    with Catalog(catalog, read_only=True) as c:
        return c.scalar(sql, params or [])


def _survivors(catalog) -> int:
    return _scalar(catalog, "SELECT count(*) FROM surviving_images")


def test_budgets_at_and_past_the_survivors(work, run_cli):
    _, catalog = work
    survivors = _survivors(catalog)
    assert survivors > 10
    for bad in ("0", "-3", "2.5", "many"):
        result = run_cli(["sample", "--total", bad], catalog)
        assert result.exit_code == 2 and "Invalid value for '--total'" in result.output, result.output
    result = run_cli(["sample", "--total", survivors + 1], catalog)
    assert result.exit_code == 1 and f"use --total {survivors} or less" in result.output, result.output
    assert result.output.startswith("Error: ") and "Traceback" not in result.output
    assert _scalar(catalog, "SELECT count(*) FROM runs WHERE stage = 'sample'") == 0  # nothing recorded
    planned = _ok(run_cli(["plan", "sample"], catalog)).output  # it said "0 operations", nothing else
    assert planned.startswith("no sample run yet: nothing to apply; run `vdc-lake sample --total N` first\n")
    _ok(run_cli(["sample", "--total", survivors], catalog))
    assert _scalar(catalog, "SELECT count(*) FROM curated") == survivors
    _ok(run_cli(["sample", "--total", 1], catalog))  # the newest sample is the one the views use
    assert _scalar(catalog, "SELECT count(*) FROM curated") == 1
    newest = _scalar(catalog, "SELECT max(run_id) FROM runs WHERE stage = 'sample'")
    assert _scalar(catalog, "SELECT any_value(sample_run) FROM curated") == newest
    assert "curated (what export writes): 1 images" in _ok(run_cli(["status"], catalog)).output


def test_overrides_count_toward_the_total(work, run_cli):
    _, catalog = work
    with Catalog(catalog, read_only=True) as c:
        ids = [r[0] for r in c.rows("SELECT image_id FROM surviving_images ORDER BY image_id LIMIT 6")]
    _ok(run_cli(["override", "keep", *ids], catalog))
    result = run_cli(["sample", "--total", 5], catalog)
    assert result.exit_code == 1 and "6 images are kept by override, more than --total 5" in result.output
    _ok(run_cli(["sample", "--total", 8], catalog))
    with Catalog(catalog, read_only=True) as c:
        curated = {r[0] for r in c.rows("SELECT image_id FROM curated")}
    assert len(curated) == 8 and set(ids) <= curated
    # a keep after the sample adds to curated: status and export say it holds more than the total
    outside = _scalar(catalog, "SELECT min(image_id) FROM surviving_images WHERE image_id NOT IN "
                               "(SELECT image_id FROM curated)")
    _ok(run_cli(["override", "keep", outside], catalog))
    assert _scalar(catalog, "SELECT count(*) FROM curated") == 9
    newest = _scalar(catalog, "SELECT max(run_id) FROM runs WHERE stage = 'sample'")
    warning = (f"warning: curated holds 9 images, 1 more than the 8 sample run {newest} selected (images kept "
               "by override since); run `vdc-lake sample` again for an exact total")
    assert warning in _ok(run_cli(["status"], catalog)).output
    _ok(run_cli(["report", "-o", catalog.parent / "report"], catalog))
    index = (catalog.parent / "report" / "index.html").read_text()
    assert f"Sample run {newest} selected 8 images from cluster run" in index and "curated holds 9" in index


def test_same_seed_same_sample(work, run_cli):
    _, catalog = work
    picks = []
    for seed in (4, 4, 5):
        _ok(run_cli(["sample", "--total", 9, "--seed", seed], catalog))
        with Catalog(catalog, read_only=True) as c:
            picks.append(c.rows("SELECT image_id FROM curated ORDER BY image_id"))
    assert picks[0] == picks[1] and picks[0] != picks[2]


def test_curated_names_the_clusters_the_sample_balanced_over(work, run_cli):
    """A cluster run made after the sample (or newer than its --cluster-run) does not relabel the
    sample: curated, the export manifest and the report name the clusters it was balanced over."""
    _, catalog = work
    first = _scalar(catalog, "SELECT max(run_id) FROM runs WHERE stage = 'cluster'")
    _ok(run_cli(["sample", "--total", 12], catalog))
    _ok(run_cli(["cluster", "--set", "builtin", "--n-clusters", "4", "2", "--method", "centers", "--seed", "7",
                 "--device", "cpu"], catalog))
    with Catalog(catalog, read_only=True) as c:
        assert c.scalar("SELECT max(run_id) FROM runs WHERE stage = 'cluster'") > first
        rows = c.rows("SELECT cluster_run, count(*) FROM curated GROUP BY ALL")
        mismatched = c.scalar(
            """SELECT count(*) FROM curated AS v JOIN assignments AS a
               ON a.run_id = ? AND a.image_id = v.image_id AND a.version = v.version AND a.level = 0
               WHERE a.cluster_id <> v.leaf_cluster_id""", [first])
    assert rows == [(first, 12)] and mismatched == 0
    second = _scalar(catalog, "SELECT max(run_id) FROM runs WHERE stage = 'cluster'")
    _ok(run_cli(["sample", "--total", 12, "--cluster-run", second], catalog))  # a new sample follows its clustering
    assert _scalar(catalog, "SELECT list(DISTINCT cluster_run) FROM curated") == [second]


def test_apply_sample_spares_files_the_sample_never_judged(work, run_cli, tmp_path):
    """A selected file edited after the sample and a file added since are not deleted as 'not
    selected': the run never saw their bytes. The other unselected images are."""
    from vdc_lake.review.sections import funnel as _funnel

    root, catalog = work
    _ok(run_cli(["sample", "--total", 10], catalog))
    with Catalog(catalog, read_only=True) as c:
        selected = c.scalar("SELECT min(path) FROM sampled_images JOIN image_files USING (image_id, version) "
                            "WHERE format = 'JPEG'")
        unselected = c.scalar("SELECT min(path) FROM surviving_images WHERE image_id NOT IN "
                              "(SELECT image_id FROM sampled_images)")
    with Image.open(selected) as img:
        img.convert("L").convert("RGB").save(selected, quality=60)
    added = root / "added_after_sampling.png"
    Image.new("RGB", (48, 40), (20, 140, 220)).save(added)
    edited_hash, added_hash = file_hash(selected), file_hash(added)
    _ok(run_cli(["scan", root], catalog))
    assert _scalar(catalog, "SELECT count(*) FROM curated") == 9  # the edited one left the sample
    with Catalog(catalog, read_only=True) as c:  # the report's funnel ends at curated's count
        funnel = dict((stage, n) for stage, n, _ in _funnel(c, dedup_threshold=None, rotation_threshold=0.75))
    assert funnel["sampled"] == 9
    assert "run `vdc-lake sample` again" in _ok(run_cli(["status"], catalog)).output
    plan = _ok(run_cli(["plan", "sample", "--examples", 1000], catalog)).output  # every operation listed
    assert unselected in plan and selected not in plan and str(added.resolve()) not in plan
    with Catalog(catalog, read_only=True) as c:
        reasons = dict(c.rows("SELECT path, reason FROM sample_actions() JOIN image_files USING (image_id, version) "
                              "WHERE action = 'keep'"))
    assert "changed outside vdc-lake since" in reasons[selected]
    assert "first scanned after sample run" in reasons[str(added.resolve())]
    _ok(run_cli(["apply", "sample", "--backup-dir", tmp_path / "backup", "--apply"], catalog))
    assert file_hash(selected) == edited_hash and file_hash(added) == added_hash
    with Catalog(catalog, read_only=True) as c:
        assert c.scalar("SELECT present FROM images WHERE root || '/' || rel_path = ?", [unselected]) is False
        assert c.scalar("SELECT count(*) FROM image_files") == 11  # the 10 selected (one edited), the new one


def test_sample_of_an_unfinished_or_foreign_run_is_refused(work, run_cli):
    from vdc_lake.stages.cluster import sample
    from vdc_lake.errors import StageError

    _, catalog = work
    with Catalog(catalog) as c:
        failed = c.begin_run("cluster", {"set": "builtin"})
        c.finish_run(failed, status="failed", error="killed")
        scan_run = c.scalar("SELECT min(run_id) FROM runs WHERE stage = 'scan'")
        for run in (failed, scan_run, 999):
            with pytest.raises(StageError, match="is not a finished cluster run; give one"):
                sample(c, 3, cluster_run=run, allocation="water-filling", strategy="random", seed=0)
        for total in (float("nan"), 2.5, "3"):
            with pytest.raises(StageError, match="whole number >= 1"):
                sample(c, total, allocation="water-filling", strategy="random", seed=0)
    result = run_cli(["sample", "--total", 3, "--cluster-run", failed], catalog)
    assert result.exit_code == 1 and "did not finish (status failed)" in result.output
    assert _scalar(catalog, "SELECT count(*) FROM runs WHERE stage = 'sample'") == 0


def test_an_interrupted_cluster_run_resumes_to_the_same_clustering(work, tmp_path, monkeypatch):
    import vdc_lake.kernels.kmeans as kmeans
    from vdc_lake.stages.cluster import cluster

    _, catalog = work
    whole = tmp_path / "whole.duckdb"
    copy_catalog(catalog, whole)
    options = {"n_clusters": [6, 2], "method": "resampled", "n_samples": [4, 2], "n_resamples": 3, "seed": 1,
               "device": "cpu", "quiet": True}
    with Catalog(whole) as c:
        expected = cluster(c, "builtin", **options)
        want = c.rows("SELECT image_id, level, cluster_id FROM assignments WHERE run_id = ? ORDER BY ALL",
                      [expected.run_id])
    real = kmeans._resample
    calls = []

    def interrupted(*args, **kwargs):  # the second resampling step is killed
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(kmeans, "_resample", interrupted)
    with Catalog(catalog) as c, pytest.raises(KeyboardInterrupt):
        cluster(c, "builtin", **options)
    monkeypatch.setattr(kmeans, "_resample", real)
    with Catalog(catalog) as c:
        assert c.rows("SELECT status FROM runs WHERE stage = 'cluster' ORDER BY run_id DESC LIMIT 1") == [("failed",)]
        resumed = cluster(c, "builtin", **options)
        got = c.rows("SELECT image_id, level, cluster_id FROM assignments WHERE run_id = ? ORDER BY ALL",
                     [resumed.run_id])
    assert resumed.resumed_from is not None and got == want
    assert not catalog.with_name(catalog.name + ".kmeans").exists()  # a finished run's checkpoint is spent


def test_an_interrupted_cluster_run_over_vectors_computed_again_starts_over(work, monkeypatch):
    """The set's vectors change between the interruption and the next run: the stale checkpoint
    (a folder the user never named) is dropped, not an Error telling to empty a checkpoint_dir."""
    import vdc_lake.kernels.kmeans as kmeans
    from vdc_lake.stages.cluster import cluster

    _, catalog = work
    options = {"n_clusters": [6, 2], "method": "resampled", "n_samples": [4, 2], "n_resamples": 2, "seed": 1,
               "device": "cpu", "quiet": True}
    real = kmeans._resample

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(kmeans, "_resample", killed)
    with Catalog(catalog) as c, pytest.raises(KeyboardInterrupt):
        cluster(c, "builtin", **options)
    monkeypatch.setattr(kmeans, "_resample", real)
    assert list(catalog.with_name(catalog.name + ".kmeans").iterdir())  # the interrupted run's checkpoint
    with Catalog(catalog) as c:  # the set computed again: a newer run's vectors (v * 2 + 0.5) are current
        from vdc_lake.catalog.sets import read_vectors, write_vectors
        old = read_vectors(c, "embeddings", "builtin")
        run = c.begin_run("predict", {"set": "builtin"})
        write_vectors(c, "embeddings", "builtin", run, old.image_ids, old.versions, old.vectors * 2 + 0.5)
        c.finish_run(run)
        summary = cluster(c, "builtin", **options)
        assert c.scalar("SELECT status FROM runs WHERE run_id = ?", [summary.run_id]) == "done"
    assert summary.resumed_from is None


def test_as_many_clusters_as_vectors_is_refused_with_the_limit(work, run_cli):
    _, catalog = work
    n = _scalar(catalog, "SELECT count(*) FROM embeddings e JOIN image_files f USING (image_id, version) "
                         "WHERE e.set_name = 'builtin'")
    result = run_cli(["cluster", "--set", "builtin", "--n-clusters", n, "--method", "centers"], catalog)
    assert result.exit_code == 1 and f"has {n} vectors of present images, not more than the {n} clusters" in \
        result.output and f"use --n-clusters below {n}" in result.output, result.output
