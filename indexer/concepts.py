"""WordNet concepts above the ImageNet-1k classes ("dog", "vehicle", "bird"), shipped as a data file.

`indexer/data/imagenet1k_concepts.tsv` is generated from WordNet 3.0 by
tools/generate_imagenet_hierarchy.py; it lists every WordNet noun synset that covers at least
two ImageNet classes, with its lemma names and the class ids below it. WordNet itself is never
read at run time.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

DATA_FILE = "data/imagenet1k_concepts.tsv"
NAME_SEPARATOR = "; "


@dataclass(frozen=True)
class Concept:
    wnid: str  # WordNet 3.0 noun synset id, e.g. n02084071
    names: tuple[str, ...]  # lemma names, most common first ("dog", "domestic dog", ...)
    class_ids: frozenset[int]  # the ImageNet classes below it


def parse_id_ranges(text: str) -> frozenset[int]:
    """ "151-153 160" -> {151, 152, 153, 160}."""
    ids: set[int] = set()
    for part in text.split():
        first, _, last = part.partition("-")
        ids.update(range(int(first), int(last or first) + 1))
    return frozenset(ids)


@lru_cache(maxsize=1)
def concepts() -> tuple[Concept, ...]:
    """Every shipped concept, sorted by wnid."""
    text = resources.files("indexer").joinpath(DATA_FILE).read_text("utf-8")
    return tuple(
        Concept(wnid=row["wnid"], names=tuple(row["names"].split(NAME_SEPARATOR)),
                class_ids=parse_id_ranges(row["class_ids"]))
        for row in csv.DictReader(text.splitlines(), delimiter="\t")
    )


@lru_cache(maxsize=1)
def _by_name() -> dict[str, tuple[Concept, ...]]:
    index: dict[str, list[Concept]] = {}
    for concept in concepts():
        for key in {concept.wnid, *concept.names}:
            index.setdefault(key.casefold(), []).append(concept)
    return {key: tuple(found) for key, found in index.items()}


def concepts_named(name: str) -> tuple[Concept, ...]:
    """The concepts a lemma name or wnid denotes, ignoring case ("cat" names both "true cat" and "big cat")."""
    return _by_name().get(name.strip().casefold(), ())


def concept_names() -> list[str]:
    """Every lemma name and wnid that names a concept (case-folded), for suggestions."""
    return list(_by_name())
