"""The values a query string may hold, how a bad one is worded, and limits that come from settings.

Numbers are ASCII digits only: int() and float() also take other scripts' digits ("\u0663" is 3),
"1_000" and spaces. Each value type carries the wording of the invalid_parameter problem for a bad
value (a field may give its own). `x-setting-*` keys in a field's json_schema_extra name the
setting that gives it its default or maximum; `bound()` fills them in, so the routes validate with,
and the OpenAPI document describes, the same model.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from annotated_types import Le
from pydantic import BaseModel, BeforeValidator, Field, create_model
from pydantic_core import PydanticCustomError

from indexer.settings import Settings

M = TypeVar("M", bound=BaseModel)

INTEGER = re.compile(r"[+-]?[0-9]{1,40}")  # longer is out of every range (and beyond int()'s limit)
DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")
SETTING_KEYS = ("x-setting-default", "x-setting-maximum")
MAX_PAGE_OFFSET = 2**31 - 1  # browsing offsets: far beyond any catalog, well within SQL's integers
MAX_SUGGESTIONS = 1000  # every ImageNet class
DEFAULT_SUGGESTIONS = 20
MAX_DUPLICATE_GROUPS = 100  # duplicate groups per page
# Below this, near-duplicate groups chain much of a library together and cost a search per image each.
MIN_DUPLICATES_THRESHOLD = 0.8


@dataclass(frozen=True)
class Wording:
    """The detail of the invalid_parameter problem for a bad value: `bad` for a value that is not of the
    field's type, `out_of_range` (default: `bad`) for one outside its bounds. Placeholders: name, raw (as
    sent), value (as parsed), low, high, choices. Pydantic keeps it in the field's metadata, unused."""

    bad: str
    out_of_range: str | None = None


def _ascii_integer(value: Any) -> Any:
    if isinstance(value, str):
        if not INTEGER.fullmatch(value):
            raise PydanticCustomError("int_parsing", "not an integer in ASCII digits")
        return int(value)
    return value


def _ascii_number(value: Any) -> Any:
    if isinstance(value, str):
        if not DECIMAL.fullmatch(value):  # also refuses "nan" and "inf"; "1e999" is inf, out of every range
            raise PydanticCustomError("float_parsing", "not a number in ASCII digits")
        return float(value)
    return value


def _flag(value: Any) -> Any:
    if isinstance(value, str):
        word = value.strip().lower()
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise PydanticCustomError("bool_parsing", "not true or false")
        return word in TRUE_WORDS
    return value


Integer = Annotated[int, BeforeValidator(_ascii_integer), Wording(
    "{name} must be an integer from {low} to {high}, got {raw!r}", "{name} must be from {low} to {high}, got {value}")]
Number = Annotated[float, BeforeValidator(_ascii_number), Wording(
    "{name} must be a number from {low:g} to {high:g}, got {raw!r}")]
Flag = Annotated[bool, BeforeValidator(_flag), Wording("{name} must be true or false, got {raw!r}")]
ClassRuleName = Annotated[Literal["top1", "top5"], Wording("{name} must be one of {choices}, got {raw!r}")]


def bound(model: type[M], settings: Settings) -> type[M]:
    """`model` with the defaults and maxima its fields take from `settings` (x-setting-* keys)."""
    fills = tuple((name, key, _setting(settings, str(dotted)))
                  for name, field in model.model_fields.items() if isinstance(field.json_schema_extra, dict)
                  for key, dotted in field.json_schema_extra.items() if key in SETTING_KEYS)
    return _bound(model, fills) if fills else model


def _setting(settings: Settings, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(settings, section), key)


@functools.lru_cache(maxsize=32)
def _bound(model: type[M], fills: tuple[tuple[str, str, Any], ...]) -> type[M]:
    filled: dict[str, dict[str, Any]] = {}
    for name, key, value in fills:
        filled.setdefault(name, {})[key] = value
    fields: dict[str, Any] = {}
    for name, values in filled.items():
        field = model.model_fields[name]
        # The maximum goes ahead of the field's own validators, so that the document states it as `maximum`.
        maximum = [Le(values["x-setting-maximum"])] if "x-setting-maximum" in values else []
        default = values.get("x-setting-default", field.default)
        annotated = (field.annotation, *maximum, *field.metadata)  # Annotated[type, *metadata], built at run time
        fields[name] = (Annotated[annotated],
                        Field(default, alias=field.alias, description=field.description))
    return create_model(model.__name__, __base__=model, **fields)
