"""Custom label names, `label:<name>` class filters, and checking what a request gives (ids, threshold).

Kept apart from the LabelBook so the API and CLI can parse filters without the learning machinery.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from indexer.labels import CUSTOM_LABEL_PREFIX, imagenet_classes
from storage.catalog import MAX_IMAGE_ID

LABEL_PREFIX = CUSTOM_LABEL_PREFIX
MAX_NAME_LENGTH = 64
NAME_PUNCTUATION = frozenset(" -_.'&()+#@!,")
MAX_EXAMPLES = 1000


class LabelError(ValueError):
    """A request about labels that cannot be done; names the field at fault and an HTTP-like status."""

    def __init__(self, message: str, field: str | None = None, status: int = 400, code: str = "invalid_label") -> None:
        super().__init__(message)
        self.field = field
        self.status = status
        self.code = code


class Unchanged:
    """The type of UNCHANGED."""


UNCHANGED = Unchanged()  # PATCH without a threshold: leave it as it is


@lru_cache(maxsize=1)
def _imagenet_names() -> frozenset[str]:
    names: set[str] = set()
    for cls in imagenet_classes():
        names.update(n.casefold() for n in (cls.name, cls.wnid, ", ".join(cls.synonyms), *cls.synonyms))
    return frozenset(names)


def check_name(name: object) -> str:
    """The label name as it will be stored, or LabelError naming the field `name`."""
    if not isinstance(name, str) or not name.strip():
        raise LabelError("name must be a non-empty string", "name")
    text = name.strip()
    if len(text) > MAX_NAME_LENGTH:
        raise LabelError(f"name must be at most {MAX_NAME_LENGTH} characters, got {len(text)}", "name")
    bad = sorted({c for c in text if not (c.isalnum() or c in NAME_PUNCTUATION)})
    if bad:
        raise LabelError(f"name may hold letters, digits, spaces and {''.join(sorted(NAME_PUNCTUATION - {' '}))}; "
                         f"{text!r} holds {', '.join(repr(c) for c in bad)}", "name")
    if text.isdigit():
        raise LabelError(f"name {text!r} is a number, which class filters read as an ImageNet class id", "name")
    if text.casefold() in _imagenet_names():
        raise LabelError(f"{text!r} is the name of an ImageNet class: choose another name for your label "
                         f"(for example 'my {text}')", "name", code="imagenet_class_name")
    return text


def split_label_filters(values: Iterable[str]) -> list[str]:
    """The label names among class filter values ("label:rex" -> "rex"), as given."""
    return [v.strip()[len(LABEL_PREFIX):].strip() for v in values if is_label_filter(v)]


def is_label_filter(value: str) -> bool:
    return value.strip().casefold().startswith(LABEL_PREFIX)


def id_list(value: object, field: str) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise LabelError(f"{field} must be a list of image ids (integers)", field)
    if len(value) > MAX_EXAMPLES:
        raise LabelError(f"{field} holds {len(value)} ids; at most {MAX_EXAMPLES} are accepted", field)
    out_of_range = [v for v in value if not 0 < v <= MAX_IMAGE_ID]
    if out_of_range:
        raise LabelError(f"{field}: no image has id {out_of_range[0]}", field)
    return list(dict.fromkeys(value))


def parse_threshold(value: object) -> float | None | Unchanged:
    """A threshold from a request: a number from 0 to 1, None (the learned default) or UNCHANGED."""
    if value is UNCHANGED or isinstance(value, Unchanged):
        return UNCHANGED
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise LabelError(f"threshold must be a number from 0 to 1, or null for the learned default; got {value!r}",
                         "threshold")
    return float(value)
