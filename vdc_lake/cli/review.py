"""`vdc-lake review`: the review web app over the catalog."""

from __future__ import annotations

from pathlib import Path

import click

from vdc_lake.cli.base import Context, cli, config_help, handle_errors, pass_ctx
from vdc_lake.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@cli.command("review")
@click.option("--port", type=int, default=None, help=f"Port to listen on {config_help('review', 'port')}.")
@click.option("--host", default=None, help=f"Address to bind {config_help('review', 'host')}; another than the "
                                           "loopback needs --allow-remote.")
@click.option("--allow-remote", is_flag=True,
              help="Allow a --host other hosts can reach; every request must then carry the token printed at start.")
@click.option("--thumbs", "thumbs_dir", type=click.Path(file_okay=False), default=None,
              help="Folder that caches thumbnails between runs [a new temporary folder].")
@pass_ctx
@handle_errors
def review_command(ctx: Context, port: int | None, host: str | None, allow_remote: bool,
                   thumbs_dir: str | None) -> None:
    """Review the decisions in the browser: the funnel, every planned removal (removed image beside
    the one it loses to), clusters, each image's history, applied runs, a threshold explorer and
    label mode. Keep, drop or clear images (one, a selection, a group, a cluster): each action is
    one override run, as `vdc-lake override` writes it. The catalog is opened per request, so
    other commands run meanwhile. Binds 127.0.0.1 unless --allow-remote; Ctrl-C stops it.

    \b
    Example:
        vdc-lake review
        vdc-lake review --port 9000
        vdc-lake review --host 0.0.0.0 --allow-remote   # prints a URL with the token
    """
    from vdc_lake.review.app.server import serve

    host = ctx.get("review", "host", host, "--host")
    port = int(ctx.get("review", "port", port, "--port"))
    if host not in LOOPBACK and not allow_remote:
        raise ConfigError(f"--host {host} lets other hosts reach the review app; add --allow-remote to do so "
                          "(every request must then carry the printed token), or leave --host out for 127.0.0.1")
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port} is not a port; give 1-65535 (e.g. 8765)")
    with ctx.reader():  # the catalog exists and its settings are the effective config
        pass
    serve(Path(ctx.catalog_path), ctx.config, host=host, port=port, allow_remote=allow_remote,
          thumbs_dir=Path(thumbs_dir) if thumbs_dir else None, echo=click.echo)
