"""vdc-lake command line: each command parses options and calls one library function.

Only this module turns typed errors (vdc_lake.errors) into click errors.
"""

from __future__ import annotations

import functools
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from vdc_lake import __version__
from vdc_lake.catalog import DEFAULT_CATALOG, Catalog
from vdc_lake.config import Config
from vdc_lake import validate
from vdc_lake.errors import VdcLakeError, disk_full_error


_BUNDLED = Config.bundled().values


def _cfg(section: str, key: str, note: str = "") -> str:
    """'[config SECTION.KEY: VALUE]' for a --help text, VALUE from defaults.toml (defined once there)."""
    value = _BUNDLED[section][key]
    shown = json.dumps(value) if isinstance(value, (bool, list)) or value == "" else str(value)
    return f"[config {section}.{key}: {shown}{note}]"


class Context:
    """What every command needs: the catalog path, the effective config, quiet mode.

    --catalog, --config and -q are accepted before or after the command name (the later one
    wins), so the config is read on first use, once every option is known, and checked
    against vdc_lake.validate's rules.
    """

    def __init__(self, catalog_path: str, config_file: str | None, quiet: bool, *, catalog_explicit: bool = False):
        self.catalog_path = catalog_path
        self.config_file = config_file
        self.quiet = quiet
        self.catalog_explicit = catalog_explicit  # given as an option or env, not the default
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = Config.load(Path(self.config_file) if self.config_file else None)  # checked there
        return self._config

    def section(self, section: str, names: dict[str, str] | None = None, **cli_values: Any) -> dict[str, Any]:
        """A config section with the given CLI values (None = not given) on top, checked by
        vdc_lake.validate: a bad value is named by its option (--min-width, or `names`) when it
        came from the command line, by its file and key when it came from a config file."""
        merged = self.config.section(section, **cli_values)
        given = {key for key, value in cli_values.items() if value is not None and value != ()}

        def name_of(key: str) -> str:
            if key in given:
                return (names or {}).get(key, "--" + key.replace("_", "-"))
            return validate.config_origin(section, key, self.config.sources.get((section, key)))

        return validate.check_section(section, merged, name_of)

    def get(self, section: str, key: str, cli_value: Any = None, name: str | None = None) -> Any:
        """One effective option value (CLI > config file > default), checked like `section`."""
        return self.section(section, {key: name} if name else None, **{key: cli_value})[key]

    def writer(self, *, create: bool = False, files: bool = False) -> Catalog:
        """Open for writing; only commands that register files (scan) may create the catalog.
        The effective config becomes the catalog's settings (what the decision views read).
        files: the user's own SQL may read and write files (see vdc_lake.catalog)."""
        from vdc_lake.settings import changed_note, record_settings

        catalog = Catalog(self.catalog_path, create=create, scale=self.config.values["scale"], files=files)
        try:
            self._note(changed_note(record_settings(catalog, self.config)))
        except BaseException:
            catalog.close()
            raise
        return catalog

    def reader(self, *, files: bool = False) -> Catalog:
        """Open read-only, after recording the effective config as the catalog's settings when
        it differs and no other command holds the catalog (see vdc_lake.settings)."""
        from vdc_lake.settings import sync_settings

        self._note(sync_settings(self.catalog_path, self.config))
        return Catalog(self.catalog_path, read_only=True, scale=self.config.values["scale"], files=files)

    @staticmethod
    def _note(text: str | None) -> None:
        if text:
            click.echo(text, err=True)


pass_ctx = click.make_pass_decorator(Context)


class IntList(click.Option):
    """An option taking one or more integers, as VDC writes them: --n-clusters 45000 900 90.

    Values after the flag are taken up to the next token that starts with '-'; commas work too.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._original_process: Callable | None = None

    def add_to_parser(self, parser: Any, ctx: click.Context) -> Any:
        result = super().add_to_parser(parser, ctx)
        for name in self.opts:
            option = parser._long_opt.get(name) or parser._short_opt.get(name)
            if option is not None:
                self._original_process = option.process

                def process(value: Any, state: Any, _original=option.process) -> None:
                    values = [value]
                    while state.rargs and not state.rargs[0].startswith("-"):
                        values.append(state.rargs.pop(0))
                    _original(",".join(values), state)

                option.process = process
        return result

    def type_cast_value(self, ctx: click.Context, value: Any) -> Any:
        if value is None or value == ():
            return None
        try:
            return [int(v) for v in str(value).replace(" ", ",").split(",") if v]
        except ValueError:
            raise click.BadParameter(f"expected whole numbers, got {value!r}", ctx=ctx, param=self) from None


DEBUG_ENV = "VDC_LAKE_DEBUG"  # =1: show the traceback of an error instead of one line


def _os_error_message(e: OSError) -> str:
    import errno

    where = f"{e.filename}: " if e.filename else ""
    fix = {errno.ENOSPC: "free some space and run the command again (it resumes where it stopped)",
           errno.EDQUOT: "free some space and run the command again (it resumes where it stopped)",
           errno.EACCES: "check the permissions of that path",
           errno.EPERM: "check the permissions and owner of that path",
           errno.EROFS: "that file system is mounted read-only; choose another path",
           errno.ENOENT: "check the path"}.get(e.errno or 0, "check the path and run the command again")
    return f"{where}{(e.strerror or str(e)).lower()}; {fix}"


def error_message(e: BaseException) -> str | None:
    """One line for an error of a known failure class, or None for an unexpected one (a bug)."""
    import duckdb

    if isinstance(e, VdcLakeError):
        return str(e)
    full = disk_full_error(e)  # an OSError or a DuckDB error; names the device and the file written
    if full is not None:
        return str(full)
    if isinstance(e, OSError):
        return _os_error_message(e)
    if isinstance(e, duckdb.Error):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"catalog query failed: {first}"
    if isinstance(e, (ValueError, MemoryError)):
        return " ".join(str(e).split()) or type(e).__name__
    return None


def _stdout_fd() -> int:
    try:
        return sys.stdout.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return 1  # a wrapper over the process's stdout (a pipeline step's tee, a test runner's capture)


def _stdout_reader_gone() -> bool:
    """stdout is a pipe whose reading end is closed (poll reports an error on it)."""
    import select

    try:
        poller = select.poll()
        poller.register(_stdout_fd(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so the final flush at exit cannot fail on a closed pipe
    (Python's recipe for SIGPIPE: https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, _stdout_fd())
    except OSError:
        pass
    finally:
        os.close(devnull)


def handle_errors(func: Callable) -> Callable:
    """Turn typed errors, and errors of known failure classes (ValueError from a kernel, a
    DuckDB error from a macro, an OSError such as a full disk), into one `Error:` line.
    VDC_LAKE_DEBUG=1 shows the traceback instead."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            if isinstance(e, BrokenPipeError) and _stdout_reader_gone():  # not a worker's pipe
                _stdout_to_devnull()  # the reader of our output left (`| head -1`): nothing more to say
                raise click.exceptions.Exit(0) from None
            message = error_message(e)
            if message is None or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            raise click.ClickException(message) from e

    return wrapper


