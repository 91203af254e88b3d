"""The web page for people: one HTML page whose script talks to the JSON API of this app."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask.typing import ResponseReturnValue

bp = Blueprint("page", __name__)

# The page loads nothing from elsewhere: scripts and styles from this app only, images from this
# app or from object URLs of files the person picked (the query preview).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


@bp.get("/")
def index() -> ResponseReturnValue:
    return render_template("index.html"), 200, {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-cache",
    }
