"""Every response says what it is and where it may be shown: nosniff, no framing, a Content-Security-Policy."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient
from helpers import RED, colour_image, jpeg, search

PATHS = ["/healthz", "/api/v1/stats", "/api/v1/images/1", "/api/v1/images/1/file", "/api/v1/images/1/thumbnail",
         "/api/v1/openapi.json", "/api/v1/nothing-here", "/metrics", "/", "/api/v1/docs/", "/static/page.js"]


@pytest.mark.parametrize("path", PATHS)
def test_every_response_carries_the_security_headers(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (200, 404), response.status_code
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    policy = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy
    if response.mimetype != "text/html":
        assert "default-src 'none'" in policy


def test_uploads_and_errors_carry_them_too(client: FlaskClient) -> None:
    for response in (search(client, jpeg(colour_image(RED))), search(client, b"not an image"),
                     client.get("/api/v1/search")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]


@pytest.mark.parametrize("path", ["/", "/api/v1/docs/"])
def test_pages_run_only_scripts_from_this_server(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    policy = dict(part.strip().split(" ", 1) for part in response.headers["Content-Security-Policy"].split(";"))
    assert policy["script-src"] == "'self'" and policy["object-src"] == "'none'"
    # Swagger UI colours what it shows with style attributes; the web page needs none.
    assert policy["style-src"] == ("'self' 'unsafe-inline'" if "docs" in path else "'self'")
    assert "unsafe" not in policy["default-src"] + policy["script-src"]
    page = response.get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page), "an inline script would be blocked"
    assert not re.search(r"\son[a-z]+=", page), "an inline event handler would be blocked"
