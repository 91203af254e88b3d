"""Query parameters: every route answers a bad value with the same problem, word for word.

Clients match on `code` and `parameter` and show `detail` to people, so the wording is part of
the contract; blank values mean the default, and numbers are ASCII digits only. The served
OpenAPI description states exactly the bounds the routes apply.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from helpers import RED, assert_problem, colour_image, jpeg, run_index, search

from indexer.settings import Settings
from search_api import create_app

UNKNOWN_UNICORN = ("unknown class 'unicorn': give a class id 0..999, an exact ImageNet class name, or a WordNet "
                   "concept such as 'dog', 'bird' or 'vehicle'; did you mean 'longicorn'?")

SEARCH_CASES = [
    ("k=ten", "k", "k must be an integer from 1 to 1000, got 'ten'"),
    ("k=%D9%A3", "k", "k must be an integer from 1 to 1000, got '\u0663'"),
    ("k=%205", "k", "k must be an integer from 1 to 1000, got ' 5'"),
    ("k=" + "9" * 41, "k", f"k must be an integer from 1 to 1000, got '{'9' * 41}'"),
    ("k=" + "9" * 40, "k", f"k must be from 1 to 1000, got {'9' * 40}"),
    ("k=0", "k", "k must be from 1 to 1000, got 0"),
    ("k=0&k=2", "k", "k must be from 1 to 1000, got 0"),
    ("offset=x", "offset", "offset must be an integer from 0 to 10000 (search.max_offset), got 'x'"),
    ("offset=-1", "offset", "offset must be an integer from 0 to 10000 (search.max_offset), got '-1'"),
    ("min_score=nan", "min_score", "min_score must be a number from -1 to 1 (cosine similarity), got 'nan'"),
    ("min_score=-7", "min_score", "min_score must be a number from -1 to 1 (cosine similarity), got '-7'"),
    ("class_rule=TOP1", "class_rule", "class_rule must be one of top1, top5, got 'TOP1'"),
    ("class_min_probability=2", "class_min_probability",
     "class_min_probability must be a number from 0 to 1, got '2'"),
    ("dedupe=t", "dedupe", "dedupe must be true or false, got 't'"),
    ("class=unicorn&k=0", "k", "k must be from 1 to 1000, got 0"),
]
BROWSE_CASES = [
    ("/api/v1/images?offset=x", "offset", "offset must be an integer from 0 to 2147483647, got 'x'"),
    ("/api/v1/images?offset=2147483648", "offset", "offset must be from 0 to 2147483647, got 2147483648"),
    ("/api/v1/images?limit=501", "limit", "limit must be from 1 to 500, got 501"),
    ("/api/v1/images?limit=ten", "limit", "limit must be an integer from 1 to 500, got 'ten'"),
    ("/api/v1/images?limit=0&offset=-1", "offset", "offset must be from 0 to 2147483647, got -1"),
    ("/api/v1/images?class_rule=top3", "class_rule", "class_rule must be one of top1, top5, got 'top3'"),
    ("/api/v1/classes?limit=0", "limit", "limit must be from 1 to 1000, got 0"),
    ("/api/v1/classes?q=fish&limit=ten", "limit", "limit must be an integer from 1 to 1000, got 'ten'"),
    ("/api/v1/classes?class_min_probability=x", "class_min_probability",
     "class_min_probability must be a number from 0 to 1, got 'x'"),
    ("/api/v1/labels/any/members?limit=501", "limit", "limit must be from 1 to 500, got 501"),
    ("/api/v1/labels/any/members?offset=x", "offset", "offset must be an integer from 0 to 2147483647, got 'x'"),
]


def test_search_routes_word_each_bad_value_alike(client: FlaskClient) -> None:
    red = jpeg(colour_image(RED))
    for query, parameter, detail in SEARCH_CASES:
        answers = [search(client, red, f"?{query}"), client.get(f"/api/v1/images/1/similar?{query}"),
                   client.post(f"/api/v1/search/batch?{query}", content_type="multipart/form-data",
                               data={"images": [(io.BytesIO(red), "r.jpg")]})]
        for response in answers:
            body = assert_problem(response, 400, "invalid_parameter")
            assert (body["parameter"], body["detail"]) == (parameter, detail), query


def test_browsing_routes_word_each_bad_value(client: FlaskClient) -> None:
    for path, parameter, detail in BROWSE_CASES:
        body = assert_problem(client.get(path), 400, "invalid_parameter")
        assert (body["parameter"], body["detail"]) == (parameter, detail), path


def test_unknown_classes_and_labels_name_the_class_parameter(client: FlaskClient) -> None:
    for path in ("/api/v1/images?class=unicorn", "/api/v1/images/1/similar?class=unicorn"):
        body = assert_problem(client.get(path), 400, "unknown_class")
        assert (body["parameter"], body["detail"]) == ("class", UNKNOWN_UNICORN)
    body = assert_problem(client.get("/api/v1/images?class=label:nope"), 400, "unknown_class")
    assert (body["parameter"], body["detail"]) == ("class", "unknown custom label 'nope' in class filter label:nope")


def test_blank_values_mean_the_default(client: FlaskClient) -> None:
    red = jpeg(colour_image(RED))
    blank = search(client, red, "?k=&offset=&min_score=&class=&class_rule=&class_min_probability=&dedupe=%20")
    plain = search(client, red)
    assert blank.status_code == 200 and blank.get_json() == plain.get_json()
    assert len(plain.get_json()["results"]) == 10  # search.default_k
    browsed = client.get("/api/v1/images?limit=&offset=&class_rule=").get_json()
    assert browsed["limit"] == 50 and browsed["offset"] == 0
    assert client.get("/api/v1/classes?q=&limit=").get_json() == client.get("/api/v1/classes").get_json()


def test_flags_take_the_usual_words_in_any_case(client: FlaskClient) -> None:
    red = jpeg(colour_image(RED))
    for word in ("YES", "%20on%20", "1", "true"):
        results = search(client, red, f"?dedupe={word}").get_json()["results"]
        assert all("duplicates" in hit for hit in results), word
    for word in ("off", "No", "0", "FALSE"):
        results = search(client, red, f"?dedupe={word}").get_json()["results"]
        assert results and not any("duplicates" in hit for hit in results), word


def edges(schema: dict[str, Any]) -> Iterator[tuple[str, bool]]:
    """Values at and just past the bounds the document states, and whether it says each is allowed."""
    if "enum" in schema:
        yield from ((value, True) for value in schema["enum"])
        yield "other", False
    elif schema.get("type") == "boolean":
        yield from (("true", True), ("false", True), ("maybe", False))
    elif schema.get("type") in ("integer", "number"):
        step = 1 if schema["type"] == "integer" else 0.001
        for bound, outward in (("minimum", -step), ("maximum", step)):
            if bound in schema:
                yield str(schema[bound]), True
                yield str(schema[bound] + outward), False
        if "maximum" not in schema:
            yield str(10**30), True  # no maximum stated: none may be enforced


def test_the_document_states_exactly_what_the_routes_enforce(settings_for: Callable[..., Settings],
                                                             colour_library: Path) -> None:
    """Every bound, enum and flag the served description states for a query parameter is the one the
    route applies, settings-dependent limits included."""
    settings = settings_for(search={"max_k": 5, "max_offset": 6, "default_k": 3})
    run_index(settings, colour_library)
    client = create_app(settings).test_client()
    spec = client.get("/api/v1/openapi.json").get_json()
    red = jpeg(colour_image(RED))
    checked = set()
    for path, operations in spec["paths"].items():
        url = path.replace("{image_id}", "1").replace("{name}", "none-such")
        for method, op in operations.items():
            for param in (p for p in op.get("parameters", []) if p["in"] == "query"):
                for value, allowed in edges(param["schema"]):
                    query = f"?{param['name']}={value}"
                    if method == "get":
                        response = client.get(url + query)
                    elif path.endswith("/batch"):
                        response = client.post(url + query, content_type="multipart/form-data",
                                               data={"images": [(io.BytesIO(red), "r.jpg")]})
                    else:
                        response = search(client, red, query)
                    body = response.get_json(force=True)
                    refused = response.status_code == 400 and body.get("code") == "invalid_parameter"
                    assert refused != allowed, (method, path, query, response.status_code, body)
                    assert not refused or body["parameter"] == param["name"]
                    checked.add((path, param["name"]))
    assert ("/api/v1/search", "k") in checked and ("/api/v1/images", "limit") in checked
    k = {p["name"]: p for p in spec["paths"]["/api/v1/search"]["post"]["parameters"]}["k"]["schema"]
    assert (k["maximum"], k["default"]) == (5, 3)
    assert len(search(client, red).get_json()["results"]) == 3
