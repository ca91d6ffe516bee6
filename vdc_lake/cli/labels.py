"""Pair labels for calibrating a dedup threshold: labels draw / import."""

from __future__ import annotations

import click

from vdc_lake.cli.base import Context, cli, config_help, handle_errors, pass_ctx


@cli.group("labels")
def labels_group() -> None:
    """Label pairs as duplicate or not, to measure a dedup threshold on your own data: draw a
    stratified sample of stored pairs, fill in is_duplicate, import it, then `dedup calibrate`."""


@labels_group.command("draw")
@click.option("--set", "set_name", required=True, help="Embedding set whose stored pairs to draw from.")
@click.option("--n", "n", type=int, default=None, help=f"Pairs to draw {config_help('calibration', 'pairs')}.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="CSV to write (image_a, image_b, path_a, path_b, distance, bin, weight, is_duplicate).")
@click.option("--seed", type=int, default=None, help=f"{config_help('calibration', 'seed')}")
@click.option("--bins", type=int, default=None,
              help=f"Distance bins over the searched range {config_help('calibration', 'bins')}.")
@pass_ctx
@handle_errors
def labels_draw(ctx: Context, set_name: str, n: int | None, out: str, seed: int | None, bins: int | None) -> None:
    """Draw pairs to label: a stratified sample of the set's stored pairs over distance bins
    (the same number from each bin, all of a bin that has fewer), plus chained pairs (an image
    the dedup decision deletes as the duplicate of a keeper it has no stored pair with). Fill in
    is_duplicate (true / false) and import the file; the draw is recorded, so the review app's
    label mode offers the same pairs.

    \b
    Example:
        vdc-lake labels draw --set builtin --n 300 --out pairs.csv
        vdc-lake labels import pairs.csv
    """
    from vdc_lake.review.calibration import record_draw, write_pairs_csv

    cfg = ctx.section("calibration", {"pairs": "--n"}, pairs=n, seed=seed, bins=bins)
    with ctx.writer() as catalog:
        draw = record_draw(catalog, set_name, n=cfg["pairs"], seed=cfg["seed"], bins=cfg["bins"])
    write_pairs_csv(draw.pairs, out)
    chained = draw.stratum_drawn[-1]
    click.echo(f"draw run {draw.run_id}: {len(draw)} pairs of set {set_name} over {draw.bins} distance bins under "
               f"{draw.searched:g} ({chained} chained) -> {out}; fill in is_duplicate and run "
               f"`vdc-lake labels import {out}`")


@labels_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@pass_ctx
@handle_errors
def labels_import(ctx: Context, file: str) -> None:
    """Record the pair labels FILE holds: a CSV with the columns image_a, image_b and is_duplicate
    (true/false, yes/no or 1/0; rows left empty are skipped). Nothing is recorded if a row is
    invalid. A pair whose image changed since it was drawn is recorded as stale (it judged other
    bytes) and does not count; the output says how many.

    \b
    Example:
        vdc-lake labels import pairs.csv
        vdc-lake dedup calibrate --set builtin
    """
    from vdc_lake.review.calibration import import_pair_labels

    with ctx.writer() as catalog:
        s = import_pair_labels(catalog, file)
    stale = (f"; {s.stale} stale (an image changed since the draw: recorded, not counted; draw again to "
             "label them anew)") if s.stale else ""
    click.echo(f"labels run {s.run_id}: {s.recorded} pair labels from {file}, {s.duplicates} duplicates{stale}")
