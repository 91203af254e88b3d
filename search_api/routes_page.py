"""The web page for people: one HTML page whose script talks to the JSON API of this app."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask.typing import ResponseReturnValue

from search_api.openapi import operation

bp = Blueprint("page", __name__)

# The page loads nothing from elsewhere: scripts and styles from this app only, images from this
# app or from object URLs of files the person picked (the query preview).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


@bp.get("/")
@operation(summary="The web page for people: search by an image, filter and browse by class",
           response={"text/html": "text"}, tags=("page",))
def index() -> ResponseReturnValue:
    """Plain HTML; its script and styles come from /static and it calls only this API."""
    return render_template("index.html"), 200, {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-cache",
    }
