"""WordNet concepts above the ImageNet classes: the shipped data file, name resolution, name search."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

from indexer.class_search import match_names
from indexer.concepts import concepts, concepts_named, parse_id_ranges
from indexer.labels import (
    UnknownClassError,
    class_name,
    concept_query_name,
    imagenet_classes,
    resolve_class,
    resolve_classes,
)

SHIPPED = REPO / "indexer" / "data" / "imagenet1k_concepts.tsv"
WORDNET = Path("/usr/share/wordnet")


def ids_named(*names: str) -> set[int]:
    wanted = {n.casefold() for n in names}
    return {c.class_id for c in imagenet_classes() if wanted & {s.casefold() for s in c.synonyms}}


def test_dog_is_exactly_the_118_dog_breeds() -> None:
    assert resolve_class("dog") == set(range(151, 269))
    assert resolve_class("n02084071") == resolve_class("Domestic Dog") == resolve_class("  DOG ")
    assert class_name(151) == "Chihuahua" and class_name(268) == "Mexican hairless"


def test_vehicle_holds_cars_trucks_and_boats() -> None:
    vehicle = resolve_class("vehicle")
    expected = ids_named("sports car", "trailer truck", "fireboat", "speedboat", "ambulance", "mountain bike",
                         "airliner", "steam locomotive")
    assert len(expected) == 8 and expected <= vehicle
    assert not ids_named("tabby", "goldfish", "espresso") & vehicle


def test_bird_and_cat() -> None:
    assert ids_named("goldfinch", "bald eagle", "king penguin", "hen") <= resolve_class("bird")
    assert not ids_named("tabby", "goldfish") & resolve_class("bird")
    cats = ids_named("tabby", "Persian cat", "Siamese cat", "Egyptian cat")
    assert len(cats) == 4 and cats <= resolve_class("true cat") and cats <= resolve_class("cat")


def test_a_name_of_several_concepts_matches_all_of_them() -> None:
    assert {c.wnid for c in concepts_named("cat")} == {"n02121620", "n02127808"}  # true cat, big cat
    assert resolve_class("cat") == resolve_class("true cat") | resolve_class("big cat")
    assert ids_named("tiger", "lion") <= resolve_class("cat") and not ids_named("tiger") & resolve_class("true cat")


def test_a_class_name_wins_over_a_concept_of_the_same_name() -> None:
    assert resolve_class("amphibian") == ids_named("amphibious vehicle")  # the class, not the animals
    animals = resolve_class("n01627424")  # the concept, by its WordNet id
    assert ids_named("tree frog", "axolotl") <= animals and not ids_named("amphibious vehicle") & animals


def test_filters_combine_classes_and_concepts() -> None:
    assert resolve_classes(["dog", "tabby", " "]) == set(range(151, 269)) | {281}
    assert resolve_classes(["", "  "]) is None


@pytest.mark.parametrize(("query", "suggestion"), [("vehicel", "'vehicle'"), ("dogz", "'dog'"), ("tabbby", "'tabby'")])
def test_unknown_names_suggest_close_ones(query: str, suggestion: str) -> None:
    with pytest.raises(UnknownClassError) as info:
        resolve_class(query)
    assert info.value.value == query
    assert f"unknown class {query!r}" in str(info.value) and "did you mean" in str(info.value)
    assert suggestion in str(info.value)


def test_unknown_without_anything_close() -> None:
    with pytest.raises(UnknownClassError, match="WordNet concept") as info:
        resolve_class("qqqqxz")
    assert "did you mean" not in str(info.value)


def test_a_concepts_query_name_selects_exactly_it() -> None:
    for concept in concepts():
        name = concept_query_name(concept)
        assert resolve_class(name) == concept.class_ids, (concept.wnid, name)
    by_wnid = {c.wnid: c for c in concepts()}
    assert concept_query_name(by_wnid["n02121620"]) == "true cat"  # "cat" also names the big cats
    assert concept_query_name(by_wnid["n02127808"], prefer="cat") == "big cat"
    assert concept_query_name(by_wnid["n02084071"], prefer="domestic dog") == "domestic dog"
    assert concept_query_name(by_wnid["n01627424"]) == "n01627424"  # "amphibian" is a class


def test_shipped_concepts_are_consistent() -> None:
    all_ids = set(range(1000))
    found = concepts()
    assert len(found) > 400 and len({c.wnid for c in found}) == len(found)
    assert all(len(c.class_ids) >= 2 and c.class_ids <= all_ids and c.names for c in found)
    assert concepts_named("entity")[0].class_ids == all_ids
    class_wnids = {c.wnid for c in imagenet_classes()}
    assert not class_wnids & {c.wnid for c in found}  # ImageNet-1k classes are leaves
    assert parse_id_ranges("151-153 160 7") == {7, 151, 152, 153, 160}


@pytest.mark.subprocess
def test_shipped_file_is_what_the_generator_writes(tmp_path: Path) -> None:
    assert (WORDNET / "data.noun").is_file(), "WordNet 3.0 is missing: `make test` installs wordnet-base"
    out = tmp_path / "concepts.tsv"
    subprocess.run([sys.executable, str(REPO / "tools" / "generate_imagenet_hierarchy.py"), "--wordnet",
                    str(WORDNET), "--output", str(out)], check=True)
    assert out.read_text("utf-8") == SHIPPED.read_text("utf-8")


def test_name_search_marks_exact_and_prefix_matches() -> None:
    found = {(m.concept.wnid if m.concept else m.class_id): m for m in match_names("Dog")}
    dog = found["n02084071"]
    assert dog.exact and dog.prefix and dog.name == "dog" and dog.class_id is None
    dogsled = found[ids_named("dogsled").pop()]
    assert dogsled.prefix and not dogsled.exact and dogsled.name == "dogsled" and dogsled.concept is None
    hunting = found["n02087122"]  # hunting dog
    assert not hunting.prefix and hunting.name == "hunting dog"
    assert ids_named("hotdog").pop() in found and ids_named("tabby").pop() not in found
    assert match_names("  ") == []
    assert [m.class_id for m in match_names("281")] == [281]
    assert [m.concept.wnid for m in match_names("n02084071") if m.concept] == ["n02084071"]
    assert [m.class_id for m in match_names("n02085620")] == [151] and match_names("1000") == []
