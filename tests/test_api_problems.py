"""Every error the API can meet is a problem response with a stable code: domain errors, statuses
whose HTTP phrase changed between Python versions, odd digits in numbers and ids."""

from __future__ import annotations

import http
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient
from helpers import RED, assert_problem, colour_image, jpeg, search

from indexer.settings import Settings
from search_api import create_app, problems
from search_api.current import service_of


def _client(settings: Settings) -> FlaskClient:
    app = create_app(settings)
    app.config["TESTING"] = True
    return app.test_client()


def test_a_model_other_than_the_catalogs_is_503_model_mismatch(indexed: Settings, tf2_module: Path) -> None:
    other = indexed.model_copy(update={"model": indexed.model.model_copy(update={"handle": str(tf2_module)})})
    client = _client(other)
    for response in (search(client, jpeg(colour_image(RED))), client.get("/api/v1/images/1/similar"),
                     client.get("/readyz"), client.get("/api/v1/stats")):
        body = assert_problem(response, 503, "model_mismatch", "lookalike index --reindex")
        assert "Vectors of different models cannot be compared" in body["detail"]
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/v1/images/1").status_code == 200  # metadata needs no vectors


def test_a_model_that_cannot_load_is_503_model_unavailable(settings_for: Callable[..., Settings],
                                                           tmp_path: Path) -> None:
    missing = tmp_path / "no-such-module"
    client = _client(settings_for(handle=missing))
    app = client.application
    service_of(app).warm_up()  # as a server worker does: the error is kept, not raised
    for response in (client.get("/readyz"), search(client, jpeg(colour_image(RED)))):
        assert_problem(response, 503, "model_unavailable", f"model.handle '{missing}'")
    assert client.get("/healthz").status_code == 200


def test_a_catalog_that_cannot_be_reached_is_503(settings_for: Callable[..., Settings]) -> None:
    client = _client(settings_for(storage={"database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none"}))
    for path in ("/api/v1/stats", "/api/v1/images/1", "/api/v1/images?limit=5"):
        body = assert_problem(client.get(path), 503, "catalog_unavailable", "catalog database")
        assert "127.0.0.1" not in body["detail"] and "nobody" not in body["detail"]


def test_problem_codes_do_not_follow_the_http_phrases_of_the_python_version(
        client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.13 renamed 413 to "Content Too Large" and 422 to "Unprocessable Content"."""
    renamed = {413: "Content Too Large", 422: "Unprocessable Content", 416: "Range Not Satisfiable"}

    class Python313Status:
        def __init__(self, value: int) -> None:
            real = http.HTTPStatus(value)
            self.value, self.description = real.value, real.description
            self.phrase = renamed.get(value, real.phrase)

    monkeypatch.setattr(problems, "HTTPStatus", Python313Status, raising=False)
    body = assert_problem(search(client, os.urandom(2 * 1024 * 1024)), 413, "request_entity_too_large")
    assert body["title"] == "Request Entity Too Large"
    assert_problem(client.get("/api/v1/nothing"), 404, "not_found")


# Arabic-Indic three, fullwidth one, superscript two, Devanagari five; and what int() also forgives.
ODD_NUMBERS = ["\u0663", "\uff11", "\u00b2", "\u096b", "1_0", " 3", "３"]


@pytest.mark.parametrize("number", ODD_NUMBERS)
def test_numbers_are_ascii_digits_only(client: FlaskClient, number: str) -> None:
    query = jpeg(colour_image(RED))
    for name in ("k", "offset"):
        body = assert_problem(search(client, query, f"?{name}={quote(number)}"), 400, "invalid_parameter")
        assert body["parameter"] == name
    assert_problem(client.get(f"/api/v1/images?limit={quote(number)}"), 400, "invalid_parameter")
    assert_problem(client.get(f"/api/v1/images?offset={quote(number)}"), 400, "invalid_parameter")
    if not number.strip().isascii():  # a class filter is stripped like a name: " 3" is class 3
        assert_problem(search(client, query, f"?class={quote(number)}"), 400, "unknown_class")
    assert client.get(f"/api/v1/classes?q={quote(number)}").status_code == 200
    for path in ("/api/v1/images/{}", "/api/v1/images/{}/similar", "/api/v1/images/{}/file",
                 "/api/v1/images/{}/thumbnail"):
        assert_problem(client.get(path.format(quote(number))), 404, "not_found")


@pytest.mark.parametrize("number", ["\u0660.\u0665", "0_1", "\uff10.5", "nan", "inf"])
def test_decimal_parameters_are_ascii_too(client: FlaskClient, number: str) -> None:
    query = jpeg(colour_image(RED))
    for name in ("min_score", "class_min_probability"):
        body = assert_problem(search(client, query, f"?{name}={quote(number)}"), 400, "invalid_parameter")
        assert body["parameter"] == name


def test_plain_numbers_still_work(client: FlaskClient) -> None:
    query = jpeg(colour_image(RED))
    answer = search(client, query, "?k=3&offset=1&min_score=-0.5&class_min_probability=.1&class=0")
    assert answer.status_code == 200 and answer.get_json()["results"] == []  # no tench in the library
    assert len(search(client, query, "?k=3&offset=1&min_score=-5e-1").get_json()["results"]) == 3
    assert client.get("/api/v1/images/1").status_code == 200
    assert client.get("/api/v1/images?limit=2&offset=0").status_code == 200


def test_metrics_name_one_charset(client: FlaskClient) -> None:
    content_type = client.get("/metrics").headers["Content-Type"]
    assert content_type.startswith("text/plain") and content_type.count("charset") == 1, content_type
