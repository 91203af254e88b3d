"""End to end: index a real folder, then query it over the Flask test client."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers import BLUE, GREEN, RED, assert_problem, colour_image, jpeg, png_header_only, run_index, search
from model_fixtures import BLUE_CLASS, GREEN_CLASS, RED_CLASS
from PIL import Image

from indexer.settings import Settings
from search_api import create_app
from search_api.current import install_service, service_of
from storage.vector_index import IndexStore


def test_search_by_upload_returns_neighbours_with_labels(client: FlaskClient) -> None:
    response = search(client, jpeg(colour_image(RED, seed=123, accent=(240, 60, 30))), "?k=6")
    assert response.status_code == 200
    body = response.get_json()
    query_labels = body["query"]["labels"]
    assert len(query_labels) == 5
    assert query_labels[0]["class_id"] == RED_CLASS and query_labels[0]["name"] == "goldfish"
    assert 0.8 < query_labels[0]["probability"] <= 1.0
    assert query_labels[1]["probability"] <= query_labels[0]["probability"]
    results = body["results"]
    assert len(results) == 6
    assert all(Path(r["path"]).name.startswith("red") for r in results)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.99
    first = results[0]
    assert set(first) >= {"id", "path", "score", "labels", "file_url"}
    assert first["labels"][0]["name"] == "goldfish" and len(first["labels"]) == 5


def test_default_k_and_min_score(client: FlaskClient) -> None:
    body = search(client, jpeg(colour_image(BLUE, seed=5))).get_json()
    assert len(body["results"]) == 10
    strict = search(client, jpeg(colour_image(BLUE, seed=5)), "?k=14&min_score=0.99").get_json()["results"]
    assert 0 < len(strict) < 14 and all(r["score"] >= 0.99 for r in strict)


def test_class_filter_returns_k_whenever_k_match(client: FlaskClient) -> None:
    # A red query: the three green images are its least similar, so a filter applied
    # after a top-k search would find none of them.
    red = jpeg(colour_image(RED, seed=7))
    unfiltered = search(client, red, "?k=3").get_json()["results"]
    assert not any("green" in r["path"] for r in unfiltered)
    for spec in ("tree frog", str(GREEN_CLASS), "Tree-Frog".replace("-", " "), "n01644373"):
        results = search(client, red, f"?k=3&class={spec}").get_json()["results"]
        assert len(results) == 3 and all("green" in r["path"] for r in results), spec
    assert len(search(client, red, "?k=10&class=tree frog").get_json()["results"]) == 3
    both = search(client, red, f"?k=8&class={GREEN_CLASS}&class=jellyfish").get_json()["results"]
    assert len(both) == 8 and {r["labels"][0]["class_id"] for r in both} == {GREEN_CLASS, BLUE_CLASS}
    assert search(client, red, "?class=tench").get_json()["results"] == []


def test_similar_excludes_the_image_itself(client: FlaskClient) -> None:
    first = search(client, jpeg(colour_image(GREEN, seed=1)), "?k=1").get_json()["results"][0]
    response = client.get(f"/api/v1/images/{first['id']}/similar?k=5")
    assert response.status_code == 200
    body = response.get_json()
    ids = [r["id"] for r in body["results"]]
    assert first["id"] not in ids and len(ids) == 5
    assert [Path(r["path"]).name[:5] for r in body["results"][:2]] == ["green", "green"]
    assert body["query"]["labels"][0]["class_id"] == GREEN_CLASS
    filtered = client.get(f"/api/v1/images/{first['id']}/similar?k=4&class=goldfish").get_json()["results"]
    assert len(filtered) == 4 and all("red" in r["path"] for r in filtered)


def test_image_metadata_and_file(client: FlaskClient, colour_library: Path) -> None:
    hit = search(client, jpeg(colour_image(BLUE, seed=3)), "?k=1").get_json()["results"][0]
    meta = client.get(f"/api/v1/images/{hit['id']}").get_json()
    assert meta["id"] == hit["id"] and meta["format"] == "PNG" and (meta["width"], meta["height"]) == (96, 80)
    assert meta["labels"][0]["class_id"] == BLUE_CLASS
    response = client.get(meta["file_url"])
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.data == Path(meta["path"]).read_bytes()


def test_thumbnails_are_webp_and_made_on_request_when_missing(client: FlaskClient, indexed: Settings) -> None:
    hit = search(client, jpeg(colour_image(RED, seed=2)), "?k=1").get_json()["results"][0]
    meta = client.get(f"/api/v1/images/{hit['id']}").get_json()
    assert hit["thumbnail_url"] == meta["thumbnail_url"] == f"/api/v1/images/{hit['id']}/thumbnail"
    written = indexed.storage.data_dir / "thumbnails" / meta["content_hash"][:2] / f"{meta['content_hash']}.webp"
    assert written.is_file()  # written by the indexer
    response = client.get(hit["thumbnail_url"])
    assert response.status_code == 200 and response.mimetype == "image/webp"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert Image.open(io.BytesIO(response.data)).size == (96, 80)  # smaller than the preview size: kept
    written.unlink()
    again = client.get(hit["thumbnail_url"])
    assert again.status_code == 200 and written.is_file()
    Path(meta["path"]).unlink()
    written.unlink()
    assert_problem(client.get(hit["thumbnail_url"]), 404, "file_missing")
    assert_problem(client.get("/api/v1/images/999999/thumbnail"), 404, "unknown_image")


def test_file_outside_the_indexed_roots_is_never_served(client: FlaskClient, app: Flask, tmp_path: Path) -> None:
    hit = search(client, jpeg(colour_image(BLUE, seed=3)), "?k=1").get_json()["results"][0]
    path = Path(hit["path"])
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"top secret")
    path.unlink()
    path.symlink_to(secret)  # the library file now points outside the root
    assert_problem(client.get(hit["file_url"]), 404, "file_missing")
    path.unlink()
    assert_problem(client.get(hit["file_url"]), 404, "file_missing")
    for attempt in ("/api/v1/images/..%2f..%2fetc%2fpasswd/file", "/api/v1/images/../../etc/passwd",
                    "/api/v1/images/%2Fetc%2Fpasswd/file", "/api/v1/images/-1/file"):
        assert client.get(attempt).status_code == 404


def test_classes_lists_present_classes_with_counts(client: FlaskClient) -> None:
    classes = client.get("/api/v1/classes").get_json()["classes"]
    by_id = {c["class_id"]: c for c in classes}
    assert by_id[RED_CLASS] == {"kind": "class", "class_id": RED_CLASS, "name": "goldfish", "count": 6}
    assert by_id[BLUE_CLASS]["count"] == 5 and by_id[GREEN_CLASS]["count"] == 3
    assert len(classes) == 3


def test_health(client: FlaskClient, app: Flask) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok", "instance": None}  # set under `lookalike serve`
    assert_problem(client.get("/readyz"), 503, "not_ready")
    service_of(app).warm_up()
    ready = client.get("/readyz").get_json()
    assert ready["status"] == "ready" and ready["vectors"] == 14 and ready["in_step"] is True


def test_readyz_waits_for_an_index_of_the_catalog(indexed: Settings) -> None:
    service = service_of(create_app(indexed))
    service.warm_up()
    service._index = None  # as in a server that could not load any index yet
    service.index = lambda: None  # type: ignore[method-assign]
    app = create_app(indexed)
    install_service(app, service)
    assert_problem(app.test_client().get("/readyz"), 503, "index_not_loaded", "14 images")


TRUNCATED = jpeg(colour_image(RED))[:300]


@pytest.mark.parametrize(
    ("data", "query", "status", "code", "detail"),
    [
        (b"<html>hello</html>", "", 415, "not_image", "not an image"),
        (b"", "", 400, "empty_upload", "empty"),
        (TRUNCATED, "", 422, "corrupt", "cannot decode"),
        (png_header_only(60_000, 60_000), "", 422, "too_many_pixels", "decompression bomb"),
        (os.urandom(2 * 1024 * 1024), "", 413, "request_entity_too_large", "larger than the limit"),
        (b"x", "?k=0", 400, "invalid_parameter", "k must be"),
        (b"x", "?k=1001", 400, "invalid_parameter", "k must be"),
        (b"x", "?k=ten", 400, "invalid_parameter", "k must be an integer"),
        (b"x", "?min_score=high", 400, "invalid_parameter", "min_score"),
        (b"x", "?class=unicorn", 400, "unknown_class", "unicorn"),
        (b"x", "?class=1000", 400, "unknown_class", "out of range"),
    ],
    ids=["not-image", "empty", "truncated", "bomb", "too-large", "k0", "k1001", "k-text", "min-score", "class-name",
         "class-id"],
)
def test_bad_input_gets_a_problem_and_changes_nothing(
    client: FlaskClient, indexed: Settings, data: bytes, query: str, status: int, code: str, detail: str
) -> None:
    store = IndexStore(indexed.storage.data_dir / "index")
    before = store.manifest()
    assert_problem(search(client, data, query), status, code, detail)
    assert store.manifest() == before
    assert search(client, jpeg(colour_image(RED)), "?k=2").status_code == 200  # still serving


def test_other_errors_are_problems_too(client: FlaskClient) -> None:
    no_field = client.post("/api/v1/search", data={"other": (io.BytesIO(b"x"), "a.jpg")},
                           content_type="multipart/form-data")
    body = assert_problem(no_field, 400, "missing_image")
    assert body["field"] == "image"
    assert_problem(client.get("/api/v1/images/9999"), 404, "unknown_image")
    assert_problem(client.get("/api/v1/images/9999/similar"), 404, "unknown_image")
    assert_problem(client.get("/api/v1/nothing-here"), 404, "not_found")
    response = client.get("/api/v1/search")
    assert_problem(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_api_follows_new_index_generations(client: FlaskClient, app: Flask, indexed: Settings,
                                           colour_library: Path) -> None:
    service = service_of(app)
    assert search(client, jpeg(colour_image(RED)), "?k=20").get_json()["results"].__len__() == 14
    extra = colour_library / "late.png"
    colour_image(GREEN, seed=77).save(extra)
    report, _ = run_index(indexed, colour_library)
    assert report.indexed == 1
    service._checked_at = -1e9  # skip the one-second reload throttle
    results = search(client, jpeg(colour_image(GREEN, seed=77)), "?k=20").get_json()["results"]
    assert len(results) == 15 and Path(results[0]["path"]).name == "late.png"
    assert np.isclose(results[0]["score"], 1.0, atol=1e-3)
