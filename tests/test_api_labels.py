"""Custom labels over HTTP, on SQLite and PostgreSQL: the label routes, `class=label:<name>` in every
filter, `custom_labels` on every hit, and the labels following the library and the model."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers import (
    BLUE,
    GREEN,
    RED,
    assert_problem,
    colour_image,
    jpeg,
    make_colour_library,
    make_settings,
    private_postgres_database,
    run_index,
    search,
    write_image,
)

from indexer.settings import Settings
from search_api import create_app, label_jobs
from storage.catalog import Catalog


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None  # the data dir's own SQLite file
        return
    from helpers import postgres_answers

    if not postgres_answers():
        pytest.skip("no PostgreSQL server answers")
    with private_postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def shared(database_url: str | None, tf1_module: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The colour library indexed once per database: 6 red (goldfish), 5 blue (jellyfish), 3 green (tree frog)."""
    library = make_colour_library(tmp_path_factory.mktemp("library"))
    storage: dict[str, object] = {"database_url": database_url} if database_url else {}
    settings = make_settings(tmp_path_factory.mktemp("data"), tf1_module, storage=storage)
    report, _ = run_index(settings, library)
    assert report.indexed == 14
    return settings


@pytest.fixture
def client(shared: Settings) -> Iterator[FlaskClient]:
    app = create_app(shared)
    app.config["TESTING"] = True
    client = app.test_client()
    yield client
    for label in client.get("/api/v1/labels").get_json()["labels"]:  # each test starts without labels
        assert client.delete(f"/api/v1/labels/{label['name']}").status_code == 200
    app.extensions["lookalike.label_jobs"].shutdown()


def ids_by_colour(client: FlaskClient) -> dict[str, list[int]]:
    """Image ids by the colour their file is named after, in file name order (red0, red1, ...)."""
    images = client.get("/api/v1/images?limit=50").get_json()["images"]
    out: dict[str, list[int]] = {"red": [], "blue": [], "green": []}
    for image in sorted(images, key=lambda i: Path(i["path"]).name):
        out[next(c for c in out if Path(image["path"]).name.startswith(c))].append(image["id"])
    return out


def teach(client: FlaskClient, name: str, positive_ids: list[int], **extra: object) -> dict[str, Any]:
    response = client.post("/api/v1/labels", json={"name": name, "positive_ids": positive_ids, **extra})
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def result_ids(body: dict[str, Any]) -> set[int]:
    return {hit["id"] for hit in body["results"]}


def test_teach_read_change_and_delete_a_label(client: FlaskClient) -> None:
    ids = ids_by_colour(client)
    created = client.post("/api/v1/labels", json={"name": "Reds", "positive_ids": ids["red"][:2]})
    assert created.status_code == 201 and created.headers["Location"].endswith("/api/v1/labels/Reds")
    body = created.get_json()
    assert body["name"] == "Reds" and body["state"] == "ready" and body["count"] == 6
    assert body["positive_ids"] == sorted(ids["red"][:2]) and body["negative_ids"] == []
    assert body["missing_examples"] == 0
    assert body["threshold_auto"] and body["threshold"] == body["default_threshold"]
    assert body["quality"] is None  # two examples are too few for an estimate
    assert client.get("/api/v1/labels/reds").get_json() == body  # any case
    assert [label["name"] for label in client.get("/api/v1/labels").get_json()["labels"]] == ["Reds"]

    changed = client.patch("/api/v1/labels/reds", json={"add_positive_ids": [ids["red"][2]],
                                                       "add_negative_ids": [ids["red"][5]]}).get_json()
    assert changed["positive_ids"] == sorted(ids["red"][:3]) and changed["negative_ids"] == [ids["red"][5]]
    assert changed["count"] == 5 and changed["quality"]["folds"] == 3  # a rejected image loses the label
    strict = client.patch("/api/v1/labels/reds", json={"threshold": 0.999999}).get_json()
    assert strict["threshold"] == 0.999999 and not strict["threshold_auto"] and strict["count"] >= 3
    back = client.patch("/api/v1/labels/reds", json={"threshold": None, "remove_ids": [ids["red"][5]]}).get_json()
    assert back["threshold_auto"] and back["negative_ids"] == [] and back["count"] == 6

    deleted = client.delete("/api/v1/labels/REDS")
    assert deleted.status_code == 200 and deleted.get_json() == {"name": "Reds", "deleted": True}
    assert_problem(client.get("/api/v1/labels/reds"), 404, "unknown_label")
    assert client.get("/api/v1/labels").get_json() == {"labels": []}


