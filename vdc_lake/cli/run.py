"""Pipelines: the run command (a TOML list of commands, see vdc_lake.cli.pipeline)."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from vdc_lake.cli.base import Context, DEBUG_ENV, HELP_OPTION_NAMES, cli, echo_table, error_message, handle_errors, pass_ctx


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


def parse_step(args: list[str]) -> None:
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
        # the group's help names: click caches a command's help option on its first context
        command.make_context(" ".join(path), words, parent=None, help_option_names=HELP_OPTION_NAMES)
    except click.exceptions.Exit:
        pass
    except click.ClickException as e:
        raise ConfigError(" ".join(e.format_message().split())) from e


def _resolve(words: list[str]) -> click.Command | None:
    command: click.Command | None = cli
    for word in words:
        command = command.commands.get(word) if isinstance(command, click.Group) else None
    return command


def off_switches(command: str) -> set[str]:
    """The --no-x switches of a command ("dedup index" -> {"--no-center", "--no-l2-normalize"})."""
    found = _resolve(command.split())
    return {opt for p in (found.params if found else []) for opt in getattr(p, "secondary_opts", [])}


RESULT_WIDTH = 80  # characters of a step's last line in the summary table (its whole output is above it)


def whole_words(text: str, width: int) -> str:
    """text cut to at most width characters at a space, marked with "..." when cut (never
    mid-word; a single word longer than width is cut where it must be)."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    cut = text.rfind(" ", 0, width - 3)
    return (text[:cut] if cut > 0 else text[:width - 3]).rstrip(" ,;:") + "..."


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
    from vdc_lake.cli.pipeline import check_pipeline, run_pipeline

    catalog = ctx.catalog_path
    settings = check_pipeline(pipeline, parse_step, off_switches=off_switches).get("pipeline", {})
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
    result = run_pipeline(pipeline, _invoke_step(base), apply=do_apply, off_switches=off_switches,
                          note=lambda text: click.echo(f"note: {text}", err=True))
    click.echo()
    echo_table([(s.index, s.command, s.status, s.seconds, whole_words(s.last_line, RESULT_WIDTH))
                for s in result.steps],
               ["step", "command", "status", "seconds", "result"])
    if not result.ok:
        failed = result.steps[-1]
        raise click.ClickException(f"pipeline stopped at step {failed.index} ({failed.command}): {failed.last_line}")
    if not do_apply:
        click.echo("dry run: apply steps changed nothing; add --apply to carry them out")
