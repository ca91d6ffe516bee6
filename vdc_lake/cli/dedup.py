"""Near-duplicates, unwanted examples and scores: dedup index/report, filters."""

from __future__ import annotations

import click

from vdc_lake.cli.base import Context, cli, config_help, handle_errors, pass_ctx
from vdc_lake.cli.ingest import backend_options, chosen_backend


@cli.group()
def dedup() -> None:
    """Near-duplicate search over an embedding set (exact copies need no model)."""


@dedup.command("index")
@click.option("--set", "set_name", required=True, help="Embedding set (e.g. builtin, resnet_v1_50_c1_sscd).")
@click.option("--center/--no-center", default=None, help="Subtract the set's mean first [config dedup.center].")
@click.option("--l2-normalize/--no-l2-normalize", default=None, help=f"{config_help('dedup', 'l2_normalize')}")
@click.option("--dtype", type=click.Choice(["f32", "f16", "bf16", "i8"]), default=None,
              help=f"Index storage {config_help('dedup', 'index_dtype')}.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="The device `dedup report --method auto` will run on (a GPU makes the index unused).")
@click.option("--force", is_flag=True, help="Build even when `dedup report --method auto` would not use it.")
@pass_ctx
@handle_errors
def dedup_index(ctx: Context, set_name: str, center: bool | None, l2_normalize: bool | None, dtype: str | None,
                device: str, force: bool) -> None:
    """Build a usearch HNSW index (cosine) over the set, saved next to the catalog, when
    `dedup report --method auto` will use it (large sets on a CPU); else say why not.
    `dedup report` builds the index it needs by itself: this step is optional.

    \b
    Example:
        vdc-lake dedup index --set resnet_v1_50_c1_sscd --center --l2-normalize
    """
    from vdc_lake.stages.dedup import build_index

    cfg = ctx.section("dedup", {"index_dtype": "--dtype"}, center=center, l2_normalize=l2_normalize, index_dtype=dtype)
    with ctx.writer() as catalog:
        s = build_index(catalog, set_name, center=cfg["center"], l2_normalize=cfg["l2_normalize"],
                        dtype=cfg["index_dtype"], quiet=ctx.quiet, device=device, force=force)
    if s.skipped:
        click.echo(f"index not built: `dedup report --method auto` will run the exact search ({s.skipped}); "
                   "--force builds it anyway (for --method ann)")
        return
    click.echo(f"index run {s.run_id}: {s.n_vectors} x {s.dim} vectors of {s.set_name} -> {s.path} "
               f"({s.seconds:.1f} s)")


@dedup.command("report")
@click.option("--set", "set_name", required=True, help="Embedding set to search.")
@click.option("--report-threshold", type=float, default=None, help="Keep pairs under this distance [config dedup.report_threshold when your config sets it, "
                   "else the set's own (builtin, SSCD), else the bundled default].")
@click.option("--metric", type=click.Choice(["cosine"]), default=None, help=f"{config_help('dedup', 'metric')}")
@click.option("--method", type=click.Choice(["auto", "ann", "exact"]), default="auto", show_default=True,
              help="exact: tiled matmul in torch, every pair; ann: usearch HNSW index (approximate); auto: "
                   "exact on a GPU, with --backend ray or up to 200k vectors on the CPU, ann beyond. "
                   "The report says which it picked and why.")
@click.option("--exact", is_flag=True, help="Same as --method exact.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto uses the exact search on a GPU when one is available.")
@click.option("--center/--no-center", default=None,
              help=f"Subtract the set's mean before the search (SSCD's recipe) {config_help('dedup', 'center')}.")
@click.option("--l2-normalize/--no-l2-normalize", default=None, help=f"{config_help('dedup', 'l2_normalize')}")
@click.option("--max-pairs-per-image", type=int, default=None,
              help="Keep each image's nearest this many pairs; a warning counts the images that had more "
                   f"{config_help('dedup', 'max_pairs_per_image')}.")
@click.option("--precision", type=click.Choice(["auto", "bf16", "tf32", "fp32"]), default=None,
              help="Exact search scores, re-checked exactly near the threshold: the pairs are the same "
                   f"{config_help('dedup', 'precision', '; auto = bf16 on a GPU, fp32 on a CPU')}.")
@click.option("--neighbors", type=int, default=None,
              help="ANN: neighbours asked for first, widened while the farthest is under the threshold "
                   f"{config_help('dedup', 'neighbors')}.")
@click.option("--full", is_flag=True,
              help="Search every image again, even those the set's previous exact report covered "
                   "(without it, only new, changed or recomputed images are searched against all).")
@backend_options
@pass_ctx
@handle_errors
def dedup_report(ctx: Context, set_name: str, report_threshold: float | None, metric: str | None, method: str,
                 exact: bool, device: str, center: bool | None, l2_normalize: bool | None,
                 max_pairs_per_image: int | None, precision: str | None, neighbors: int | None, full: bool,
                 backend: str | None, ray_address: str | None) -> None:
    """Write every pair of the set under the report threshold to dup_edges (a range search).

    With --backend ray the exact search runs as tiles (block pairs) over the Ray cluster's GPUs,
    resumable per tile.

    New images since the set's previous exact report (same threshold and options, no --center)
    are searched against all, and its pairs among the others kept: the same pairs as a full
    search, at the cost of new x all instead of all x all. --full searches everything.

    Without --report-threshold: [dedup] report_threshold when your config sets it, else the
    set's recommendation (builtin and SSCD record theirs), else the bundled default. Then pick
    the apply threshold and keep rule in SQL, without searching again: dedup_actions(threshold := T).

    \b
    Example:
        vdc-lake dedup report --set resnet_v1_50_c1_sscd --report-threshold 0.5
        vdc-lake sql "SELECT * FROM dedup_actions(threshold := 0.25) LIMIT 20"
    """
    from vdc_lake.stages.dedup import report

    cfg = ctx.section("dedup", report_threshold=report_threshold, metric=metric, neighbors=neighbors, center=center,
                      l2_normalize=l2_normalize, max_pairs_per_image=max_pairs_per_image, precision=precision)
    backend = chosen_backend(ctx, backend, ray_address)
    with ctx.writer() as catalog:
        if report_threshold is None:  # the configured value if the user set one, else the set's recommendation
            from vdc_lake.catalog.settings import dedup_thresholds

            cfg["report_threshold"] = dedup_thresholds(catalog, set_name)["report_threshold"]
        s = report(catalog, set_name, threshold=cfg["report_threshold"], metric=cfg["metric"],
                   method="exact" if exact else method,
                   device=device, neighbors_k=cfg["neighbors"], center=cfg["center"],
                   l2_normalize=cfg["l2_normalize"], dtype=cfg["index_dtype"],
                   max_pairs_per_image=cfg["max_pairs_per_image"], precision=cfg["precision"], backend=backend,
                   ray_tile_rows=cfg["ray_tile_rows"], full=full, quiet=ctx.quiet)
    click.echo(f"method {s.method}: {s.reason}")
    if s.incremental_from is not None:
        click.echo(f"incremental: {s.searched} new or changed images searched against all {s.n_vectors}; "
                   f"{s.kept_pairs} pairs kept from run {s.incremental_from}")
    click.echo(f"report run {s.run_id}: {s.pairs} pairs under {s.threshold} among {s.n_vectors} images "
               f"({s.method}, {s.seconds:.1f} s)")
    if s.approximate:
        click.echo("note: the ANN search can miss pairs its graph does not reach (recall in benchmarks/RESULTS.md); "
                   "--method exact finds every pair", err=True)
    if s.truncated_images:
        click.echo(f"Warning: {s.truncated_images} images have more than {s.max_pairs_per_image} pairs under "
                   f"{s.threshold} (a large group of near-copies?); each kept its {s.max_pairs_per_image} nearest. "
                   "Raise --max-pairs-per-image to keep them all", err=True)


@dedup.command("calibrate")
@click.option("--set", "set_name", required=True, help="Embedding set whose threshold to calibrate.")
@click.option("--target-precision", type=float, default=None,
              help=f"Pick the largest threshold whose estimated precision reaches this "
                   f"{config_help('calibration', 'target_precision')}.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True,
              help="csv: threshold, precision, precision_low, precision_high, recall, recall_low, recall_high, removed.")
@pass_ctx
@handle_errors
def dedup_calibrate(ctx: Context, set_name: str, target_precision: float | None, fmt: str) -> None:
    """Estimate each candidate threshold's precision (share of the pairs under it that are real
    duplicates) and recall (share of the real duplicates among the stored pairs that it catches)
    from your pair labels, with 95% intervals that account for the stratified draw, and the images
    dedup removes at it. Names the largest threshold whose estimated precision reaches the target.

    \b
    Example:
        vdc-lake labels draw --set builtin --n 300 --out pairs.csv
        vdc-lake labels import pairs.csv
        vdc-lake dedup calibrate --set builtin --target-precision 0.99
    """
    from vdc_lake.review.calibration import CSV_COLUMNS, calibration_rows
    from vdc_lake.review.thresholds import config_line

    target = ctx.get("calibration", "target_precision", target_precision, "--target-precision")
    with ctx.reader() as catalog:
        result = calibration_rows(catalog, set_name, target_precision=target)
    if fmt == "csv":
        import csv
        import sys

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows([["" if v is None else v for v in row.csv_row()] for row in result.rows])
        return
    from vdc_lake.cli.base import echo_table

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    def interval(low: float | None, high: float | None) -> str:
        return "-" if low is None else f"{share(low)}-{share(high)}"

    echo_table([(f"{r.threshold:g}", r.pairs, r.labelled, share(r.precision), interval(r.precision_low, r.precision_high),
                 share(r.recall), interval(r.recall_low, r.recall_high), r.removed,
                 "<-" if result.best is not None and r.threshold == result.best.threshold else "")
                for r in result.rows],
               ["threshold", "pairs", "labelled", "precision", "95% interval", "recall", "95% interval", "removed", "best"])
    c = result.chained
    if c.pairs:
        known = (f"{share(c.share)} real duplicates ({share(c.share_low)}-{share(c.share_high)}, {c.labelled} labelled)"
                 if c.share is not None else "none labelled yet")
        click.echo(f"chained deletions at the apply threshold in force (no stored pair with the image kept): "
                   f"{c.pairs}, {known}")
    if any(r.precision is None for r in result.rows if r.pairs):
        click.echo(f"some distance bins have no labels yet ({result.labels} labels in all): `vdc-lake labels draw "
                   f"--set {set_name} --out pairs.csv`, fill in is_duplicate, then `vdc-lake labels import pairs.csv`")
    elif result.best is None:
        click.echo(f"no threshold reaches an estimated precision of {result.target_precision:g}")
    else:
        line = config_line("dedup", set_name, result.best.threshold).replace("\n", " ")
        click.echo(f"largest threshold with estimated precision >= {result.target_precision:g}: "
                   f"{result.best.threshold:g} (precision {share(result.best.precision)}, 95% interval "
                   f"{share(result.best.precision_low)}-{share(result.best.precision_high)}); to use it: {line} "
                   f"in vdc-lake.toml, or `vdc-lake plan dedup --set {set_name} --threshold {result.best.threshold:g}`")


@cli.group("filter")
def filter_group() -> None:
    """Filters that store a per-image number for a decision view."""


@filter_group.command("examples")
@click.option("--set", "set_name", required=True, help="Embedding set the examples are compared in.")
@click.option("--examples", "examples_path", required=True, type=click.Path(exists=True),
              help="Folder of unwanted example images, or a birder embeddings file.")
@click.option("--metric", type=click.Choice(["cosine"]), default=None, help=f"{config_help('filter_by_examples', 'metric')}")
@click.option("--models-dir", default=None, help="[config predict.models_dir]")
@pass_ctx
@handle_errors
def filter_examples(ctx: Context, set_name: str, examples_path: str, metric: str | None, models_dir: str | None) -> None:
    """Store each image's distance to its nearest unwanted example (example_actions(threshold)).

    \b
    Example:
        vdc-lake filter examples --set builtin --examples unwanted/
        vdc-lake plan examples --threshold 0.1
    """
    from vdc_lake.stages.filters import filter_by_examples

    with ctx.writer() as catalog:
        s = filter_by_examples(catalog, set_name, examples_path,
                               metric=ctx.get("filter_by_examples", "metric", metric),
                               models_dir=ctx.get("predict", "models_dir", models_dir))
    click.echo(f"filter run {s.run_id}: {s.n_images} images compared with {s.n_examples} examples")


@cli.command()
@click.option("--head", "head_path", required=True, type=click.Path(dir_okay=False),
              help="Score head: state dict of Linear layers, TorchScript or pickled module.")
@click.option("--set", "set_name", required=True, help="Embedding set the head reads.")
@click.option("--name", required=True, help="Score name, e.g. aesthetic or nsfw.")
@click.option("--activation", type=click.Choice(["none", "relu", "gelu"]), default="none", show_default=True,
              help="Between Linear layers of a state-dict head.")
@click.option("--l2-normalize/--no-l2-normalize", default=True, show_default=True)
@click.option("--output-index", type=click.IntRange(min=0), default=0, show_default=True, help="Which output column is the score.")
@pass_ctx
@handle_errors
def score(ctx: Context, head_path: str, set_name: str, name: str, activation: str, l2_normalize: bool,
          output_index: int) -> None:
    """Score every image of an embedding set with a small torch head (score_actions(name, min, max)).

    \b
    Example:
        vdc-lake score --head heads/aesthetic.pt --set clip --name aesthetic
        vdc-lake plan score --name aesthetic --min-score 4.5
    """
    from vdc_lake.stages.filters import score_images

    with ctx.writer() as catalog:
        s = score_images(catalog, set_name, head_path, name, activation=activation, l2_normalize=l2_normalize,
                         output_index=output_index)
    click.echo(f"score run {s.run_id}: {s.n_images} images scored as {s.name}")
