"""Browsing without a query image: images of a class or concept, and class/concept autocompletion."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from indexer.class_search import NameMatch, match_names
from indexer.label_names import is_label_filter
from indexer.labels import class_name
from search_api import schemas
from search_api.class_counts import class_counts
from search_api.current import current_service
from search_api.label_filters import browse_labelled, label_filters, label_suggestions
from search_api.openapi import operation
from search_api.params import class_filters, class_rule, query_args
from search_api.query_values import DEFAULT_SUGGESTIONS, MAX_SUGGESTIONS
from search_api.results import browsed_json, class_match_json, listing_json
from storage.browse import browse_images
from storage.label_queries import labels_of_images

bp = Blueprint("browse", __name__, url_prefix="/api/v1")


@bp.get("/images")
@operation(summary="Browse indexed images of classes or concepts, most confident first (no query image)",
           query=schemas.BrowseParams, response=schemas.BrowseResponse, problems=(400,), tags=("images",))
def images() -> ResponseReturnValue:
    """Images of the `class` filters, most confident first; every image, newest first, without one."""
    svc = current_service()
    params = query_args(schemas.BrowseParams)
    classes = class_filters(params.class_)
    labels = label_filters(params.class_)
    rule = class_rule(params, svc.settings.search)
    offset, limit = params.offset, params.limit
    if labels:
        return jsonify(browse_labelled(svc, classes, labels, rule, offset, limit))
    page = browse_images(svc.catalog, classes, rule, offset, limit)
    records = svc.catalog.get_images([e.image_id for e in page.entries])
    custom = labels_of_images(svc.catalog, list(records), svc.model_id)
    listed = [browsed_json(records[e.image_id], custom.get(e.image_id, []),
                           None if e.probability is None else float(e.probability),
                           None if e.class_id is None else class_match_json(e.class_id))
              for e in page.entries if e.image_id in records]  # an image removed since the page was read is left out
    return jsonify(listing_json(listed, page.total, offset, limit))


@bp.get("/classes")
@operation(summary="Custom labels and the classes present in the catalog, with image counts; with q, autocomplete "
                   "of custom labels, classes and concepts",
           query=schemas.ClassesParams, response=schemas.ClassesResponse, problems=(400,), tags=("images",))
def classes() -> ResponseReturnValue:
    """Without `q`: the custom labels, then the classes present in the catalog, most common first. With `q`:
    custom labels, classes and concepts whose names contain it, exact names first, then prefix matches, each by
    image count (custom labels first)."""
    svc = current_service()
    params = query_args(schemas.ClassesParams)
    rule = class_rule(params, svc.settings.search)
    query = (params.q or "").strip()
    own = label_suggestions(svc, query)  # the library's custom labels come first
    if not query:
        limit = params.limit or MAX_SUGGESTIONS
        counts = svc.catalog.class_counts(rule)[:limit]
        return jsonify({"classes": [*own, *({"kind": "class", "class_id": c, "name": class_name(c), "count": n}
                                            for c, n in counts)][:limit]})
    limit = params.limit or DEFAULT_SUGGESTIONS
    matches = [] if is_label_filter(query) else match_names(query)
    table = class_counts().table(rule) if matches else None
    counted = [(m, table.count(m.class_ids)) for m in matches] if table is not None else []
    counted.sort(key=lambda mc: (not mc[0].exact, not mc[0].prefix, -mc[1], mc[0].name.casefold()))
    return jsonify({"classes": [*own, *(_suggestion(m, n) for m, n in counted)][:limit]})


def _suggestion(match: NameMatch, count: int) -> dict[str, object]:
    if match.concept is None:
        return {"kind": "class", "class_id": match.class_id, "name": match.name, "count": count}
    return {"kind": "concept", "class_id": None, "concept_id": match.concept.wnid, "name": match.name,
            "names": list(match.concept.names), "classes": len(match.class_ids), "count": count}
