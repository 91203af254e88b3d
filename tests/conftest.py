"""Shared fixtures: tiny real TF-Hub models, real image files, settings in a temp dir, an indexed app.

Plain helpers (images, settings, index runs, HTTP) are in helpers.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
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
    empty_catalog,
    env_for,
    make_colour_library,
    make_settings,
    postgres_answers,
    private_postgres_database,
    run_index,
    survivors,
)

from indexer.model import Embedder
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


class _LoadedModules:
    """The tests load the same few small modules hundreds of times; each is loaded (and pruned or frozen)
    once per process. An entry is keyed by the module's files, so a module changed on disk is loaded
    again, and a module that fails to load is never remembered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: dict[tuple[object, ...], tuple[Any, str]] = {}
        self._forward: dict[int, tuple[Any, tuple[Callable[[Any], dict[str, Any]], str]]] = {}

    @staticmethod
    def _key(path: Path) -> tuple[object, ...]:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        return (str(path.resolve()), *((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        load, forward = Embedder._load, Embedder._forward_function

        def cached_load(path: Path) -> tuple[Any, str]:
            key = self._key(path)
            with self._lock:
                if key not in self._loaded:
                    self._loaded[key] = load(path)
                return self._loaded[key]

        def cached_forward(module: Any) -> tuple[Callable[[Any], dict[str, Any]], str]:
            with self._lock:
                known = self._forward.get(id(module))
                if known is None or known[0] is not module:
                    known = self._forward[id(module)] = (module, forward(module))
                return known[1]

        monkeypatch.setattr(Embedder, "_load", staticmethod(cached_load))
        monkeypatch.setattr(Embedder, "_forward_function", staticmethod(cached_forward))


@pytest.fixture(scope="session", autouse=True)
def loaded_modules_once() -> Iterator[None]:
    """Test speed only: see _LoadedModules (model loading itself is tested on fresh paths)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _LoadedModules().install(monkeypatch)
        yield


def _built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Path]) -> Path:
    """A model the tests build, built once per run: parallel workers (pytest-xdist) share the first one's."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # this run's directory, above each worker's own
    shared = root / "shared-models"
    shared.mkdir(exist_ok=True)
    target, built = shared / name, shared / f"{name}.built"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not built.exists():
            shutil.rmtree(target, ignore_errors=True)  # what a worker killed mid-build left
            build(target)
            built.touch()
    return target


@pytest.fixture(scope="session")
def tf1_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_fixtures import build_tf1_hub_module

    return _built_once(tmp_path_factory, "tf1", lambda out: build_tf1_hub_module(out, train_graph=True))


@pytest.fixture(scope="session")
def tf2_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_fixtures import build_tf2_saved_model

    return _built_once(tmp_path_factory, "tf2", build_tf2_saved_model)


@pytest.fixture(scope="session")
def tf1_module_1001(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_fixtures import build_tf1_hub_module

    return _built_once(tmp_path_factory, "tf1_1001", lambda out: build_tf1_hub_module(out, num_classes=1001))


@pytest.fixture(scope="session")
def tf2_module_1001(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_fixtures import build_tf2_saved_model

    return _built_once(tmp_path_factory, "tf2_1001", lambda out: build_tf2_saved_model(out, num_classes=1001))


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
        empty_catalog(url)  # the next test using this run's database empties it again
    cat = Catalog(url)
    yield cat
    cat.close()


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
