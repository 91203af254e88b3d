"""Every request limit answers with its own RFC 9457 problem, names the setting, and changes nothing."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from helpers import RED, assert_problem, colour_image, jpeg, png_header_only, run_index, search

from indexer.settings import Settings, SettingsError, load_settings
from search_api import create_app

RED_JPEG = jpeg(colour_image(RED, seed=2))


@pytest.fixture
def small_limits(settings_for: Callable[..., Settings], colour_library: Path) -> FlaskClient:
    settings = settings_for(api={"max_upload_mb": 1, "max_batch_images": 2, "max_form_parts": 4},
                            search={"max_k": 5, "max_offset": 6})
    run_index(settings, colour_library)
    return create_app(settings).test_client()


def parts(client: FlaskClient, path: str, fields: dict[str, list[tuple[bytes, str]]]):  # type: ignore[no-untyped-def]
    data = {name: [(io.BytesIO(d), n) for d, n in files] for name, files in fields.items()}
    return client.post(path, data=data, content_type="multipart/form-data")


@pytest.mark.parametrize(
    ("query", "parameter", "detail"),
    [
        ("?offset=-1", "offset", "offset must be an integer from 0 to 6 (search.max_offset)"),
        ("?offset=7", "offset", "got '7'"),
        ("?offset=two", "offset", "got 'two'"),
        ("?k=6", "k", "k must be from 1 to 5"),
        ("?dedupe=maybe", "dedupe", "dedupe must be true or false"),
    ],
)
def test_parameter_bounds(small_limits: FlaskClient, query: str, parameter: str, detail: str) -> None:
    for response in (search(small_limits, RED_JPEG, query),
                     parts(small_limits, f"/api/v1/search/batch{query}", {"images": [(RED_JPEG, "a.jpg")]}),
                     small_limits.get(f"/api/v1/images/1/similar{query}")):
        body = assert_problem(response, 400, "invalid_parameter", detail)
        assert body["parameter"] == parameter
    assert search(small_limits, RED_JPEG, "?k=5&offset=6").status_code == 200


def test_batch_size_limit(small_limits: FlaskClient) -> None:
    body = assert_problem(parts(small_limits, "/api/v1/search/batch", {"images": [(RED_JPEG, f"{i}.jpg")
                                                                                for i in range(3)]}),
                          413, "too_many_images", "at most 2 are accepted (api.max_batch_images)")
    assert body["limit"] == 2 and body["field"] == "images"
    ok = parts(small_limits, "/api/v1/search/batch", {"images": [(RED_JPEG, "a.jpg"), (RED_JPEG, "b.jpg")]})
    assert ok.status_code == 200 and len(ok.get_json()["results"]) == 2


def test_too_many_multipart_parts(small_limits: FlaskClient) -> None:
    many = {"images": [(RED_JPEG[:10], "a.jpg")], **{f"x{i}": [(b"x", f"{i}.txt")] for i in range(5)}}
    for path in ("/api/v1/search", "/api/v1/search/batch"):
        assert_problem(parts(small_limits, path, many), 413, "request_entity_too_large",
                       "more than 4 parts (api.max_form_parts)")


def test_body_size_limit_holds_for_every_way_to_send_images(small_limits: FlaskClient) -> None:
    big = os.urandom(2 * 1024 * 1024)
    for response in (
        small_limits.post("/api/v1/search", data=big, content_type="image/jpeg"),
        small_limits.post("/api/v1/search", data=big, content_type="application/octet-stream"),
        parts(small_limits, "/api/v1/search/batch", {"images": [(big, "a.jpg")]}),
        search(small_limits, big),
    ):
        assert_problem(response, 413, "request_entity_too_large", "larger than the limit of 1,048,576 bytes")


def test_pixel_limit_in_raw_bodies_and_batches(client: FlaskClient) -> None:
    bomb = png_header_only(60_000, 60_000)
    assert_problem(client.post("/api/v1/search", data=bomb, content_type="image/png"), 422, "too_many_pixels",
                   "decompression bomb")
    item = parts(client, "/api/v1/search/batch", {"images": [(bomb, "bomb.png")]}).get_json()["results"][0]
    assert item["error"]["status"] == 422 and item["error"]["code"] == "too_many_pixels"


def test_limit_settings_are_checked_together() -> None:
    with pytest.raises(SettingsError, match="api.max_form_parts .* must be at least api.max_batch_images"):
        load_settings(environ={"LOOKALIKE_API__MAX_BATCH_IMAGES": "32", "LOOKALIKE_API__MAX_FORM_PARTS": "8"},
                      config_file=os.devnull)
    with pytest.raises(SettingsError, match="search.dedupe_threshold"):
        load_settings(environ={"LOOKALIKE_SEARCH__DEDUPE_THRESHOLD": "1.5"}, config_file=os.devnull)
