"""Query-string parsing shared by the search routes; each bad value names its parameter."""

from __future__ import annotations

import math
import re

from flask import request

from indexer.labels import UnknownClassError, resolve_classes
from indexer.settings import SearchSettings
from search_api.neighbours import QueryOptions
from search_api.problems import ApiProblem
from storage.class_rule import RULES, ClassRule


def parse_k(settings: SearchSettings) -> int:
    return parse_int("k", settings.default_k, 1, settings.max_k)


# ASCII digits only: int() and float() also take other scripts' digits ("\u0663" is 3), "1_000" and spaces.
INTEGER = re.compile(r"[+-]?[0-9]{1,40}")  # longer is out of every range (and beyond int()'s limit)
DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def ascii_int(raw: str) -> int | None:
    """The integer `raw` spells in ASCII digits, else None."""
    return int(raw) if INTEGER.fullmatch(raw) else None


def ascii_float(raw: str) -> float:
    """The finite number `raw` spells in ASCII, else NaN (which every range check rejects)."""
    return float(raw) if DECIMAL.fullmatch(raw) else math.nan


def parse_min_score() -> float | None:
    raw = request.args.get("min_score")
    if raw is None or raw == "":
        return None
    value = ascii_float(raw)
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


def parse_offset(settings: SearchSettings) -> int:
    raw = request.args.get("offset")
    if raw is None or raw == "":
        return 0
    offset = ascii_int(raw)
    if offset is None or not 0 <= offset <= settings.max_offset:
        raise ApiProblem(400, f"offset must be an integer from 0 to {settings.max_offset} (search.max_offset), "
                         f"got {raw!r}", "invalid_parameter", parameter="offset")
    return offset


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")


def parse_flag(name: str) -> bool:
    raw = request.args.get(name, "").strip().lower()
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise ApiProblem(400, f"{name} must be true or false, got {request.args.get(name)!r}", "invalid_parameter",
                     parameter=name)


def parse_query_options(settings: SearchSettings) -> QueryOptions:
    """k, class, class_rule, class_min_probability, min_score, offset and dedupe of the current request."""
    from search_api.label_filters import parse_label_filters

    return QueryOptions(k=parse_k(settings), class_ids=parse_classes(), min_score=parse_min_score(),
                        offset=parse_offset(settings), dedupe=parse_flag("dedupe"),
                        class_rule=parse_class_rule(settings), labels=parse_label_filters())


def parse_class_rule(settings: SearchSettings) -> ClassRule:
    """When an image counts as showing a class: `class_rule` (top1 or top5, default top5) and, for
    top5, `class_min_probability` (default search.class_min_probability; top1 ignores it)."""
    rule = request.args.get("class_rule") or "top5"
    if rule not in RULES:
        raise ApiProblem(400, f"class_rule must be one of {', '.join(RULES)}, got {rule!r}", "invalid_parameter",
                         parameter="class_rule")
    raw = request.args.get("class_min_probability")
    if raw is None or raw == "":
        return settings.class_rule(rule)
    value = ascii_float(raw)
    if not 0.0 <= value <= 1.0:
        raise ApiProblem(400, f"class_min_probability must be a number from 0 to 1, got {raw!r}",
                         "invalid_parameter", parameter="class_min_probability")
    return settings.class_rule(rule, value)


def parse_int(name: str, default: int, low: int, high: int) -> int:
    """An integer parameter from `low` to `high`; `default` when absent or blank."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    value = ascii_int(raw)
    if value is None:
        raise ApiProblem(400, f"{name} must be an integer from {low} to {high}, got {raw!r}", "invalid_parameter",
                         parameter=name)
    if not low <= value <= high:
        raise ApiProblem(400, f"{name} must be from {low} to {high}, got {value}", "invalid_parameter",
                         parameter=name)
    return value
