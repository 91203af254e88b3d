"""Similarity search: by uploaded image (one, or a batch) and by indexed image id."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask import request as flask_request
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import FileStorage

from indexer.images import ImageRejected
from search_api import schemas
from search_api.current import current_service
from search_api.openapi import operation
from search_api.params import query_args, query_options
from search_api.problems import ApiProblem, problem_body
from search_api.results import labels_json, page_json

bp = Blueprint("search", __name__, url_prefix="/api/v1")

# How each kind of rejected upload is answered.
REJECTION_STATUS = {
    "empty": 400,
    "not_image": 415,
    "unsupported_format": 415,
    "corrupt": 422,
    "too_many_pixels": 422,
    "too_costly": 422,
}
RAW_BODY_TYPES = ("application/octet-stream",)
HOW_TO_SEND = ("send the query image as the multipart form field 'image', or as the raw request body "
               "with Content-Type image/* or application/octet-stream")


def _is_raw_image_body(mimetype: str) -> bool:
    return mimetype.startswith("image/") or mimetype in RAW_BODY_TYPES


def _upload() -> tuple[bytes, str]:
    """The query image and the name of the part of the request that held it."""
    mimetype = flask_request.mimetype
    if mimetype == "multipart/form-data":
        if "image" not in flask_request.files:
            raise ApiProblem(400, HOW_TO_SEND, "missing_image", field="image")
        data = flask_request.files["image"].read()
        if not data:
            raise ApiProblem(400, "the uploaded 'image' is empty", "empty_upload", field="image")
        return data, "image"
    if _is_raw_image_body(mimetype):
        data = flask_request.get_data(cache=False)
        if not data:
            raise ApiProblem(400, f"the request body is empty ({mimetype})", "empty_upload", field="body")
        return data, "body"
    if not mimetype and not flask_request.content_length:
        raise ApiProblem(400, HOW_TO_SEND, "missing_image", field="image")
    raise ApiProblem(415, f"Content-Type {mimetype or '(none)'} is not accepted: {HOW_TO_SEND}",
                     "unsupported_media_type", field="body")


def _rejection(exc: ImageRejected, what: str) -> tuple[int, str]:
    return REJECTION_STATUS.get(exc.kind, 422), f"uploaded {what}: {exc}"


@bp.post("/search")
@operation(
    summary="Find indexed images similar to an uploaded image",
    query=schemas.SearchParams,
    body={"multipart/form-data": schemas.ImageUpload, "image/*": "binary", "application/octet-stream": "binary"},
    response=schemas.SearchResponse,
    problems=(400, 413, 415, 422),
    tags=("search",),
)
def search() -> ResponseReturnValue:
    """Send the image as the multipart field `image`, or as the raw body (`Content-Type: image/*`)."""
    svc = current_service()
    options = query_options(query_args(schemas.SearchParams), svc.settings.search)
    data, field = _upload()
    try:
        vector, predictions = svc.embed_upload(data)
    except ImageRejected as exc:
        status, detail = _rejection(exc, f"'{field}'" if field == "image" else "body")
        raise ApiProblem(status, detail, exc.kind, field=field) from None
    page = svc.search_page(vector, options)
    return jsonify({"query": {"labels": labels_json(predictions)}, **page_json(page)})


def _batch_files() -> list[FileStorage]:
    if flask_request.mimetype != "multipart/form-data":
        raise ApiProblem(415, "send the query images as multipart/form-data, one part named 'images' per image",
                         "unsupported_media_type", field="images")
    files = flask_request.files.getlist("images")
    if not files:
        raise ApiProblem(400, "send one or more multipart parts named 'images', one per query image",
                         "missing_image", field="images")
    limit = current_service().settings.api.max_batch_images
    if len(files) > limit:
        raise ApiProblem(413, f"the batch holds {len(files)} images; at most {limit} are accepted "
                         "(api.max_batch_images)", "too_many_images", field="images", limit=limit)
    return files


@bp.post("/search/batch")
@operation(
    summary="Search with several uploaded images at once (one model call)",
    query=schemas.SearchParams,
    body={"multipart/form-data": schemas.BatchUpload},
    response=schemas.BatchResponse,
    problems=(400, 413, 415),
    tags=("search",),
)
def search_batch() -> ResponseReturnValue:
    """One result list per `images` part, in request order. A bad image does not fail the batch:
    its item carries an `error` problem object (RFC 9457 members plus `index`) and no results."""
    svc = current_service()
    options = query_options(query_args(schemas.SearchParams), svc.settings.search)
    files = _batch_files()
    datas = [f.read() for f in files]
    embedded = iter(svc.embed_uploads([d for d in datas if d]))
    items: list[dict[str, object]] = []
    for i, (upload, data) in enumerate(zip(files, datas, strict=True)):
        query: dict[str, object] = {"index": i, "filename": upload.filename or None}
        if not data:
            error = problem_body(400, f"images[{i}] is empty", "empty_upload", field="images", index=i)
            items.append({"query": query, "results": [], "next_offset": None, "error": error})
            continue
        result = next(embedded)
        if isinstance(result, ImageRejected):
            status, detail = _rejection(result, f"images[{i}]")
            error = problem_body(status, detail, result.kind, field="images", index=i)
            items.append({"query": query, "results": [], "next_offset": None, "error": error})
            continue
        vector, predictions = result
        query["labels"] = labels_json(predictions)
        items.append({"query": query, **page_json(svc.search_page(vector, options))})
    return jsonify({"results": items})


@bp.get("/images/<int:image_id>/similar")
@operation(
    summary="Find indexed images similar to an indexed image (itself excluded)",
    query=schemas.SearchParams,
    response=schemas.SimilarResponse,
    problems=(400, 404),
    tags=("search",),
    path_params={"image_id": "catalog id of the query image"},
)
def similar(image_id: int) -> ResponseReturnValue:
    svc = current_service()
    options = query_options(query_args(schemas.SearchParams), svc.settings.search)
    record = svc.image(image_id)
    page = svc.similar_page(image_id, options) if record else None
    if record is None or page is None:
        raise ApiProblem(404, f"no indexed image has id {image_id}", "unknown_image")
    return jsonify({"query": {"id": image_id, "labels": labels_json(record.predictions)}, **page_json(page)})
