"""Custom labels: teach a label from example images, change it, list its members, filter by it.

The views are thin: LabelBook (indexer.custom_labels) validates and learns; scoring the library
runs in the worker's background thread (search_api.label_jobs).
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request, url_for
from flask.typing import ResponseReturnValue

from indexer.custom_labels import LabelBook
from indexer.label_names import UNCHANGED, LabelError
from search_api import label_schemas as schemas
from search_api.label_jobs import label_jobs
from search_api.openapi import operation
from search_api.params import query_args
from search_api.problems import ApiProblem
from search_api.results import image_json, next_offset
from storage.label_queries import labels_of_images, member_counts
from storage.labels import borderline_band

bp = Blueprint("labels", __name__, url_prefix="/api/v1")

CREATE_FIELDS = frozenset({"name", "positive_ids", "negative_ids", "threshold"})
CHANGE_FIELDS = frozenset({"add_positive_ids", "add_negative_ids", "remove_ids", "threshold", "relearn"})
NAME = {"name": "the label's name (any case)"}


def _problem(exc: LabelError) -> ApiProblem:
    return ApiProblem(exc.status, str(exc), exc.code, field=exc.field)


def _body(allowed: frozenset[str]) -> dict[str, object]:
    """The JSON object of the request; unknown members are refused by name (a typo must not pass silently)."""
    if not request.is_json:
        raise ApiProblem(415, "send the label as a JSON object with Content-Type application/json",
                         "unsupported_media_type", field="body")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiProblem(400, "the request body must be a JSON object", "invalid_body", field="body")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiProblem(400, f"unknown field {unknown[0]!r}; the fields are {', '.join(sorted(allowed))}",
                         "invalid_body", field=unknown[0])
    return body


def _book() -> LabelBook:
    return label_jobs().book()


def _label_json(book: LabelBook, name: str) -> dict[str, object]:
    return book.to_json(book.get(name))


@bp.post("/labels")
@operation(summary="Teach a custom label from example images (learned at once, no model run)",
           body={"application/json": schemas.LabelCreate}, response=schemas.CustomLabel,
           problems=(400, 409, 415), tags=("labels",), status=201)
def create_label() -> ResponseReturnValue:
    """Answers 201 with the label. Its scores over the library are computed in the background:
    `state` is "scoring" until they are in (a moment for small libraries, seconds for 100,000 images)."""
    body = _body(CREATE_FIELDS)
    book = _book()
    try:
        label = book.create(body.get("name"), body.get("positive_ids"), body.get("negative_ids"),
                            body.get("threshold"))
    except LabelError as exc:
        raise _problem(exc) from None
    label_jobs().rescore_and_wait(label.id)
    response = jsonify(_label_json(book, label.name))
    response.status_code = 201
    response.headers["Location"] = url_for("labels.get_label", name=label.name)
    return response


@bp.get("/labels")
@operation(summary="Every custom label with its examples, threshold and image count",
           response=schemas.LabelList, tags=("labels",))
def list_labels() -> ResponseReturnValue:
    jobs = label_jobs()
    jobs.catch_up()
    book = jobs.book()
    counts = member_counts(book.catalog)
    return jsonify({"labels": [book.to_json(label, counts) for label in book.all()]})


@bp.get("/labels/<name>")
@operation(summary="One custom label", response=schemas.CustomLabel, problems=(404,), tags=("labels",),
           path_params=NAME)
def get_label(name: str) -> ResponseReturnValue:
    try:
        return jsonify(_label_json(_book(), name))
    except LabelError as exc:
        raise _problem(exc) from None


@bp.patch("/labels/<name>")
@operation(summary="Add or remove examples of a custom label, set its threshold, or relearn it",
           body={"application/json": schemas.LabelChange}, response=schemas.CustomLabel,
           problems=(400, 404, 409, 415), tags=("labels",), path_params=NAME)
def change_label(name: str) -> ResponseReturnValue:
    """An image added with the other polarity moves over (a confirmed near miss, a rejected member).
    Changing the examples relearns the label; its scores follow in the background."""
    body = _body(CHANGE_FIELDS)
    relearn = body.get("relearn", False)
    if not isinstance(relearn, bool):
        raise ApiProblem(400, "relearn must be true or false", "invalid_body", field="relearn")
    book = _book()
    try:
        label = book.change(name, body.get("add_positive_ids"), body.get("add_negative_ids"), body.get("remove_ids"),
                            body["threshold"] if "threshold" in body else UNCHANGED, relearn)
    except LabelError as exc:
        raise _problem(exc) from None
    if label.scoring:
        label_jobs().rescore_and_wait(label.id)
    return jsonify(_label_json(book, label.name))


@bp.delete("/labels/<name>")
@operation(summary="Delete a custom label (its examples and scores; the images stay)",
           response=schemas.LabelDeleted, problems=(404,), tags=("labels",), path_params=NAME)
def delete_label(name: str) -> ResponseReturnValue:
    book = _book()
    try:
        label = book.get(name)
        book.delete(label.name)
    except LabelError as exc:
        raise _problem(exc) from None
    return jsonify({"name": label.name, "deleted": True})


@bp.get("/labels/<name>/members")
@operation(summary="Images of a custom label, best first, then its near misses; borderline ones are marked",
           query=schemas.MembersParams, response=schemas.LabelMembers, problems=(400, 404, 409), tags=("labels",),
           path_params=NAME)
def label_members(name: str) -> ResponseReturnValue:
    """Each image says whether it has the label (`member`), whether its score is close enough to the
    threshold to be worth confirming or rejecting (`borderline`), and whether it is an example."""
    params = query_args(schemas.MembersParams)
    offset, limit = params.offset, params.limit
    book = _book()
    try:
        label = book.get(name)
        members, total = book.members(label, offset, limit)
    except LabelError as exc:
        raise _problem(exc) from None
    records = book.catalog.get_images([m.image_id for m in members])
    found = labels_of_images(book.catalog, list(records), book.model_id)
    listed = [{**image_json(records[m.image_id], found.get(m.image_id, [])), "score": round(m.score, 6),
               "member": m.member, "borderline": m.borderline, "example": m.example}
              for m in members if m.image_id in records]
    low, high = borderline_band(label.threshold)
    return jsonify({"label": book.to_json(label), "members": listed, "total": total, "offset": offset,
                    "limit": limit, "next_offset": next_offset(offset, limit, total),
                    "borderline": [round(low, 6), round(high, 6)]})
