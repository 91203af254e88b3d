"""Query strings, validated by the models the OpenAPI document is built from (search_api/schemas.py).

One helper reads a route's parameters into its model; a value the model refuses is answered with
the invalid_parameter problem naming the parameter, worded by the field (schemas.Wording). Class
and label names are checked against the catalog's vocabulary afterwards (unknown_class).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar, get_args, get_origin

from annotated_types import Ge, Le
from flask import request
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from indexer.labels import UnknownClassError, resolve_classes
from indexer.settings import SearchSettings
from search_api.current import current_service
from search_api.label_filters import label_filters
from search_api.neighbours import QueryOptions
from search_api.problems import ApiProblem
from search_api.query_values import Wording, bound
from search_api.schemas import BrowseParams, ClassesParams, SearchParams
from storage.class_rule import ClassRule

M = TypeVar("M", bound=BaseModel)
RANGE_ERRORS = frozenset({"greater_than_equal", "less_than_equal"})


def query_args(model: type[M]) -> M:
    """The current request's query string as `model`, with this server's settings filled in.

    A blank value means the default, as an absent one does; of a repeated scalar parameter the
    first value counts.
    """
    model = bound(model, current_service().settings)
    fields = {field.alias or name: field for name, field in model.model_fields.items()}
    values: dict[str, object] = {}
    for wire, field in fields.items():
        if get_origin(field.annotation) is list:
            values[wire] = request.args.getlist(wire)
        elif raw := request.args.get(wire):
            values[wire] = raw
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        wire = str(error["loc"][0])
        detail = _detail(wire, fields[wire], str(values[wire]), error)
        raise ApiProblem(400, detail, "invalid_parameter", parameter=wire) from None


def _detail(name: str, field: FieldInfo, raw: str, error: ErrorDetails) -> str:
    wording = [m for m in field.metadata if isinstance(m, Wording)][-1]  # a field's own wording comes last
    template = wording.out_of_range if error["type"] in RANGE_ERRORS and wording.out_of_range else wording.bad
    low = next((m.ge for m in field.metadata if isinstance(m, Ge)), None)
    high = next((m.le for m in field.metadata if isinstance(m, Le)), None)
    choices = ", ".join(get_args(field.annotation)) if get_origin(field.annotation) is Literal else ""
    return template.format(name=name, raw=raw, value=error["input"], low=low, high=high, choices=choices)


def class_filters(values: Sequence[str]) -> frozenset[int] | None:
    """Union of the ImageNet classes named by `class` values (ids, names, concepts); None when there are none."""
    try:
        return resolve_classes(values)
    except UnknownClassError as exc:
        raise ApiProblem(400, str(exc), "unknown_class", parameter="class") from None


def class_rule(params: SearchParams | BrowseParams | ClassesParams, settings: SearchSettings) -> ClassRule:
    """When an image counts as showing a class: `class_rule`, and for top5 `class_min_probability`."""
    return settings.class_rule(params.class_rule, params.class_min_probability)


def query_options(params: SearchParams, settings: SearchSettings) -> QueryOptions:
    """What the search routes ask the engine: the parameters with classes and labels resolved to ids."""
    return QueryOptions(k=params.k, class_ids=class_filters(params.class_), min_score=params.min_score,
                        offset=params.offset, dedupe=params.dedupe, class_rule=class_rule(params, settings),
                        labels=label_filters(params.class_))
