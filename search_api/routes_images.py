"""Indexed images: metadata, the original file, and catalog statistics."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterator
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, send_file
from flask.typing import ResponseReturnValue

from indexer.images import ImageRejected
from indexer.thumbnails import DEFAULT_THUMBNAIL_SIZE, ensure_thumbnail
from search_api import schemas
from search_api.openapi import operation
from search_api.problems import ApiProblem
from search_api.results import image_json
from search_api.service import SearchService
from storage.catalog import ImageRecord
from storage.label_queries import labels_of_images

bp = Blueprint("images", __name__, url_prefix="/api/v1")


def service() -> SearchService:
    return current_app.extensions["lookalike"]


def _record(image_id: int) -> ImageRecord:
    record = service().image(image_id)
    if record is None:
        raise ApiProblem(404, f"no indexed image has id {image_id}", "unknown_image")
    return record


@bp.get("/images/<int:image_id>")
@operation(summary="Metadata of an indexed image: paths, size, dimensions, format, top-5 labels, custom labels",
           response=schemas.ImageDetails, problems=(404,), tags=("images",),
           path_params={"image_id": "catalog id of the image"})
def image(image_id: int) -> ResponseReturnValue:
    svc = service()
    custom = labels_of_images(svc.catalog, [image_id], svc.model_id).get(image_id, [])
    return jsonify(image_json(_record(image_id), custom))


def _inside_indexed_root(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real.startswith(os.path.realpath(root) + os.sep) for root in roots)


def _library_paths(record: ImageRecord) -> Iterator[str]:
    """The record's files that really lie inside an indexed folder (symlinks resolved)."""
    roots = service().catalog.roots()
    return (path for path in record.paths if _inside_indexed_root(path, roots))


def _send(path: str | Path, mimetype: str, max_age: int) -> Response:
    response = send_file(path, mimetype=mimetype, conditional=True, max_age=max_age)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _file_missing(image_id: int) -> ApiProblem:
    return ApiProblem(404, f"the file of image {image_id} is no longer in the library", "file_missing")


@bp.get("/images/<int:image_id>/file")
@operation(summary="The original file of an indexed image (only from inside an indexed folder)",
           response={"image/*": "binary"}, problems=(404,), tags=("images",),
           path_params={"image_id": "catalog id of the image"})
def image_file(image_id: int) -> ResponseReturnValue:
    for path in _library_paths(_record(image_id)):
        if os.path.isfile(path):
            mimetype = mimetypes.guess_type(path)[0] or "application/octet-stream"
            return _send(os.path.realpath(path), mimetype, max_age=3600)
    raise _file_missing(image_id)


@bp.get("/images/<int:image_id>/thumbnail")
@operation(summary="A small upright WebP preview of an indexed image, without metadata",
           response={"image/webp": "binary"}, problems=(404,), tags=("images",),
           path_params={"image_id": "catalog id of the image"})
def image_thumbnail(image_id: int) -> ResponseReturnValue:
    """A small WebP preview (upright, without metadata), made on first request if the indexer wrote none."""
    settings = service().settings
    record = _record(image_id)
    for path in _library_paths(record):
        try:
            thumb = ensure_thumbnail(settings.storage.data_dir, record.content_hash, Path(path),
                                     settings.indexer.thumbnail_size or DEFAULT_THUMBNAIL_SIZE,
                                     settings.indexer.max_image_pixels)
        except (OSError, ImageRejected):
            continue
        return _send(thumb, "image/webp", max_age=86400)
    raise _file_missing(image_id)


@bp.get("/stats")
@operation(summary="Catalog and index counts, index generation, model", response=schemas.Stats, tags=("meta",))
def stats() -> ResponseReturnValue:
    return jsonify(service().stats())
