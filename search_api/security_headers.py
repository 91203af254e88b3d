"""Headers every response carries, set in one place: what it is, where it may be shown, what it may run.

HTML pages (the web page and the API docs) load scripts, styles and images from this server only
and cannot be framed; everything else (JSON, problems, images, scripts, metrics) may run nothing
at all. A route that sets one of these headers itself keeps its own value.
"""

from __future__ import annotations

from flask import Flask, Response

# Images may also come from object URLs of files the person picked (the query preview).
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
# Swagger UI colours the examples and answers it shows by setting style attributes: the docs page
# allows inline styles (never inline scripts) so that they keep their colours.
DOCS_POLICY = PAGE_POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
NOTHING_POLICY = "default-src 'none'; frame-ancestors 'none'; sandbox"
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def init_app(app: Flask) -> None:
    @app.after_request
    def _security_headers(response: Response) -> Response:
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Content-Security-Policy",
                                    PAGE_POLICY if response.mimetype == "text/html" else NOTHING_POLICY)
        return response
