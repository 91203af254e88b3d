"""RFC 9457 problem details: one shape for every error response, never a traceback."""

from __future__ import annotations

import logging
from http import HTTPStatus

from flask import Flask, Response, json, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ApiProblem(Exception):
    """Raise from a view to answer with a problem response."""

    def __init__(self, status: int, detail: str, code: str, **extra: object) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.extra = extra


def problem_response(status: int, detail: str, code: str, **extra: object) -> Response:
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": request.path,
        **extra,
    }
    return Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiProblem)
    def _api_problem(exc: ApiProblem) -> Response:
        return problem_response(exc.status, exc.detail, exc.code, **exc.extra)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        detail = exc.description or HTTPStatus(status).description
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            detail = f"request body is larger than the limit of {limit:,} bytes (api.max_upload_mb)"
        response = problem_response(status, detail, HTTPStatus(status).phrase.lower().replace(" ", "_"))
        allowed = getattr(exc, "valid_methods", None)
        if allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(500, "internal error; the server log has the details", "internal_error")
