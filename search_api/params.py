"""Query-string parsing shared by the search routes; each bad value names its parameter."""

from __future__ import annotations

import math

from flask import request

from indexer.labels import UnknownClassError, resolve_classes
from indexer.settings import SearchSettings
from search_api.problems import ApiProblem


def parse_k(settings: SearchSettings) -> int:
    raw = request.args.get("k")
    if raw is None or raw == "":
        return settings.default_k
    try:
        k = int(raw)
    except ValueError:
        raise ApiProblem(400, f"k must be an integer from 1 to {settings.max_k}, got {raw!r}", "invalid_parameter",
                         parameter="k") from None
    if not 1 <= k <= settings.max_k:
        raise ApiProblem(400, f"k must be from 1 to {settings.max_k}, got {k}", "invalid_parameter", parameter="k")
    return k


def parse_min_score() -> float | None:
    raw = request.args.get("min_score")
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not -1.0 <= value <= 1.0:
        raise ApiProblem(400, f"min_score must be a number from -1 to 1 (cosine similarity), got {raw!r}",
                         "invalid_parameter", parameter="min_score")
    return value


def parse_classes() -> frozenset[int] | None:
    """Union of the classes named by every `class` parameter (ids or names); None when absent."""
    try:
        return resolve_classes(request.args.getlist("class"))
    except UnknownClassError as exc:
        raise ApiProblem(400, str(exc), "unknown_class", parameter="class") from None