def test_bad_requests_get_problems_naming_the_field(client: FlaskClient) -> None:
    ids = ids_by_colour(client)
    teach(client, "reds", ids["red"][:2])
    cases = [
        ({"name": "REDS", "positive_ids": [ids["red"][3]]}, 409, "duplicate_label", "name"),
        ({"name": "goldfish", "positive_ids": [ids["red"][3]]}, 400, "imagenet_class_name", "name"),
        ({"name": "blues", "positive_ids": []}, 400, "invalid_label", "positive_ids"),
        ({"name": "blues"}, 400, "invalid_label", "positive_ids"),
        ({"name": "blues", "positive_ids": [123456]}, 400, "invalid_label", "positive_ids"),
        ({"name": "blues", "positive_ids": [ids["blue"][0]], "negative_ids": [ids["blue"][0]]}, 400,
         "invalid_label", "negative_ids"),
        ({"name": "blues", "positive_ids": [ids["blue"][0]], "colour": "blue"}, 400, "invalid_body", "colour"),
        ({"name": 7, "positive_ids": [ids["blue"][0]]}, 400, "invalid_label", "name"),
        ({"name": "blues", "positive_ids": [ids["blue"][0]], "threshold": 2}, 400, "invalid_label", "threshold"),
    ]
    for body, status, code, field in cases:
        problem = assert_problem(client.post("/api/v1/labels", json=body), status, code)
        assert problem["field"] == field, body
    assert assert_problem(client.post("/api/v1/labels", data="name=x"), 415, "unsupported_media_type")["field"] == \
        "body"
    assert_problem(client.post("/api/v1/labels", data="[1]", content_type="application/json"), 400, "invalid_body")
    assert_problem(client.post("/api/v1/labels", data="{", content_type="application/json"), 400, "invalid_body")
    assert_problem(client.patch("/api/v1/labels/nope", json={"relearn": True}), 404, "unknown_label")
    assert_problem(client.delete("/api/v1/labels/nope"), 404, "unknown_label")
    for body, code, field in [({"remove_ids": [ids["blue"][0]]}, "invalid_label", "remove_ids"),
                              ({"relearn": "yes"}, "invalid_body", "relearn"),
                              ({"add_positive_ids": [0]}, "invalid_label", "add_positive_ids"),
                              ({"threshold": "high"}, "invalid_label", "threshold")]:
        assert assert_problem(client.patch("/api/v1/labels/reds", json=body), 400, code)["field"] == field
    assert [label["name"] for label in client.get("/api/v1/labels").get_json()["labels"]] == ["reds"]
    assert client.get("/api/v1/labels/reds").get_json()["positive_ids"] == sorted(ids["red"][:2])


def test_names_beyond_ascii_work_in_paths_and_filters(client: FlaskClient) -> None:
    ids = ids_by_colour(client)
    created = client.post("/api/v1/labels", json={"name": "Café rouge (été)", "positive_ids": ids["red"][:2]})
    location = created.headers["Location"]
    assert created.status_code == 201 and "%C3%A9" in location
    assert client.get(location).get_json()["name"] == "Café rouge (été)"
    query = jpeg(colour_image(GREEN))
    found = search(client, query, "?k=20&class=label:caf%C3%89 ROUGE (%C3%89t%C3%A9)").get_json()
    assert result_ids(found) == set(ids["red"])
    assert client.get("/api/v1/labels/caf%C3%A9%20rouge%20(%C3%A9t%C3%A9)/members").status_code == 200
    for name in ("rouge/noir", "a\nb", "x" * 65):
        assert_problem(client.post("/api/v1/labels", json={"name": name, "positive_ids": ids["red"][:1]}), 400,
                       "invalid_label")
    huge = client.post("/api/v1/labels", data=b'{"name": "big", "positive_ids": [' + b"1," * 600_000 + b"1]}",
                       content_type="application/json")
    assert assert_problem(huge, 400, "invalid_label", "at most 1000")["field"] == "positive_ids"


