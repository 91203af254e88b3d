"""Run the API under gunicorn: each worker builds its app and loads the model after the fork."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from indexer.settings import Settings
from search_api.app import create_app

log = logging.getLogger(__name__)


def build_worker_app(settings: Settings) -> Flask:
    """The app one worker serves, with the model warmed up before it takes requests."""
    app = create_app(settings)
    app.extensions["lookalike"].warm_up()
    return app


class LookalikeServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, host: str, port: int, workers: int) -> None:
        self.settings = settings
        self.options = {
            "bind": f"{host}:{port}",
            "workers": workers,
            "worker_class": "gthread",
            "threads": settings.api.threads,
            # Loading the model takes a while; do not let the arbiter kill a worker that is warming up.
            "timeout": 300,
            "preload_app": False,
            "accesslog": "-",
            "loglevel": settings.logging.level.lower(),
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return build_worker_app(self.settings)


def serve(settings: Settings, host: str, port: int, workers: int) -> None:
    log.info("serving on http://%s:%d with %d worker(s)", host, port, workers)
    LookalikeServer(settings, host, port, workers).run()
