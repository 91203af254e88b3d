"""`lookalike search` through a running server: found through the data dir's server.json or named by
--server, printing what a search in the command's own process prints, with every option.

The servers here are the real app in a thread of the test process (werkzeug); test_serve_server_file.py
starts a real `lookalike serve`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from flask import Flask, request
from helpers import BLUE, RED, colour_image, free_port, make_settings
from werkzeug.serving import make_server

from lookalike.cli import cli
from lookalike.cli_search import MODEL_NOTICE
from search_api import create_app
from search_api.current import service_of
from search_api.server_file import SERVER_FILE, SERVER_INSTANCE, ServerInfo, new_instance, write_server_file


class ThreadServer:
    """The API app on a loopback port, served by a thread of this process; records each request's
    Authorization header."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.authorization: list[str | None] = []
        app.before_request(lambda: self.authorization.append(request.headers.get("Authorization")))
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(10)



@pytest.fixture
def server(indexed_env: dict[str, str], tmp_path: Path, tf1_module: Path) -> Iterator[ThreadServer]:
    app = create_app(make_settings(tmp_path / "data", tf1_module))
    service_of(app).warm_up()
    running = ThreadServer(app)
    yield running
    running.close()


def announce(server: ThreadServer, data_dir: Path, pid: int | None = None, instance: str | None = None) -> str:
    """Make `server` the data dir's server, as `lookalike serve` does (server.json and /healthz's instance)."""
    token = new_instance()
    server.app.config[SERVER_INSTANCE] = token
    write_server_file(data_dir, ServerInfo(server.url, pid or os.getpid(), instance or token))
    return token


@pytest.fixture
def queries(tmp_path: Path) -> list[Path]:
    """Two images that are not in the library (a search of them needs the model)."""
    paths = [tmp_path / "query-red.jpg", tmp_path / "query-blue.png"]
    colour_image(RED, seed=42).save(paths[0], quality=95)
    colour_image(BLUE, seed=43).save(paths[1])
    return paths


COMMANDS = [
    ["--k", "3"],
    ["--json", "--k", "2", "--class", "tree frog"],
    ["--json", "--min-score", "0.5", "--k", "20"],
    ["--json", "--k", "20", "--class", "goldfish", "--class-rule", "top1"],
    ["--k", "20", "--class", "goldfish", "--class-min-probability", "0"],
]


def run(args: list[str], env: dict[str, str]) -> Result:
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    return result


def test_discovered_server_answers_every_option_as_a_local_search(
        indexed_env: dict[str, str], tmp_path: Path, queries: list[Path], tf1_module: Path,
        colour_library: Path) -> None:
    images = [str(q) for q in queries]
    local = []
    for args in COMMANDS:
        result = run(["search", *images, *args], indexed_env)
        assert MODEL_NOTICE in result.stderr
        local.append(result.stdout)
    sheet_here = tmp_path / "here.html"
    run(["search", *images, "--k", "3", "--html", str(sheet_here)], indexed_env)

    app = create_app(make_settings(tmp_path / "data", tf1_module))
    service_of(app).warm_up()
    server = ThreadServer(app)
    try:
        announce(server, tmp_path / "data")
        for args, expected in zip(COMMANDS, local, strict=True):
            result = run(["search", *images, *args], indexed_env)
            assert result.stdout == expected, args
            assert result.stderr == ""
        sheet_there = tmp_path / "there.html"
        run(["search", *images, "--k", "3", "--html", str(sheet_there)], indexed_env)
        assert sheet_there.read_text() == sheet_here.read_text()
        asked = len(server.authorization)
        assert asked >= len(COMMANDS) * len(images)  # /healthz once per command, a search per image
    finally:
        server.close()


def test_explicit_server_of_another_data_dir_with_an_access_key(server: ThreadServer, indexed_env: dict[str, str],
                                                                queries: list[Path], tmp_path: Path) -> None:
    elsewhere = {**indexed_env, "LOOKALIKE_STORAGE__DATA_DIR": str(tmp_path / "empty")}
    key = tmp_path / "key"
    key.write_text("  s3cret-key\n")
    sheet = tmp_path / "sheet.html"
    result = run(["search", str(queries[0]), "--json", "--k", "3", "--server", server.url + "/",
                  "--key-file", str(key), "--html", str(sheet)], elsewhere)
    assert result.stderr.startswith("wrote contact sheet")
    hits = json.loads(result.stdout)["queries"][0]["results"]
    assert len(hits) == 3 and all("/red/" in h["path"] and "file_url" not in h for h in hits)
    # The results' files came from the server (this data dir has no catalog).
    assert sheet.read_text().count("data:image/jpeg;base64,") == 4
    assert set(server.authorization) == {"Bearer s3cret-key"}
    assert not (tmp_path / "empty").exists()


def test_server_errors_are_told_as_a_local_search_tells_them(server: ThreadServer, indexed_env: dict[str, str],
                                                             tmp_path: Path) -> None:
    announce(server, tmp_path / "data")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    refused = CliRunner().invoke(cli, ["search", str(bad)], env=indexed_env)
    assert refused.exit_code == 1 and f"{bad}: not an image" in refused.output, refused.output
    unknown = CliRunner().invoke(cli, ["search", str(bad), "--class", "label:nope"], env=indexed_env)
    assert unknown.exit_code == 1 and "--class:" in unknown.output and "nope" in unknown.output
    assert MODEL_NOTICE not in refused.output + unknown.output


def test_a_dead_or_foreign_server_file_is_ignored(server: ThreadServer, indexed_env: dict[str, str], tmp_path: Path,
                                                  queries: list[Path]) -> None:
    data = tmp_path / "data"
    write_server_file(data, ServerInfo(server.url, 2**22 + 12345, "whatever"))  # no such process
    stale = run(["search", str(queries[0]), "--k", "2"], indexed_env)
    assert MODEL_NOTICE in stale.stderr
    announce(server, data, instance="another-server")  # the URL answers, as another server
    foreign = run(["search", str(queries[0]), "--k", "2"], indexed_env)
    assert MODEL_NOTICE in foreign.stderr and foreign.stdout == stale.stdout
    write_server_file(data, ServerInfo(f"http://127.0.0.1:{free_port()}", os.getpid(), "x"))  # nothing listens
    gone = run(["search", str(queries[0]), "--k", "2"], indexed_env)
    assert MODEL_NOTICE in gone.stderr and gone.stdout == stale.stdout
    assert server.authorization.count(None) == 1  # only the foreign one's /healthz was asked
    assert (data / SERVER_FILE).exists()  # a command that only reads leaves it alone


def test_explicit_server_that_does_not_answer_is_an_error(indexed_env: dict[str, str], queries: list[Path]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli, ["search", str(queries[0]), "--server", url], env=indexed_env)
    assert result.exit_code == 1 and f"{url} did not answer" in result.output
    assert MODEL_NOTICE not in result.output
    for bad, message in ((["--server", "ftp://x"], "--server: 'ftp://x' is not an http"),
                         (["--key-file", str(queries[0].parent / "missing")], "--key-file")):
        refused = CliRunner().invoke(cli, ["search", str(queries[0]), *bad], env=indexed_env)
        assert refused.exit_code == 1 and message in refused.output, refused.output
