"""Title and problem `code` of every HTTP error status, fixed here rather than taken from http.HTTPStatus.

Python renames phrases between versions (3.13 calls 413 "Content Too Large" and 422 "Unprocessable
Content"), and the codes are part of the API. This module imports nothing else of lookalike: the
gunicorn worker uses it in processes that never load the app.
"""

from __future__ import annotations

# status: (title, code). The codes are part of the API: never derive them from http.HTTPStatus.
STATUS_TITLES: dict[int, tuple[str, str]] = {
    400: ("Bad Request", "bad_request"),
    401: ("Unauthorized", "unauthorized"),
    403: ("Forbidden", "forbidden"),
    404: ("Not Found", "not_found"),
    405: ("Method Not Allowed", "method_not_allowed"),
    406: ("Not Acceptable", "not_acceptable"),
    408: ("Request Timeout", "request_timeout"),
    409: ("Conflict", "conflict"),
    410: ("Gone", "gone"),
    411: ("Length Required", "length_required"),
    412: ("Precondition Failed", "precondition_failed"),
    413: ("Request Entity Too Large", "request_entity_too_large"),
    414: ("URI Too Long", "uri_too_long"),
    415: ("Unsupported Media Type", "unsupported_media_type"),
    416: ("Requested Range Not Satisfiable", "requested_range_not_satisfiable"),
    417: ("Expectation Failed", "expectation_failed"),
    422: ("Unprocessable Entity", "unprocessable_entity"),
    428: ("Precondition Required", "precondition_required"),
    429: ("Too Many Requests", "too_many_requests"),
    431: ("Request Header Fields Too Large", "request_header_fields_too_large"),
    500: ("Internal Server Error", "internal_server_error"),
    501: ("Not Implemented", "not_implemented"),
    502: ("Bad Gateway", "bad_gateway"),
    503: ("Service Unavailable", "service_unavailable"),
    504: ("Gateway Timeout", "gateway_timeout"),
    505: ("HTTP Version Not Supported", "http_version_not_supported"),
}


def status_title(status: int) -> str:
    return STATUS_TITLES.get(status, ("Error", ""))[0]


def status_code(status: int) -> str:
    """The problem `code` of an error that has no more specific one."""
    return STATUS_TITLES.get(status, ("", f"http_{status}"))[1]
