"""Indexed images: metadata, the original file, and catalog statistics."""

from __future__ import annotations

import mimetypes
import os

from flask import Blueprint, current_app, jsonify, send_file
from flask.typing import ResponseReturnValue

from search_api.problems import ApiProblem
from search_api.results import image_json
from search_api.service import SearchService

bp = Blueprint("images", __name__, url_prefix="/api/v1")


def service() -> SearchService:
    return current_app.extensions["lookalike"]


def _record(image_id: int):  # type: ignore[no-untyped-def]
    record = service().image(image_id)
    if record is None:
        raise ApiProblem(404, f"no indexed image has id {image_id}", "unknown_image")
    return record


@bp.get("/images/<int:image_id>")
def image(image_id: int) -> ResponseReturnValue:
    return jsonify(image_json(_record(image_id)))


def _inside_indexed_root(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real.startswith(os.path.realpath(root) + os.sep) for root in roots)


@bp.get("/images/<int:image_id>/file")
def image_file(image_id: int) -> ResponseReturnValue:
    record = _record(image_id)
    roots = service().catalog.roots()
    for path in record.paths:
        if _inside_indexed_root(path, roots) and os.path.isfile(path):
            mimetype = mimetypes.guess_type(path)[0] or "application/octet-stream"
            response = send_file(os.path.realpath(path), mimetype=mimetype, conditional=True, max_age=3600)
            response.headers["X-Content-Type-Options"] = "nosniff"
            return response
    raise ApiProblem(404, f"the file of image {image_id} is no longer in the library", "file_missing")


@bp.get("/stats")
def stats() -> ResponseReturnValue:
    return jsonify(service().stats())