def _override_context(attribute: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(click_ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        obj = click_ctx.find_object(Context)
        if obj is None or value in (None, False):
            return
        setattr(obj, attribute, value)
        if attribute == "catalog_path":
            obj.catalog_explicit = True
        elif attribute == "config_file":
            obj._config = None

    return callback


def _common_options() -> list[click.Option]:
    """--catalog, --config, -q after a command name: they override the ones before it."""
    return [
        click.Option(["--catalog"], default=None, expose_value=False, callback=_override_context("catalog_path"),
                     help="The DuckDB catalog file (overrides the one given before the command)."),
        click.Option(["--config", "config_file"], type=click.Path(dir_okay=False), default=None, expose_value=False,
                     callback=_override_context("config_file"), help="TOML file overriding the defaults."),
        click.Option(["-q", "--quiet"], is_flag=True, default=False, expose_value=False,
                     callback=_override_context("quiet"), help="No progress bars."),
    ]


class Group(click.Group):
    """A click group whose commands (and sub-groups' commands) all take the common options."""

    group_class = type  # sub-groups are Groups too

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group):
            taken = {opt for param in cmd.params for opt in param.opts}
            cmd.params.extend(o for o in _common_options() if not set(o.opts) & taken)
        super().add_command(cmd, name)


def echo_table(rows: list[tuple], headers: list[str]) -> None:
    """Print rows as an aligned plain-text table."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    click.echo("  ".join("-" * w for w in widths))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
    explicit = ctx.get_parameter_source("catalog") not in (click.core.ParameterSource.DEFAULT, None)
    ctx.obj = Context(catalog, config_file, quiet, catalog_explicit=explicit)


# -- scan / sanitize ------------------------------------------------------------------------------

def backend_options(func: Callable) -> Callable:
    """--backend and --ray-address, shared by the per-file stages (scan, sanitize, apply) and predict."""
    func = click.option("--ray-address", default=None,
                        help=f"Ray cluster for --backend ray {_cfg('scale', 'ray_address', '; empty: a local instance')}.")(func)
    return click.option("--backend", type=click.Choice(["local", "ray"]), default=None,
                        help=f"Where per-file work runs {_cfg('scale', 'backend')}.")(func)


def _backend(ctx: Context, backend: str | None, ray_address: str | None) -> str:
    """The effective backend; joins (or starts) the Ray cluster when it is 'ray'."""
    backend = ctx.get("scale", "backend", backend)
    if backend == "ray":
        from vdc_lake.ray_backend import connect

        connect(ctx.config.get("scale", "ray_address", ray_address) or None)
    return backend


@cli.command()
@click.argument("roots", nargs=-1, required=True, type=click.Path())
@click.option("--workers", type=int, default=None, help="Parallel readers [config scan.workers; 0 = all cores].")
@backend_options
@pass_ctx
@handle_errors
def scan(ctx: Context, roots: tuple[str, ...], workers: int | None, backend: str | None,
         ray_address: str | None) -> None:
    """Register image files under ROOTS, incrementally: new files are added, changed files get
    a new version, vanished files are marked not present, unchanged files are not read.

    \b
    Example:
        vdc-lake scan ~/Datasets/GLDv2
    """
    from vdc_lake.scan import scan as scan_roots

    cfg = ctx.section("scan", workers=workers)
    backend = _backend(ctx, backend, ray_address)
    with ctx.writer(create=True) as catalog:
        s = scan_roots(catalog, roots, extensions=cfg["extensions"], workers=cfg["workers"], quiet=ctx.quiet,
                       backend=backend)
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


@cli.command()
@click.option("--quick", is_flag=True, help="Decode nothing new: header rules only, earlier decode verdicts kept "
              "(misses truncated files never decoded).")
@click.option("--recheck", is_flag=True, help="Decode images again even if this version was decoded "
              "(header rules are judged on every run anyway).")
@click.option("--workers", type=int, default=None, help="Parallel decoders [config scan.workers].")
@click.option("--min-width", type=int, default=None, help=f"{_cfg('sanitize', 'min_width')}")
@click.option("--min-height", type=int, default=None, help=f"{_cfg('sanitize', 'min_height')}")
@click.option("--max-width", type=int, default=None, help=f"{_cfg('sanitize', 'max_width')}")
@click.option("--max-height", type=int, default=None, help=f"{_cfg('sanitize', 'max_height')}")
@click.option("--min-aspect-ratio", type=float, default=None, help=f"{_cfg('sanitize', 'min_aspect_ratio')}")
@click.option("--max-aspect-ratio", type=float, default=None, help=f"{_cfg('sanitize', 'max_aspect_ratio')}")
@click.option("--max-file-size-mb", type=float, default=None, help=f"{_cfg('sanitize', 'max_file_size_mb')}")
@click.option("--max-pixels", type=int, default=None, help=f"Decompression-bomb limit {_cfg('sanitize', 'max_pixels')}.")
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
    from vdc_lake.sanitize import sanitize as run_sanitize

    effective = ctx.section("sanitize", **rules)
    workers = ctx.get("scan", "workers", workers)
    backend = _backend(ctx, backend, ray_address)
    with ctx.writer() as catalog:
        s = run_sanitize(catalog, effective, quick=quick, recheck=recheck, workers=workers, quiet=ctx.quiet,
                         backend=backend)
    click.echo(f"sanitize run {s.run_id}: {s.checked} images checked ({s.decoded} decoded), "
               f"{s.findings} findings on {s.images_with_findings} images")
    if s.changed:
        click.echo(f"  {s.changed} file(s) changed since the scan (no verdict): run `vdc-lake scan`, which reads "
                   "them again, then sanitize")


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

    \b
    Example:
        vdc-lake sql "SELECT rule, count(*) AS n FROM findings GROUP BY rule ORDER BY n DESC"
        vdc-lake sql "SELECT * FROM sanitize_actions" --format parquet --output actions.parquet
        vdc-lake sql - < queries/pending.sql
        vdc-lake sql -- "-- pending deletions
        SELECT count(*) FROM curated"
    """
    import duckdb

    from vdc_lake.export_sql import write_query

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


# -- plan / apply / restore ------------------------------------------------------------------------

def decision_options(func: Callable) -> Callable:
    """Options that parameterise a stage's decision view (each stage uses the ones it needs)."""
    options = [
        click.option("--threshold", type=float, default=None,
                     help="rotation: min probability; dedup: max distance; examples: max distance [the catalog's settings: "
                          "rotation_correction.threshold, apply_deduplication.threshold (else the set's own), "
                          "filter_by_examples.threshold]."),
        click.option("--keep", type=click.Choice(["random", "alphabetical", "largest-resolution", "largest-file"]),
                     default=None, help=f"dedup: which image of a group survives {_cfg('apply_deduplication', 'keep')}."),
        click.option("--seed", type=int, default=None, help=f"dedup --keep random: the seed {_cfg('apply_deduplication', 'seed')}."),
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
    from vdc_lake.apply import make_plan
    from vdc_lake.decisions import decision_query

    validate.check_decision_options(catalog, stage, **options)
    source_sql, params, op_options = decision_query(stage, ctx.config, **options)
    from vdc_lake.decisions import decision_values, unsearched_dedup_warnings

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

    STAGE is one of sanitize, rotation, dedup, examples, score, sample, override (drops by
    `vdc-lake override drop`).

    \b
    Example:
        vdc-lake plan sanitize --examples 10
        vdc-lake plan dedup --threshold 0.25 --keep largest-resolution
        vdc-lake plan rotation --threshold 0.9
    """
    from vdc_lake.apply import unfinished_count

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
    from vdc_lake.apply import apply_plan, check_backup_folder

    from vdc_lake.apply import unfinished_count

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
                       backend=_backend(ctx, backend, ray_address))
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
    from vdc_lake.apply import restore as restore_runs

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


# -- overrides ------------------------------------------------------------------------------------

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
        from vdc_lake.overrides import set_overrides

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
    from vdc_lake.overrides import import_overrides

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
    from vdc_lake.overrides import list_overrides

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
    from vdc_lake.overrides import clear_overrides

    with ctx.writer() as catalog:
        s = clear_overrides(catalog, images, all_images=all_images)
    none = f"; {s.not_overridden} of the images named had none" if s.not_overridden else ""
    click.echo(f"override run {s.run_id}: {s.images} overrides cleared{none}")

# -- models and predictions ------------------------------------------------------------------------

class EachModel(click.Option):
    """A repeatable option of predict, one value per --model, in order: `--kind rotation --kind
    descriptor` or `--kind rotation descriptor` (values up to the next token starting with '-'),
    so a pipeline step's list (kind = ["rotation", "descriptor"]) works as it is written."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, multiple=True, **kwargs)

    def add_to_parser(self, parser: Any, ctx: click.Context) -> Any:
        result = super().add_to_parser(parser, ctx)
        for name in self.opts:
            option = parser._long_opt.get(name)
            if option is not None:
                def process(value: Any, state: Any, _original=option.process) -> None:
                    _original(value, state)
                    while state.rargs and not state.rargs[0].startswith("-"):
                        _original(state.rargs.pop(0), state)

                option.process = process
        return result


def _per_model(values: tuple[str, ...], n: int, option: str) -> list[str | None]:
    """One value per model: none given (defaults), or exactly one per --model ('' = that model's default)."""
    if not values:
        return [None] * n
    if len(values) != n:
        raise click.UsageError(f"{option} was given {len(values)} times for {n} --model; give it once per "
                               f"--model, in the same order ('' for a model's default), or leave it out")
    return [v if v != "" else None for v in values]


def _predict_requests(model: tuple[str, ...], kind: tuple[str, ...], tag: tuple[str, ...],
                      set_name: tuple[str, ...], size: tuple[str, ...]) -> list[Any]:
    from vdc_lake.predict import KIND_TABLE, PredictRequest

    if len(kind) != len(model):
        raise click.UsageError(f"{len(model)} --model and {len(kind)} --kind: give one --kind per --model, in order "
                               "(--model A --kind rotation --model B --kind descriptor)")
    for k in kind:
        if k not in KIND_TABLE:
            raise click.BadParameter(f"{k!r} is not one of rotation, descriptor, embedding", param_hint="--kind")
    sizes = []
    for value in _per_model(size, len(model), "--size"):
        if value is not None and (not value.isdigit() or int(value) < 1):
            raise click.BadParameter(f"{value!r} is not a size in pixels (a whole number >= 1, or '' for the "
                                     "model's own)", param_hint="--size")
        sizes.append(None if value is None else int(value))
    return [PredictRequest(m, k, t, s, z) for m, k, t, s, z in zip(
        model, kind, _per_model(tag, len(model), "--tag"), _per_model(set_name, len(model), "--set"), sizes)]


@cli.command()
@click.option("--model", cls=EachModel, required=True,
              help="birder weights name (resnet_v1_50_c1_sscd) or 'builtin'; repeat for one pass over several.")
@click.option("--kind", cls=EachModel, required=True,
              help="One per --model: rotation (4 class probabilities), descriptor (logits, SSCD) or embedding "
                   "(pooled features).")
@click.option("--tag", cls=EachModel, help="birder tag, when --model is a bare network name (one per --model).")
@click.option("--set", "set_name", cls=EachModel, help="Name of the result set [the model name] (one per --model).")
@click.option("--models-dir", default=None, help=f"Folder of birder checkpoints {_cfg('predict', 'models_dir')}.")
@click.option("--size", cls=EachModel, help="Input resolution override [the model's] (one per --model).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help=f"{_cfg('predict', 'device')}")
@click.option("--decode", type=click.Choice(["auto", "cpu", "gpu"]), default=None,
              help="Where JPEGs are decoded; auto: on the GPU (nvJPEG) when the device is CUDA, else the CPU. "
                   f"Files nvJPEG cannot read always decode on the CPU {_cfg('predict', 'decode')}.")
@click.option("--rotate-threshold", type=float, default=None,
              help="With a rotation model in the pass, the other models see each image turned by its predicted "
                   "angle when the probability is above this; 1 turns none [config rotation_correction.threshold].")
@click.option("--draft-min-size", type=int, default=None,
              help=f"JPEG DCT-scaled decoding never below this side (px) {_cfg('predict', 'draft_min_size', '; 0: off')}.")
@click.option("--batch-size", type=int, default=None, help=f"{_cfg('predict', 'batch_size')}")
@click.option("--num-workers", type=int, default=None, help="Decoding processes [config predict.num_workers].")
@click.option("--amp", is_flag=True, help="Mixed precision (autocast).")
@click.option("--amp-dtype", type=click.Choice(["bfloat16", "float16"]), default="bfloat16", show_default=True)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--fast-matmul", is_flag=True, help="Allow TF32 matmuls.")
@click.option("--channels-last", is_flag=True, help="channels_last memory format.")
@click.option("--retry-failed", is_flag=True,
              help="Try again the images that failed in a set before on the same bytes (see `status`).")
@backend_options
@pass_ctx
@handle_errors
def predict(ctx: Context, model: tuple[str, ...], tag: tuple[str, ...], kind: tuple[str, ...],
            set_name: tuple[str, ...], models_dir: str | None, size: tuple[str, ...], device: str | None,
            decode: str | None, rotate_threshold: float | None, draft_min_size: int | None, batch_size: int | None,
            num_workers: int | None, amp: bool, amp_dtype: str, compile_: bool, fast_matmul: bool,
            channels_last: bool, retry_failed: bool, backend: str | None, ray_address: str | None) -> None:
    """Run birder models over present images that have no result yet for their current version.

    Several --model/--kind pairs run in one pass: each image is decoded once (JPEGs at reduced
    scale when far larger than every model needs), and each model gets its own resize and
    normalisation of those pixels, so each set gets what a run of that model alone writes.
    With a rotation model in the pass, the other models see each image turned by the predicted
    angle (probability above --rotate-threshold), i.e. what `apply rotation` will write; once it
    has, those results stay current for the turned files. Results are committed in batches: a
    killed run resumes where it stopped, per set. With --backend ray each model runs alone in Ray
    tasks over shards of images, one GPU each when the device is cuda (or auto and the cluster
    has GPUs); the builtin descriptor always runs alone. An image that fails (does not decode)
    is recorded with its reason (see `status`) and not tried again in that set until its file
    changes, or with --retry-failed.

    \b
    Example:
        vdc-lake predict --model rope_vit_reg8_so150m_p14_swiglu_rms_ap_rotnet-capi --kind rotation \\
            --model resnet_v1_50_c1_sscd --kind descriptor \\
            --model rope_i_vit_b16_pn_aps_c1_pe-core --kind embedding --device cuda --amp
        vdc-lake predict --model resnet_v1_50_c1_sscd --kind descriptor --device cuda --amp
        vdc-lake predict --model builtin --kind descriptor
    """
    from vdc_lake.predict import predict_pass

    requests = _predict_requests(model, kind, tag, set_name, size)
    cfg = ctx.section("predict", models_dir=models_dir, batch_size=batch_size, num_workers=num_workers,
                      device=device, decode=decode, draft_min_size=draft_min_size)
    threshold = ctx.get("rotation_correction", "threshold", rotate_threshold, name="--rotate-threshold")
    backend = _backend(ctx, backend, ray_address)
    with ctx.writer() as catalog:
        summaries = predict_pass(
            catalog, requests, models_dir=cfg["models_dir"], device=cfg["device"], decode=cfg["decode"],
            rotate_threshold=threshold, draft_min_size=cfg["draft_min_size"], batch_size=cfg["batch_size"],
            num_workers=cfg["num_workers"], amp=amp, amp_dtype=amp_dtype, compile=compile_, fast_matmul=fast_matmul,
            channels_last=channels_last, quiet=ctx.quiet, backend=backend,
            max_pixels=ctx.get("sanitize", "max_pixels"), retry_failed=retry_failed)
    for s in summaries:
        click.echo(f"predict run {s.run_id}: set {s.set_name} ({s.kind}): {s.written} of {s.todo} images written, "
                   f"{s.failed} failed, {s.images_per_second} images/s")
        if s.skipped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in s.skipped_reasons.items())
            click.echo(f"  {s.skipped} skipped, not decoded: {reasons}")
        if s.not_retried:
            click.echo(f"  {s.not_retried} not tried again: they failed on the same bytes before "
                       "(reasons: vdc-lake status; --retry-failed tries them)")
    for s in summaries:  # after every set's counts, so the reasons are not lost among them
        if s.errors:
            click.echo(f"failed in set {s.set_name}:", err=True)
        for error in s.errors:
            click.echo(f"  {error}", err=True)
        if s.failed > len(s.errors):
            click.echo(f"  and {s.failed - len(s.errors)} more (vdc-lake status)", err=True)


@cli.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "set_name", default=None, help="Set name [from birder's file name: network_tag].")
@click.option("--kind", type=click.Choice(["rotation", "descriptor", "embedding"]), default=None,
              help="[output files: rotation; logits: descriptor; embeddings: embedding]")
@pass_ctx
@handle_errors
def import_command(ctx: Context, file: str, set_name: str | None, kind: str | None) -> None:
    """Import a birder result file (*_output / *_logits / *_embeddings, parquet or csv).

    Samples match catalog images by absolute path or by path relative to a scanned root;
    unmatched samples are counted and listed.

    \b
    Example:
        vdc-lake import results/gldv2_resnet_v1_50_c1_sscd_512_320px_crop1.0_4126694_logits.parquet
    """
    from vdc_lake.predict import import_results

    with ctx.writer() as catalog:
        s = import_results(catalog, file, set_name=set_name, kind=kind)
    click.echo(f"import run {s.run_id}: set {s.set_name} ({s.kind}): {s.matched} of {s.rows} rows imported, "
               f"{s.unmatched} unmatched")
    if s.duplicates:
        click.echo(f"  {s.duplicates} row(s) name an image an earlier row named: the last of them counts")
    if s.unmatched:
        click.echo("unmatched samples (first ones): " + ", ".join(s.unmatched_examples), err=True)
    if s.not_finite:
        click.echo(f"{s.not_finite} row(s) hold NaN or infinite values, not imported (first ones): "
                   + ", ".join(s.not_finite_examples), err=True)


@cli.group()
def models() -> None:
    """birder checkpoints in the models folder."""


@models.command("list")
@click.option("--models-dir", default=None, help=f"{_cfg('predict', 'models_dir')}")
@pass_ctx
@handle_errors
def models_list(ctx: Context, models_dir: str | None) -> None:
    """List checkpoints with task, resolution, output size and whether they load.

    \b
    Example:
        vdc-lake models list --models-dir models
    """
    from vdc_lake.models import list_models

    folder = ctx.get("predict", "models_dir", models_dir)
    rows = [(m.name, m.kind or m.task or "", "x".join(map(str, m.size)) if m.size else "", m.num_classes,
             m.embedding_size, "yes" if m.loads else f"no: {m.error}") for m in list_models(folder)]
    if not rows:
        click.echo(f"no birder checkpoints in {folder}/; get one with "
                   "`python -m birder.tools download-model NAME` on a connected machine")
        return
    echo_table(rows, ["model", "kind", "size", "classes", "embedding", "loads"])


# -- dedup, filters, scores --------------------------------------------------------------------------

@cli.group()
def dedup() -> None:
    """Near-duplicate search over an embedding set (exact copies need no model)."""


@dedup.command("index")
@click.option("--set", "set_name", required=True, help="Embedding set (e.g. builtin, resnet_v1_50_c1_sscd).")
@click.option("--center/--no-center", default=None, help="Subtract the set's mean first [config dedup.center].")
@click.option("--l2-normalize/--no-l2-normalize", default=None, help=f"{_cfg('dedup', 'l2_normalize')}")
@click.option("--dtype", type=click.Choice(["f32", "f16", "bf16", "i8"]), default=None,
              help=f"Index storage {_cfg('dedup', 'index_dtype')}.")
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
    from vdc_lake.dedup import build_index

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
@click.option("--metric", type=click.Choice(["cosine"]), default=None, help=f"{_cfg('dedup', 'metric')}")
@click.option("--method", type=click.Choice(["auto", "ann", "exact"]), default="auto", show_default=True,
              help="exact: tiled matmul in torch, every pair; ann: usearch HNSW index (approximate); auto: "
                   "exact on a GPU, with --backend ray or up to 200k vectors on the CPU, ann beyond. "
                   "The report says which it picked and why.")
@click.option("--exact", is_flag=True, help="Same as --method exact.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto uses the exact search on a GPU when one is available.")
@click.option("--center/--no-center", default=None,
              help=f"Subtract the set's mean before the search (SSCD's recipe) {_cfg('dedup', 'center')}.")
@click.option("--l2-normalize/--no-l2-normalize", default=None, help=f"{_cfg('dedup', 'l2_normalize')}")
@click.option("--max-pairs-per-image", type=int, default=None,
              help="Keep each image's nearest this many pairs; a warning counts the images that had more "
                   f"{_cfg('dedup', 'max_pairs_per_image')}.")
@click.option("--precision", type=click.Choice(["auto", "bf16", "tf32", "fp32"]), default=None,
              help="Exact search scores, re-checked exactly near the threshold: the pairs are the same "
                   f"{_cfg('dedup', 'precision', '; auto = bf16 on a GPU, fp32 on a CPU')}.")
@click.option("--neighbors", type=int, default=None,
              help="ANN: neighbours asked for first, widened while the farthest is under the threshold "
                   f"{_cfg('dedup', 'neighbors')}.")
@backend_options
@pass_ctx
@handle_errors
def dedup_report(ctx: Context, set_name: str, report_threshold: float | None, metric: str | None, method: str,
                 exact: bool, device: str, center: bool | None, l2_normalize: bool | None,
                 max_pairs_per_image: int | None, precision: str | None, neighbors: int | None,
                 backend: str | None, ray_address: str | None) -> None:
    """Write every pair of the set under the report threshold to dup_edges (a range search).

    With --backend ray the exact search runs as tiles (block pairs) over the Ray cluster's GPUs,
    resumable per tile.

    Without --report-threshold: [dedup] report_threshold when your config sets it, else the
    set's recommendation (builtin and SSCD record theirs), else the bundled default. Then pick
    the apply threshold and keep rule in SQL, without searching again: dedup_actions(threshold := T).

    \b
    Example:
        vdc-lake dedup report --set resnet_v1_50_c1_sscd --report-threshold 0.5
        vdc-lake sql "SELECT * FROM dedup_actions(threshold := 0.25) LIMIT 20"
    """
    from vdc_lake.dedup import report

    cfg = ctx.section("dedup", report_threshold=report_threshold, metric=metric, neighbors=neighbors, center=center,
                      l2_normalize=l2_normalize, max_pairs_per_image=max_pairs_per_image, precision=precision)
    backend = _backend(ctx, backend, ray_address)
    with ctx.writer() as catalog:
        if report_threshold is None:  # the configured value if the user set one, else the set's recommendation
            from vdc_lake.settings import dedup_thresholds

            cfg["report_threshold"] = dedup_thresholds(catalog, set_name)["report_threshold"]
        s = report(catalog, set_name, threshold=cfg["report_threshold"], metric=cfg["metric"],
                   method="exact" if exact else method,
                   device=device, neighbors_k=cfg["neighbors"], center=cfg["center"],
                   l2_normalize=cfg["l2_normalize"], dtype=cfg["index_dtype"],
                   max_pairs_per_image=cfg["max_pairs_per_image"], precision=cfg["precision"], backend=backend,
                   ray_tile_rows=cfg["ray_tile_rows"], quiet=ctx.quiet)
    click.echo(f"method {s.method}: {s.reason}")
    click.echo(f"report run {s.run_id}: {s.pairs} pairs under {s.threshold} among {s.n_vectors} images "
               f"({s.method}, {s.seconds:.1f} s)")
    if s.approximate:
        click.echo("note: the ANN search can miss pairs its graph does not reach (recall in benchmarks/RESULTS.md); "
                   "--method exact finds every pair", err=True)
    if s.truncated_images:
        click.echo(f"Warning: {s.truncated_images} images have more than {s.max_pairs_per_image} pairs under "
                   f"{s.threshold} (a large group of near-copies?); each kept its {s.max_pairs_per_image} nearest. "
                   "Raise --max-pairs-per-image to keep them all", err=True)


@cli.group("filter")
def filter_group() -> None:
    """Filters that store a per-image number for a decision view."""


@filter_group.command("examples")
@click.option("--set", "set_name", required=True, help="Embedding set the examples are compared in.")
@click.option("--examples", "examples_path", required=True, type=click.Path(exists=True),
              help="Folder of unwanted example images, or a birder embeddings file.")
@click.option("--metric", type=click.Choice(["cosine"]), default=None, help=f"{_cfg('filter_by_examples', 'metric')}")
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
    from vdc_lake.filters import filter_by_examples

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
    from vdc_lake.filters import score_images

    with ctx.writer() as catalog:
        s = score_images(catalog, set_name, head_path, name, activation=activation, l2_normalize=l2_normalize,
                         output_index=output_index)
    click.echo(f"score run {s.run_id}: {s.n_images} images scored as {s.name}")


# -- clustering and sampling -------------------------------------------------------------------------

@cli.command("cluster")
@click.option("--set", "set_name", required=True, help="Embedding set to cluster.")
@click.option("--n-clusters", cls=IntList, help=f"Clusters per level, finest first, e.g. --n-clusters 45000 900 90 {_cfg('hierarchical_kmeans', 'n_clusters')}.")
@click.option("--method", type=click.Choice(["centers", "resampled"]), default=None, help=f"{_cfg('hierarchical_kmeans', 'method')}")
@click.option("--n-samples", cls=IntList, help="Points per centre kept by resampling, one per level "
              f"{_cfg('hierarchical_kmeans', 'n_samples', '; cut or extended to the --n-clusters levels')}.")
@click.option("--n-resamples", type=int, default=None, help=f"{_cfg('hierarchical_kmeans', 'n_resamples')}")
@click.option("--metric", type=click.Choice(["cosine", "l2"]), default=None, help=f"{_cfg('hierarchical_kmeans', 'metric')}")
@click.option("--init", type=click.Choice(["kmeans++", "random"]), default=None, help=f"{_cfg('hierarchical_kmeans', 'init')}")
@click.option("--max-iters", type=int, default=None, help=f"{_cfg('hierarchical_kmeans', 'max_iters')}")
@click.option("--tol", type=float, default=None, help=f"Relative change of the centres that stops {_cfg('hierarchical_kmeans', 'tol')}.")
@click.option("--seed", type=int, default=None, help=f"{_cfg('hierarchical_kmeans', 'seed')}")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--nproc-per-node", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes per machine for torch.distributed k-means (one per GPU; gloo on CPU), via torchrun.")
@click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Machines for distributed k-means; this one is node 0 and prints the others' command.")
@click.option("--rdzv-endpoint", default=None, help="HOST:PORT of this machine for --nnodes > 1.")
@pass_ctx
@handle_errors
def cluster_command(ctx: Context, set_name: str, device: str, nproc_per_node: int, nnodes: int,
                    rdzv_endpoint: str | None, **options: Any) -> None:
    """Hierarchical k-means of an embedding set; writes centres and every image's clusters.

    An interrupted run with the same options resumes from its last finished step
    (single process) or reuses a finished distributed result.

    \b
    Examples:
        vdc-lake cluster --set rope_i_vit_b16_pn_aps_c1_pe-core --n-clusters 45000 900 90 \\
            --method resampled --n-samples 10 5 3 --n-resamples 10
        # the same on the 8 GPUs of this machine (torch.distributed, NCCL)
        vdc-lake cluster --set rope_i_vit_b16_pn_aps_c1_pe-core --n-clusters 45000 900 90 \\
            --method resampled --n-samples 10 5 3 --nproc-per-node 8
    """
    from vdc_lake.cluster import cluster

    cfg = ctx.section("hierarchical_kmeans", **options)
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
               f"in {s.seconds:.1f} s; mean level-0 distance {s.mean_distance_level0:.4f}"
               + (" (resumed)" if s.resumed_from else ""))