def test_class_label_filters_search_similar_batch_and_browse(client: FlaskClient) -> None:
    ids = ids_by_colour(client)
    teach(client, "reds", ids["red"][:2])
    blue_query = jpeg(colour_image(BLUE, seed=99))
    # k results whenever k images match, however far they are from the query.
    for k, expected in [(3, 3), (6, 6), (10, 6)]:
        body = search(client, blue_query, f"?k={k}&class=label:reds").get_json()
        assert len(body["results"]) == expected and result_ids(body) <= set(ids["red"])
    both = search(client, blue_query, "?k=20&class=label:reds&class=jellyfish").get_json()
    assert result_ids(both) == set(ids["red"]) | set(ids["blue"])
    similar = client.get(f"/api/v1/images/{ids['green'][0]}/similar?k=20&class=label:reds").get_json()
    assert result_ids(similar) == set(ids["red"])
    batch = client.post("/api/v1/search/batch?k=20&class=label:REDS", content_type="multipart/form-data",
                        data={"images": [(io.BytesIO(blue_query), "b.jpg"),
                                         (io.BytesIO(jpeg(colour_image(GREEN))), "g.jpg")]}).get_json()
    assert [result_ids(item) for item in batch["results"]] == [set(ids["red"])] * 2
    browse = client.get("/api/v1/images?class=label:reds").get_json()
    assert browse["total"] == 6 and {i["id"] for i in browse["images"]} == set(ids["red"])
    scores = [i["probability"] for i in browse["images"]]
    assert scores == sorted(scores, reverse=True)
    assert all(i["matched_class"] == {"class_id": None, "name": "label:reds", "label": "reds"}
               for i in browse["images"])
    mixed = client.get("/api/v1/images?class=label:reds&class=tree frog").get_json()
    assert mixed["total"] == 9 and {i["matched_class"]["name"] for i in mixed["images"]} == {"label:reds", "tree frog"}
    page = client.get("/api/v1/images?class=label:reds&limit=4&offset=4").get_json()
    assert len(page["images"]) == 2 and page["next_offset"] is None
    problem = assert_problem(search(client, blue_query, "?class=label:nope"), 400, "unknown_class", "nope")
    assert problem["parameter"] == "class"
    assert_problem(client.get("/api/v1/images?class=label:"), 400, "unknown_class")


def test_every_hit_carries_its_custom_labels(client: FlaskClient) -> None:
    ids = ids_by_colour(client)
    teach(client, "reds", ids["red"][:2])
    teach(client, "warm", [ids["red"][0], ids["green"][0]])
    body = search(client, jpeg(colour_image(RED, seed=5)), "?k=14").get_json()
    for hit in body["results"]:
        names = [c["name"] for c in hit["custom_labels"]]
        if hit["id"] in ids["red"]:
            assert "reds" in names and all(0 < c["score"] <= 1 for c in hit["custom_labels"])
        else:
            assert "reds" not in names
        assert [c["score"] for c in hit["custom_labels"]] == sorted((c["score"] for c in hit["custom_labels"]),
                                                                    reverse=True)
    green = next(h for h in body["results"] if h["id"] == ids["green"][0])
    assert green["custom_labels"] == [{"name": "warm", "score": 1.0}]  # an example has its label
    similar = client.get(f"/api/v1/images/{ids['red'][0]}/similar?k=1").get_json()["results"][0]
    assert "custom_labels" in similar
    details = client.get(f"/api/v1/images/{ids['green'][0]}").get_json()
    assert details["custom_labels"] == [{"name": "warm", "score": 1.0}]
    browsed = client.get("/api/v1/images?class=tree frog").get_json()["images"]
    assert {i["id"]: i["custom_labels"] for i in browsed}[ids["green"][0]] == [{"name": "warm", "score": 1.0}]
    assert client.get("/api/v1/images?limit=50").get_json()["images"][0]["custom_labels"] is not None


def test_custom_labels_and_imagenet_classes_do_not_leak(client: FlaskClient) -> None:
    ids = ids_by_colour(client)
    teach(client, "frog", ids["green"][:1])  # not a class name ("tree frog" is), so it is allowed
    teach(client, "blue things", ids["blue"][:2])
    query = jpeg(colour_image(RED, seed=3))
    assert result_ids(search(client, query, "?k=20&class=goldfish").get_json()) == set(ids["red"])
    assert result_ids(search(client, query, "?k=20&class=label:frog").get_json()) <= set(ids["green"])
    assert result_ids(search(client, query, "?k=20&class=label:blue things").get_json()) == set(ids["blue"])
    assert_problem(search(client, query, "?class=blue things"), 400, "unknown_class")  # no prefix: not a label
    assert client.get("/api/v1/images?class=tree frog").get_json()["total"] == 3


