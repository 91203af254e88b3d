"""ImageNet-1k class names shipped with the package (index 0 = tench), and name lookup for filters."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

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
    """Class ids named by an id ("281"), a name or synonym ("tabby cat"), or a WordNet id.

    Names are matched exactly, ignoring case. A few names belong to two classes
    ("crane" is a bird and a machine); such a name matches both.
    """
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        class_id = int(text)
        if not 0 <= class_id < NUM_CLASSES:
            raise UnknownClassError(f"class id {class_id} is out of range 0..{NUM_CLASSES - 1}", text)
        return frozenset({class_id})
    ids = _name_index().get(text.casefold())
    if not ids:
        raise UnknownClassError(f"unknown ImageNet class {text!r}: give a class id 0..999 or an exact class name",
                                text)
    return ids


def resolve_classes(values: Iterable[str]) -> frozenset[int] | None:
    """Union of the classes named by several filters (blank ones ignored); None when there are none."""
    ids: set[int] = set()
    for value in values:
        if value.strip():
            ids |= resolve_class(value)
    return frozenset(ids) or None
