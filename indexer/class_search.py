"""Classes and concepts whose names contain a typed text: the candidates of class autocompletion."""

from __future__ import annotations

from dataclasses import dataclass

from indexer.concepts import Concept, concepts
from indexer.labels import NUM_CLASSES, class_name, concept_query_name, imagenet_classes


@dataclass(frozen=True)
class NameMatch:
    """A class (concept is None) or a concept whose names contain the text."""

    name: str  # a `class` filter value: the class name, or a name that selects exactly the concept
    class_ids: frozenset[int]
    concept: Concept | None
    exact: bool  # one of its names is the text
    prefix: bool  # one of its names starts with the text

    @property
    def class_id(self) -> int | None:
        return None if self.concept is not None else next(iter(self.class_ids))


def _compare(text: str, names: list[str]) -> tuple[str, bool, bool] | None:
    """(the best matching name, exact, prefix), or None when no name contains `text`."""
    folded = [n.casefold() for n in names]
    for test, exact, prefix in ((str.__eq__, True, True), (str.startswith, False, True),
                                (str.__contains__, False, False)):
        for name, key in zip(names, folded, strict=True):
            if test(key, text):
                return name, exact, prefix
    return None


def match_names(text: str) -> list[NameMatch]:
    """Every class and concept whose name or synonym contains `text` (ignoring case); a class id or
    a WordNet id matches its class or concept only."""
    key = text.strip().casefold()
    if not key:
        return []
    if key.isascii() and key.isdigit():  # str.isdigit() alone takes "\u0663" and "\u00b2" (int() refuses that)
        class_id = int(key)
        return [NameMatch(class_name(class_id), frozenset({class_id}), None, True, True)] \
            if class_id < NUM_CLASSES else []
    found: list[NameMatch] = []
    for cls in imagenet_classes():
        hit = _compare(key, [cls.wnid] if _is_wnid(key) else [cls.name, *cls.synonyms])
        if hit:
            found.append(NameMatch(cls.name, frozenset({cls.class_id}), None, hit[1], hit[2]))
    for concept in concepts():
        hit = _compare(key, [concept.wnid] if _is_wnid(key) else list(concept.names))
        if hit:
            found.append(NameMatch(concept_query_name(concept, prefer=hit[0]), concept.class_ids, concept,
                                   hit[1], hit[2]))
    return found


def _is_wnid(key: str) -> bool:
    return len(key) == 9 and key[0] == "n" and key.isascii() and key[1:].isdigit()
