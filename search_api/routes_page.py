"""The web page for people: one HTML page whose script talks to the JSON API of this app."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask.typing import ResponseReturnValue

from search_api.openapi import operation

bp = Blueprint("page", __name__)


@bp.get("/")
@operation(summary="The web page for people: search by an image, filter and browse by class",
           response={"text/html": "text"}, tags=("page",))
def index() -> ResponseReturnValue:
    """Plain HTML; its script and styles come from /static and it calls only this API."""
    # Its Content-Security-Policy (scripts and styles from this app only) comes with every page.
    return render_template("index.html"), 200, {"Cache-Control": "no-cache"}
