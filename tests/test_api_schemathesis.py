"""Schemathesis against the served OpenAPI description: generated requests never get a 5xx,
and every answer matches its documented status codes, media types and schemas."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from helpers import make_colour_library, make_settings, run_index
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from search_api import create_app
from search_api.current import service_of

# Generated requests take seconds even at a few examples per operation: `make test` runs them, not `make check`.
pytestmark = pytest.mark.slow

# A few examples per operation keeps the whole suite quick; raise it for a longer local run.
EXAMPLES = 25


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory, tf1_module: Path):  # type: ignore[no-untyped-def]
    library = make_colour_library(tmp_path_factory.mktemp("schemathesis") / "library")
    indexed = make_settings(tmp_path_factory.mktemp("data"), tf1_module, api={"max_upload_mb": 1})
    report, _ = run_index(indexed, library)
    assert report.indexed == 14
    app = create_app(indexed)
    service_of(app).warm_up()
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)


def test_generated_requests_are_answered_as_documented(api_schema) -> None:  # type: ignore[no-untyped-def]
    tried: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case) -> None:  # type: ignore[no-untyped-def]
        # Every check but "schema-valid data is accepted": a schema cannot list which of the
        # ~1,500 class and concept names exist, so an unknown `class` is rightly a 400.
        case.call_and_validate(excluded_checks=[positive_data_acceptance])
        tried[case.operation.label] = tried.get(case.operation.label, 0) + 1

    for result in api_schema.get_all_operations():
        given(case=result.ok().as_strategy())(check)()
    assert len(tried) >= 10, tried  # every route of the API was exercised


@pytest.fixture(scope="module")
def keyed_schema(tmp_path_factory: pytest.TempPathFactory, tf1_module: Path):  # type: ignore[no-untyped-def]
    """The same API on a server that needs keys, and an admin key for it."""
    from helpers import catalog_of

    from storage.api_keys import ApiKeys

    library = make_colour_library(tmp_path_factory.mktemp("schemathesis-keys") / "library")
    keyed = make_settings(tmp_path_factory.mktemp("data"), tf1_module, api={"max_upload_mb": 1, "auth": "keys"})
    report, _ = run_index(keyed, library)
    assert report.indexed == 14
    catalog = catalog_of(keyed)
    try:
        key = ApiKeys(catalog).create("fuzz", "admin")
    finally:
        catalog.close()
    app = create_app(keyed)
    service_of(app).warm_up()
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app), key


def test_generated_requests_with_a_key_are_answered_as_documented(keyed_schema) -> None:  # type: ignore[no-untyped-def]
    schema, key = keyed_schema
    tried: dict[str, int] = {}
    refused: list[str] = []

    @settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call_and_validate(headers={"Authorization": f"Bearer {key}"},
                                          excluded_checks=[positive_data_acceptance])
        tried[case.operation.label] = tried.get(case.operation.label, 0) + 1
        if response.status_code in (401, 403, 429):
            refused.append(case.operation.label)

    for result in schema.get_all_operations():
        operation = result.ok()
        # Signing in with generated keys is wrong keys by the dozen: the address would be locked out.
        if operation.label != "POST /api/v1/session":
            given(case=operation.as_strategy())(check)()
    assert len(tried) >= 10, tried
    assert sorted(set(refused)) == []  # the key reached every operation (a header key needs no CSRF token)
