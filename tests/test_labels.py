from __future__ import annotations

import pytest

from indexer.labels import UnknownClassError, class_name, imagenet_classes, resolve_class


def test_thousand_classes_in_model_order() -> None:
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert classes[0].name == "tench" and classes[0].wnid == "n01440764"
    assert class_name(281) == "tabby"
    assert class_name(967) == "espresso"
    assert class_name(999) == "toilet tissue"
    assert len({c.wnid for c in classes}) == 1000


@pytest.mark.parametrize(
    ("query", "expected"),
    [("281", {281}), ("tabby", {281}), ("TABBY CAT", {281}), ("  Tiger Cat ", {282}), ("n07920052", {967}),
     ("crane", {134, 517}), ("0", {0})],
)
def test_resolve_class(query: str, expected: set[int]) -> None:
    assert resolve_class(query) == expected


@pytest.mark.parametrize("query", ["1000", "-1", "dogz", "not a class", ""])
def test_unknown_class(query: str) -> None:
    with pytest.raises(UnknownClassError):
        resolve_class(query)
