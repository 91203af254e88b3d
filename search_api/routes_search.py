"""Similarity search: by uploaded image and by indexed image id."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask import request as flask_request
from flask.typing import ResponseReturnValue

from indexer.images import ImageRejected
from search_api.params import parse_class_rule, parse_classes, parse_k, parse_min_score
from search_api.problems import ApiProblem
from search_api.results import hit_json
from search_api.service import SearchService, labels_json

bp = Blueprint("search", __name__, url_prefix="/api/v1")

# How each kind of rejected upload is answered.
REJECTION_STATUS = {
    "empty": 400,
    "not_image": 415,
    "unsupported_format": 415,
    "corrupt": 422,
    "too_many_pixels": 422,
}


def service() -> SearchService:
    return current_app.extensions["lookalike"]


def _upload() -> bytes:
    if "image" not in flask_request.files:
        raise ApiProblem(400, "send the query image as the multipart form field 'image'", "missing_image",
                         field="image")
    data = flask_request.files["image"].read()
    if not data:
        raise ApiProblem(400, "the uploaded 'image' is empty", "empty_upload", field="image")
    return data


@bp.post("/search")
def search() -> ResponseReturnValue:
    svc = service()
    k = parse_k(svc.settings.search)
    classes = parse_classes()
    class_rule = parse_class_rule(svc.settings.search)
    min_score = parse_min_score()
    data = _upload()
    try:
        vector, predictions = svc.embed_upload(data)
    except ImageRejected as exc:
        raise ApiProblem(REJECTION_STATUS.get(exc.kind, 422), f"uploaded 'image': {exc}", exc.kind,
                         field="image") from None
    hits = svc.search(vector, k, classes, min_score, class_rule=class_rule)
    return jsonify({"query": {"labels": labels_json(predictions)}, "results": [hit_json(h) for h in hits]})


@bp.get("/images/<int:image_id>/similar")
def similar(image_id: int) -> ResponseReturnValue:
    svc = service()
    k = parse_k(svc.settings.search)
    classes = parse_classes()
    class_rule = parse_class_rule(svc.settings.search)
    min_score = parse_min_score()
    record = svc.image(image_id)
    hits = svc.similar(image_id, k, classes, min_score, class_rule) if record else None
    if record is None or hits is None:
        raise ApiProblem(404, f"no indexed image has id {image_id}", "unknown_image")
    return jsonify({"query": {"id": image_id, "labels": labels_json(record.predictions)},
                    "results": [hit_json(h) for h in hits]})
