"""Commands that only read never create a catalog: with none, they say where they looked and how to make one."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import assert_problem, env_for, make_settings, run_index

from lookalike.cli import cli
from search_api import create_app
from search_api.current import service_of

READ_ONLY = [["stats"], ["stats", "--json"], ["search", "{image}"], ["similar", "1"], ["verify"], ["verify", "--json"],
             ["errors"], ["duplicates"], ["rebuild"], ["backup", "{dest}"]]


@pytest.mark.parametrize("args", READ_ONLY, ids=[" ".join(a) for a in READ_ONLY])
def test_read_only_command_without_a_catalog_creates_nothing(runner: CliRunner, tmp_path: Path, tf1_module: Path,
                                                             colour_library: Path, args: list[str]) -> None:
    data = tmp_path / "data"
    fill = {"image": str(colour_library / "red" / "red0.jpg"), "dest": str(tmp_path / "backup")}
    result = runner.invoke(cli, [a.format(**fill) for a in args], env=env_for(data, tf1_module))
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert f"no catalog at {data.resolve() / 'catalog.db'}" in output, output
    assert f"storage.data_dir: {data.resolve()}" in output and "`lookalike index PATH`" in output
    assert "--config FILE" in output and "Traceback" not in result.output
    assert not data.exists(), sorted(p.name for p in data.rglob("*"))


def test_server_without_a_catalog_says_so_until_an_index_run_creates_it(tmp_path: Path, tf1_module: Path,
                                                                        colour_library: Path) -> None:
    settings = make_settings(tmp_path / "data", tf1_module)
    app = create_app(settings)
    client = app.test_client()
    service_of(app).warm_up()
    body = assert_problem(client.get("/readyz"), 503, "no_catalog", str(tmp_path / "data" / "catalog.db"))
    assert "lookalike index PATH" in body["detail"]
    assert_problem(client.get("/api/v1/images/1/similar"), 503, "no_catalog")
    stats = client.get("/api/v1/stats")  # nothing indexed: zero everywhere, which is what a page shows
    assert stats.status_code == 200 and stats.get_json()["images"] == stats.get_json()["vectors"] == 0
    assert not (tmp_path / "data").exists()

    run_index(settings, colour_library)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["vectors"] == 14