def test_autocomplete_lists_custom_labels_with_counts(client: FlaskClient) -> None:
    ids = ids_by_colour(client)
    teach(client, "red things", ids["red"][:2])
    teach(client, "greenery", ids["green"][:2])
    found = client.get("/api/v1/classes?q=red").get_json()["classes"]
    assert found[0] == {"kind": "label", "class_id": None, "name": "label:red things", "label": "red things",
                        "count": 6}
    assert all(c["kind"] != "label" or "red" in c["label"] for c in found)
    assert client.get("/api/v1/classes?q=label:gre").get_json()["classes"] == [
        {"kind": "label", "class_id": None, "name": "label:greenery", "label": "greenery", "count": 3}]
    listing = client.get("/api/v1/classes").get_json()["classes"]
    assert [c["kind"] for c in listing[:2]] == ["label", "label"] and listing[2]["kind"] == "class"
    assert {c["name"] for c in listing if c["kind"] == "class"} == {"goldfish", "jellyfish", "tree frog"}
    assert len(client.get("/api/v1/classes?limit=2").get_json()["classes"]) == 2


def test_members_best_first_with_borderline_and_examples(client: FlaskClient) -> None:
    ids = ids_by_colour(client)
    teach(client, "reds", ids["red"][:3], negative_ids=[ids["blue"][0]])
    body = client.get("/api/v1/labels/reds/members?limit=4").get_json()
    assert body["label"]["name"] == "reds" and body["total"] >= 6 and body["next_offset"] == 4
    low, high = body["borderline"]
    assert 0 < low < body["label"]["threshold"] < high < 1
    rest = client.get("/api/v1/labels/reds/members?offset=4&limit=500").get_json()["members"]
    members = body["members"] + rest
    scores = [m["score"] for m in members]
    assert scores == sorted(scores, reverse=True)
    assert {m["id"] for m in members if m["member"]} == set(ids["red"])
    assert all(m["borderline"] == (low <= m["score"] < high) for m in members)
    assert {m["id"] for m in members if m["example"] == "positive"} == set(ids["red"][:3])
    assert all(m["score"] == 1.0 for m in members if m["example"] == "positive")
    assert ids["blue"][0] not in {m["id"] for m in members}  # a rejected image scores 0, below the floor
    assert members[0]["thumbnail_url"] and members[0]["custom_labels"][0]["name"] == "reds"
    assert_problem(client.get("/api/v1/labels/nope/members"), 404, "unknown_label")
    assert_problem(client.get("/api/v1/labels/reds/members?limit=0"), 400, "invalid_parameter")


@pytest.mark.slow
def test_a_change_is_scored_in_the_background(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = ids_by_colour(client)
    monkeypatch.setattr(label_jobs, "ANSWER_WAIT_SECONDS", 0.0)
    jobs = client.application.extensions["lookalike.label_jobs"]
    gate = __import__("threading").Event()
    jobs._pool.submit(gate.wait, 10)  # the background thread is busy: the answer cannot wait for the scores
    try:
        body = client.post("/api/v1/labels", json={"name": "reds", "positive_ids": ids["red"][:2]}).get_json()
        assert body["state"] == "scoring" and body["count"] == 0
        assert client.get("/api/v1/images?class=label:reds").get_json()["total"] == 0  # old scores answer
    finally:
        gate.set()
    deadline = time.monotonic() + 10
    while client.get("/api/v1/labels/reds").get_json()["state"] != "ready":
        assert time.monotonic() < deadline, "the background scoring never finished"
        time.sleep(0.05)
    assert client.get("/api/v1/images?class=label:reds").get_json()["total"] == 6


def test_labels_answers_match_the_openapi_description(client: FlaskClient) -> None:
    import jsonschema

    spec = client.get("/api/v1/openapi.json").get_json()

    def check(name: str, instance: Any) -> None:
        jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                         "components": spec["components"]}).validate(instance)

    ids = ids_by_colour(client)
    check("CustomLabel", teach(client, "reds", ids["red"][:3]))
    check("LabelList", client.get("/api/v1/labels").get_json())
    check("LabelMembers", client.get("/api/v1/labels/reds/members").get_json())
    check("SearchResponse", search(client, jpeg(colour_image(RED)), "?class=label:reds").get_json())
    check("BrowseResponse", client.get("/api/v1/images?class=label:reds&class=jellyfish").get_json())
    check("ClassesResponse", client.get("/api/v1/classes?q=red").get_json())
    check("ImageDetails", client.get("/api/v1/labels/reds/members").get_json()["members"][0])
    check("LabelDeleted", client.delete("/api/v1/labels/reds").get_json())
    assert spec["paths"]["/api/v1/labels"]["post"]["responses"]["201"]["content"]
    with pytest.raises(jsonschema.ValidationError):
        check("CustomLabel", {"name": "x", "state": "unknown"})