@cli.command("sample")
@click.option("--total", type=click.IntRange(min=1), required=True, help="Exactly how many images to select (>= 1).")
@click.option("--cluster-run", type=int, default=None, help="Clustering to sample from [newest]; a finished cluster run.")
@click.option("--allocation", type=click.Choice(["water-filling", "largest-remainder"]), default=None,
              help=f"{_cfg('hierarchical_sampling', 'allocation')}")
@click.option("--strategy", type=click.Choice(["random", "closest"]), default=None,
              help=f"Inside a leaf cluster: random, or closest to the centre {_cfg('hierarchical_sampling', 'strategy')}.")
@click.option("--seed", type=int, default=None, help=f"{_cfg('hierarchical_sampling', 'seed')}")
@pass_ctx
@handle_errors
def sample_command(ctx: Context, total: int, cluster_run: int | None, allocation: str | None, strategy: str | None,
                   seed: int | None) -> None:
    """Select exactly TOTAL images balanced down the cluster hierarchy (sample_actions view).

    \b
    Example:
        vdc-lake sample --total 2000000
        vdc-lake apply sample --backup-dir backup/sample --apply
    """
    from vdc_lake.cluster import sample

    cfg = ctx.section("hierarchical_sampling", allocation=allocation, strategy=strategy, seed=seed)
    with ctx.writer() as catalog:
        validate.check_run(catalog, cluster_run, "cluster", name="--cluster-run")
        s = sample(catalog, total, cluster_run=cluster_run, allocation=cfg["allocation"], strategy=cfg["strategy"],
                   seed=cfg["seed"])
    click.echo(f"sample run {s.run_id}: {s.total} of {s.available} clustered images selected "
               f"(cluster run {s.cluster_run}; images the pending decisions remove are left out); "
               f"{s.not_clustered} surviving images were not clustered"
               + (f"; the {s.kept_by_override} images kept by override are among them" if s.kept_by_override else ""))


