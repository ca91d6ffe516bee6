"""Commands that read image files into the catalog: scan, sanitize."""

from __future__ import annotations

from typing import Any, Callable

import click

from vdc_lake.cli.base import Context, cli, config_help, handle_errors, pass_ctx


def backend_options(func: Callable) -> Callable:
    """--backend and --ray-address, shared by the per-file stages (scan, sanitize, apply) and predict."""
    func = click.option("--ray-address", default=None,
                        help=f"Ray cluster for --backend ray {config_help('scale', 'ray_address', '; empty: a local instance')}.")(func)
    return click.option("--backend", type=click.Choice(["local", "ray"]), default=None,
                        help=f"Where per-file work runs {config_help('scale', 'backend')}.")(func)


def chosen_backend(ctx: Context, backend: str | None, ray_address: str | None) -> str:
    """The effective backend; joins (or starts) the Ray cluster when it is 'ray'."""
    backend = ctx.get("scale", "backend", backend)
    if backend == "ray":
        from vdc_lake.scale.ray_backend import connect

        connect(ctx.config.get("scale", "ray_address", ray_address) or None)
    return backend


@cli.command()
@click.argument("roots", nargs=-1, required=True, type=click.Path())
@click.option("--workers", type=int, default=None, help="Parallel readers [config scan.workers; 0 = all cores].")
@click.option("--sanitize", "and_sanitize", is_flag=True,
              help="Then sanitize (the [sanitize] config), reading each file once for both: the read that "
              "hashes a new or changed file also decodes it (what `scan` then `sanitize` do, in one read).")
@backend_options
@pass_ctx
@handle_errors
def scan(ctx: Context, roots: tuple[str, ...], workers: int | None, and_sanitize: bool, backend: str | None,
         ray_address: str | None) -> None:
    """Register image files under ROOTS, incrementally: new files are added, changed files get
    a new version, vanished files are marked not present, unchanged files are not read.

    \b
    Example:
        vdc-lake scan ~/Datasets/GLDv2
        vdc-lake scan ~/Datasets/GLDv2 --sanitize     # scan + sanitize, one read per file
    """
    from vdc_lake.stages.sanitize import scan_and_sanitize, whole_max_bytes
    from vdc_lake.stages.scan import scan as scan_roots

    cfg = ctx.section("scan", workers=workers)
    rules = ctx.section("sanitize")
    backend = chosen_backend(ctx, backend, ray_address)
    checked = None
    with ctx.writer(create=True) as catalog:
        if and_sanitize:
            s, checked = scan_and_sanitize(catalog, roots, extensions=cfg["extensions"], rules=rules,
                                           workers=cfg["workers"], quiet=ctx.quiet, backend=backend)
        else:
            s = scan_roots(catalog, roots, extensions=cfg["extensions"], workers=cfg["workers"], quiet=ctx.quiet,
                           backend=backend, whole_max_bytes=whole_max_bytes(rules))
    click.echo(f"scan run {s.run_id}: {s.listed} files listed: {s.new} new, {s.changed} changed, "
               f"{s.touched} touched (same bytes), {s.unchanged} unchanged, {s.gone} gone, "
               f"{s.errors} unreadable headers")
    if s.moved:
        click.echo(f"  {s.moved} moved: the same bytes at a new path keep their image id, results and overrides")
    if s.excluded:
        click.echo(f"  {s.excluded} no longer match scan.extensions {', '.join(cfg['extensions'])}: not present "
                   "now (never touched; widen the extensions and scan again to have them back)")
    for note in s.notes:
        click.echo(f"  note: {note}")
    if s.problems:
        click.echo(f"  {s.problems} path(s) not listed (odd names, symlink loops, unreadable folders): "
                   f"vdc-lake sql \"SELECT rule, detail FROM findings WHERE run_id = {s.run_id}\"")
    if checked is not None:
        _echo_sanitize(checked)


@cli.command()
@click.option("--quick", is_flag=True, help="Decode nothing new: header rules only, earlier decode verdicts kept "
              "(misses truncated files never decoded).")
@click.option("--recheck", is_flag=True, help="Decode images again even if this version was decoded "
              "(header rules are judged on every run anyway).")
@click.option("--workers", type=int, default=None, help="Parallel decoders [config scan.workers].")
@click.option("--min-width", type=int, default=None, help=f"{config_help('sanitize', 'min_width')}")
@click.option("--min-height", type=int, default=None, help=f"{config_help('sanitize', 'min_height')}")
@click.option("--max-width", type=int, default=None, help=f"{config_help('sanitize', 'max_width')}")
@click.option("--max-height", type=int, default=None, help=f"{config_help('sanitize', 'max_height')}")
@click.option("--min-aspect-ratio", type=float, default=None, help=f"{config_help('sanitize', 'min_aspect_ratio')}")
@click.option("--max-aspect-ratio", type=float, default=None, help=f"{config_help('sanitize', 'max_aspect_ratio')}")
@click.option("--max-file-size-mb", type=float, default=None, help=f"{config_help('sanitize', 'max_file_size_mb')}")
@click.option("--max-pixels", type=int, default=None, help=f"Decompression-bomb limit {config_help('sanitize', 'max_pixels')}.")
@backend_options
@pass_ctx
@handle_errors
def sanitize(ctx: Context, quick: bool, recheck: bool, workers: int | None, backend: str | None,
             ray_address: str | None, **rules: Any) -> None:
    """Validate present images with VDC's rules plus a full reduced-scale decode; record findings.

    Header rules (sizes, aspect ratio, file size, format, pixels) are judged on every run, so a
    changed limit takes effect at once; decode verdicts are kept per file version. Each image
    gets one action in the sanitize_actions view (delete > resize > recompress).

    \b
    Example:
        vdc-lake sanitize --max-aspect-ratio 5
        vdc-lake sql "SELECT rule, count(*) FROM findings GROUP BY rule"
    """
    from vdc_lake.stages.sanitize import sanitize as run_sanitize

    effective = ctx.section("sanitize", **rules)
    workers = ctx.get("scan", "workers", workers)
    backend = chosen_backend(ctx, backend, ray_address)
    with ctx.writer() as catalog:
        s = run_sanitize(catalog, effective, quick=quick, recheck=recheck, workers=workers, quiet=ctx.quiet,
                         backend=backend)
    _echo_sanitize(s)


def _echo_sanitize(s: Any) -> None:
    """The lines a sanitize run's summary (stages.sanitize.SanitizeSummary) prints."""
    click.echo(f"sanitize run {s.run_id}: {s.checked} images checked ({s.decoded} decoded), "
               f"{s.findings} findings on {s.images_with_findings} images")
    if s.changed:
        click.echo(f"  {s.changed} file(s) changed since the scan (no verdict): run `vdc-lake scan`, which reads "
                   "them again, then sanitize")
