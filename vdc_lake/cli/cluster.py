"""Hierarchical k-means and balanced sampling: cluster, sample."""

from __future__ import annotations

from typing import Any

import click

from vdc_lake.cli.base import Context, IntList, cli, config_help, handle_errors, pass_ctx
from vdc_lake.config import rules as validate


@cli.command("cluster")
@click.option("--set", "set_name", required=True, help="Embedding set to cluster.")
@click.option("--n-clusters", cls=IntList, help=f"Clusters per level, finest first, e.g. --n-clusters 45000 900 90 {config_help('hierarchical_kmeans', 'n_clusters')}.")
@click.option("--method", type=click.Choice(["centers", "resampled"]), default=None, help=f"{config_help('hierarchical_kmeans', 'method')}")
@click.option("--n-samples", cls=IntList, help="Points per centre kept by resampling, one per level "
              f"{config_help('hierarchical_kmeans', 'n_samples', '; cut or extended to the --n-clusters levels')}.")
@click.option("--n-resamples", type=int, default=None, help=f"{config_help('hierarchical_kmeans', 'n_resamples')}")
@click.option("--metric", type=click.Choice(["cosine", "l2"]), default=None, help=f"{config_help('hierarchical_kmeans', 'metric')}")
@click.option("--init", type=click.Choice(["kmeans++", "random"]), default=None, help=f"{config_help('hierarchical_kmeans', 'init')}")
@click.option("--max-iters", type=int, default=None, help=f"{config_help('hierarchical_kmeans', 'max_iters')}")
@click.option("--tol", type=float, default=None, help=f"Relative change of the centres that stops {config_help('hierarchical_kmeans', 'tol')}.")
@click.option("--seed", type=int, default=None, help=f"{config_help('hierarchical_kmeans', 'seed')}")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--nproc-per-node", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes per machine for torch.distributed k-means (one per GPU; gloo on CPU), via torchrun.")
@click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Machines for distributed k-means; this one is node 0 and prints the others' command.")
@click.option("--rdzv-endpoint", default=None, help="HOST:PORT of this machine for --nnodes > 1.")
@click.option("--assign-new", is_flag=True,
              help="Put the images the set's newest clustering lacks (new or changed) into its hierarchy: nearest "
                   "centre, same metric; no k-means. Reports the drift (share of them beyond the old images' "
                   "95th-percentile distance).")
@click.option("--recluster-drift", type=float, default=None,
              help="--assign-new advises clustering again above this drift "
                   f"{config_help('hierarchical_kmeans', 'recluster_drift')}.")
@pass_ctx
@handle_errors
def cluster_command(ctx: Context, set_name: str, device: str, nproc_per_node: int, nnodes: int,
                    rdzv_endpoint: str | None, assign_new: bool, **options: Any) -> None:
    """Hierarchical k-means of an embedding set; writes centres and every image's clusters.

    An interrupted run with the same options resumes from its last finished step
    (single process) or reuses a finished distributed result. With --assign-new, images that
    arrived since are put into the newest clustering instead (the k-means options do not apply).

    \b
    Examples:
        vdc-lake cluster --set rope_i_vit_b16_pn_aps_c1_pe-core --n-clusters 45000 900 90 \\
            --method resampled --n-samples 10 5 3 --n-resamples 10
        # the same on the 8 GPUs of this machine (torch.distributed, NCCL)
        vdc-lake cluster --set rope_i_vit_b16_pn_aps_c1_pe-core --n-clusters 45000 900 90 \\
            --method resampled --n-samples 10 5 3 --nproc-per-node 8
        # new images arrived: into the existing clusters, with a drift report
        vdc-lake cluster --set rope_i_vit_b16_pn_aps_c1_pe-core --assign-new
    """
    from vdc_lake.stages.cluster import cluster

    cfg = ctx.section("hierarchical_kmeans", **options)
    if assign_new:
        _assign_new(ctx, set_name, cfg["recluster_drift"])
        return
    if cfg["method"] == "resampled":
        explicit = options.get("n_samples") is not None or ctx.config.sources.get(
            ("hierarchical_kmeans", "n_samples"), "default") != "default"
        cfg["n_samples"], note = validate.fit_levels(cfg["n_clusters"], cfg["n_samples"], explicit=explicit)
        if note:
            click.echo(note, err=True)
    with ctx.writer() as catalog:
        s = cluster(catalog, set_name, n_clusters=cfg["n_clusters"], method=cfg["method"],
                    n_samples=cfg["n_samples"], n_resamples=cfg["n_resamples"], metric=cfg["metric"],
                    init=cfg["init"], max_iters=cfg["max_iters"], tol=cfg["tol"], seed=cfg["seed"],
                    device=device, nproc_per_node=nproc_per_node, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint,
                    quiet=ctx.quiet)
    click.echo(f"cluster run {s.run_id}: {s.n_images} images into {'/'.join(map(str, s.n_clusters))} clusters "
               f"in {s.seconds:.1f} s; mean level-0 distance {max(0.0, s.mean_distance_level0):.4f}"
               + (" (resumed)" if s.resumed_from else ""))