# -- export and report ------------------------------------------------------------------------------

@cli.command("export")
@click.option("--output", "-o", "--to", "to_dir", required=True, type=click.Path(file_okay=False),
              help="Destination folder; created, and it must be empty unless --overwrite (--to: older name).")
@click.option("--format", "fmt", type=click.Choice(["manifest", "symlink", "hardlink", "copy", "webdataset"]),
              default=None, help="manifest: parquet + csv only; symlink/hardlink/copy: a tree per root; "
                                 f"webdataset: tar shards {_cfg('export', 'format')}.")
@click.option("--view", default="curated", show_default=True,
              help="What to export: a view, a table-macro call or a SELECT that yields image_id.")
@click.option("--shard-size-mb", type=float, default=None,
              help=f"WebDataset shard size {_cfg('export', 'shard_size_mb')}.")
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
    from vdc_lake.export import export
    from vdc_lake.status import stale_sample

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
                   f"{_cfg('report', 'thumbnails')}.")
@click.option("--page-size", type=int, default=None,
              help=f"Items per gallery page {_cfg('report', 'page_size')}.")
@click.option("--max-pages", type=int, default=None,
              help=f"Pages per gallery; longer lists say 'N of M shown' {_cfg('report', 'max_pages')}.")
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
    from vdc_lake.report import build_report

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

