"""What every `lookalike` subcommand shares: the settings (loaded once, lazily) and logging set-up."""

from __future__ import annotations

import json
import logging
import sys

import click

from indexer.settings import Settings


def configure_logging(level: str, verbose: int) -> None:
    chosen = "DEBUG" if verbose else level
    logging.basicConfig(level=chosen, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quiet = logging.DEBUG if verbose else logging.ERROR
    for noisy in ("absl", "tensorflow", "h5py", "alembic", "faiss"):
        logging.getLogger(noisy).setLevel(quiet)


def echo_mapping(data: dict[str, object], as_json: bool) -> None:
    """A report as one JSON object, or as aligned `key: value` lines for people."""
    if as_json:
        click.echo(json.dumps(data))
        return
    width = max(len(key) for key in data)
    for key, value in data.items():
        click.echo(f"{key:>{width}}: {value}")


class CliContext:
    def __init__(self, config: str | None, verbose: int) -> None:
        self.config = config
        self.verbose = verbose
        self._settings: Settings | None = None

    @property
    def loaded(self) -> Settings | None:
        """The settings if a command has loaded them already (never loads them)."""
        return self._settings

    @property
    def settings(self) -> Settings:
        from indexer.settings import SettingsError, load_settings

        if self._settings is None:
            try:
                self._settings = load_settings(self.config)
            except SettingsError as exc:
                raise click.ClickException(str(exc)) from None
            configure_logging(self._settings.logging.level, self.verbose)
        return self._settings
