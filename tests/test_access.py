"""Access control: one before_request check decides every route's scope; keys, sessions, CSRF, brute force."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from helpers import assert_problem, catalog_of, env_for, run_index

from indexer.settings import Settings, is_loopback
from lookalike.cli import cli
from lookalike.cli_keys import check_keys_for_serving
from search_api import create_app
from search_api.access import (
    CSRF_HEADER,
    ENDPOINT_SCOPES,
    FAILURES_ALLOWED,
    KEY_CACHE_SECONDS,
    OPEN,
    SESSION_COOKIE,
    required_scope,
)
from storage.api_keys import ApiKeys

SCOPES = ("read", "write", "admin")
SAMPLE_ARGS = {"image_id": 1, "name": "nothing-here", "filename": "nothing-here.js", "job_id": "nothing-here"}


@pytest.fixture
def keyed(settings_for: Callable[..., Settings], colour_library: Path) -> Settings:
    """An indexed colour library served with api.auth: keys."""
    settings = settings_for(api={"max_upload_mb": 1, "auth": "keys"})
    report, _ = run_index(settings, colour_library)
    assert report.indexed == 14
    return settings


@pytest.fixture
def secrets_of(keyed: Settings) -> dict[str, str]:
    """One key per scope, by scope."""
    catalog = catalog_of(keyed)
    try:
        return {scope: ApiKeys(catalog).create(f"key-{scope}", scope) for scope in SCOPES}
    finally:
        catalog.close()


@pytest.fixture
def keyed_app(keyed: Settings, secrets_of: dict[str, str]) -> Flask:
    app = create_app(keyed)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def keyed_client(keyed_app: Flask) -> FlaskClient:
    return keyed_app.test_client()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def sample_url(rule: Any) -> str:
    return rule.build({name: SAMPLE_ARGS[name] for name in rule.arguments})[1]


def calls(app: Flask) -> list[tuple[str, str, str]]:
    """(method, url, endpoint) of every route of the app."""
    out = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((method, sample_url(rule), rule.endpoint))
    return out


def test_every_route_has_a_decided_scope(keyed_app: Flask) -> None:
    endpoints = {rule.endpoint for rule in keyed_app.url_map.iter_rules()}
    assert endpoints - ENDPOINT_SCOPES.keys() == set(), "decide the scope of new routes in search_api/access.py"
    assert ENDPOINT_SCOPES.keys() - endpoints == set(), "ENDPOINT_SCOPES names routes that no longer exist"
    assert {e for e, s in ENDPOINT_SCOPES.items() if s == OPEN} == {
        "health.healthz", "health.readyz", "page.index", "static", "swagger_ui.docs_page", "swagger_ui.asset",
        "docs.openapi_json", "session.get_session", "session.start_session", "session.end_session"}


def test_the_url_map_walked_with_each_scope(keyed_app: Flask, keyed_client: FlaskClient,
                                            secrets_of: dict[str, str]) -> None:
    settings = keyed_app.extensions["lookalike"].settings
    for method, url, endpoint in calls(keyed_app):
        needed = required_scope(endpoint, settings)
        anonymous = keyed_client.open(url, method=method)
        if needed == OPEN:
            assert anonymous.status_code not in (401, 403), (method, url)
            continue
        assert anonymous.status_code == 401, (method, url, anonymous.status_code)
        assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
        for held, secret in secrets_of.items():
            answer = keyed_client.open(url, method=method, headers=bearer(secret))
            allowed = SCOPES.index(held) >= SCOPES.index(needed)
            if allowed:
                assert answer.status_code not in (401, 403), (method, url, held, answer.status_code)
            else:
                assert_problem(answer, 403, "insufficient_scope", f"needs scope {needed}")


def test_a_route_nobody_classified_needs_admin(keyed: Settings, secrets_of: dict[str, str]) -> None:
    app = create_app(keyed)
    app.add_url_rule("/api/v1/forgotten", "forgotten", lambda: "secret")
    client = app.test_client()
    assert client.get("/api/v1/forgotten").status_code == 401
    assert client.get("/api/v1/forgotten", headers=bearer(secrets_of["write"])).status_code == 403
    assert client.get("/api/v1/forgotten", headers=bearer(secrets_of["admin"])).status_code == 200


def test_missing_and_wrong_keys_are_401_problems(keyed_client: FlaskClient, secrets_of: dict[str, str]) -> None:
    missing = keyed_client.get("/api/v1/images/1/file")
    assert_problem(missing, 401, "unauthorized", "lookalike keys create")
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="lookalike"'
    wrong = keyed_client.get("/api/v1/images/1/thumbnail", headers=bearer(secrets_of["read"] + "x"))
    assert_problem(wrong, 401, "invalid_key")
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    assert keyed_client.get("/api/v1/images/1", headers={"X-API-Key": secrets_of["read"]}).status_code == 200
    assert keyed_client.get("/api/v1/images/1", headers=bearer(secrets_of["read"])).status_code == 200
    assert keyed_client.get("/api/v1/stats", headers={"Authorization": "Basic abc"}).status_code == 401


def test_answers_for_a_key_are_kept_out_of_shared_caches(keyed_client: FlaskClient,
                                                         secrets_of: dict[str, str]) -> None:
    answer = keyed_client.get("/api/v1/images/1/thumbnail", headers=bearer(secrets_of["read"]))
    assert answer.status_code == 200
    assert "private" in answer.headers["Cache-Control"] and "public" not in answer.headers["Cache-Control"]
    assert "Authorization" in answer.headers["Vary"]


def test_probes_stay_open_and_metrics_need_admin(keyed: Settings, keyed_client: FlaskClient,
                                                 secrets_of: dict[str, str]) -> None:
    assert keyed_client.get("/healthz").status_code == 200
    assert keyed_client.get("/readyz").status_code in (200, 503)
    assert keyed_client.get("/metrics").status_code == 401
    assert keyed_client.get("/metrics", headers=bearer(secrets_of["write"])).status_code == 403
    assert keyed_client.get("/metrics", headers=bearer(secrets_of["admin"])).status_code == 200
    public = create_app(keyed.model_copy(update={"api": keyed.api.model_copy(update={"metrics_public": True})}))
    assert public.test_client().get("/metrics").status_code == 200


@pytest.mark.parametrize(("auth", "host", "required"), [
    ("auto", "127.0.0.1", False), ("auto", "::1", False), ("auto", "localhost", False),
    ("auto", "0.0.0.0", True), ("auto", "192.168.1.5", True), ("auto", "nas.home", True),
    ("none", "0.0.0.0", False), ("keys", "127.0.0.1", True),
])
def test_when_keys_are_required(settings_for: Callable[..., Settings], auth: str, host: str, required: bool) -> None:
    settings = settings_for(api={"auth": auth, "host": host})
    assert settings.api.keys_required() is required
    client = create_app(settings).test_client()
    assert (client.get("/api/v1/classes").status_code == 401) is required
    assert client.get("/api/v1/session").get_json()["keys_required"] is required


def test_revocation_counts_within_two_seconds(keyed: Settings, keyed_client: FlaskClient,
                                              secrets_of: dict[str, str]) -> None:
    assert KEY_CACHE_SECONDS < 2
    assert keyed_client.get("/api/v1/stats", headers=bearer(secrets_of["read"])).status_code == 200
    catalog = catalog_of(keyed)  # another process would do the same: `lookalike keys revoke`
    try:
        ApiKeys(catalog).revoke("key-read")
        new = ApiKeys(catalog).create("late", "read")
    finally:
        catalog.close()
    revoked_at = time.monotonic()
    while keyed_client.get("/api/v1/stats", headers=bearer(secrets_of["read"])).status_code == 200:
        assert time.monotonic() - revoked_at < 2
        time.sleep(0.05)
    assert keyed_client.get("/api/v1/stats", headers=bearer(new)).status_code == 200


def test_last_use_is_recorded_by_the_server(keyed: Settings, keyed_client: FlaskClient,
                                            secrets_of: dict[str, str]) -> None:
    assert keyed_client.get("/api/v1/stats", headers=bearer(secrets_of["write"])).status_code == 200
    catalog = catalog_of(keyed)
    try:
        used = {k.name: k.last_used_at for k in ApiKeys(catalog).listed()}
    finally:
        catalog.close()
    assert used["key-write"] is not None and used["key-read"] is None


def test_repeated_failures_from_one_address_are_limited(keyed_client: FlaskClient, secrets_of: dict[str, str],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for _ in range(3 * FAILURES_ALLOWED):  # one stale key sent again and again is not a brute force
        assert keyed_client.get("/api/v1/stats", headers=bearer("lookalike_revoked-long-ago")).status_code == 401
    guesses = [f"lookalike_guess{i}" for i in range(FAILURES_ALLOWED - 1)]
    for guess in guesses:
        assert keyed_client.get("/api/v1/stats", headers=bearer(guess)).status_code == 401
    limited = keyed_client.get("/api/v1/stats", headers=bearer("lookalike_one-more"))
    assert_problem(limited, 429, "too_many_failures")
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    # While limited, even the right key is refused: a guess that happens to be right teaches nothing.
    assert keyed_client.get("/api/v1/stats", headers=bearer(secrets_of["read"])).status_code == 429
    assert keyed_client.post("/api/v1/session", json={"key": secrets_of["read"]}).status_code == 429
    assert keyed_client.get("/api/v1/session", headers=bearer(secrets_of["read"])).status_code == 429
    other = keyed_client.get("/api/v1/stats", headers=bearer(secrets_of["read"]),
                             environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert other.status_code == 200
    assert keyed_client.get("/healthz").status_code == 200
    for secret in [*guesses, *secrets_of.values()]:
        assert secret not in caplog.text


def test_the_session_route_is_no_way_around_the_limit(keyed_client: FlaskClient) -> None:
    for i in range(FAILURES_ALLOWED):
        answer = keyed_client.get("/api/v1/session", headers=bearer(f"lookalike_guess{i}"))
        assert answer.status_code == 200 and answer.get_json()["signed_in"] is False
    assert_problem(keyed_client.get("/api/v1/session", headers=bearer("lookalike_next")), 429, "too_many_failures")


def sign_in(client: FlaskClient, secret: str) -> str:
    answer = client.post("/api/v1/session", json={"key": secret})
    assert answer.status_code == 200, answer.get_json()
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert secret not in cookie
    return str(answer.get_json()["csrf_token"])


def test_the_page_signs_in_with_a_session_cookie(keyed_client: FlaskClient, secrets_of: dict[str, str]) -> None:
    anonymous = keyed_client.get("/api/v1/session").get_json()
    assert anonymous["keys_required"] and not anonymous["signed_in"] and anonymous["may"] == []
    assert_problem(keyed_client.post("/api/v1/session", json={"key": "lookalike_nope"}), 401, "invalid_key")
    assert_problem(keyed_client.post("/api/v1/session", json={}), 400, "invalid_body")
    csrf = sign_in(keyed_client, secrets_of["write"])
    me = keyed_client.get("/api/v1/session").get_json()
    assert me["signed_in"] and me["name"] == "key-write" and me["may"] == ["read", "write"]
    assert me["csrf_token"] == csrf
    assert keyed_client.get("/api/v1/images/1/file").status_code == 200
    assert keyed_client.get("/metrics").status_code == 403

    # A change made with the cookie needs the session's CSRF token, from this site.
    body = {"name": "reds", "positive_ids": [1]}
    assert_problem(keyed_client.post("/api/v1/labels", json=body), 403, "csrf_failed")
    assert_problem(keyed_client.post("/api/v1/labels", json=body, headers={CSRF_HEADER: "forged"}), 403,
                   "csrf_failed")
    cross_site = keyed_client.post("/api/v1/labels", json=body,
                                   headers={CSRF_HEADER: csrf, "Origin": "https://evil.example"})
    assert_problem(cross_site, 403, "csrf_failed")
    made = keyed_client.post("/api/v1/labels", json=body, headers={CSRF_HEADER: csrf, "Origin": "http://localhost"})
    assert made.status_code == 201, made.get_json()

    out = keyed_client.delete("/api/v1/session")
    assert out.status_code == 200 and f"{SESSION_COOKIE}=;" in out.headers["Set-Cookie"]
    assert out.get_json()["signed_in"] is False
    assert keyed_client.get("/api/v1/images/1").status_code == 401


def test_a_revoked_key_ends_its_sessions(keyed: Settings, keyed_client: FlaskClient,
                                         secrets_of: dict[str, str]) -> None:
    sign_in(keyed_client, secrets_of["read"])
    assert keyed_client.get("/api/v1/stats").status_code == 200
    catalog = catalog_of(keyed)
    try:
        ApiKeys(catalog).revoke("key-read")
    finally:
        catalog.close()
    time.sleep(KEY_CACHE_SECONDS + 0.1)
    assert_problem(keyed_client.get("/api/v1/stats"), 401, "invalid_key")


def test_serving_beyond_loopback_without_a_key_is_refused(tmp_path: Path, tf1_module: Path) -> None:
    env = env_for(tmp_path / "data", tf1_module)
    refused = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--port", "1"], env=env)
    assert refused.exit_code == 1
    assert "lookalike keys create NAME" in refused.output and "api.auth: none" in refused.output
    settings = Settings.model_validate({"storage": {"data_dir": tmp_path / "data"}})
    assert check_keys_for_serving(settings, "127.0.0.1").api.host == "127.0.0.1"
    assert check_keys_for_serving(settings.model_copy(update={"api": settings.api.model_copy(
        update={"auth": "none"})}), "0.0.0.0").api.keys_required() is False
    created = CliRunner().invoke(cli, ["keys", "create", "tv"], env=env)
    assert created.exit_code == 0
    assert check_keys_for_serving(settings, "0.0.0.0").api.keys_required()


def test_loopback_names() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.1") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("") and not is_loopback("nas")


def test_the_openapi_document_names_each_operations_scope(keyed_client: FlaskClient) -> None:
    from openapi_spec_validator import validate

    spec = keyed_client.get("/api/v1/openapi.json").get_json()
    validate(spec)
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey", "session"}
    stats = spec["paths"]["/api/v1/stats"]["get"]
    assert stats["security"] == [{"bearer": ["read"]}, {"apiKey": ["read"]}, {"session": ["read"]}]
    assert {"401", "403", "429"} <= set(stats["responses"])
    assert spec["paths"]["/api/v1/labels"]["post"]["x-required-scope"] == "write"
    assert spec["paths"]["/metrics"]["get"]["x-required-scope"] == "admin"
    assert spec["paths"]["/healthz"]["get"]["security"] == []


def test_behind_a_proxy_on_loopback_auto_still_needs_keys(settings_for: Callable[..., Settings]) -> None:
    client = create_app(settings_for(api={"auth": "auto"})).test_client()
    assert client.get("/api/v1/classes").status_code != 401  # from this machine (503: nothing indexed here)
    forwarded = client.get("/api/v1/classes", headers={"X-Forwarded-For": "203.0.113.9"})
    assert_problem(forwarded, 401, "unauthorized")
    assert client.get("/api/v1/session", headers={"Forwarded": "for=203.0.113.9"}).get_json()["keys_required"]
    assert create_app(settings_for(api={"auth": "none"})).test_client().get(
        "/api/v1/classes", headers={"X-Forwarded-For": "203.0.113.9"}).status_code != 401


def test_failures_behind_a_local_proxy_count_per_forwarded_client(keyed_client: FlaskClient,
                                                                  secrets_of: dict[str, str]) -> None:
    attacker = {"X-Forwarded-For": "198.51.100.1, 203.0.113.66"}  # the proxy appended the last address
    for i in range(FAILURES_ALLOWED):
        keyed_client.get("/api/v1/stats", headers={**attacker, **bearer(f"lookalike_guess{i}")})
    assert keyed_client.get("/api/v1/stats", headers={**attacker, **bearer(secrets_of["read"])}).status_code == 429
    spoofed = {"X-Forwarded-For": "203.0.113.66, 192.0.2.7"}  # a client cannot pose as another one
    assert keyed_client.get("/api/v1/stats", headers={**spoofed, **bearer(secrets_of["read"])}).status_code == 200


def test_the_access_log_never_holds_a_key_sent_the_wrong_way(settings_for: Callable[..., Settings]) -> None:
    """gunicorn's default access log names the user of `Authorization: Basic`: `curl -u KEY:` would write the
    key into the log in clear, although the key is refused."""
    import base64
    import datetime
    from types import SimpleNamespace

    from gunicorn.glogging import Logger

    from search_api.serve import LookalikeServer

    server = LookalikeServer(settings_for(), "127.0.0.1", 8000, 1)
    secret = "lookalike_" + "k" * 43
    basic = "Basic " + base64.b64encode(f"{secret}:".encode()).decode()
    environ = {"REMOTE_ADDR": "192.0.2.1", "REQUEST_METHOD": "GET", "RAW_URI": "/api/v1/stats",
               "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_AUTHORIZATION": basic, "HTTP_X_API_KEY": secret,
               "HTTP_COOKIE": f"{SESSION_COOKIE}={secret}"}
    response = SimpleNamespace(status="401 UNAUTHORIZED", headers=[], sent=10)
    request = SimpleNamespace(headers=[("AUTHORIZATION", basic), ("X-API-KEY", secret)])
    atoms = Logger(server.cfg).atoms(response, request, environ, datetime.timedelta(seconds=1))
    line = server.cfg.access_log_format % atoms
    assert "GET /api/v1/stats" in line and "401" in line
    assert secret not in line and secret[len("lookalike_"):] not in line


def test_ipv6_clients_are_limited_per_network_not_per_address(keyed_client: FlaskClient,
                                                              secrets_of: dict[str, str]) -> None:
    """One IPv6 host holds a whole /64 and may take a fresh address for every guess."""
    for i in range(FAILURES_ALLOWED):
        keyed_client.get("/api/v1/stats", headers=bearer(f"lookalike_guess{i}"),
                         environ_base={"REMOTE_ADDR": f"2001:db8:1:2::{i + 1:x}"})
    limited = keyed_client.get("/api/v1/stats", headers=bearer(secrets_of["read"]),
                               environ_base={"REMOTE_ADDR": "2001:db8:1:2:ffff::99"})
    assert_problem(limited, 429, "too_many_failures")
    other_network = keyed_client.get("/api/v1/stats", headers=bearer(secrets_of["read"]),
                                     environ_base={"REMOTE_ADDR": "2001:db8:1:3::1"})
    assert other_network.status_code == 200
    # IPv4 clients seen by a dual-stack socket (::ffff:a.b.c.d) still count one address each.
    for i in range(FAILURES_ALLOWED):
        keyed_client.get("/api/v1/stats", headers=bearer(f"lookalike_v4guess{i}"),
                         environ_base={"REMOTE_ADDR": "::ffff:198.51.100.1"})
    assert keyed_client.get("/api/v1/stats", headers=bearer(secrets_of["read"]),
                            environ_base={"REMOTE_ADDR": "::ffff:198.51.100.2"}).status_code == 200


def test_a_local_proxy_on_a_dual_stack_socket_is_still_loopback(keyed_client: FlaskClient,
                                                                secrets_of: dict[str, str]) -> None:
    """Behind a proxy reaching a `::` socket over 127.0.0.1 the peer reads ::ffff:127.0.0.1: still this
    machine, so each forwarded client counts its own failures (else one stranger locks everyone out)."""
    assert is_loopback("::ffff:127.0.0.1")
    proxy = {"REMOTE_ADDR": "::ffff:127.0.0.1"}
    for i in range(FAILURES_ALLOWED):
        keyed_client.get("/api/v1/stats", headers={"X-Forwarded-For": "203.0.113.66", **bearer(f"lookalike_g{i}")},
                         environ_base=proxy)
    neighbour = keyed_client.get("/api/v1/stats", environ_base=proxy,
                                 headers={"X-Forwarded-For": "192.0.2.7", **bearer(secrets_of["read"])})
    assert neighbour.status_code == 200


def test_guesses_spread_over_both_key_headers_share_one_limit(keyed_client: FlaskClient,
                                                               secrets_of: dict[str, str]) -> None:
    for i in range(FAILURES_ALLOWED):
        header = bearer(f"lookalike_guess{i}") if i % 2 else {"X-API-Key": f"lookalike_guess{i}"}
        assert keyed_client.get("/api/v1/stats", headers=header).status_code == 401
    both = {**bearer("lookalike_another"), "X-API-Key": secrets_of["read"]}
    assert_problem(keyed_client.get("/api/v1/stats", headers=both), 429, "too_many_failures")


def test_cross_site_shapes_of_a_cookie_write_are_refused(keyed_client: FlaskClient,
                                                         secrets_of: dict[str, str]) -> None:
    """What a page on another site can send: a form (urlencoded, multipart, text/plain), no custom header,
    an Origin of its own or `null` (sandboxed frames, file: pages)."""
    signed_in = f'{{"key": "{secrets_of["write"]}"}}'
    assert keyed_client.post("/api/v1/session", data=signed_in, content_type="text/plain").status_code == 400
    assert keyed_client.post("/api/v1/session", data={"key": secrets_of["write"]}).status_code == 400
    csrf = sign_in(keyed_client, secrets_of["write"])
    forms: list[dict[str, Any]] = [
        {"data": {"name": "x"}}, {"data": "name=x", "content_type": "text/plain"},
        {"data": {"image": (io.BytesIO(b"x"), "a.jpg")}, "content_type": "multipart/form-data"}]
    for form in forms:
        assert_problem(keyed_client.post("/api/v1/images", **form), 403, "csrf_failed")
    for origin in ("null", "http://localhost.evil.example", "http://localhost@evil.example", "http://evil.example"):
        answer = keyed_client.delete("/api/v1/images/1", headers={CSRF_HEADER: csrf, "Origin": origin})
        assert_problem(answer, 403, "csrf_failed")
    assert_problem(keyed_client.delete("/api/v1/images/1", headers={CSRF_HEADER: csrf}), 409, "in_library")


def test_head_options_and_path_tricks_need_the_scope_too(keyed_app: Flask, keyed_client: FlaskClient) -> None:
    settings = keyed_app.extensions["lookalike"].settings
    for rule in keyed_app.url_map.iter_rules():
        if required_scope(rule.endpoint, settings) == OPEN:
            continue
        for method in {"HEAD", "OPTIONS"} & set(rule.methods or ()):
            assert keyed_client.open(sample_url(rule), method=method).status_code == 401, (method, rule.rule)
    for path in ("/api/v1/images/%31/file", "/api/v1/images/01/thumbnail", "/api/v1//images/1/file",
                 "//api/v1/images/1/file", "/api/v1/images/1/file/", "/API/v1/images/1/file",
                 "/api/v1/images/2/../1/file", "/static/..%2fapi/v1/images/1/file",
                 "/api/v1/docs/..%2f..%2fimages/1/file", "/api/v1/images/\u0661/file", "/metrics/"):
        answer = keyed_client.get(path)
        assert answer.status_code in (401, 404, 308), (path, answer.status_code)
        assert not answer.data.startswith((b"\xff\xd8", b"RIFF")), path
