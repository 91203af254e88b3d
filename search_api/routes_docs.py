"""The OpenAPI description and an interactive docs page that works offline (Swagger UI served locally)."""

from __future__ import annotations

from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue
from flask_swagger_ui import get_swaggerui_blueprint

from search_api.openapi import build_spec, operation

bp = Blueprint("docs", __name__, url_prefix="/api/v1")
SPEC_URL = "/api/v1/openapi.json"
DOCS_URL = "/api/v1/docs"


@bp.get("/openapi.json")
@operation(summary="This OpenAPI 3.1 description", response={"application/json": "object"}, tags=("meta",))
def openapi_json() -> ResponseReturnValue:
    """Generated from the registered routes at first request, then kept."""
    spec = current_app.extensions.get("lookalike_openapi")
    if spec is None:
        spec = build_spec(current_app, current_app.extensions["lookalike"].settings)
        current_app.extensions["lookalike_openapi"] = spec
    return jsonify(spec)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    # Swagger UI's assets ship inside the flask-swagger-ui package: no CDN, works without internet.
    app.register_blueprint(get_swaggerui_blueprint(DOCS_URL, SPEC_URL, config={"app_name": "lookalike API"}))
