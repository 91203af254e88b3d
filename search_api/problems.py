"""RFC 9457 problem details: one shape for every error response, never a traceback.

Every status has a fixed title and `code` (search_api.http_status), and every known domain error
has its status and code here, in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, Response, json, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from indexer.model import ModelUnavailableError
from search_api.busy import ServerBusy
from search_api.current import service_of
from search_api.http_status import status_code, status_title
from storage.errors import (
    CatalogBusyError,
    CatalogDamagedError,
    CatalogError,
    CatalogFullError,
    CatalogMissingError,
    CatalogUnavailableError,
    DamagedVectorError,
)
from storage.lock import LockedError
from storage.paths import printable
from storage.vector_index import IndexDamagedError, IndexMismatchError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# A catalog that cannot be used answers 503 (the server itself is fine) with one of these codes.
CATALOG_CODES: dict[type[CatalogError], str] = {
    CatalogMissingError: "no_catalog",
    DamagedVectorError: "damaged_vector",
    CatalogDamagedError: "catalog_damaged",
    CatalogFullError: "catalog_full",
}


@dataclass(frozen=True)
class DomainProblem:
    status: int
    code: str
    # What the client is told; None: the exception's own message, which already says what to do.
    detail: str | None = None
    retry_after: int | None = None


# Errors of the search engine underneath the routes, each with the answer it deserves.
DOMAIN_PROBLEMS: dict[type[Exception], DomainProblem] = {
    IndexMismatchError: DomainProblem(503, "model_mismatch"),
    IndexDamagedError: DomainProblem(503, "index_damaged", "the index answered impossible scores and could not be "
                                     "rebuilt from the catalog; run `lookalike verify`, then `lookalike rebuild`"),
    ModelUnavailableError: DomainProblem(503, "model_unavailable"),
    # Host names and credentials in the driver's message are for the log, not for clients.
    OperationalError: DomainProblem(503, "catalog_unavailable", "the catalog database cannot be reached or is "
                                    "busy; the server log has the details", retry_after=5),
    ServerBusy: DomainProblem(503, "server_busy", retry_after=2),
    # An upload or removal waited api.write_wait_seconds for an indexer or watcher (the pid is for the log).
    LockedError: DomainProblem(503, "catalog_busy", "an indexer or watcher is writing to the catalog "
                               "(api.write_wait_seconds passed); try again shortly", retry_after=5),
}


class ApiProblem(Exception):
    """Raise from a view to answer with a problem response."""

    def __init__(self, status: int, detail: str, code: str, **extra: object) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.extra = extra


def problem_body(status: int, detail: str, code: str, **extra: object) -> dict[str, object]:
    """The RFC 9457 members of a problem; also used for the per-item errors of a batch."""
    return {
        "type": "about:blank",
        "title": status_title(status),
        "status": status,
        "detail": detail,
        "code": code,
        "instance": request.path,
        **extra,
    }


def problem_response(status: int, detail: str, code: str, **extra: object) -> Response:
    body = problem_body(status, detail, code, **extra)
    return Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiProblem)
    def _api_problem(exc: ApiProblem) -> Response:
        return problem_response(exc.status, exc.detail, exc.code, **exc.extra)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        detail = exc.description or status_title(status)
        if status == 413:
            detail = _too_large_detail(app)
        response = problem_response(status, detail, status_code(status))
        allowed = getattr(exc, "valid_methods", None)
        if allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response

    for kind, problem in DOMAIN_PROBLEMS.items():
        app.register_error_handler(kind, _domain_handler(problem))

    @app.errorhandler(CatalogError)
    def _catalog_error(exc: CatalogError) -> Response:
        if isinstance(exc, CatalogUnavailableError | CatalogBusyError):
            # Host names and credentials in the message are for the log, not for clients.
            return _domain_handler(DOMAIN_PROBLEMS[OperationalError])(exc)
        return problem_response(503, _catalog_detail(app, exc), CATALOG_CODES.get(type(exc), "catalog_unavailable"))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, printable(request.path))
        return problem_response(500, "internal error; the server log has the details", "internal_error")


def _domain_handler(problem: DomainProblem) -> Callable[[Exception], Response]:
    def handle(exc: Exception) -> Response:
        log.warning("%s %s: %s (%s)", request.method, printable(request.path), problem.code, exc)
        response = problem_response(problem.status, problem.detail or str(exc), problem.code)
        if problem.retry_after is not None:
            response.headers["Retry-After"] = str(problem.retry_after)
        return response

    return handle


def _too_large_detail(app: Flask) -> str:
    """Werkzeug raises the same 413 for a body over the size limit and for too many multipart parts."""
    limit = app.config.get("MAX_CONTENT_LENGTH")
    length = request.content_length
    if limit is not None and (length is None or length > limit):
        return f"request body is larger than the limit of {limit:,} bytes (api.max_upload_mb)"
    parts = app.config.get("MAX_FORM_PARTS")
    return (f"the multipart body has more than {parts} parts (api.max_form_parts), "
            "or a form field larger than the form memory limit")


def _catalog_detail(app: Flask, exc: CatalogError) -> str:
    detail = str(exc)
    if isinstance(exc, CatalogMissingError):
        detail += f" (storage.data_dir: {service_of(app).settings.storage.data_dir.resolve()})"
    log.error("%s %s: %s", request.method, request.path, detail)
    return detail
