"""Writing the curated set and the static report: export, report."""

from __future__ import annotations

from typing import Any

import click

from vdc_lake.cli.base import Context, cli, config_help, handle_errors, pass_ctx


@cli.command("export")
@click.option("--output", "-o", "--to", "to_dir", required=True, type=click.Path(file_okay=False),
              help="Destination folder; created, and it must be empty unless --overwrite (--to: older name).")
@click.option("--format", "fmt", type=click.Choice(["manifest", "symlink", "hardlink", "copy", "webdataset"]),
              default=None, help="manifest: parquet + csv only; symlink/hardlink/copy: a tree per root; "
                                 f"webdataset: tar shards {config_help('export', 'format')}.")
@click.option("--view", default="curated", show_default=True,
              help="What to export: a view, a table-macro call or a SELECT that yields image_id.")
@click.option("--shard-size-mb", type=float, default=None,
              help=f"WebDataset shard size {config_help('export', 'shard_size_mb')}.")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier export in the destination (a folder with export.json); "
                   "a folder holding other files is refused.")
@pass_ctx
@handle_errors
def export_command(ctx: Context, to_dir: str, fmt: str | None, view: str, shard_size_mb: float | None,
                   overwrite: bool) -> None:
    """Write the curated images (or any view's) to a folder with a manifest; the originals are only read.

    Every format writes DIR/manifest.parquet and DIR/manifest.csv (path, image_id, version, clusters,
    sample run, ...). Copies are verified by hash; files changed since the last scan are skipped.

    \b
    Example:
        vdc-lake export -o out/curated --format symlink
        vdc-lake export -o out/shards --format webdataset --shard-size-mb 512
        vdc-lake export -o out/c3 --view "SELECT image_id FROM curated WHERE top_cluster_id = 3"
    """
    from vdc_lake.effects.export import export
    from vdc_lake.review.status import stale_sample

    cfg = ctx.section("export", format=fmt, shard_size_mb=shard_size_mb)
    with ctx.reader() as catalog:  # export only reads the catalog; it is recorded in TO/export.json
        s = export(catalog, to_dir, fmt=cfg["format"], view=view, shard_size_mb=cfg["shard_size_mb"],
                   overwrite=overwrite, quiet=ctx.quiet)
        stale = stale_sample(catalog, curated=s.images + s.skipped) if view == "curated" else None
    if stale:
        click.echo(stale, err=True)
    for note in s.notes:
        click.echo(f"note: {note}", err=True)
    shards = f" in {s.shards} shards" if s.fmt == "webdataset" else ""
    click.echo(f"export: {s.images} images ({s.bytes / 2**20:,.1f} MiB){shards} as {s.fmt} "
               f"to {s.to_dir}; manifest {s.manifest}; record {s.record}")
    for error in s.errors:
        click.echo(f"  {error}", err=True)
    if s.skipped > len(s.errors):
        click.echo(f"  and {s.skipped - len(s.errors)} more", err=True)
    if s.skipped:
        raise click.ClickException(f"{s.skipped} files were skipped and left out of the manifest (the reason for "
                                   "each is above); fix them (a file changed or gone since the last scan: run "
                                   "`vdc-lake scan`) and export again")


def _given(ctx: Context, section: str, key: str, value: Any, name: str | None = None) -> Any:
    """A command-line value, checked; None when not given (the catalog's setting applies)."""
    return None if value is None else ctx.get(section, key, value, name)


@cli.command("report")
@click.option("--output", "-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for index.html, the gallery pages and thumbs/ (created; files there are replaced; --out: older name)")
@click.option("--thumbnails", type=int, default=None,
              help="Example images per block of index.html (rule, decision, cluster); 0 = numbers only "
                   f"{config_help('report', 'thumbnails')}.")
@click.option("--page-size", type=int, default=None,
              help=f"Items per gallery page {config_help('report', 'page_size')}.")
@click.option("--max-pages", type=int, default=None,
              help=f"Pages per gallery; longer lists say 'N of M shown' {config_help('report', 'max_pages')}.")
@click.option("--dedup-threshold", type=float, default=None,
              help="Apply threshold of the funnel and the dedup gallery [the catalog's settings: "
                   "apply_deduplication.threshold, else each set's own].")
@click.option("--report-threshold", type=float, default=None,
              help="Near misses (pairs the apply threshold keeps) are shown up to this distance "
                   "[every pair the newest dedup report stored].")
@click.option("--rotation-threshold", type=float, default=None,
              help="Minimum probability of a correction [the catalog's settings: rotation_correction.threshold].")
@click.option("--workers", type=int, default=None, help="Thumbnail processes [config scan.workers].")
@pass_ctx
@handle_errors
def report_command(ctx: Context, out_dir: str, thumbnails: int | None, page_size: int | None,
                   max_pages: int | None, dedup_threshold: float | None, report_threshold: float | None,
                   rotation_threshold: float | None, workers: int | None) -> None:
    """Write a static HTML report (OUT/index.html, gallery pages, thumbnails) to review decisions.

    Funnel and planned operations per decision (as status/plan count them), thresholds in
    force, pair-distance histogram, cluster hierarchy, sample per top cluster, apply history
    from the journal; every planned operation on paged galleries, nearest the threshold first,
    each removed duplicate beside the image it loses to. Reads the catalog only; no network,
    no JavaScript.

    \b
    Example:
        vdc-lake report -o report/
        vdc-lake report -o report/ --dedup-threshold 0.2 --rotation-threshold 0.9
    """
    from vdc_lake.review.report import build_report

    with ctx.reader() as catalog:
        index = build_report(
            catalog, out_dir,
            # Options not given are None: the report then reads the catalog's settings, as plan/status/curated do.
            thumbnails=_given(ctx, "report", "thumbnails", thumbnails),
            page_size=_given(ctx, "report", "page_size", page_size),
            max_pages=_given(ctx, "report", "max_pages", max_pages),
            dedup_threshold=_given(ctx, "apply_deduplication", "threshold", dedup_threshold, "--dedup-threshold"),
            report_threshold=_given(ctx, "dedup", "report_threshold", report_threshold),
            rotation_threshold=_given(ctx, "rotation_correction", "threshold", rotation_threshold,
                                      "--rotation-threshold"),
            workers=ctx.get("scan", "workers", workers), quiet=ctx.quiet)
    click.echo(f"report written to {index}; open it in a browser")
