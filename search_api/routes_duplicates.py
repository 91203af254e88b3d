"""Duplicate review: groups of identical files and of near-duplicates, each with the copy to keep.

Read-only, like every route of this API: the page exports the removals a person chose, and the
person deletes the files; the server never does.
"""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from search_api import schemas
from search_api.duplicate_groups import duplicate_groups, group_json
from search_api.openapi import operation
from search_api.params import query_args
from search_api.results import next_offset

bp = Blueprint("duplicates", __name__, url_prefix="/api/v1")


@bp.get("/duplicates")
@operation(summary="Groups of identical files and of near-duplicate images, each with the copy suggested for "
                   "keeping (nothing is deleted)",
           query=schemas.DuplicatesParams, response=schemas.DuplicatesResponse, problems=(400,), tags=("images",))
def duplicates() -> ResponseReturnValue:
    """The groups `lookalike duplicates --json` lists, a page at a time: identical files first, then
    near-duplicates. The copy suggested for keeping has the most pixels, then the most bytes per pixel
    (the least compressed), then the oldest modification time. The groups are found once per threshold
    and reused while the library stays the same."""
    params = query_args(schemas.DuplicatesParams)
    listing = duplicate_groups().listing(params.threshold)
    offset, limit = params.offset, params.limit
    return jsonify({"threshold": params.threshold,
                    "groups": [group_json(g) for g in listing.page(offset, limit)],
                    "exact_total": len(listing.exact), "near_total": len(listing.near), "total": listing.total,
                    "offset": offset, "limit": limit, "next_offset": next_offset(offset, limit, listing.total)})
