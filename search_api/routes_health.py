"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from search_api import schemas
from search_api.current import current_service
from search_api.openapi import operation
from search_api.problems import ApiProblem
from search_api.server_file import SERVER_INSTANCE

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@operation(summary="Liveness: the process answers", response=schemas.Health, tags=("meta",))
def healthz() -> ResponseReturnValue:
    # `instance` tells `lookalike search` that this is the server its data dir's server.json names.
    return jsonify({"status": "ok", "instance": current_app.config.get(SERVER_INSTANCE)})


@bp.get("/readyz")
@operation(summary="Readiness: the model is loaded and warm, and an index of the catalog's vectors is loaded "
                   "(503 until then, with the reason: not_ready, index_not_loaded, model_unavailable, "
                   "model_mismatch, catalog_unavailable, no_catalog)",
           response=schemas.Ready, problems=(503,), tags=("meta",))
def readyz() -> ResponseReturnValue:
    svc = current_service()
    svc.check_model()  # a model that failed to load: 503 model_unavailable, saying why
    if not svc.is_ready():
        raise ApiProblem(503, "the model is still loading", "not_ready")
    svc.require_catalog()  # none yet: 503 no_catalog, saying how to create one
    stats = svc.stats()  # a catalog of another model: 503 model_mismatch, saying what to do
    if stats["images"] and not stats["vectors"]:
        raise ApiProblem(503, f"the catalog holds {stats['images']} images but no index of them is loaded yet",
                         "index_not_loaded")
    # While an indexer runs, the catalog may be a batch ahead of the published generation: still ready.
    return jsonify({"status": "ready", "in_step": stats["images"] == stats["vectors"], **stats})
