"""GET /api/v1/duplicates: the groups `lookalike duplicates --json` lists, with the copy to keep, a page at a time."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from helpers import BLUE, assert_problem, colour_image, env_for, make_colour_library, run_index, write_image

from indexer.settings import Settings
from lookalike.cli import cli
from search_api import create_app
from search_api.duplicate_groups import duplicate_groups

THRESHOLD = 0.999
OLD_NS = 1_400_000_000 * 10**9


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """The colour library plus an older identical copy of red0.jpg and a half-size PNG of blue0.png."""
    root = make_colour_library(tmp_path / "library")
    shutil.copy(root / "red" / "red0.jpg", root / "red" / "red0-copy.jpg")
    os.utime(root / "red" / "red0-copy.jpg", ns=(OLD_NS, OLD_NS))
    write_image(root / "small" / "blue0-small.png", colour_image(BLUE, seed=10, accent=(30, 40, 200)).resize((48, 40)))
    return root


@pytest.fixture
def settings(settings_for: Callable[..., Settings], library: Path) -> Settings:
    settings = settings_for()
    report, _ = run_index(settings, library)
    assert (report.indexed, report.linked) == (15, 1)  # the copy is linked to its content
    return settings


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    app = create_app(settings)
    app.config["TESTING"] = True
    return app.test_client()


def check(client: FlaskClient, body: dict[str, Any]) -> None:
    """The body matches DuplicatesResponse of the served OpenAPI description."""
    spec = client.get("/api/v1/openapi.json").get_json()
    schema = {"$ref": "#/components/schemas/DuplicatesResponse", "components": spec["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


def without_urls(group: dict[str, Any]) -> dict[str, Any]:
    """An API group as the command line prints it: no kind, no preview URLs."""
    out = {k: v for k, v in group.items() if k not in {"kind", "file_url", "thumbnail_url"}}
    if "images" in out:
        out["images"] = [{k: v for k, v in i.items() if k not in {"file_url", "thumbnail_url"}} for i in out["images"]]
    return out


def test_the_groups_and_suggestions_are_the_command_lines(client: FlaskClient, settings: Settings,
                                                          tf1_module: Path) -> None:
    response = client.get(f"/api/v1/duplicates?threshold={THRESHOLD}")
    assert response.status_code == 200
    body = response.get_json()
    check(client, body)
    exact = [g for g in body["groups"] if g["kind"] == "exact"]
    near = [g for g in body["groups"] if g["kind"] == "near"]
    assert body["groups"] == exact + near  # identical files first
    assert (body["exact_total"], body["near_total"], body["total"]) == (len(exact), len(near), len(exact) + len(near))

    (copies,) = exact
    assert copies["keep"].endswith("red0-copy.jpg")  # the same bytes: the older file
    assert [f["suggested"] for f in copies["files"]] == ["keep", "remove"]
    assert copies["files"][0]["modified"] == "2014-05-13T16:53:20Z"
    assert client.get(copies["thumbnail_url"]).status_code == 200
    small = next(g for g in near if any(p.endswith("blue0-small.png") for i in g["images"] for p in i["paths"]))
    kept = next(i for i in small["images"] if i["id"] == small["keep"])
    assert kept["paths"][0].endswith("blue0.png") and (kept["width"], kept["height"]) == (96, 80)
    assert all(i["suggested"] == "remove" for i in small["images"] if i is not kept)
    assert client.get(kept["file_url"]).status_code == 200

    printed = CliRunner().invoke(cli, ["duplicates", "--threshold", str(THRESHOLD), "--json"],
                                 env=env_for(settings.storage.data_dir, tf1_module))
    assert printed.exit_code == 0, printed.output
    listed = json.loads(printed.stdout)
    assert [without_urls(g) for g in exact] == listed["exact"]
    assert [without_urls(g) for g in near] == listed["near"]


def test_groups_come_a_page_at_a_time(client: FlaskClient) -> None:
    everything = client.get(f"/api/v1/duplicates?threshold={THRESHOLD}&limit=100").get_json()
    assert everything["total"] >= 2 and everything["next_offset"] is None
    pages, offset = [], 0
    while offset is not None:
        page = client.get(f"/api/v1/duplicates?threshold={THRESHOLD}&limit=1&offset={offset}").get_json()
        assert page["limit"] == 1 and page["offset"] == offset and len(page["groups"]) == 1
        pages.extend(page["groups"])
        offset = page["next_offset"]
    assert pages == everything["groups"]
    beyond = client.get(f"/api/v1/duplicates?threshold={THRESHOLD}&offset=1000").get_json()
    assert beyond["groups"] == [] and beyond["next_offset"] is None


def test_the_default_threshold_is_search_dedupe_threshold(client: FlaskClient, settings: Settings) -> None:
    body = client.get("/api/v1/duplicates").get_json()
    assert body["threshold"] == settings.search.dedupe_threshold
    spec = client.get("/api/v1/openapi.json").get_json()
    params = {p["name"]: p for p in spec["paths"]["/api/v1/duplicates"]["get"]["parameters"]}
    assert params["threshold"]["schema"]["default"] == settings.search.dedupe_threshold
    assert params["threshold"]["schema"]["minimum"] == 0.8 and params["limit"]["schema"]["maximum"] == 100


@pytest.mark.parametrize(("query", "parameter", "detail"), [
    ("threshold=0.5", "threshold", "threshold must be a number from 0.8 to 1 (cosine similarity), got '0.5'"),
    ("threshold=1.01", "threshold", "from 0.8 to 1"),
    ("threshold=high", "threshold", "got 'high'"),
    ("limit=0", "limit", "limit must be from 1 to 100, got 0"),
    ("limit=101", "limit", "limit must be from 1 to 100"),
    ("offset=-1", "offset", "offset must be from 0 to"),
])
def test_bad_parameters_are_problems_naming_them(client: FlaskClient, query: str, parameter: str,
                                                 detail: str) -> None:
    body = assert_problem(client.get(f"/api/v1/duplicates?{query}"), 400, "invalid_parameter", detail)
    assert body["parameter"] == parameter


def test_nothing_is_deleted_and_no_method_deletes(client: FlaskClient, library: Path) -> None:
    before = sorted(p for p in library.rglob("*") if p.is_file())
    client.get(f"/api/v1/duplicates?threshold={THRESHOLD}")
    for method in (client.delete, client.post, client.put, client.patch):
        assert_problem(method("/api/v1/duplicates"), 405, "method_not_allowed")
    assert sorted(p for p in library.rglob("*") if p.is_file()) == before


def test_a_new_copy_shows_up_without_a_restart(client: FlaskClient, settings: Settings, library: Path) -> None:
    first = client.get(f"/api/v1/duplicates?threshold={THRESHOLD}").get_json()
    shutil.copy(library / "green" / "green0.webp", library / "green" / "green0-copy.webp")
    run_index(settings, library)
    again = client.get(f"/api/v1/duplicates?threshold={THRESHOLD}").get_json()
    assert again["exact_total"] == first["exact_total"] + 1
    assert any(g["kind"] == "exact" and any(p.endswith("green0-copy.webp") for p in g["paths"])
               for g in again["groups"])


def test_the_groups_are_found_once_and_reused(client: FlaskClient) -> None:
    with client.application.app_context():
        finder = duplicate_groups()
        assert finder.listing(THRESHOLD) is finder.listing(THRESHOLD)
        assert finder.listing(0.99) is not finder.listing(THRESHOLD)


def test_a_request_waits_a_bounded_time_for_another_finding_them(settings_for: Callable[..., Settings],
                                                                 library: Path) -> None:
    settings = settings_for(api={"queue_timeout": 0.2})
    run_index(settings, library)
    app = create_app(settings)
    with app.app_context():
        finder = duplicate_groups()
    finder._lock.acquire()  # another request is finding them
    try:
        body = assert_problem(app.test_client().get("/api/v1/duplicates"), 503, "server_busy", "api.queue_timeout")
    finally:
        finder._lock.release()
    assert "finding duplicates" in body["detail"]
    assert app.test_client().get("/api/v1/duplicates").status_code == 200