# --- labels follow the library and the model ------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def own_data(request: pytest.FixtureRequest, tmp_path: Path, tf1_module: Path) -> Iterator[tuple[Settings, Path]]:
    """A library and data dir of this test only (it changes them)."""
    library = make_colour_library(tmp_path / "library")
    if request.param == "sqlite":
        yield make_settings(tmp_path / "data", tf1_module), library
        return
    from helpers import postgres_answers

    if not postgres_answers():
        pytest.skip("no PostgreSQL server answers")
    with private_postgres_database() as url:
        yield make_settings(tmp_path / "data", tf1_module, storage={"database_url": url}), library


def app_for(settings: Settings) -> Flask:
    app = create_app(settings)
    app.config["TESTING"] = True
    return app


def test_the_indexer_scores_new_images_and_forgets_deleted_examples(own_data: tuple[Settings, Path]) -> None:
    settings, library = own_data
    run_index(settings, library)
    app = app_for(settings)
    client = app.test_client()
    ids = ids_by_colour(client)
    teach(client, "reds", ids["red"][:3])
    write_image(library / "red" / "red9-new.jpg", colour_image(RED, seed=77, accent=(235, 90, 30)), quality=95)
    run_index(settings, library)  # the new image is scored as it is committed
    body = client.get("/api/v1/labels/reds").get_json()
    assert body["state"] == "ready" and body["count"] == 7
    (library / "red" / "red0.jpg").unlink()
    run_index(settings, library)
    body = client.get("/api/v1/labels/reds").get_json()
    assert body["positive_ids"] == sorted(ids["red"][1:3]) and body["count"] == 6 and body["state"] == "ready"
    (library / "red" / "red1.jpg").unlink()
    (library / "red" / "red2.jpg").unlink()
    run_index(settings, library)
    body = client.get("/api/v1/labels/reds").get_json()
    assert body["state"] == "empty" and body["positive_ids"] == [] and body["count"] == 0
    assert client.get("/api/v1/images?class=label:reds").get_json()["total"] == 0
    app.extensions["lookalike.label_jobs"].shutdown()


def test_a_label_is_refused_after_a_model_change_until_relearned(own_data: tuple[Settings, Path],
                                                                 tf2_module: Path) -> None:
    settings, library = own_data
    run_index(settings, library)
    old_app = app_for(settings)
    ids = ids_by_colour(old_app.test_client())
    teach(old_app.test_client(), "reds", ids["red"][:3])
    old_app.extensions["lookalike.label_jobs"].shutdown()
    moved = settings.model_copy(update={"model": settings.model.model_copy(update={"handle": str(tf2_module)})})
    run_index(moved, library, reindex=True)  # the same photos under the other model: new ids, new vectors
    app = app_for(moved)
    client = app.test_client()
    stale = client.get("/api/v1/labels/reds").get_json()
    assert stale["state"] == "stale" and "relearn" in stale["message"] and stale["count"] == 0
    assert len(stale["positive_ids"]) == 3  # the examples are kept
    problem = assert_problem(search(client, jpeg(colour_image(RED)), "?class=label:reds"), 409,
                             "label_needs_relearning", "relearn")
    assert problem["parameter"] == "class"
    assert_problem(client.get("/api/v1/labels/reds/members"), 409, "label_needs_relearning")
    relearned = client.patch("/api/v1/labels/reds", json={"relearn": True}).get_json()
    assert relearned["state"] == "ready" and relearned["count"] == 6
    assert result_ids(search(client, jpeg(colour_image(BLUE)), "?k=10&class=label:reds").get_json()) == \
        set(ids_by_colour(client)["red"])
    catalog = Catalog(moved.storage.resolved_database_url())
    try:
        assert catalog.model_ids() == {relearned["model_id"]}
    finally:
        catalog.close()
    app.extensions["lookalike.label_jobs"].shutdown()