def _assign_new(ctx: Context, set_name: str, recluster_drift: float) -> None:
    from vdc_lake.stages.cluster_assign import assign_new

    with ctx.writer() as catalog:
        s = assign_new(catalog, set_name, recluster_drift=recluster_drift, quiet=ctx.quiet)
    click.echo(f"cluster run {s.run_id}: {s.n_new} new or changed images assigned to the clusters of run "
               f"{s.base_run}, {s.n_kept} kept, {s.n_dropped} gone; drift {s.drift:.3f} (share of the new beyond "
               f"the old images' 95th-percentile distance {s.old_p95:.4f})")
    if s.recluster_advised:
        click.echo(f"note: drift {s.drift:.3f} is above {s.recluster_drift} ([hierarchical_kmeans] recluster_drift): "
                   f"the new images fit the clusters poorly; run `vdc-lake cluster --set {set_name}` to cluster again",
                   err=True)


@cli.command("sample")
@click.option("--total", type=click.IntRange(min=1), required=True, help="Exactly how many images to select (>= 1).")
@click.option("--cluster-run", type=int, default=None, help="Clustering to sample from [newest]; a finished cluster run.")
@click.option("--allocation", type=click.Choice(["water-filling", "largest-remainder"]), default=None,
              help=f"{config_help('hierarchical_sampling', 'allocation')}")
@click.option("--strategy", type=click.Choice(["random", "closest"]), default=None,
              help=f"Inside a leaf cluster: random, or closest to the centre {config_help('hierarchical_sampling', 'strategy')}.")
@click.option("--seed", type=int, default=None, help=f"{config_help('hierarchical_sampling', 'seed')}")
@click.option("--stable", is_flag=True,
              help="Keep the previous sample's images that are still valid (present, not removed by a decision) "
                   "and fill or trim to exactly TOTAL with as few changes as the same balance allows.")
@pass_ctx
@handle_errors
def sample_command(ctx: Context, total: int, cluster_run: int | None, allocation: str | None, strategy: str | None,
                   seed: int | None, stable: bool) -> None:
    """Select exactly TOTAL images balanced down the cluster hierarchy (sample_actions view).

    After new images arrive (`cluster --assign-new`), --stable draws again keeping what it can
    of the previous sample and says how many images entered and left.

    \b
    Example:
        vdc-lake sample --total 2000000
        vdc-lake apply sample --backup-dir backup/sample --apply
        vdc-lake sample --total 2000000 --stable
    """
    from vdc_lake.stages.cluster import sample

    cfg = ctx.section("hierarchical_sampling", allocation=allocation, strategy=strategy, seed=seed)
    with ctx.writer() as catalog:
        validate.check_run(catalog, cluster_run, "cluster", name="--cluster-run")
        s = sample(catalog, total, cluster_run=cluster_run, allocation=cfg["allocation"], strategy=cfg["strategy"],
                   seed=cfg["seed"], stable=stable)
    click.echo(f"sample run {s.run_id}: {s.total} of {s.available} clustered images selected "
               f"(cluster run {s.cluster_run}; images the pending decisions remove are left out); "
               f"{s.not_clustered} surviving images were not clustered"
               + (f"; the {s.kept_by_override} images kept by override are among them" if s.kept_by_override else ""))
    if stable:
        click.echo(f"stable: {s.entered} images entered and {s.left} left the previous sample"
                   + (f" (run {s.stable_from})" if s.stable_from is not None else " (there was none)"))
