"""The command line: click commands that parse options, call one library function and print.

Each family of commands is one module; importing this package registers them all on `cli`.
"""

from __future__ import annotations

import sys

from vdc_lake.cli import ingest, inspect, decide, overrides, predict, dedup, cluster, export, run, review, labels  # noqa: F401,E501 - registers the commands
from vdc_lake.cli.base import cli, stdout_to_devnull

__all__ = ["cli", "main"]


def main() -> None:
    """The console script. Output piped into a reader that closes early (`| head -1`) ends
    quietly with exit 0, also when the pipe breaks only at the final flush."""
    try:
        try:
            cli(prog_name="vdc-lake")
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        stdout_to_devnull()
        sys.exit(0)
