"""What every `lookalike` subcommand shares: the settings (loaded once, lazily) and logging set-up."""

from __future__ import annotations

import errno
import json
import logging
import socket
import sys
from typing import Any

import click

from indexer.settings import Settings
from storage.paths import printable


def human(text: object) -> str:
    """`text` for a person's terminal: control characters (ESC, BEL, BS, newlines...), bidi overrides
    and undecodable bytes of file names shown as escapes. Every human-output line that may hold a
    file name goes through this; JSON output does not (it is exact, see storage.paths.display_path)."""
    return printable(str(text))


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
        click.echo(f"{key:>{width}}: {human(value)}")


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
        from indexer.catalog_crop import keep_catalog_crop
        from indexer.settings import SettingsError, load_settings

        if self._settings is None:
            try:
                loaded = load_settings(self.config)
            except SettingsError as exc:
                raise click.ClickException(str(exc)) from None
            configure_logging(loaded.logging.level, self.verbose)
            self._settings = keep_catalog_crop(loaded)
        return self._settings


class IntUpToSetting(click.ParamType):
    """An integer from `low` up to the value of a setting ("section.key") in the settings in effect.

    The bound is read when the option is parsed, after `--config`, so it follows the config file
    and the environment; the error is click's own range message.
    """

    name = "integer"

    def __init__(self, low: int, setting: str) -> None:
        self.low = low
        self.section, self.key = setting.split(".")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        obj = ctx.find_object(CliContext) if ctx is not None else None
        settings = obj.settings if obj is not None else Settings()
        high = getattr(getattr(settings, self.section), self.key)
        return int(click.IntRange(self.low, high).convert(value, param, ctx))


def check_port_free(host: str, port: int) -> None:
    """Fail at once, with one line naming the port, when nothing could listen on host:port."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise click.ClickException(f"cannot listen on {host}: {exc.strerror} (api.host or --host)") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise click.ClickException(
                    f"port {port} on {host} is already in use: choose another with --port (api.port, "
                    f"LOOKALIKE_API__PORT; `make demo PORT={port + 1}`)") from None
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
