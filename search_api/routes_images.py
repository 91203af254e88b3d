"""Indexed images: metadata, the original file, and catalog statistics."""

from __future__ import annotations

import io
import logging
import mimetypes
import os
from typing import BinaryIO

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.http import http_date
from werkzeug.wrappers import Response
from werkzeug.wsgi import wrap_file

from indexer.library_files import UNREADABLE, LibraryFileError, open_beneath
from indexer.thumbnails import ThumbnailUnavailable, thumbnail_for
from search_api import schemas
from search_api.current import current_service
from search_api.headers import content_disposition
from search_api.openapi import operation
from search_api.problems import ApiProblem
from search_api.results import image_json
from storage.catalog import FileRef, ImageRecord
from storage.label_queries import labels_of_images
from storage.paths import display_path, printable

log = logging.getLogger(__name__)

bp = Blueprint("images", __name__, url_prefix="/api/v1")


def _record(image_id: int) -> ImageRecord:
    record = current_service().image(image_id)
    if record is None:
        raise ApiProblem(404, f"no indexed image has id {image_id}", "unknown_image")
    return record


@bp.get("/images/<int:image_id>")
@operation(summary="Metadata of an indexed image: paths, size, dimensions, format, top-5 labels, custom labels",
           response=schemas.ImageDetails, problems=(404,), tags=("images",),
           path_params={"image_id": "catalog id of the image"})
def image(image_id: int) -> ResponseReturnValue:
    svc = current_service()
    custom = labels_of_images(svc.catalog, [image_id], svc.model_id).get(image_id, [])
    return jsonify(image_json(_record(image_id), custom))


def _library_files(image_id: int) -> list[FileRef]:
    """The files of an indexed image (404 for an unknown id)."""
    _record(image_id)
    return current_service().catalog.library_files(image_id)


def _send(fileobj: BinaryIO, size: int, mimetype: str, max_age: int, etag: str, weak: bool = False,
          last_modified: float | None = None, download_name: str | None = None) -> Response:
    """Send an open file: conditional (ETag, If-None-Match, ranges), never sniffed, never by path."""
    response = current_app.response_class(wrap_file(request.environ, fileobj), mimetype=mimetype,
                                          direct_passthrough=True)
    response.content_length = size
    response.set_etag(etag, weak=weak)
    if last_modified is not None:
        response.headers["Last-Modified"] = http_date(last_modified)  # what the last_modified setter does
    response.cache_control.public = True
    response.cache_control.max_age = max_age
    response.headers["X-Content-Type-Options"] = "nosniff"
    if download_name is not None:
        response.headers["Content-Disposition"] = content_disposition(download_name)
    return response.make_conditional(request.environ, accept_ranges=True, complete_length=size)


def _file_missing(image_id: int) -> ApiProblem:
    return ApiProblem(404, f"the file of image {image_id} is no longer in the library", "file_missing")


def _file_problem(image_id: int, kind: str, reason: str) -> ApiProblem:
    if kind == "unreadable":
        return ApiProblem(404, f"the file of image {image_id} cannot be read: {reason}", "file_unreadable")
    if kind == "changed":
        return ApiProblem(404, f"the file of image {image_id} changed since it was indexed "
                               "(`lookalike index` brings the catalog up to date)", "file_changed")
    if kind == "undecodable":
        return ApiProblem(422, f"the file of image {image_id} cannot be decoded: {reason}", "file_undecodable")
    return _file_missing(image_id)


@bp.get("/images/<int:image_id>/file")
@operation(summary="The original file of an indexed image (only from inside an indexed folder)",
           response={"image/*": "binary"}, problems=(404,), tags=("images",),
           path_params={"image_id": "catalog id of the image"})
def image_file(image_id: int) -> ResponseReturnValue:
    """The file as it is now, opened inside its indexed folder without following links; the ETag is
    strong only while the file still has the size and time it had when indexed."""
    refused: dict[str, str] = {}
    for ref in _library_files(image_id):
        try:
            fd = open_beneath(ref.root, ref.path)
        except LibraryFileError as exc:
            log.info("image %d: not serving %s: %s", image_id, printable(ref.path), exc.reason)
            refused.setdefault(exc.kind, exc.reason)
            continue
        fileobj = os.fdopen(fd, "rb")
        try:
            st = os.fstat(fd)
            indexed = (st.st_size, st.st_mtime_ns) == (ref.size, ref.mtime_ns)
            etag = ref.content_hash if indexed else f"{ref.content_hash}-{st.st_size}-{st.st_mtime_ns}"
            mimetype = mimetypes.guess_type(display_path(ref.path))[0] or "application/octet-stream"
            return _send(fileobj, st.st_size, mimetype, max_age=3600, etag=etag, weak=not indexed,
                         last_modified=st.st_mtime, download_name=os.path.basename(ref.path))
        except BaseException:
            fileobj.close()
            raise
    if UNREADABLE in refused:
        raise _file_problem(image_id, "unreadable", refused[UNREADABLE])
    raise _file_missing(image_id)


@bp.get("/images/<int:image_id>/thumbnail")
@operation(summary="A small upright WebP preview of an indexed image, without metadata",
           response={"image/webp": "binary"}, problems=(404, 422), tags=("images",),
           path_params={"image_id": "catalog id of the image"})
def image_thumbnail(image_id: int) -> ResponseReturnValue:
    """A small WebP preview (upright, without metadata), made on first request if the indexer wrote none,
    and only ever from the bytes whose hash the catalog holds."""
    settings = current_service().settings
    files = _library_files(image_id)
    try:
        thumb = thumbnail_for(settings.storage.data_dir, files,
                              settings.indexer.served_thumbnail_size(),
                              settings.indexer.max_image_pixels)
    except ThumbnailUnavailable as exc:
        log.info("image %d: no thumbnail (%s): %s", image_id, exc.kind, exc)
        raise _file_problem(image_id, exc.kind, str(exc)) from None
    content_hash = files[0].content_hash
    if thumb.data is not None:
        return _send(io.BytesIO(thumb.data), len(thumb.data), "image/webp", max_age=86400,
                     etag=f"thumb-{content_hash}-{len(thumb.data)}")
    assert thumb.path is not None
    fileobj = thumb.path.open("rb")
    try:
        size = os.fstat(fileobj.fileno()).st_size
        return _send(fileobj, size, "image/webp", max_age=86400, etag=f"thumb-{content_hash}-{size}")
    except BaseException:
        fileobj.close()
        raise


@bp.get("/stats")
@operation(summary="Catalog and index counts, index generation, model", response=schemas.Stats, tags=("meta",))
def stats() -> ResponseReturnValue:
    return jsonify(current_service().stats())
