"""Commands that read the catalog: status, sql, config show."""

from __future__ import annotations

import json
import sys

import click

from vdc_lake.cli.base import Context, cli, echo_table, handle_errors, pass_ctx


@cli.command()
@pass_ctx
@handle_errors
def status(ctx: Context) -> None:
    """Summarise the catalog: images by state, recent runs, pending decisions per stage.

    \b
    Example:
        vdc-lake status
    """
    from vdc_lake.review.status import catalog_status

    with ctx.reader() as catalog:
        report = catalog_status(catalog)
    click.echo(f"catalog {ctx.catalog_path}")
    echo_table(report["images"], ["images", "count"])
    click.echo()
    echo_table(report["pending"], ["stage", "action", "images"])
    click.echo(report["pending_note"])
    click.echo(f"curated (what export writes): {report['curated']} images")
    if report["stale_sample"]:
        click.echo(report["stale_sample"])
    if report["overrides"]:
        click.echo("overrides in force: " + ", ".join(f"{n} {what}" for what, n in report["overrides"])
                   + " (vdc-lake override list)")
    if report["predict_failures"]:
        click.echo()
        echo_table(report["predict_failures"], ["predict failed in set", "images", "example (path: reason)"])
        click.echo("not tried again on the same bytes: `predict --retry-failed` does; all reasons: "
                   "vdc-lake sql \"SELECT * FROM failed_predictions\"")
    click.echo()
    echo_table(report["settings"], ["decision setting", "value", "source"])
    for note in report["setting_notes"]:
        click.echo(note)
    click.echo()
    echo_table(report["runs"], ["run", "stage", "status", "started", "seconds"])


class QueryCommand(click.Command):
    """A command whose one argument is a SQL query: a query starting with `--` (a comment) or `-`
    and holding a space or newline is never an option name, so it is taken as the query."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" not in args:
            queries = [a for a in args if a.startswith("-") and len(a.split()) > 1]
            if queries:
                args = [a for a in args if a not in queries] + ["--"] + queries
        return super().parse_args(ctx, args)


@cli.command("sql", cls=QueryCommand)
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True)
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False), default=None,
              help="Write to this file instead of stdout.")
@click.option("--write", is_flag=True, help="Open the catalog read-write (for UPDATE/CREATE statements).")
@pass_ctx
@handle_errors
def sql_command(ctx: Context, query: str, fmt: str, output: str | None, write: bool) -> None:
    """Run a SQL query on the catalog and print a table, or write csv/json/parquet.

    QUERY `-` reads the query from stdin (a file of SQL). A query that starts with `--` (a
    comment) can follow `--`, which ends the options: `vdc-lake sql --format csv -- "-- ..."`.
    Your query may read and write files (read_csv, COPY ... TO) unless the catalog holds views or
    macros vdc-lake does not define; vdc-lake's own views always come from this installation.
    The table shows at most 1,000 rows, and JSON values (runs.params), vectors and structs cut to
    100 characters (ending in `...`, named under the table); --format json or csv has them whole.

    \b
    Example:
        vdc-lake sql "SELECT rule, count(*) AS n FROM findings GROUP BY rule ORDER BY n DESC"
        vdc-lake sql "SELECT * FROM sanitize_actions" --format parquet --output actions.parquet
        vdc-lake sql - < queries/pending.sql
        vdc-lake sql -- "-- pending deletions
        SELECT count(*) FROM curated"
    """
    import duckdb

    from vdc_lake.effects.query_output import write_query

    if query == "-":
        query = sys.stdin.read()
        if not query.strip():
            raise click.ClickException("`sql -` read no query from stdin; pipe one in, e.g. "
                                       "`echo \"SELECT 1\" | vdc-lake sql -`, or give QUERY itself")
    with (ctx.writer(files=True) if write else ctx.reader(files=True)) as catalog:
        try:
            text = write_query(catalog, query, fmt=fmt, output=output)
        except duckdb.Error as e:
            refused = f"; {catalog.files_refused}" if isinstance(e, duckdb.PermissionException) and \
                catalog.files_refused else ""
            raise click.ClickException(f"query failed: {e}{refused}") from e
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
