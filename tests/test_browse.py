"""Browsing by class or concept, class rules per request, and class/concept autocompletion."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from helpers import (
    RED,
    assert_problem,
    catalog_of,
    colour_image,
    env_for,
    jpeg,
    make_colour_library,
    make_settings,
    new_image,
    ref,
    run_index,
)
from model_fixtures import BLUE_CLASS, GREEN_CLASS, RED_CLASS

from indexer.settings import Settings
from lookalike.cli import cli
from search_api import create_app
from storage.browse import MatchTable, browse_images
from storage.catalog import Catalog
from storage.class_rule import ClassRule

TOP5 = ClassRule("top5", 0.2)
TOP1 = ClassRule("top1")

# --- storage: SQL ordering, paging and counting (SQLite and PostgreSQL) ---------------------------------


@pytest.fixture
def five(catalog: Catalog) -> list[int]:
    ids, _ = catalog.apply(
        [new_image(1, ((5, 0.5), (6, 0.3), (7, 0.1))), new_image(2, ((6, 0.15), (5, 0.12))),
         new_image(3, ((7, 0.9), (5, 0.25))), new_image(4, ((5, 0.7), (8, 0.2))), new_image(5, ((5, 0.5),))],
        [ref(f"/lib/{i}.jpg", i) for i in range(1, 6)],
    )
    return ids


def test_browse_orders_by_best_matching_probability_then_id(catalog: Catalog, five: list[int]) -> None:
    page = browse_images(catalog, {5}, TOP5, 0, 10)
    assert page.total == 4
    assert [(e.image_id, e.class_id, e.probability) for e in page.entries] == [
        (five[3], 5, 0.7), (five[0], 5, 0.5), (five[4], 5, 0.5), (five[2], 5, 0.25)]
    # several classes: each image once, with its most probable matching class
    both = browse_images(catalog, {6, 7}, TOP5, 0, 10)
    assert [(e.image_id, e.class_id) for e in both.entries] == [(five[2], 7), (five[0], 6), (five[1], 6)]
    assert browse_images(catalog, {5}, TOP1, 0, 10).total == 3
    assert [e.image_id for e in browse_images(catalog, {5}, ClassRule("top5", 0.1), 0, 10).entries][-1] == five[1]


def test_browse_pages(catalog: Catalog, five: list[int]) -> None:
    pages = [browse_images(catalog, {5}, TOP5, offset, 3) for offset in (0, 3, 6)]
    assert [p.total for p in pages] == [4, 4, 4]
    assert [e.image_id for p in pages for e in p.entries] == [five[3], five[0], five[4], five[2]]
    assert pages[2].entries == []
    everything = browse_images(catalog, None, TOP5, 1, 3)
    assert everything.total == 5
    assert [(e.image_id, e.class_id) for e in everything.entries] == [(five[3], 5), (five[2], 7), (five[1], 6)]
    assert browse_images(catalog, {999}, TOP5, 0, 5).total == 0


def test_match_table_counts_images_once(catalog: Catalog, five: list[int]) -> None:
    table = MatchTable.load(catalog, TOP5)
    assert table.count({5}) == 4 and table.count({6}) == 2 and table.count({5, 6, 7}) == 5
    assert table.count({8}) == 1 and table.count({42}) == 0 and table.count({10_000}) == 0
    top1 = MatchTable.load(catalog, TOP1)
    assert top1.count({5, 6, 7}) == 5 and top1.count({5}) == 3 and top1.count({8}) == 0
    assert dict(catalog.class_counts(TOP1)) == {5: 3, 6: 1, 7: 1}


def test_match_table_agrees_with_sql_on_random_predictions() -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 300, 2000)
    classes = rng.integers(0, 50, 2000)
    table = MatchTable(images, classes)
    for _ in range(20):
        wanted = set(rng.choice(50, rng.integers(1, 8), replace=False).tolist())
        assert table.count(wanted) == len({i for i, c in zip(images, classes, strict=True) if c in wanted})
    assert MatchTable(np.zeros(0, np.int64), np.zeros(0, np.int64)).count({1}) == 0


def test_class_rule_checks_its_values() -> None:
    with pytest.raises(ValueError, match="top1, top5"):
        ClassRule("top3")
    with pytest.raises(ValueError, match="from 0 to 1"):
        ClassRule("top5", 1.5)
    assert ClassRule.of(0.3) == ClassRule("top5", 0.3) and ClassRule.of(TOP1) is TOP1


# --- HTTP API over a real indexed library ----------------------------------------------------------------


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, tf1_module: Path) -> tuple[Settings, Path]:
    """The colour library, indexed once for the read-only tests of this module."""
    root = make_colour_library(tmp_path_factory.mktemp("lib") / "library")
    settings = make_settings(tmp_path_factory.mktemp("data"), tf1_module)
    report, _ = run_index(settings, root)
    assert report.indexed == 14
    return settings, root


@pytest.fixture
def app(library: tuple[Settings, Path]) -> Flask:
    app = create_app(library[0])
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def predictions_by_path(settings: Settings) -> dict[str, tuple[tuple[int, float], ...]]:
    cat = catalog_of(settings)
    try:
        records = cat.get_images(list(range(1, cat.max_image_id() + 1)))
    finally:
        cat.close()
    return {r.path: r.predictions for r in records.values()}


def accepts(rule: ClassRule, rank: int, probability: float) -> bool:
    return rank == 0 or (rule.rule == "top5" and probability >= rule.min_probability)


def matching(settings: Settings, class_ids: set[int], rule: ClassRule) -> dict[str, float]:
    """Expected browse result computed from the catalog's predictions: path -> best matching probability."""
    found = {}
    for path, predictions in predictions_by_path(settings).items():
        probs = [p for rank, (c, p) in enumerate(predictions) if c in class_ids and accepts(rule, rank, p)]
        if probs:
            found[path] = max(probs)
    return found