# -- pipelines ---------------------------------------------------------------------------------------

class _Tee(io.TextIOBase):
    """Write to the terminal and keep a copy (for the pipeline summary)."""

    def __init__(self, stream: Any):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def _invoke_step(base: list[str]) -> Callable[[list[str]], tuple[bool, str]]:
    """Run one pipeline step as `vdc-lake BASE... ARGS...`; every error becomes a failed step
    (its message shown once, as the pipeline's last line), never an exit of `run`."""
    from contextlib import redirect_stdout

    def invoke(args: list[str]) -> tuple[bool, str]:
        click.secho("$ vdc-lake " + " ".join(args), bold=True)
        tee = _Tee(sys.stdout)
        try:
            with redirect_stdout(tee):
                cli.main(args=base + args, prog_name="vdc-lake", standalone_mode=False)
            return True, tee.copy.getvalue()
        except click.ClickException as e:
            message = e.format_message()
        except click.exceptions.Exit as e:
            return e.exit_code == 0, tee.copy.getvalue()
        except click.Abort:
            message = "aborted"
        except Exception as e:  # a bug in a step: the table still shows where the pipeline stopped
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            message = error_message(e) or (f"internal error ({type(e).__name__}: {e}); "
                                           f"run the step again with {DEBUG_ENV}=1 to see the traceback")
        click.echo(f"  step failed: {message}", err=True)
        return False, message

    return invoke


