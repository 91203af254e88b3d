"""Keys under real gunicorn with 2 workers, on SQLite and PostgreSQL: made and revoked by the CLI in another
process, honoured by every worker within 2 s, never written to the server's log."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import (
    ServerProcess,
    colour_image,
    jpeg,
    make_settings,
    postgres_answers,
    private_postgres_database,
    run_index,
    subprocess_env,
)

from lookalike.cli import cli

REQUESTS_PER_CHECK = 12  # fresh connections each: both workers answer some of them


@pytest.fixture(params=["sqlite", "postgresql"])
def database_env(request: pytest.FixtureRequest, tmp_path: Path, tf1_module: Path,
                 colour_library: Path) -> Iterator[dict[str, str]]:
    """Environment of an indexed colour library served with api.auth: keys."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'data' / 'catalog.db'}"
        yield _indexed(tmp_path, tf1_module, colour_library, url)
        return
    if not postgres_answers():
        pytest.skip("no PostgreSQL server answers")
    with private_postgres_database() as url:
        yield _indexed(tmp_path, tf1_module, colour_library, url)


def _indexed(tmp_path: Path, handle: Path, library: Path, url: str) -> dict[str, str]:
    settings = make_settings(tmp_path / "data", handle, storage={"database_url": url})
    report, _ = run_index(settings, library)
    assert report.indexed == 14
    return subprocess_env(tmp_path / "data", handle, LOOKALIKE_STORAGE__DATABASE_URL=url, LOOKALIKE_API__AUTH="keys",
                          LOOKALIKE_API__THREADS="4")


def status(base: str, path: str, key: str | None = None, method: str = "GET") -> int:
    headers = {"Authorization": f"Bearer {key}", "Connection": "close"} if key else {"Connection": "close"}
    request = urllib.request.Request(base + path, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def statuses(base: str, path: str, key: str | None = None) -> set[int]:
    return {status(base, path, key) for _ in range(REQUESTS_PER_CHECK)}


def similar_ids(base: str, key: str) -> list[int]:
    request = urllib.request.Request(base + "/api/v1/images/1/similar?k=50",
                                     headers={"Authorization": f"Bearer {key}", "Connection": "close"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return [r["id"] for r in json.load(answer)["results"]]


def wait_within(seconds: float, condition: Callable[[], bool], what: str) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"waited more than {seconds} s for {what}"
        time.sleep(0.1)


def keys(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(cli, ["keys", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


@pytest.mark.gunicorn
def test_keys_across_two_workers(database_env: dict[str, str], tmp_path: Path) -> None:
    with ServerProcess(database_env, tmp_path / "serve.log", workers=2) as server:
        base = server.base
        assert statuses(base, "/healthz") == {200}
        assert statuses(base, "/api/v1/stats") == {401}
        reader = keys(database_env, "create", "reader", "--scope", "read")  # a key made while serving
        made = time.monotonic()
        while statuses(base, "/api/v1/stats", reader) != {200}:
            assert time.monotonic() - made < 2.5, "a new key took more than 2 s to count in every worker"
        assert statuses(base, "/api/v1/images/1/file", reader) == {200}
        assert statuses(base, "/metrics", reader) == {403}
        admin = keys(database_env, "create", "ops", "--scope", "admin")
        time.sleep(1.2)
        assert statuses(base, "/metrics", admin) == {200}

        keys(database_env, "revoke", "reader")
        revoked = time.monotonic()
        while statuses(base, "/api/v1/stats", reader) != {401}:
            assert time.monotonic() - revoked < 2.5, "a revoked key still worked after 2 s in some worker"
        assert statuses(base, "/api/v1/stats", admin) == {200}
        listed = json.loads(keys(database_env, "list", "--json"))
        assert [(k["name"], k["last_used"] is not None) for k in listed] == [("ops", True)]

        # An image added through one worker is found by every worker within 2 s; removed, likewise gone.
        writer = keys(database_env, "create", "writer", "--scope", "write")
        time.sleep(1.2)
        body = jpeg(colour_image((150, 40, 200), seed=9))
        request = urllib.request.Request(base + "/api/v1/images?name=new", data=body, method="POST",
                                         headers={"Authorization": f"Bearer {writer}", "Content-Type": "image/jpeg"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert answer.status == 201
            added = json.load(answer)["id"]
        found_in_all = lambda: all(added in similar_ids(base, writer) for _ in range(REQUESTS_PER_CHECK))  # noqa: E731
        wait_within(2.5, found_in_all, "an added image to be searchable in every worker")
        assert status(base, f"/api/v1/images/{added}", writer, method="DELETE") == 204
        gone_from_all = lambda: all(added not in similar_ids(base, writer) for _ in range(REQUESTS_PER_CHECK))  # noqa: E731
        wait_within(2.5, gone_from_all, "a removed image to be gone from every worker")

        # Wrong keys: answered 401, then 429 once one address has tried too many (each worker counts its own).
        answers = [status(base, "/api/v1/stats", f"lookalike_guess{i}") for i in range(30)]
        assert set(answers) <= {401, 429} and 429 in answers
    log = server.output()
    assert "/api/v1/stats" in log  # the access log is there, and holds no key
    for secret in (reader, admin, "lookalike_guess1"):
        assert secret not in log and secret[len("lookalike_"):] not in log