def test_browse_a_class_most_confident_first(client: FlaskClient) -> None:
    body = client.get("/api/v1/images?class=goldfish").get_json()
    assert body["total"] == 6 and body["offset"] == 0 and body["limit"] == 50 and body["next_offset"] is None
    images = body["images"]
    assert len(images) == 6 and all("/red/" in i["path"] for i in images)
    assert all(i["matched_class"] == {"class_id": RED_CLASS, "name": "goldfish"} for i in images)
    probabilities = [i["probability"] for i in images]
    assert probabilities == sorted(probabilities, reverse=True) and probabilities[0] > 0.5
    assert probabilities == [i["labels"][0]["probability"] for i in images]
    first = images[0]
    assert {"id", "path", "paths", "width", "labels", "file_url", "content_hash"} <= first.keys()
    assert client.get(first["file_url"]).status_code == 200


def test_browse_pages_until_next_offset_is_null(client: FlaskClient) -> None:
    seen: list[int] = []
    offset: int | None = 0
    pages = 0
    while offset is not None:
        body = client.get(f"/api/v1/images?class=animal&limit=4&offset={offset}").get_json()
        assert body["total"] == 14 and body["limit"] == 4 and body["offset"] == offset
        seen += [i["id"] for i in body["images"]]
        offset = body["next_offset"]
        pages += 1
    assert pages == 4 and len(seen) == len(set(seen)) == 14
    last = client.get("/api/v1/images?class=animal&limit=4&offset=12").get_json()
    assert len(last["images"]) == 2 and last["next_offset"] is None
    beyond = client.get("/api/v1/images?class=animal&offset=40").get_json()
    assert beyond["images"] == [] and beyond["total"] == 14 and beyond["next_offset"] is None


def test_browse_a_concept_and_every_image(client: FlaskClient, library: tuple[Settings, Path]) -> None:
    fish = client.get("/api/v1/images?class=fish").get_json()
    assert fish["total"] == 6 and all(i["matched_class"]["class_id"] == RED_CLASS for i in fish["images"])
    frogs = client.get("/api/v1/images?class=frog&class=coelenterate").get_json()
    assert frogs["total"] == 8 and {i["matched_class"]["class_id"] for i in frogs["images"]} == {GREEN_CLASS,
                                                                                                  BLUE_CLASS}
    everything = client.get("/api/v1/images?limit=10").get_json()
    ids = [i["id"] for i in everything["images"]]
    assert everything["total"] == 14 and everything["next_offset"] == 10 and ids == sorted(ids, reverse=True)
    top1 = {(i["matched_class"]["class_id"], i["probability"]) for i in everything["images"]}
    assert top1 == {(i["labels"][0]["class_id"], i["labels"][0]["probability"]) for i in everything["images"]}