def _parse_step(args: list[str]) -> None:
    """Parse a pipeline step's arguments as `vdc-lake ARGS` would, without running it."""
    from vdc_lake.errors import ConfigError

    command: click.Command = cli
    words, path = list(args), []
    while isinstance(command, click.Group):
        known = ", ".join(sorted(command.commands))
        if not words:
            raise ConfigError(f"`{' '.join(path)}` needs a subcommand: one of {known}")
        name = words.pop(0)
        if name not in command.commands:
            raise ConfigError(f"unknown command {' '.join(path + [name])!r}; known commands: {known}")
        path.append(name)
        command = command.commands[name]
    try:
        command.make_context(" ".join(path), words, parent=None)
    except click.exceptions.Exit:
        pass
    except click.ClickException as e:
        raise ConfigError(" ".join(e.format_message().split())) from e


def _resolve(words: list[str]) -> click.Command | None:
    command: click.Command | None = cli
    for word in words:
        command = command.commands.get(word) if isinstance(command, click.Group) else None
    return command


def _off_switches(command: str) -> set[str]:
    """The --no-x switches of a command ("dedup index" -> {"--no-center", "--no-l2-normalize"})."""
    found = _resolve(command.split())
    return {opt for p in (found.params if found else []) for opt in getattr(p, "secondary_opts", [])}


