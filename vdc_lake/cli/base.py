"""What every command shares: the Context (catalog path, effective config, quiet), the `cli` group,
option helpers, and the one place typed errors become one `Error:` line."""

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
from vdc_lake.catalog.connection import Catalog, DEFAULT_CATALOG
from vdc_lake.config import rules as validate
from vdc_lake.config.loader import Config
from vdc_lake.errors import VdcLakeError, disk_full_error


_BUNDLED = Config.bundled().values


def config_help(section: str, key: str, note: str = "") -> str:
    """'[config SECTION.KEY: VALUE]' for a --help text, VALUE from defaults.toml (defined once there)."""
    value = _BUNDLED[section][key]
    shown = json.dumps(value) if isinstance(value, (bool, list)) or value == "" else str(value)
    return f"[config {section}.{key}: {shown}{note}]"


class Context:
    """What every command needs: the catalog path, the effective config, quiet mode.

    --catalog, --config and -q are accepted before or after the command name (the later one
    wins), so the config is read on first use, once every option is known, and checked
    against vdc_lake.config.rules's rules.
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
        vdc_lake.config.rules: a bad value is named by its option (--min-width, or `names`) when it
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
        files: the user's own SQL may read and write files (see vdc_lake.catalog.connection)."""
        from vdc_lake.catalog.settings import changed_note, record_settings

        catalog = Catalog(self.catalog_path, create=create, scale=self.config.values["scale"], files=files)
        try:
            self._note(changed_note(record_settings(catalog, self.config)))
        except BaseException:
            catalog.close()
            raise
        return catalog

    def reader(self, *, files: bool = False) -> Catalog:
        """Open read-only, after recording the effective config as the catalog's settings when
        it differs and no other command holds the catalog (see vdc_lake.catalog.settings)."""
        from vdc_lake.catalog.sync import sync_settings

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


def stdout_to_devnull() -> None:
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
                stdout_to_devnull()  # the reader of our output left (`| head -1`): nothing more to say
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


HELP_OPTION_NAMES = ["-h", "--help"]


@click.group(cls=Group, context_settings={"help_option_names": HELP_OPTION_NAMES, "max_content_width": 100})
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
