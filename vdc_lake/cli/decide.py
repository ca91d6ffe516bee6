"""Commands that plan and carry out decisions: plan, apply, restore."""

from __future__ import annotations

from typing import Any, Callable

import click

from vdc_lake.catalog.connection import Catalog
from vdc_lake.cli.base import Context, cli, config_help, handle_errors, pass_ctx
from vdc_lake.cli.ingest import backend_options, chosen_backend
from vdc_lake.config import rules as validate


def decision_options(func: Callable) -> Callable:
    """Options that parameterise a stage's decision view (each stage uses the ones it needs)."""
    options = [
        click.option("--threshold", type=float, default=None,
                     help="rotation: min probability; dedup: max distance; examples: max distance [the catalog's settings: "
                          "rotation_correction.threshold, apply_deduplication.threshold (else the set's own), "
                          "filter_by_examples.threshold]."),
        click.option("--keep", type=click.Choice(["random", "alphabetical", "largest-resolution", "largest-file"]),
                     default=None, help=f"dedup: which image of a group survives {config_help('apply_deduplication', 'keep')}."),
        click.option("--seed", type=int, default=None, help=f"dedup --keep random: the seed {config_help('apply_deduplication', 'seed')}."),
        click.option("--set", "set_name", default=None, help="rotation/dedup/examples: only this set (default: newest/all)."),
        click.option("--name", default=None, help="score: which score to filter on."),
        click.option("--min-score", type=float, default=None, help="score: remove images below this."),
        click.option("--max-score", type=float, default=None, help="score: remove images above this."),
        click.option("--run", "sample_run", type=int, default=None, help="sample: which sampling run [newest]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _decision_kwargs(threshold, keep, seed, set_name, name, min_score, max_score, sample_run) -> dict[str, Any]:
    return {"threshold": threshold, "keep": keep, "seed": seed, "embedding_set": set_name,
            "prediction_set": set_name, "name": name, "min_score": min_score, "max_score": max_score,
            "run": sample_run}


def _plan(ctx: Context, catalog: Catalog, stage: str, options: dict[str, Any]):
    from vdc_lake.effects.apply import make_plan
    from vdc_lake.review.decisions import (check_decision_options, decision_query, decision_values,
                                           missing_inputs, unsearched_dedup_warnings)

    check_decision_options(catalog, stage, **options)
    missing = missing_inputs(catalog, stage, **options)
    if missing:  # rather than a bare "0 operations": what this decision needs, and the command that makes it
        click.echo(f"note: {missing}")
    source_sql, params, op_options = decision_query(stage, ctx.config, **options)

    values = decision_values(catalog, stage, **options)
    if values:  # which threshold this plan uses, and where it comes from (status lists the same)
        click.echo(values)
    if stage == "dedup":
        for warning in unsearched_dedup_warnings(catalog, threshold=options.get("threshold"),
                                                 embedding_set=options.get("embedding_set")):
            click.echo(warning, err=True)
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
@click.option("--examples", type=click.IntRange(min=0), default=5, show_default=True,
              help="How many example operations to show.")
@decision_options
@pass_ctx
@handle_errors
def plan(ctx: Context, stage: str, examples: int, **decision: Any) -> None:
    """Show what `apply STAGE` would do: counts per action and examples. Changes nothing.

    STAGE is one of sanitize, rotation, dedup, examples, score, quality, sample, override (drops
    by `vdc-lake override drop`; quality lists its findings, and deletes past a [quality] delete_*
    threshold).

    \b
    Example:
        vdc-lake plan sanitize --examples 10
        vdc-lake plan dedup --threshold 0.25 --keep largest-resolution
        vdc-lake plan rotation --threshold 0.9
    """
    from vdc_lake.effects.apply import unfinished_count

    with ctx.reader() as catalog:
        unfinished = unfinished_count(catalog)
        if unfinished:  # as `apply` says it: those images are in no plan until they are finished
            click.echo(f"{unfinished} operations of an interrupted apply are unfinished; `apply --apply` "
                       "finishes them first (they are not in this plan)")
        _echo_plan(_plan(ctx, catalog, stage, _decision_kwargs(**decision)), examples)


@cli.command()
@click.argument("stage")
@click.option("--backup-dir", type=click.Path(file_okay=False), default=None,
              help="Where originals are copied (verified) before they change; outside every scanned root.")
@click.option("--apply", "do_apply", is_flag=True, help="Really change files (default: dry run).")
@click.option("--yes", is_flag=True, help="Same as --apply, for scripts.")
@click.option("--no-backup", is_flag=True, help="Change files without keeping a copy (cannot be restored).")
@click.option("--examples", type=click.IntRange(min=0), default=5, show_default=True)
@backend_options
@decision_options
@pass_ctx
@handle_errors
def apply(ctx: Context, stage: str, backup_dir: str | None, do_apply: bool, yes: bool, no_backup: bool,
          examples: int, backend: str | None, ray_address: str | None, **decision: Any) -> None:
    """Carry out a stage's decisions on the files: journaled, backed up, resumable, reversible.

    Without --apply this is a dry run that prints the plan.

    \b
    Example:
        vdc-lake apply sanitize --backup-dir backup/sanitize          # dry run
        vdc-lake apply sanitize --backup-dir backup/sanitize --apply
        vdc-lake apply dedup --threshold 0.25 --keep largest-resolution --backup-dir backup/dedup --apply
        vdc-lake restore --run 7
    """
    from vdc_lake.effects.apply import apply_plan, check_backup_folder

    from vdc_lake.effects.apply import unfinished_count

    with ctx.writer() as catalog:
        unfinished = unfinished_count(catalog)
        if unfinished:
            click.echo(f"{unfinished} operations of an interrupted apply are unfinished; "
                       + ("they run first" if (do_apply or yes) else "`--apply` finishes them first"))
        the_plan = _plan(ctx, catalog, stage, _decision_kwargs(**decision))
        _echo_plan(the_plan, examples)
        if not (do_apply or yes):
            if backup_dir is not None and not no_backup:
                check_backup_folder(catalog, backup_dir)
            click.echo("dry run: nothing changed; add --apply to carry this out")
            return
        s = apply_plan(catalog, the_plan, backup_dir=backup_dir, no_backup=no_backup, quiet=ctx.quiet,
                       backend=chosen_backend(ctx, backend, ray_address))
    run = f"apply run {s.run_id}" if s.run_id is not None else "apply (nothing new planned)"
    resumed = f"; {s.resumed} interrupted operations finished" if s.resumed else ""
    refused = f", {s.refused} refused" if s.refused else ""
    if s.rewritten:  # their new versions have no sanitize check and no built-in descriptor yet
        click.echo(f"{s.rewritten} rewritten files (verified to decode) are new image versions: run `vdc-lake "
                   "sanitize` to check them against the rules and compute their descriptors")
    click.echo(f"{run}: {s.done} done, {s.skipped} skipped{refused}, {s.failed} failed{resumed}")
    for error in s.errors:
        click.echo(f"  {error}", err=True)
    if s.refused:
        raise click.ClickException(
            f"{s.refused} operations were refused: their paths lie outside the roots vdc-lake scanned, or name "
            "another file as the output (the catalog was edited or is damaged, or a folder on the path is now a "
            "link out of its root); nothing was done to them; see the journal table (state 'refused')")
    if s.failed:
        raise click.ClickException(f"{s.failed} operations failed; see the journal table for details")


@cli.command()
@click.option("--run", "run_id", type=int, default=None, help="Undo only this apply run (default: all, newest first).")
@click.option("--dry-run", is_flag=True, help="Only count what would be restored.")
@click.option("--force", is_flag=True,
              help="Also restore files changed since apply; your version is kept next to its backup (NAME.vdc-user-STAMP).")
@click.option("--backup-dir", type=click.Path(file_okay=False), default=None,
              help="The backup folder to restore from (default: the one each run recorded); backups outside it are refused.")
@pass_ctx
@handle_errors
def restore(ctx: Context, run_id: int | None, dry_run: bool, force: bool, backup_dir: str | None) -> None:
    """Undo apply runs from their verified backups: bytes, symlinks, hard links, mode, owner and the
    earlier image version with its analysis. Refuses backups outside the backup folder and paths
    outside the scanned roots; leaves alone files changed since apply unless --force.

    \b
    Example:
        vdc-lake restore --run 7
        vdc-lake restore --run 7 --backup-dir /mnt/backup/sanitize --dry-run
        vdc-lake restore            # everything, newest run first
    """
    from vdc_lake.effects.apply import restore as restore_runs

    with ctx.writer() as catalog:
        validate.check_run(catalog, run_id, "apply", finished=False)
        s = restore_runs(catalog, run_id=run_id, dry_run=dry_run, quiet=ctx.quiet, force=force,
                         backup_dir=backup_dir)
    verb = "would restore" if dry_run else "restored"
    parts = [f"{verb} {s.restored} files", f"{s.already_original} already original"]
    if s.no_backup:
        parts.append(f"{s.no_backup} files cannot be restored (run used --no-backup)")
    if s.conflicts:
        parts.append(f"{s.conflicts} changed since apply, left alone (--force restores them)")
    click.echo("; ".join(parts + [f"{s.failed} failed"]))
    for path in s.kept_aside[:20]:
        click.echo(f"  your version kept: {path}", err=True)
    for error in s.errors[:20]:
        click.echo(f"  {error}", err=True)
    not_restored = s.failed + s.no_backup + s.conflicts
    if not_restored and not dry_run:
        raise click.ClickException(f"{not_restored} files could not be restored")
