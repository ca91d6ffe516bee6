"""vdc-lake command line: each command parses options and calls one library function.

Only this module turns typed errors (vdc_lake.errors) into click errors.
"""

from __future__ import annotations

import functools
import io
import json
import sys
from pathlib import Path
from typing import Any, Callable

import click

from vdc_lake import __version__
from vdc_lake.catalog import DEFAULT_CATALOG, Catalog
from vdc_lake.config import Config
from vdc_lake.errors import VdcLakeError


class Context:
    """What every command needs: the catalog path, the effective config, quiet mode."""

    def __init__(self, catalog_path: str, config_file: str | None, quiet: bool):
        self.catalog_path = catalog_path
        self.config = Config.load(Path(config_file) if config_file else None)
        self.quiet = quiet

    def writer(self) -> Catalog:
        return Catalog(self.catalog_path)

    def reader(self) -> Catalog:
        return Catalog(self.catalog_path, read_only=True)


pass_ctx = click.make_pass_decorator(Context)


def handle_errors(func: Callable) -> Callable:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except VdcLakeError as e:
            raise click.ClickException(str(e)) from e

    return wrapper


def echo_table(rows: list[tuple], headers: list[str]) -> None:
    """Print rows as an aligned plain-text table."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    click.echo("  ".join("-" * w for w in widths))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--catalog", default=DEFAULT_CATALOG, show_default=True, envvar="VDC_LAKE_CATALOG",
              help="The DuckDB catalog file (env VDC_LAKE_CATALOG).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML file overriding the defaults (vdc-lake.toml in the current folder is read too).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.version_option(__version__, prog_name="vdc-lake")
@click.pass_context
@handle_errors
def cli(ctx: click.Context, catalog: str, config_file: str | None, quiet: bool) -> None:
    """Curate image datasets: scan, sanitize, deduplicate, cluster and sample, with every
    fact and decision in one DuckDB catalog.

    \b
    Example:
        vdc-lake scan data/images
        vdc-lake sanitize
        vdc-lake plan sanitize
        vdc-lake apply sanitize --backup-dir backup --apply
    """
    ctx.obj = Context(catalog, config_file, quiet)


# -- scan / sanitize ------------------------------------------------------------------------------

@cli.command()
@click.argument("roots", nargs=-1, required=True, type=click.Path())
@click.option("--workers", type=int, default=None, help="Parallel readers [config scan.workers; 0 = all cores].")
@pass_ctx
@handle_errors
def scan(ctx: Context, roots: tuple[str, ...], workers: int | None) -> None:
    """Register image files under ROOTS, incrementally: new files are added, changed files get
    a new version, vanished files are marked not present, unchanged files are not read.

    \b
    Example:
        vdc-lake scan ~/Datasets/GLDv2
    """
    from vdc_lake.scan import scan as scan_roots

    cfg = ctx.config.section("scan", workers=workers)
    with ctx.writer() as catalog:
        s = scan_roots(catalog, roots, extensions=cfg["extensions"], workers=cfg["workers"], quiet=ctx.quiet)
    click.echo(f"scan run {s.run_id}: {s.listed} files listed: {s.new} new, {s.changed} changed, "
               f"{s.touched} touched (same bytes), {s.unchanged} unchanged, {s.gone} gone, "
               f"{s.errors} unreadable headers")


@cli.command()
@click.option("--quick", is_flag=True, help="Header facts only: no full decode (misses truncated files).")
@click.option("--recheck", is_flag=True, help="Check images again even if this version was checked.")
@click.option("--workers", type=int, default=None, help="Parallel decoders [config scan.workers].")
@click.option("--min-width", type=int, default=None, help="[config sanitize.min_width: 80]")
@click.option("--min-height", type=int, default=None, help="[config sanitize.min_height: 80]")
@click.option("--max-width", type=int, default=None, help="[config sanitize.max_width: 3200]")
@click.option("--max-height", type=int, default=None, help="[config sanitize.max_height: 3200]")
@click.option("--min-aspect-ratio", type=float, default=None, help="[config sanitize.min_aspect_ratio: 0.15]")
@click.option("--max-aspect-ratio", type=float, default=None, help="[config sanitize.max_aspect_ratio: 6.667]")
@click.option("--max-file-size-mb", type=float, default=None, help="[config sanitize.max_file_size_mb: 10]")
@click.option("--max-pixels", type=int, default=None, help="Decompression-bomb limit [config: 89478485].")
@pass_ctx
@handle_errors
def sanitize(ctx: Context, quick: bool, recheck: bool, workers: int | None, **rules: Any) -> None:
    """Validate present images with VDC's rules plus a full reduced-scale decode; record findings.

    Each image gets one action in the sanitize_actions view (delete > resize > recompress).

    \b
    Example:
        vdc-lake sanitize --max-aspect-ratio 5
        vdc-lake sql "SELECT rule, count(*) FROM findings GROUP BY rule"
    """
    from vdc_lake.sanitize import sanitize as run_sanitize

    effective = ctx.config.section("sanitize", **rules)
    workers = ctx.config.get("scan", "workers", workers)
    with ctx.writer() as catalog:
        s = run_sanitize(catalog, effective, quick=quick, recheck=recheck, workers=workers, quiet=ctx.quiet)
    click.echo(f"sanitize run {s.run_id}: {s.checked} images checked ({s.decoded} decoded), "
               f"{s.findings} findings on {s.images_with_findings} images")


# -- catalog inspection --------------------------------------------------------------------------

@cli.command()
@pass_ctx
@handle_errors
def status(ctx: Context) -> None:
    """Summarise the catalog: images by state, recent runs, pending decisions per stage.

    \b
    Example:
        vdc-lake status
    """
    from vdc_lake.status import catalog_status

    with ctx.reader() as catalog:
        report = catalog_status(catalog)
    click.echo(f"catalog {ctx.catalog_path}")
    echo_table(report["images"], ["images", "count"])
    click.echo()
    echo_table(report["pending"], ["stage", "action", "images"])
    click.echo()
    echo_table(report["runs"], ["run", "stage", "status", "started", "seconds"])


@cli.command("sql")
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Write to a file instead of stdout.")
@click.option("--write", is_flag=True, help="Open the catalog read-write (for UPDATE/CREATE statements).")
@pass_ctx
@handle_errors
def sql_command(ctx: Context, query: str, fmt: str, output: str | None, write: bool) -> None:
    """Run a SQL query on the catalog and print a table, or write csv/json/parquet.

    \b
    Example:
        vdc-lake sql "SELECT rule, count(*) AS n FROM findings GROUP BY rule ORDER BY n DESC"
        vdc-lake sql "SELECT * FROM sanitize_actions" --format parquet --output actions.parquet
    """
    import duckdb

    from vdc_lake.export_sql import write_query

    with (ctx.writer() if write else ctx.reader()) as catalog:
        try:
            text = write_query(catalog, query, fmt=fmt, output=output)
        except duckdb.Error as e:
            raise click.ClickException(f"query failed: {e}") from e
    if text is not None:
        click.echo(text, nl=False)


@cli.group("config")
def config_group() -> None:
    """Inspect the effective configuration."""


@config_group.command("show")
@pass_ctx
@handle_errors
def config_show(ctx: Context) -> None:
    """Print every effective option value and where it came from (default or a file).

    \b
    Example:
        vdc-lake --config strict.toml config show
    """
    echo_table([(f"{s}.{k}", json.dumps(v), src) for s, k, v, src in ctx.config.describe()],
               ["option", "value", "source"])


# -- plan / apply / restore ------------------------------------------------------------------------

def _plan(ctx: Context, catalog: Catalog, stage: str, options: dict[str, Any]):
    from vdc_lake.apply import make_plan
    from vdc_lake.decisions import decision_query

    source_sql, params, op_options = decision_query(stage, ctx.config, **options)
    return make_plan(catalog, stage, source_sql, params, op_options)


def _echo_plan(plan: Any, examples: int) -> None:
    counts = plan.counts()
    click.echo(f"plan {plan.decision}: {len(plan)} operations" + (":" if counts else ""))
    for action, n in counts.items():
        click.echo(f"  {action:<12} {n}")
    if examples and len(plan):
        click.echo("examples:")
        for ex in plan.examples(examples):
            click.echo(f"  {ex['action']:<12} {ex['src']}  ({ex['reason']})")


@cli.command()
@click.argument("stage")
@click.option("--examples", type=int, default=5, show_default=True, help="How many example operations to show.")
@pass_ctx
@handle_errors
def plan(ctx: Context, stage: str, examples: int) -> None:
    """Show what `apply STAGE` would do: counts per action and examples. Changes nothing.

    \b
    Example:
        vdc-lake plan sanitize --examples 10
    """
    with ctx.reader() as catalog:
        _echo_plan(_plan(ctx, catalog, stage, {}), examples)


@cli.command()
@click.argument("stage")
@click.option("--backup-dir", type=click.Path(file_okay=False), default=None,
              help="Where originals are copied (verified) before they change.")
@click.option("--apply", "do_apply", is_flag=True, help="Really change files (default: dry run).")
@click.option("--yes", is_flag=True, help="Same as --apply, for scripts.")
@click.option("--no-backup", is_flag=True, help="Change files without keeping a copy (cannot be restored).")
@click.option("--examples", type=int, default=5, show_default=True)
@pass_ctx
@handle_errors
def apply(ctx: Context, stage: str, backup_dir: str | None, do_apply: bool, yes: bool, no_backup: bool,
          examples: int) -> None:
    """Carry out a stage's decisions on the files: journaled, backed up, resumable, reversible.

    Without --apply this is a dry run that prints the plan.

    \b
    Example:
        vdc-lake apply sanitize --backup-dir backup/sanitize          # dry run
        vdc-lake apply sanitize --backup-dir backup/sanitize --apply
        vdc-lake restore --run 7
    """
    from vdc_lake.apply import apply_plan

    with ctx.writer() as catalog:
        the_plan = _plan(ctx, catalog, stage, {})
        _echo_plan(the_plan, examples)
        if not (do_apply or yes):
            click.echo("dry run: nothing changed; add --apply to carry this out")
            return
        s = apply_plan(catalog, the_plan, backup_dir=backup_dir, no_backup=no_backup, quiet=ctx.quiet)
    click.echo(f"apply run {s.run_id}: {s.done} done ({s.resumed} resumed from an earlier run), "
               f"{s.skipped} skipped, {s.failed} failed")
    for error in s.errors:
        click.echo(f"  {error}", err=True)
    if s.failed:
        raise click.ClickException(f"{s.failed} operations failed; see the journal table for details")


@cli.command()
@click.option("--run", "run_id", type=int, default=None, help="Undo only this apply run (default: all, newest first).")
@click.option("--dry-run", is_flag=True, help="Only count what would be restored.")
@pass_ctx
@handle_errors
def restore(ctx: Context, run_id: int | None, dry_run: bool) -> None:
    """Undo apply runs from their verified backups; refuses backups outside the backup root.

    \b
    Example:
        vdc-lake restore --run 7
        vdc-lake restore            # everything, newest run first
    """
    from vdc_lake.apply import restore as restore_runs

    with ctx.writer() as catalog:
        s = restore_runs(catalog, run_id=run_id, dry_run=dry_run, quiet=ctx.quiet)
    verb = "would restore" if dry_run else "restored"
    click.echo(f"{verb} {s.restored} files; {s.already_original} already original; {s.failed} failed")
    for error in s.errors[:20]:
        click.echo(f"  {error}", err=True)
    if s.failed:
        raise click.ClickException(f"{s.failed} files could not be restored")


def main() -> None:
    cli(prog_name="vdc-lake")


if __name__ == "__main__":
    main()
