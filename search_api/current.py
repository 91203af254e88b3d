"""The search engine of the running app: the one place that knows where the app keeps it.

Views, hooks and the server reach the engine through these functions, never through
`app.extensions` directly. The engine's module is imported for its type only: it imports the
metrics, which hold a view that needs the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from flask import Flask, current_app

if TYPE_CHECKING:
    from search_api.service import SearchService

EXTENSION = "lookalike"


def install_service(app: Flask, service: SearchService) -> None:
    app.extensions[EXTENSION] = service


def service_of(app: Flask) -> SearchService:
    """The engine of `app` (one per worker process, shared by its request threads)."""
    return cast("SearchService", app.extensions[EXTENSION])


def current_service() -> SearchService:
    """The engine of the app handling the current request."""
    return service_of(current_app)
