"""Flask application factory: no model loading or I/O at import time."""

from __future__ import annotations

from flask import Flask
from flask.json.provider import DefaultJSONProvider
from werkzeug.routing import IntegerConverter

from indexer.settings import Settings, load_settings
from search_api import (
    access,
    class_counts,
    duplicate_groups,
    label_jobs,
    metrics,
    problems,
    request_body,
    routes_browse,
    routes_docs,
    routes_duplicates,
    routes_health,
    routes_images,
    routes_jobs,
    routes_labels,
    routes_page,
    routes_search,
    routes_session,
    routes_uploads,
    security_headers,
)
from search_api.current import install_service
from search_api.service import SearchService
from search_api.upload_decoder import upload_decoder


class AsciiIntegerConverter(IntegerConverter):
    """`<int:...>` in ASCII digits only: werkzeug's `\\d+` also matches other scripts' digits ("\\u0663")."""

    regex = r"[0-9]+"


def create_app(settings: Settings | None = None) -> Flask:
    """The HTTP API for `settings` (default: config file and environment, as the CLI reads them)."""
    settings = settings or load_settings()
    app = Flask(__name__)
    # Bodies within the size limit, chunked or not, and within the worker's memory for bodies.
    request_body.init_app(app, request_body.BodyBudget(settings.api.upload_memory_mb * 2**20,
                                                       settings.api.queue_timeout))
    app.url_map.converters["int"] = AsciiIntegerConverter  # before any route is added
    app.config["MAX_CONTENT_LENGTH"] = int(settings.api.max_upload_mb * 1024 * 1024)
    app.config["MAX_FORM_PARTS"] = settings.api.max_form_parts
    if isinstance(app.json, DefaultJSONProvider):  # Flask's own, unless a subclass chose another
        app.json.sort_keys = False
    service = SearchService(settings, upload_decoder(settings.api))
    install_service(app, service)
    class_counts.init_app(app, service)
    duplicate_groups.init_app(app, service)
    label_jobs.init_app(app, service)
    problems.init_app(app)
    security_headers.init_app(app)
    metrics.init_app(app)
    access.init_app(app)  # after the metrics' timer: refused requests are counted too
    for bp in (routes_search.bp, routes_images.bp, routes_browse.bp, routes_labels.bp, routes_duplicates.bp,
               routes_health.bp, routes_page.bp, routes_session.bp, routes_uploads.bp, routes_jobs.bp,
               routes_jobs.activity_bp):
        app.register_blueprint(bp)
    routes_docs.init_app(app)
    return app
