"""The served OpenAPI description is valid, covers every route, and matches what the routes answer."""

from __future__ import annotations

import io
import re
from typing import Any

import jsonschema
import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers import GREEN, RED, colour_image, jpeg, search
from openapi_spec_validator import validate

from search_api.current import service_of
from search_api.openapi import api_rules, openapi_path

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def spec(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.get_json()


def undocumented(spec: dict[str, Any], app: Flask) -> list[str]:
    """Routes missing from the description, or present without a summary and a described success answer."""
    missing = []
    for rule in api_rules(app):
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            op = spec["paths"].get(openapi_path(rule), {}).get(method.lower())
            success = [r for status, r in (op or {}).get("responses", {}).items() if status.startswith("2")]
            described = any("content" in r for r in success) or "204" in op.get("responses", {}) if op else False
            if op is None or not op.get("operationId") or not described:
                missing.append(f"{method} {rule.rule}")
    return missing


def test_served_description_is_valid_openapi(spec: dict[str, Any]) -> None:
    validate(spec)
    assert spec["openapi"].startswith("3.1") and spec["info"]["title"] == "lookalike"


def test_every_registered_route_is_described(spec: dict[str, Any], app: Flask) -> None:
    assert undocumented(spec, app) == []
    rules = {(openapi_path(r), m.lower()) for r in api_rules(app) for m in r.methods or () if m.lower() in HTTP_METHODS}
    described = {(p, m) for p, ops in spec["paths"].items() for m in ops if m in HTTP_METHODS}
    assert described == rules
    assert {"/api/v1/search", "/api/v1/search/batch", "/api/v1/images/{image_id}/similar", "/metrics",
            "/healthz", "/readyz", "/api/v1/openapi.json"} <= {p for p, _ in described}


def test_a_new_undecorated_route_is_caught(app: Flask) -> None:
    @app.get("/api/v1/new-thing")
    def new_thing() -> str:
        """Something new."""
        return "x"

    spec = app.test_client().get("/api/v1/openapi.json").get_json()
    validate(spec)
    assert spec["paths"]["/api/v1/new-thing"]["get"]["summary"] == "Something new."
    assert undocumented(spec, app) == ["GET /api/v1/new-thing"]


def test_parameters_bodies_and_problems_are_described(spec: dict[str, Any], indexed) -> None:  # type: ignore[no-untyped-def]
    search_op = spec["paths"]["/api/v1/search"]["post"]
    params = {p["name"]: p for p in search_op["parameters"]}
    assert set(params) == {"k", "offset", "class", "class_rule", "class_min_probability", "min_score", "dedupe"}
    assert params["k"]["schema"]["maximum"] == indexed.search.max_k
    assert params["k"]["schema"]["default"] == indexed.search.default_k
    assert params["offset"]["schema"]["maximum"] == indexed.search.max_offset
    assert params["class"]["schema"]["type"] == "array" and params["class"]["explode"] is True
    assert set(search_op["requestBody"]["content"]) == {"multipart/form-data", "image/*", "application/octet-stream"}
    for status in ("400", "413", "415", "422", "default"):
        content = search_op["responses"][status]["content"]
        assert content == {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    batch_op = spec["paths"]["/api/v1/search/batch"]["post"]
    upload = spec["components"]["schemas"]["BatchUpload"]["properties"]["images"]
    assert upload["items"] == {"type": "string", "format": "binary"}
    assert "error" in batch_op["description"]
    similar = spec["paths"]["/api/v1/images/{image_id}/similar"]["get"]
    assert similar["parameters"][0] == {"name": "image_id", "in": "path", "required": True,
                                        "description": "catalog id of the query image",
                                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}}
    assert "image/*" in spec["paths"]["/api/v1/images/{image_id}/file"]["get"]["responses"]["200"]["content"]
    assert spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


def check(spec: dict[str, Any], schema_name: str, instance: Any) -> None:
    """Validate a served JSON body against a component schema of the served description."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    jsonschema.Draft202012Validator(schema).validate(instance)


def test_real_answers_match_their_schemas(spec: dict[str, Any], client: FlaskClient, app: Flask) -> None:
    not_ready = client.get("/readyz")  # before anything has loaded the model
    assert not_ready.status_code == 503
    check(spec, "Problem", not_ready.get_json(force=True))
    red = jpeg(colour_image(RED, seed=8))
    body = search(client, red, "?k=3&dedupe=true").get_json()
    check(spec, "SearchResponse", body)
    check(spec, "SearchResponse", search(client, red, "?k=2&offset=1").get_json())
    image_id = body["results"][0]["id"]
    check(spec, "SimilarResponse", client.get(f"/api/v1/images/{image_id}/similar?k=2").get_json())
    check(spec, "ImageDetails", client.get(f"/api/v1/images/{image_id}").get_json())
    check(spec, "Stats", client.get("/api/v1/stats").get_json())
    check(spec, "Health", client.get("/healthz").get_json())
    batch = client.post("/api/v1/search/batch?k=2", content_type="multipart/form-data",
                        data={"images": [(io.BytesIO(jpeg(colour_image(GREEN))), "g.jpg"),
                                         (io.BytesIO(b"nope"), "n.jpg")]}).get_json()
    check(spec, "BatchResponse", batch)
    check(spec, "Problem", batch["results"][1]["error"])
    for problem in (client.get("/api/v1/images/999/similar"), client.get("/api/v1/search"),
                    search(client, red, "?k=0")):
        check(spec, "Problem", problem.get_json(force=True))
    service_of(app).warm_up()
    check(spec, "Ready", client.get("/readyz").get_json())
    with pytest.raises(jsonschema.ValidationError):
        check(spec, "SearchResponse", {"query": {"labels": []}, "results": [{"id": "x"}], "next_offset": None})


def test_docs_page_works_offline(client: FlaskClient) -> None:
    response = client.get("/api/v1/docs", follow_redirects=True)
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "/api/v1/openapi.json" in page
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and not [a for a in assets if "//" in a], "every asset must come from this server"
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200 and len(served.data) > 100, asset
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)


def test_stats_describe_the_index_searched(spec: dict[str, Any], client: FlaskClient) -> None:
    index_fields = {"index_type", "nprobe", "nprobe_source", "recall_at_10", "exact_scan_ms", "exact_budget_ms"}
    assert index_fields <= set(spec["components"]["schemas"]["Stats"]["required"])
    body = client.get("/api/v1/stats").get_json()
    check(spec, "Stats", body)
    assert {"images", "files", "vectors", "generation", "model_id", "model"} <= set(body)
    # 14 images are too few to train an inverted file: exact search, whose recall is 1 by definition.
    shown = (body["index_type"], body["nprobe"], body["nprobe_source"], body["recall_at_10"])
    assert shown == ("Flat", None, None, 1.0)
    with pytest.raises(jsonschema.ValidationError):
        check(spec, "Stats", {**body, "nprobe_source": "guessed"})
