"""`lookalike serve --watch`: one watcher process beside the workers, new photos served by every worker,
index runs kept out, the watcher restarted when it dies and ended with the server."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from helpers import (
    ServerProcess,
    colour_image,
    env_for,
    free_port,
    http_search,
    subprocess_env,
    wait_for,
    write_image,
)

from indexer.settings import Settings
from indexer.watch_status import write_status
from lookalike.cli import cli
from storage.lock import watch_lock


def server_env(indexed: Settings, tmp_path: Path, tf1_module: Path, library: Path) -> dict[str, str]:
    (tmp_path / "home").mkdir(exist_ok=True)
    env = subprocess_env(indexed.storage.data_dir, tf1_module, HOME=str(tmp_path / "home"),
                         LOOKALIKE_INDEXER__ROOTS=str(library), LOOKALIKE_INDEXER__SETTLE_SECONDS="0.5")
    env.pop("XDG_RUNTIME_DIR", None)
    return env


def top_path(base: str, image: Path) -> str:
    return str(http_search(base, image, 1)["results"][0]["path"])


def alive(pids: set[int]) -> set[int]:
    return {p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}


@pytest.mark.gunicorn
def test_two_workers_one_watcher_serve_new_photos_and_keep_index_runs_out(indexed: Settings, tmp_path: Path,
                                                                       tf1_module: Path,
                                                                       colour_library: Path) -> None:
    env = server_env(indexed, tmp_path, tf1_module, colour_library)
    with ServerProcess(env, tmp_path / "server.log", workers=2, serve_args=("--watch",)) as server:
        wait_for(lambda: len(server.watcher_pids()) == 1, 60, "the watcher")
        [watcher] = server.watcher_pids()
        refused = CliRunner().invoke(cli, ["index", str(colour_library)],
                                     env=env_for(indexed.storage.data_dir, tf1_module))
        assert refused.exit_code == 1 and "a watcher" in refused.output, refused.output

        new = write_image(colour_library / "new" / "odd.png", colour_image((250, 240, 10), seed=99,
                                                                          accent=(10, 10, 250)))
        wait_for(lambda: all(top_path(server.base, new) == str(new) for _ in range(8)), 60,
                 "the new photo served by both workers")
        query = tmp_path / "query.png"
        query.write_bytes(new.read_bytes())
        new.unlink()
        wait_for(lambda: all(top_path(server.base, query) != str(new) for _ in range(8)), 60,
                 "the deleted photo gone from the results of both workers")

        psutil.Process(watcher).kill()  # a watcher that dies is started again
        wait_for(lambda: server.watcher_pids() - {watcher}, 60, "a new watcher")
        seen = server.worker_pids() | server.watcher_pids()
        assert server.stop(signal.SIGTERM) == 0, server.output()
        wait_for(lambda: not alive(seen), 15, "every process of the server gone")


@pytest.mark.gunicorn
def test_the_watcher_ends_with_a_killed_server(indexed: Settings, tmp_path: Path, tf1_module: Path,
                                              colour_library: Path) -> None:
    env = {**server_env(indexed, tmp_path, tf1_module, colour_library), "LOOKALIKE_API__WATCH": "true"}
    with ServerProcess(env, tmp_path / "server.log", workers=1) as server:
        wait_for(lambda: len(server.watcher_pids()) == 1, 60, "the watcher")
        watchers = server.watcher_pids()
        server.stop(signal.SIGKILL)
        wait_for(lambda: not alive(watchers), 15, "the watcher gone with the server")


def test_serve_watch_needs_roots_and_no_other_watcher(tmp_path: Path, tf1_module: Path,
                                                      colour_library: Path) -> None:
    """Refused before any server starts: no roots to watch, or a watcher already keeping the data directory."""
    data = tmp_path / "data"
    env = env_for(data, tf1_module)
    args = ["serve", "--watch", "--port", str(free_port())]
    no_roots = CliRunner().invoke(cli, args, env=env)
    assert no_roots.exit_code == 2 and "indexer.roots" in no_roots.output
    with watch_lock(data):
        write_status(data, {"roots": [str(colour_library)]})
        taken = CliRunner().invoke(cli, args, env={**env, "LOOKALIKE_INDEXER__ROOTS": str(colour_library)})
    assert taken.exit_code == 1 and "another lookalike watcher" in taken.output
