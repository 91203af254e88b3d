"""The OpenAPI description and an interactive docs page that works offline (Swagger UI served locally)."""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Flask, current_app, jsonify, render_template, send_from_directory
from flask.typing import ResponseReturnValue

from search_api.current import current_service
from search_api.openapi import build_spec, operation
from search_api.security_headers import DOCS_POLICY

bp = Blueprint("docs", __name__, url_prefix="/api/v1")
SPEC_URL = "/api/v1/openapi.json"
DOCS_URL = "/api/v1/docs"


@bp.get("/openapi.json")
@operation(summary="This OpenAPI 3.1 description", response={"application/json": "object"}, tags=("meta",))
def openapi_json() -> ResponseReturnValue:
    """Generated from the registered routes at first request, then kept."""
    spec = current_app.extensions.get("lookalike_openapi")
    if spec is None:
        spec = build_spec(current_app, current_service().settings)
        current_app.extensions["lookalike_openapi"] = spec
    return jsonify(spec)


# Swagger UI's assets ship inside the flask-swagger-ui package: no CDN, works without internet. Its
# own page starts Swagger UI with an inline script, which the pages' Content-Security-Policy
# forbids: this page starts it from static/docs.js instead.
SWAGGER_ASSETS = Path(flask_swagger_ui.__file__).parent / "dist"
page = Blueprint("swagger_ui", __name__, url_prefix=DOCS_URL)


@page.get("/")
def docs_page() -> ResponseReturnValue:
    return render_template("docs.html", spec_url=SPEC_URL), 200, {"Content-Security-Policy": DOCS_POLICY}


@page.get("/<path:filename>")
def asset(filename: str) -> ResponseReturnValue:
    return send_from_directory(SWAGGER_ASSETS, filename, max_age=86400)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.register_blueprint(page)
