"""Query features of the search API: raw image bodies, pagination, dedupe and batch search."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers import BLUE, GREEN, RED, assert_problem, colour_image, counted_model, jpeg, run_index, search
from model_fixtures import BLUE_CLASS, RED_CLASS

from indexer.settings import Settings
from search_api import create_app
from search_api.current import service_of


def raw_search(client: FlaskClient, data: bytes, content_type: str, query: str = ""):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v1/search{query}", data=data, content_type=content_type)


def batch(client: FlaskClient, images: list[tuple[bytes, str]], query: str = ""):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v1/search/batch{query}",
                       data={"images": [(io.BytesIO(data), name) for data, name in images]},
                       content_type="multipart/form-data")


def ids(body: dict) -> list[int]:  # type: ignore[type-arg]
    return [r["id"] for r in body["results"]]


# --- raw image bodies ------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png", "application/octet-stream"])
def test_raw_body_answers_like_the_multipart_upload(client: FlaskClient, content_type: str) -> None:
    red = jpeg(colour_image(RED, seed=9))
    raw = raw_search(client, red, content_type, "?k=4")
    assert raw.status_code == 200, raw.get_data(as_text=True)
    multipart = search(client, red, "?k=4").get_json()
    assert raw.get_json() == multipart
    assert multipart["query"]["labels"][0]["class_id"] == RED_CLASS and len(multipart["results"]) == 4


def test_raw_body_errors_name_the_body(client: FlaskClient) -> None:
    body = assert_problem(raw_search(client, b"<html>hi</html>", "image/jpeg"), 415, "not_image", "body")
    assert body["field"] == "body"
    assert_problem(raw_search(client, b"", "image/png"), 400, "empty_upload", "empty")
    wrong = assert_problem(raw_search(client, jpeg(colour_image(RED)), "application/x-www-form-urlencoded"), 415,
                           "unsupported_media_type", "application/x-www-form-urlencoded")
    assert "multipart form field 'image'" in wrong["detail"] and "image/*" in wrong["detail"]
    assert_problem(client.post("/api/v1/search"), 400, "missing_image", "multipart form field 'image'")


# --- pagination ----------------------------------------------------------------------------------

def test_pages_are_consecutive_slices_of_one_ranking(client: FlaskClient) -> None:
    query = jpeg(colour_image(BLUE, seed=2))
    everything = search(client, query, "?k=14").get_json()
    assert everything["next_offset"] is None and len(everything["results"]) == 14
    pages, offset = [], 0
    while offset is not None:
        page = search(client, query, f"?k=5&offset={offset}").get_json()
        pages.append(page)
        offset = page["next_offset"]
    assert [p["next_offset"] for p in pages] == [5, 10, None]
    assert [len(p["results"]) for p in pages] == [5, 5, 4]
    assert sum((ids(p) for p in pages), []) == ids(everything)
    assert all(p["query"] == everything["query"] for p in pages)
    beyond = search(client, query, "?k=5&offset=14").get_json()
    assert beyond["results"] == [] and beyond["next_offset"] is None
    # A page that ends exactly at the last result has no next page.
    assert search(client, query, "?k=7&offset=7").get_json()["next_offset"] is None


def test_pagination_with_filters_and_on_similar(client: FlaskClient) -> None:
    query = jpeg(colour_image(RED, seed=1))
    first = search(client, query, "?k=2&class=jellyfish").get_json()
    rest = search(client, query, f"?k=10&class=jellyfish&offset={first['next_offset']}").get_json()
    assert first["next_offset"] == 2 and len(rest["results"]) == 3 and rest["next_offset"] is None
    assert {r["labels"][0]["class_id"] for r in first["results"] + rest["results"]} == {BLUE_CLASS}
    strict = search(client, query, "?k=3&min_score=0.99").get_json()
    assert strict["next_offset"] == 3  # six red images score above 0.99
    assert search(client, query, "?k=3&offset=3&min_score=0.99").get_json()["next_offset"] is None

    anchor = ids(search(client, query, "?k=1").get_json())[0]
    whole = client.get(f"/api/v1/images/{anchor}/similar?k=13").get_json()
    assert whole["next_offset"] is None and anchor not in ids(whole)
    second = client.get(f"/api/v1/images/{anchor}/similar?k=4&offset=4").get_json()
    assert ids(second) == ids(whole)[4:8] and second["next_offset"] == 8
    assert second["query"]["id"] == anchor


# --- dedupe --------------------------------------------------------------------------------------

def test_dedupe_collapses_near_duplicates_into_the_best_match(client: FlaskClient) -> None:
    query = jpeg(colour_image(RED, seed=4))
    plain = search(client, query, "?k=14").get_json()["results"]
    assert "duplicates" not in plain[0]
    deduped = search(client, query, "?k=14&dedupe=true").get_json()
    results = deduped["results"]
    # The fixture's images of one colour are near-duplicates of each other (cosine > 0.99).
    assert [r["labels"][0]["name"] for r in results] == ["goldfish", "tree frog", "jellyfish"]
    assert deduped["next_offset"] is None
    by_id = {r["id"]: r for r in plain}
    for result in results:
        assert result["id"] == next(r["id"] for r in plain if r["labels"][0]["name"] == result["labels"][0]["name"])
        assert all(by_id[d]["labels"][0]["name"] == result["labels"][0]["name"] for d in result["duplicates"])
        assert result["collapsed"] == len(result["duplicates"]) and result["paths"] == [result["path"]]
    assert [len(r["duplicates"]) for r in results] == [5, 2, 4]
    assert sorted(sum((r["duplicates"] for r in results), []) + ids(deduped)) == sorted(by_id)
    second = search(client, query, "?k=1&offset=1&dedupe=1").get_json()
    assert ids(second) == [results[1]["id"]] and second["next_offset"] == 2


def test_dedupe_threshold_setting_and_exact_copies(settings_for: Callable[..., Settings],
                                                   colour_library: Path) -> None:
    shutil.copy(colour_library / "red" / "red0.jpg", colour_library / "red" / "copy-of-red0.jpg")
    settings = settings_for(search={"dedupe_threshold": 0.9965})
    run_index(settings, colour_library)
    client = create_app(settings).test_client()
    query = jpeg(colour_image(RED, seed=0, accent=(220, 30, 30)))
    plain = search(client, query, "?k=6").get_json()["results"]
    assert len(plain) == 6 and all("red" in r["path"] for r in plain)
    red = search(client, query, "?k=6&dedupe=true&class=goldfish").get_json()["results"]
    # Greedy groups in score order: red0..red3 are within 0.9965 of red0; red4 is not, and red5 is within of red4.
    names = {r["id"]: Path(r["path"]).name for r in plain}
    assert len(red) == 2
    assert sorted(names[i] for i in red[0]["duplicates"]) == ["red1.jpg", "red2.jpg", "red3.jpg"]
    assert [names[i] for i in red[1]["duplicates"]] == ["red5.jpg"]
    assert sorted(Path(p).name for p in red[0]["paths"]) == ["copy-of-red0.jpg", "red0.jpg"]
    assert red[0]["collapsed"] == 4 and red[1]["collapsed"] == 1


# --- batch ---------------------------------------------------------------------------------------

def test_batch_answers_each_image_in_order_with_one_model_call(client: FlaskClient, app: Flask) -> None:
    calls = counted_model(service_of(app))
    red, blue, green = (jpeg(colour_image(c, seed=3)) for c in (RED, BLUE, GREEN))
    response = batch(client, [(red, "red.jpg"), (blue, "blue.jpg"), (green, "green.jpg")], "?k=3")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert calls == [3]
    items = response.get_json()["results"]
    assert [i["query"]["filename"] for i in items] == ["red.jpg", "blue.jpg", "green.jpg"]
    assert [i["query"]["index"] for i in items] == [0, 1, 2]
    for item, data in zip(items, (red, blue, green), strict=True):
        single = search(client, data, "?k=3").get_json()
        assert item["results"] == single["results"] and item["query"]["labels"] == single["query"]["labels"]
        assert item["next_offset"] == 3 and "error" not in item


def test_one_bad_image_does_not_fail_the_batch(client: FlaskClient) -> None:
    red = jpeg(colour_image(RED, seed=3))
    response = batch(client, [(red, "a.jpg"), (b"not an image", "b.jpg"), (b"", "c.jpg"),
                              (jpeg(colour_image(BLUE))[:200], "d.jpg"), (red, "e.jpg")], "?k=2&offset=1")
    assert response.status_code == 200
    items = response.get_json()["results"]
    assert [("error" in i) for i in items] == [False, True, True, True, False]
    assert items[0]["results"] == items[4]["results"] and len(items[0]["results"]) == 2
    errors = [items[i]["error"] for i in (1, 2, 3)]
    assert [(e["status"], e["code"]) for e in errors] == [(415, "not_image"), (400, "empty_upload"), (422, "corrupt")]
    for i, error in zip((1, 2, 3), errors, strict=True):
        assert error["index"] == i and error["field"] == "images" and f"images[{i}]" in error["detail"]
        assert error["type"] == "about:blank" and error["title"] and error["instance"] == "/api/v1/search/batch"
        assert items[i]["results"] == [] and items[i]["next_offset"] is None
        assert items[i]["query"] == {"index": i, "filename": "bcd"[i - 1] + ".jpg"}


def test_batch_request_errors(client: FlaskClient) -> None:
    red = jpeg(colour_image(RED))
    assert_problem(client.post("/api/v1/search/batch", data={"image": (io.BytesIO(red), "a.jpg")},
                               content_type="multipart/form-data"), 400, "missing_image", "'images'")
    assert_problem(client.post("/api/v1/search/batch", data=red, content_type="image/jpeg"), 415,
                   "unsupported_media_type", "multipart/form-data")
    assert_problem(batch(client, [(red, "a.jpg")], "?k=0"), 400, "invalid_parameter", "k must be")
    assert_problem(client.get("/api/v1/search/batch"), 405, "method_not_allowed")
