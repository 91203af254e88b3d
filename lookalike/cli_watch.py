"""`lookalike watch`: keep the catalog in step with the library as files come, change, move and go."""

from __future__ import annotations

import os

import click

from lookalike.cli_index import configured_roots, stop_on_interrupt
from lookalike.context import CliContext


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(file_okay=False, readable=False), metavar="[PATHS]...")
@click.option("--parent-pid", type=int, default=None, hidden=True,
              help="End when this process ends (the server that started this watcher).")
@click.pass_obj
def watch(obj: CliContext, paths: tuple[str, ...], parent_pid: int | None) -> None:
    """Keep the catalog in step with PATHS (default: indexer.roots) until stopped.

    Scans the folders in full, then follows file-system events: new and changed photos are
    indexed once they are completely written, moved ones keep their vectors, deleted ones are
    removed. A folder that disappears (an unmounted disk) removes nothing and is scanned again
    when it returns. Servers show new photos within seconds. An index run started meanwhile is
    refused (or waits, with --wait). Ctrl-C stops it.

    \b
    Examples:
      lookalike watch ~/Pictures
      lookalike watch                                   # the folders listed in indexer.roots
    """
    from indexer.lifeline import die_with_parent
    from indexer.model import Embedder, ModelUnavailableError, configured_model_id
    from indexer.watcher import Watcher
    from storage.lock import LockedError
    from storage.vector_index import IndexMismatchError, IndexWriteError

    if parent_pid is not None:
        die_with_parent(parent_pid)
    settings = obj.settings
    roots = paths or configured_roots(settings)
    for root in roots:
        if not os.path.isdir(root):
            click.echo(f"warning: {root} is not a folder now: it is watched for and indexed when it appears",
                       err=True)
    m = settings.model
    watcher = Watcher(settings, roots, configured_model_id(m), lambda: Embedder.from_settings(m))
    try:
        with stop_on_interrupt(watcher, announce=False):
            watcher.run()
    except (LockedError, ModelUnavailableError, IndexMismatchError, IndexWriteError) as exc:
        raise click.ClickException(str(exc)) from None