@cli.command("run")
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False))
@click.option("--apply", "do_apply", is_flag=True, help="Let apply steps change files (default: dry run).")
@pass_ctx
@handle_errors
def run_command(ctx: Context, pipeline: str, do_apply: bool) -> None:
    """Run the steps of a pipeline TOML file in order; stop at the first failure.

    The whole file is checked first (commands, options, pipelines that run themselves).
    In a dry run, apply steps only plan and `sql` steps that would write files are skipped.

    \b
    Example:
        vdc-lake run examples/quickstart.toml            # dry run
        vdc-lake run examples/quickstart.toml --apply
    """
    from vdc_lake.pipeline import check_pipeline, run_pipeline

    catalog = ctx.catalog_path
    settings = check_pipeline(pipeline, _parse_step, off_switches=_off_switches).get("pipeline", {})
    if not ctx.catalog_explicit and "catalog" in settings:
        catalog = str(Path(settings["catalog"]).expanduser())
        # The file's author chose this place (unlike a typed --catalog, which must exist):
        # its folder is made, and said so.
        folder = Path(catalog).parent
        if not folder.exists():
            folder.mkdir(parents=True, exist_ok=True)
            click.echo(f"note: made the catalog's folder {folder} (named in {pipeline})", err=True)
    base = (["--catalog", str(catalog)] + (["--config", ctx.config_file] if ctx.config_file else [])
            + (["--quiet"] if ctx.quiet else []))
    result = run_pipeline(pipeline, _invoke_step(base), apply=do_apply, off_switches=_off_switches,
                          note=lambda text: click.echo(f"note: {text}", err=True))
    click.echo()
    echo_table([(s.index, s.command, s.status, s.seconds, s.last_line[:80]) for s in result.steps],
               ["step", "command", "status", "seconds", "result"])
    if not result.ok:
        failed = result.steps[-1]
        raise click.ClickException(f"pipeline stopped at step {failed.index} ({failed.command}): {failed.last_line}")
    if not do_apply:
        click.echo("dry run: apply steps changed nothing; add --apply to carry them out")


def main() -> None:
    """The console script. Output piped into a reader that closes early (`| head -1`) ends
    quietly with exit 0, also when the pipe breaks only at the final flush."""
    try:
        try:
            cli(prog_name="vdc-lake")
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
        sys.exit(0)


if __name__ == "__main__":
    main()
