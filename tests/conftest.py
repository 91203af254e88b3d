"""Shared fixtures: tiny real TF-Hub models, real image files, settings in a temp dir, an indexed app.

Plain helpers (images, settings, index runs, HTTP) are in helpers.py.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from helpers import (
    POSTGRES_SERVER_URL,
    POSTGRES_URL,
    RUN_MARK,
    create_database,
    drop_database,
    drop_everything,
    env_for,
    make_colour_library,
    make_settings,
    postgres_answers,
    private_postgres_database,
    run_index,
    survivors,
)

from indexer.settings import Settings
from search_api import create_app
from storage.catalog import Catalog

LEFTOVER = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    # Before any test module imports TensorFlow, which reads its log level when it loads.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Every process the tests start inherits this mark, so the ones that outlive the run can be found.
    os.environ[RUN_MARK] = f"{os.getpid()}-{time.time_ns()}"
    if postgres_answers():
        create_database(POSTGRES_URL)  # this run's own database; the PostgreSQL cases skip without a server


def pytest_unconfigure(config: pytest.Config) -> None:
    if postgres_answers():
        drop_database(POSTGRES_URL)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Nothing a test started may outlive the run: wait a little for stragglers, then fail and stop them."""
    leftover = survivors(os.environ[RUN_MARK], grace_seconds=15)
    if leftover:
        lines = [f"{p.pid} {' '.join(p.cmdline())[:160]}" for p in leftover if p.is_running()]
        for process in leftover:
            with contextlib.suppress(psutil.Error):
                process.kill()
        session.config.stash[LEFTOVER] = lines
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(LEFTOVER, [])
    if lines:
        terminalreporter.section("processes left behind by the tests (now killed)", red=True)
        for line in lines:
            terminalreporter.line(line)


@pytest.fixture(scope="session")
def tf1_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_fixtures import build_tf1_hub_module

    return build_tf1_hub_module(tmp_path_factory.mktemp("models") / "tf1", train_graph=True)


@pytest.fixture(scope="session")
def tf2_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_fixtures import build_tf2_saved_model

    return build_tf2_saved_model(tmp_path_factory.mktemp("models") / "tf2")


@pytest.fixture(scope="session")
def tf1_module_1001(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_fixtures import build_tf1_hub_module

    return build_tf1_hub_module(tmp_path_factory.mktemp("models") / "tf1_1001", num_classes=1001)


@pytest.fixture(scope="session")
def tf2_module_1001(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_fixtures import build_tf2_saved_model

    return build_tf2_saved_model(tmp_path_factory.mktemp("models") / "tf2_1001", num_classes=1001)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def settings_for(tmp_path: Path, tf1_module: Path) -> Callable[..., Settings]:
    def factory(handle: Path | str | None = None, **sections: dict[str, object]) -> Settings:
        return make_settings(tmp_path / "data", handle or tf1_module, **sections)

    return factory


@pytest.fixture
def colour_library(tmp_path: Path) -> Path:
    """14 images: 6 red (goldfish), 5 blue (jellyfish), 3 green (tree frog), in nested folders and formats."""
    return make_colour_library(tmp_path / "library")


@pytest.fixture
def indexed(settings_for: Callable[..., Settings], colour_library: Path) -> Settings:
    """Settings of a data dir holding the indexed colour library (uploads limited to 1 MB)."""
    settings = settings_for(api={"max_upload_mb": 1})
    report, _ = run_index(settings, colour_library)
    assert report.indexed == 14
    return settings


@pytest.fixture
def app(indexed: Settings) -> Flask:
    app = create_app(indexed)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Catalog]:
    """An empty catalog on SQLite, and on the tests' PostgreSQL server when it answers."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
    else:
        if not postgres_answers():
            pytest.skip(f"no PostgreSQL server answers at {POSTGRES_SERVER_URL}")
        url = POSTGRES_URL
        drop_everything(url)
    cat = Catalog(url)
    yield cat
    cat.close()
    if request.param == "postgresql":
        drop_everything(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of this test's own: SQLite in tmp_path, or a new PostgreSQL
    database that is dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'own.db'}"
        return
    if not postgres_answers():
        pytest.skip(f"no PostgreSQL server answers at {POSTGRES_SERVER_URL}")
    with private_postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium for the page's tests, one per test module (starting it costs seconds)."""
    from web_fixtures import start_chromium

    driver = start_chromium()
    yield driver
    driver.quit()


@pytest.fixture
def indexed_env(colour_library: Path, tmp_path: Path, tf1_module: Path) -> dict[str, str]:
    """CLI environment of a data directory in which the colour library is indexed."""
    env = env_for(tmp_path / "data", tf1_module)
    from lookalike.cli import cli

    assert CliRunner().invoke(cli, ["index", str(colour_library)], env=env).exit_code == 0
    return env
