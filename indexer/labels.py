"""ImageNet-1k class names shipped with the package (index 0 = tench), and name lookup for filters.

A class filter is a class id, an exact class name or synonym, a class's WordNet id, or the name or
WordNet id of a concept above the classes (see indexer.concepts): "281", "tabby cat", "dog",
"vehicle", "n02084071".
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from indexer.concepts import Concept, concept_names, concepts_named

NUM_CLASSES = 1000


@dataclass(frozen=True)
class ImageNetClass:
    class_id: int
    wnid: str
    name: str
    synonyms: tuple[str, ...]


class UnknownClassError(ValueError):
    """A class filter names no ImageNet class; `value` is the filter as given."""

    def __init__(self, message: str, value: str) -> None:
        super().__init__(message)
        self.value = value


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    """All 1000 classes in model output order."""
    text = resources.files("indexer").joinpath("data/imagenet1k_labels.tsv").read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    classes = tuple(
        ImageNetClass(
            class_id=int(row["class_id"]),
            wnid=row["wnid"],
            name=row["name"],
            synonyms=tuple(s.strip() for s in row["synonyms"].split(",")),
        )
        for row in rows
    )
    if [c.class_id for c in classes] != list(range(NUM_CLASSES)):
        raise RuntimeError("indexer/data/imagenet1k_labels.tsv is damaged: expected class ids 0..999")
    return classes


def class_name(class_id: int) -> str:
    return imagenet_classes()[class_id].name


@lru_cache(maxsize=1)
def _name_index() -> dict[str, frozenset[int]]:
    index: dict[str, set[int]] = {}
    for cls in imagenet_classes():
        for key in {cls.name, ", ".join(cls.synonyms), *cls.synonyms, cls.wnid}:
            index.setdefault(key.casefold(), set()).add(cls.class_id)
    return {key: frozenset(ids) for key, ids in index.items()}


def resolve_class(value: str | int) -> frozenset[int]:
    """Class ids named by an id ("281"), a class name or synonym ("tabby cat"), a WordNet id, or a concept ("dog").

    Names are matched exactly, ignoring case. A class name wins over a concept of the same
    name ("amphibian" is the amphibious vehicle class; the animals are concept n01627424).
    A name shared by several classes ("crane": a bird and a machine) or several concepts
    ("cat": the true cats and the big cats) matches all of them; a WordNet id names exactly one.
    """
    text = str(value).strip()
    digits = text.removeprefix("-")
    if digits.isascii() and digits.isdigit():  # str.isdigit() alone takes "\u0663" and "\u00b2"
        class_id = int(text)
        if not 0 <= class_id < NUM_CLASSES:
            raise UnknownClassError(f"class id {class_id} is out of range 0..{NUM_CLASSES - 1}", text)
        return frozenset({class_id})
    ids = _name_index().get(text.casefold())
    if ids:
        return ids
    found = concepts_named(text)
    if found:
        return frozenset().union(*(c.class_ids for c in found))
    raise UnknownClassError(f"unknown class {text!r}: give a class id 0..{NUM_CLASSES - 1}, an exact ImageNet class "
                            f"name, or a WordNet concept such as 'dog', 'bird' or 'vehicle'{_did_you_mean(text)}", text)


def _did_you_mean(text: str) -> str:
    close = difflib.get_close_matches(text.casefold(), [*_name_index(), *concept_names()], n=4, cutoff=0.75)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def concept_query_name(concept: Concept, prefer: str | None = None) -> str:
    """A `class` filter value naming exactly this concept's classes: `prefer` or another of its
    lemma names when that name is not taken by a class or another concept, else its WordNet id."""
    candidates = [prefer] if prefer else []
    for name in [*candidates, *concept.names]:
        if name.casefold() not in _name_index() and len(concepts_named(name)) == 1:
            return name
    return concept.wnid


CUSTOM_LABEL_PREFIX = "label:"  # `label:<name>` filters name custom labels (indexer.custom_labels), never classes


def resolve_classes(values: Iterable[str]) -> frozenset[int] | None:
    """Union of the classes named by several filters (blank ones and `label:` filters ignored); None when there
    are none."""
    ids: set[int] = set()
    for value in values:
        if value.strip() and not value.strip().casefold().startswith(CUSTOM_LABEL_PREFIX):
            ids |= resolve_class(value)
    return frozenset(ids) or None