def test_browse_follows_the_class_rule(client: FlaskClient, library: tuple[Settings, Path]) -> None:
    settings = library[0]
    loose = ClassRule("top5", 0.0)
    expected = matching(settings, {BLUE_CLASS}, loose)
    assert len(expected) > 5  # the tiny model ranks jellyfish in the top-5 of other colours too
    body = client.get("/api/v1/images?class=jellyfish&class_min_probability=0&limit=500").get_json()
    assert body["total"] == len(expected)
    assert {i["path"]: i["probability"] for i in body["images"]} == pytest.approx(expected, abs=1e-6)
    assert client.get("/api/v1/images?class=jellyfish").get_json()["total"] == 5
    assert client.get("/api/v1/images?class=jellyfish&class_rule=top1").get_json()["total"] == 5


@pytest.mark.parametrize(("query", "parameter"), [
    ("offset=-1", "offset"), ("offset=x", "offset"), ("limit=0", "limit"), ("limit=501", "limit"),
    ("limit=ten", "limit"), ("class=dogz", "class"), ("class_rule=top3", "class_rule"),
    ("class_min_probability=2", "class_min_probability"),
    ("class_rule=top1&class_min_probability=-0.5", "class_min_probability"),
])
def test_browse_rejects_bad_parameters(client: FlaskClient, query: str, parameter: str) -> None:
    body = assert_problem(client.get(f"/api/v1/images?{query}"), 400,
                          "unknown_class" if parameter == "class" else "invalid_parameter")
    assert body["parameter"] == parameter and parameter in body["detail"]


def test_unknown_class_suggests_a_close_name(client: FlaskClient) -> None:
    assert_problem(client.get("/api/v1/images?class=vehicel"), 400, "unknown_class", "did you mean 'vehicle'")


def test_search_and_similar_take_concepts_and_class_rules(client: FlaskClient) -> None:
    red = jpeg(colour_image(RED, seed=7))
    response = client.post("/api/v1/search?k=5&class=frog", data={"image": (io.BytesIO(red), "q.jpg")},
                           content_type="multipart/form-data")
    results = response.get_json()["results"]
    assert len(results) == 3 and all(r["labels"][0]["class_id"] == GREEN_CLASS for r in results)
    loose = client.post("/api/v1/search?k=20&class=frog&class_min_probability=0",
                        data={"image": (io.BytesIO(red), "q.jpg")}, content_type="multipart/form-data")
    assert len(loose.get_json()["results"]) > 3
    some_red = client.get("/api/v1/images?class=goldfish&limit=1").get_json()["images"][0]["id"]
    similar = client.get(f"/api/v1/images/{some_red}/similar?k=10&class=fish").get_json()["results"]
    assert len(similar) == 5 and all("/red/" in r["path"] for r in similar)
    strict = client.get(f"/api/v1/images/{some_red}/similar?class=fish&class_rule=top1&k=10").get_json()["results"]
    assert len(strict) == 5
    assert_problem(client.get(f"/api/v1/images/{some_red}/similar?class=fish&class_rule=best"), 400,
                   "invalid_parameter", "class_rule")


def test_classes_without_q_keep_their_shape(client: FlaskClient) -> None:
    classes = client.get("/api/v1/classes").get_json()["classes"]
    assert classes[0] == {"kind": "class", "class_id": RED_CLASS, "name": "goldfish", "count": 6}
    assert [c["class_id"] for c in classes] == [RED_CLASS, BLUE_CLASS, GREEN_CLASS]
    loose = client.get("/api/v1/classes?class_min_probability=0").get_json()["classes"]
    assert len(loose) > 3 and sum(c["count"] for c in loose) > 14
    assert len(client.get("/api/v1/classes?limit=2").get_json()["classes"]) == 2


