"""The user's verdict on single images: override keep/drop/clear/import/list."""

from __future__ import annotations

from typing import Any, Callable

import click

from vdc_lake.cli.base import Context, cli, echo_table, handle_errors, pass_ctx


@cli.group("override")
def override_group() -> None:
    """Overrule the decisions for single images: keep (no decision removes it) or drop (deleted by
    `apply override`, left out of curated and export). IMAGE: an image_id, a path relative to a
    scanned root, or a path. An override lapses when the file changes outside vdc-lake."""


def _echo_override(s: Any, what: str) -> None:
    replaced = f" ({s.replaced} replaced an override that said the opposite)" if s.replaced else ""
    click.echo(f"override run {s.run_id}: {what}{replaced}; `vdc-lake plan STAGE` shows the decisions with them")


def _override_command(action: str) -> Callable:
    @click.argument("images", nargs=-1, required=True)
    @click.option("--reason", default=None, help="Why (kept in the catalog, shown in plans and the report).")
    @pass_ctx
    @handle_errors
    def command(ctx: Context, images: tuple[str, ...], reason: str | None) -> None:
        from vdc_lake.stages.overrides import set_overrides

        with ctx.writer() as catalog:
            s = set_overrides(catalog, images, action, reason=reason)
        _echo_override(s, f"{s.images} images {'kept' if action == 'keep' else 'dropped'} by override")

    command.__doc__ = {
        "keep": """Keep IMAGES whatever the decisions say: no sanitize, dedup, example, score or sample
        delete takes them (in a duplicate group a kept image is the keeper; the others still go).

        \b
        Example:
            vdc-lake override keep 1234 landmarks/eiffel_01.jpg --reason "not a duplicate"
            vdc-lake plan dedup
        """,
        "drop": """Drop IMAGES: `plan/apply override` deletes them, and curated and export leave them out.

        \b
        Example:
            vdc-lake override drop landmarks/blurry.jpg --reason "out of focus"
            vdc-lake apply override --backup-dir backup/override --apply
        """,
    }[action]
    return override_group.command(action)(command)


override_keep = _override_command("keep")
override_drop = _override_command("drop")


@override_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@pass_ctx
@handle_errors
def override_import(ctx: Context, file: str) -> None:
    """Keep or drop every image FILE lists: a CSV with the columns image (image_id or path),
    action (keep or drop) and reason (may be empty). Nothing is recorded if a row is invalid.

    \b
    Example:
        vdc-lake override import reviewed.csv
    """
    from vdc_lake.stages.overrides import import_overrides

    with ctx.writer() as catalog:
        s = import_overrides(catalog, file)
    _echo_override(s, f"{s.images} images from {file}: {s.keep} kept, {s.drop} dropped")


@override_group.command("list")
@pass_ctx
@handle_errors
def override_list(ctx: Context) -> None:
    """List every image's override, and whether it is in force (or lapsed: the file changed).

    \b
    Example:
        vdc-lake override list
    """
    from vdc_lake.stages.overrides import list_overrides

    with ctx.reader() as catalog:
        rows = list_overrides(catalog).to_pylist()
    if not rows:
        click.echo("no overrides")
        return
    echo_table([(r["image_id"], r["path"], r["override"], r["reason"] or "", r["state"], r["run_id"]) for r in rows],
               ["image", "path", "override", "reason", "state", "run"])


@override_group.command("clear")
@click.argument("images", nargs=-1)
@click.option("--all", "all_images", is_flag=True, help="Clear every override.")
@pass_ctx
@handle_errors
def override_clear(ctx: Context, images: tuple[str, ...], all_images: bool) -> None:
    """End the overrides of IMAGES (or --all): the decisions judge them again.

    \b
    Example:
        vdc-lake override clear 1234
        vdc-lake override clear --all
    """
    from vdc_lake.stages.overrides import clear_overrides

    with ctx.writer() as catalog:
        s = clear_overrides(catalog, images, all_images=all_images)
    none = f"; {s.not_overridden} of the images named had none" if s.not_overridden else ""
    click.echo(f"override run {s.run_id}: {s.images} overrides cleared{none}")
