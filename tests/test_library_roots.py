"""indexer.roots: the library a command given no folder works on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import env_for

from indexer.settings import load_settings
from lookalike.cli import cli


def test_roots_default_to_none_and_come_from_a_file_or_the_environment(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(config_file=None, environ={}).indexer.roots == []
    config = tmp_path / "c.yaml"
    config.write_text("indexer:\n  roots: [photos, ~/more]\n")
    monkeypatch.chdir(tmp_path)
    roots = load_settings(config, environ={}).indexer.roots
    assert roots == [tmp_path / "photos", Path.home() / "more"]
    from_env = load_settings(config, environ={"LOOKALIKE_INDEXER__ROOTS": f"/a{os.pathsep}/b c{os.pathsep}"})
    assert from_env.indexer.roots == [Path("/a"), Path("/b c")]


def test_index_with_no_path_indexes_the_configured_roots(tmp_path: Path, colour_library: Path,
                                                         tf1_module: Path) -> None:
    env = {**env_for(tmp_path / "data", tf1_module), "LOOKALIKE_INDEXER__ROOTS": str(colour_library)}
    result = CliRunner().invoke(cli, ["index", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["indexed"] == 14


def test_index_with_no_path_and_no_roots_says_what_to_configure(tmp_path: Path, tf1_module: Path) -> None:
    result = CliRunner().invoke(cli, ["index"], env=env_for(tmp_path / "data", tf1_module))
    assert result.exit_code == 2
    assert "indexer.roots" in result.output and "Missing argument" in result.output