def test_autocomplete_ranks_exact_then_prefix_then_count(client: FlaskClient) -> None:
    found = client.get("/api/v1/classes?q=frog").get_json()["classes"]
    assert found[0] == {"kind": "concept", "class_id": None, "concept_id": "n01639765", "name": "frog",
                        "names": ["frog", "toad", "toad frog", "anuran", "batrachian", "salientian"],
                        "classes": 3, "count": 3}
    prefix_end = next(i for i, f in enumerate(found) if not f["name"].casefold().startswith("frog"))
    assert all(not f["name"].casefold().startswith("frog") for f in found[prefix_end:])
    rest = found[prefix_end:]
    assert rest[0] == {"kind": "class", "class_id": GREEN_CLASS, "name": "tree frog", "count": 3}
    assert [f["count"] for f in rest] == sorted((f["count"] for f in rest), reverse=True)
    for entry in found:  # every name works as a class filter and finds `count` images
        body = client.get("/api/v1/images", query_string={"class": entry["name"]}).get_json()
        assert body["total"] == entry["count"], entry


def test_autocomplete_counts_concepts_and_follows_limit_and_rule(client: FlaskClient) -> None:
    fish = client.get("/api/v1/classes?q=fish&limit=3").get_json()["classes"]
    assert len(fish) == 3
    assert fish[0]["kind"] == "concept" and fish[0]["name"] == "fish" and fish[0]["count"] == 6
    assert fish[0]["classes"] == 16 and fish[0]["concept_id"] == "n02512053"
    assert {"kind": "class", "class_id": BLUE_CLASS, "name": "jellyfish", "count": 5} in \
        client.get("/api/v1/classes?q=fish&limit=100").get_json()["classes"]
    animal = client.get("/api/v1/classes?q=ANIMAL&limit=1").get_json()["classes"][0]
    assert animal["name"] == "animal" and animal["count"] == 14
    loose = client.get("/api/v1/classes?q=jellyfish&class_min_probability=0").get_json()["classes"][0]
    assert loose["count"] > 5
    assert client.get("/api/v1/classes?q=qqqqxz").get_json() == {"classes": []}
    by_id = client.get(f"/api/v1/classes?q={GREEN_CLASS}").get_json()["classes"]
    assert by_id == [{"kind": "class", "class_id": GREEN_CLASS, "name": "tree frog", "count": 3}]
    assert_problem(client.get("/api/v1/classes?q=fish&limit=0"), 400, "invalid_parameter", "limit")


def test_autocomplete_counts_follow_the_catalog(settings_for: Callable[..., Settings], colour_library: Path) -> None:
    settings = settings_for()
    run_index(settings, colour_library)
    client = create_app(settings).test_client()
    assert client.get("/api/v1/classes?q=fish").get_json()["classes"][0]["count"] == 6
    colour_image(RED, seed=99).save(colour_library / "red-extra.jpg", quality=95)
    run_index(settings, colour_library)
    assert client.get("/api/v1/classes?q=fish").get_json()["classes"][0]["count"] == 7
    for red in (colour_library / "red").iterdir():
        red.unlink()
    run_index(settings, colour_library)
    assert client.get("/api/v1/classes?q=fish").get_json()["classes"][0]["count"] == 1


def test_cli_search_takes_a_concept(tmp_path: Path, tf1_module: Path, colour_library: Path) -> None:
    env = env_for(tmp_path / "data", tf1_module)
    runner = CliRunner()
    assert runner.invoke(cli, ["index", str(colour_library)], env=env).exit_code == 0
    query = tmp_path / "q.jpg"
    colour_image(RED, seed=5).save(query, quality=95)
    out = runner.invoke(cli, ["search", str(query), "--json", "--k", "10", "--class", "frog"], env=env)
    assert out.exit_code == 0, out.output
    results = json.loads(out.stdout)["queries"][0]["results"]
    assert len(results) == 3 and all(r["labels"][0]["class_id"] == GREEN_CLASS for r in results)
    bad = runner.invoke(cli, ["search", str(query), "--class", "vehicel"], env=env)
    assert bad.exit_code != 0 and "did you mean 'vehicle'" in bad.output
