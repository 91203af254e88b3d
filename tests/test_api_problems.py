"""Every error the API can meet is a problem response with a stable code: domain errors, statuses
whose HTTP phrase changed between Python versions, odd digits in numbers and ids."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flask.testing import FlaskClient
from helpers import RED, assert_problem, colour_image, jpeg, search

from indexer.settings import Settings
from search_api import create_app


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
    app.extensions["lookalike"].warm_up()  # as a server worker does: the error is kept, not raised
    for response in (client.get("/readyz"), search(client, jpeg(colour_image(RED)))):
        assert_problem(response, 503, "model_unavailable", f"model.handle '{missing}'")
    assert client.get("/healthz").status_code == 200


def test_a_catalog_that_cannot_be_reached_is_503(settings_for: Callable[..., Settings]) -> None:
    client = _client(settings_for(storage={"database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none"}))
    for path in ("/api/v1/stats", "/api/v1/images/1", "/api/v1/images?limit=5"):
        body = assert_problem(client.get(path), 503, "catalog_unavailable", "catalog database")
        assert "127.0.0.1" not in body["detail"] and "nobody" not in body["detail"]
