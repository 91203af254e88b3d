"""Adding images to the library over HTTP and removing them again (scope write, see search_api.access).

An upload is decoded with the same limits as a search upload and embedded by this worker, then
stored in `storage.upload_dir` and committed to the catalog under the writer lock (a running indexer
or watcher holds it: wait up to api.write_wait_seconds, then 503 with Retry-After). This worker
follows the catalog's tail at once, the others within their next check (about a second).
"""

from __future__ import annotations

import hashlib
import io
import logging

from flask import Blueprint, Response, jsonify, request, url_for
from flask.typing import ResponseReturnValue
from PIL import Image

from indexer.images import ImageRejected
from indexer.uploads import UploadStore, safe_name
from search_api import schemas
from search_api.current import current_service
from search_api.openapi import operation
from search_api.problems import ApiProblem
from search_api.results import image_json
from search_api.routes_search import _rejection, _upload
from search_api.service import SearchService
from storage.catalog import ImageRecord, NewImage
from storage.lock import writer_lock
from storage.paths import display_path

log = logging.getLogger(__name__)

bp = Blueprint("library", __name__, url_prefix="/api/v1")


def uploads_of(svc: SearchService) -> UploadStore:
    return UploadStore(svc.settings.storage.resolved_upload_dir())


def _answer(record: ImageRecord, status: int) -> Response:
    response = jsonify(image_json(record))
    response.status_code = status
    response.headers["Location"] = url_for("images.image", image_id=record.id)
    return response


@bp.post("/images")
@operation(summary="Add an image to the library (stored in storage.upload_dir, searchable at once)",
           body={"multipart/form-data": schemas.LibraryUpload, "image/*": "binary",
                 "application/octet-stream": "binary"},
           response=schemas.ImageDetails, problems=(400, 413, 415, 422, 503), tags=("images",), status=201,
           also_ok=(200,))
def add_image() -> ResponseReturnValue:
    """201 with the new image and its `Location`; the same bytes again answer 200 with the image that holds
    them (nothing is duplicated). `name` (a form field or query parameter) names the stored file."""
    svc = current_service()
    data, field = _upload()
    name = request.form.get("name") or request.args.get("name")
    if name is None and field == "image":
        name = request.files["image"].filename
    content_hash = hashlib.sha256(data).hexdigest()
    existing = svc.catalog.ids_for_hashes([content_hash]).get(content_hash)
    if existing is not None and (record := svc.image(existing)) is not None:
        return _answer(record, 200)
    try:
        vector, predictions = svc.embed_upload(data)
    except ImageRejected as exc:
        status, detail = _rejection(exc, f"'{field}'" if field == "image" else "body")
        raise ApiProblem(status, detail, exc.kind, field=field) from None
    with Image.open(io.BytesIO(data)) as header:  # decoded above within the limits: the header is sound
        width, height, image_format = header.width, header.height, header.format or "unknown"
    store = uploads_of(svc)
    # A running indexer or watcher holds the lock: wait, then 503 catalog_busy (search_api.problems).
    with writer_lock(svc.settings.storage.data_dir, svc.settings.api.write_wait_seconds):
        known = svc.catalog.ids_for_hashes([content_hash]).get(content_hash)
        if known is None:
            stored = store.store(data, content_hash, safe_name(name, image_format))
            svc.catalog.apply([NewImage(content_hash, width, height, image_format, svc.model_id, vector,
                                        predictions)], [stored.ref])
    image_id = svc.catalog.ids_for_hashes([content_hash])[content_hash]
    svc.follow_catalog_now()
    record = svc.image(image_id)
    if record is None:  # removed again in the meantime
        raise ApiProblem(409, "the image was removed while it was being added", "conflict")
    log.info("added image %d (%s) over HTTP", image_id, display_path(record.path))
    return _answer(record, 201 if known is None else 200)


@bp.delete("/images/<int:image_id>")
@operation(summary="Remove an image added over HTTP (catalog, index and stored file)", status=204,
           problems=(404, 409, 503), tags=("images",),
           path_params={"image_id": "catalog id of the image"})
def remove_image(image_id: int) -> ResponseReturnValue:
    """An image from a library folder answers 409: delete or move it in the library, and the next index run
    or watch removes it."""
    svc = current_service()
    if svc.image(image_id) is None:
        raise ApiProblem(404, f"no indexed image has id {image_id}", "unknown_image")
    store = uploads_of(svc)
    files = svc.catalog.library_files(image_id)
    in_library = [f for f in files if not store.holds(f)]
    if in_library:
        raise ApiProblem(409, f"image {image_id} is in the library folder {display_path(in_library[0].root)}: "
                         "delete or move it there; the next index run or watch removes it from the catalog",
                         "in_library", path=display_path(in_library[0].path))
    with writer_lock(svc.settings.storage.data_dir, svc.settings.api.write_wait_seconds):
        svc.catalog.apply(removed_paths=[f.path for f in files])
        for ref in files:  # after the commit: a crash here leaves a file no row names (reconciled at start)
            store.remove(ref.path)
    log.info("removed uploaded image %d over HTTP", image_id)
    return Response(status=204)
