"""Prometheus metrics change when queries are answered."""

from __future__ import annotations

import io

from flask.testing import FlaskClient
from helpers import BLUE, RED, colour_image, jpeg, search
from prometheus_client.parser import text_string_to_metric_families

from indexer.settings import Settings


def scrape(client: FlaskClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True)) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_a_query_moves_request_embed_and_search_metrics(client: FlaskClient) -> None:
    route = {"route": "/api/v1/search", "method": "POST", "status": "200"}
    before = scrape(client)
    search(client, jpeg(colour_image(RED)), "?k=3")
    after = scrape(client)
    assert value(after, "lookalike_http_request_duration_seconds_count", **route) == \
        value(before, "lookalike_http_request_duration_seconds_count", **route) + 1
    assert value(after, "lookalike_http_request_duration_seconds_sum", **route) > \
        value(before, "lookalike_http_request_duration_seconds_sum", **route)
    for name in ("lookalike_embed_seconds_count", "lookalike_search_seconds_count"):
        assert value(after, name) == value(before, name) + 1, name
    assert value(after, "lookalike_index_vectors") == 14
    assert value(after, "lookalike_index_generation") >= 1


def test_routes_are_labelled_by_template_and_status(client: FlaskClient) -> None:
    first = search(client, jpeg(colour_image(BLUE)), "?k=1").get_json()["results"][0]["id"]
    before = scrape(client)
    client.get(f"/api/v1/images/{first}/similar?k=2")
    client.get("/api/v1/images/99999/similar")
    client.get("/no/such/page")
    client.post("/api/v1/search/batch", data={"images": [(io.BytesIO(b"x"), "x.jpg")]},
                content_type="multipart/form-data")
    after = scrape(client)
    template = "/api/v1/images/<int:image_id>/similar"
    for labels in ({"route": template, "method": "GET", "status": "200"},
                   {"route": template, "method": "GET", "status": "404"},
                   {"route": "<unmatched>", "method": "GET", "status": "404"},
                   {"route": "/api/v1/search/batch", "method": "POST", "status": "200"}):
        name = "lookalike_http_request_duration_seconds_count"
        assert value(after, name, **labels) == value(before, name, **labels) + 1, labels
    assert not any(f"/{first}/" in dict(labels).get("route", "") for _, labels in after)


def test_metrics_follow_the_served_generation(client: FlaskClient, indexed: Settings) -> None:
    from search_api.metrics import INDEX_GENERATION

    INDEX_GENERATION.set(-5)
    samples = scrape(client)  # a scrape reads the generation being served
    assert value(samples, "lookalike_index_generation") == client.get("/api/v1/stats").get_json()["generation"]
