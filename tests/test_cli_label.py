"""`lookalike label ...` and `--class label:NAME` through click's CliRunner, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import BLUE, colour_image, env_for, postgres_answers, private_postgres_database

from lookalike.cli import cli


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, colour_library: Path, tmp_path: Path, tf1_module: Path) -> Iterator[dict]:
    """Environment of an indexed colour library: 6 red, 5 blue, 3 green images."""
    base = env_for(tmp_path / "data", tf1_module)
    if request.param == "sqlite":
        yield _indexed(base, colour_library)
        return
    if not postgres_answers():
        pytest.skip("no PostgreSQL server answers")
    with private_postgres_database() as url:
        yield _indexed({**base, "LOOKALIKE_STORAGE__DATABASE_URL": url}, colour_library)


def _indexed(env: dict[str, str], library: Path) -> dict[str, str]:
    result = CliRunner().invoke(cli, ["index", str(library)], env=env)
    assert result.exit_code == 0, result.output
    return env


def run(env: dict[str, str], *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code == code, result.output
    return result


def as_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(run(env, *args, "--json").stdout)


def red(library: Path, i: int) -> str:
    return str((library / "red" / f"red{i}.jpg").resolve())


def test_create_show_change_and_delete(env: dict[str, str], colour_library: Path) -> None:
    created = run(env, "label", "create", "Reds", red(colour_library, 0), red(colour_library, 1))
    assert created.stdout.startswith("Reds: 6 image(s) at threshold") and "2 positive, 0 negative" in created.stdout
    shown = as_json(env, "label", "show", "reds")
    members = shown["members"]
    assert shown["label"]["count"] == 6 and shown["total"] >= 6
    assert [m["score"] for m in members] == sorted((m["score"] for m in members), reverse=True)
    assert {Path(m["path"]).parent.name for m in members if m["member"]} == {"red"}
    assert sorted(m["path"] for m in members if m["example"] == "positive") == [red(colour_library, 0),
                                                                                 red(colour_library, 1)]
    text = run(env, "label", "show", "reds", "--limit", "2").stdout.splitlines()
    assert text[0].startswith("Reds:") and "+" in text[1] and text[-1].startswith("  ... ")

    added = as_json(env, "label", "add-examples", "reds", red(colour_library, 2))
    assert len(added["positive_ids"]) == 3 and added["quality"]["folds"] == 3
    rejected = as_json(env, "label", "add-examples", "reds", red(colour_library, 5), "--negative")
    assert len(rejected["positive_ids"]) == 3 and len(rejected["negative_ids"]) == 1 and rejected["count"] == 5
    kept = as_json(env, "label", "remove-examples", "reds", str(rejected["negative_ids"][0]))
    assert kept["negative_ids"] == [] and kept["count"] == 6
    strict = as_json(env, "label", "set-threshold", "reds", "0.999999")
    assert strict["threshold"] == 0.999999 and not strict["threshold_auto"]
    assert as_json(env, "label", "set-threshold", "reds", "auto")["threshold_auto"]
    assert as_json(env, "label", "relearn", "reds")["state"] == "ready"
    assert [label["name"] for label in as_json(env, "label", "list")["labels"]] == ["Reds"]
    assert run(env, "label", "list").stdout.startswith("Reds: 6 image(s)")
    assert run(env, "label", "delete", "REDS").stdout.strip() == "deleted label REDS"
    assert "no custom labels yet" in run(env, "label", "list").stdout


def test_search_and_similar_by_label(env: dict[str, str], colour_library: Path, tmp_path: Path) -> None:
    run(env, "label", "create", "reds", red(colour_library, 0), red(colour_library, 1))
    query = tmp_path / "blue.jpg"
    colour_image(BLUE, seed=5).save(query, quality=95)
    found = as_json(env, "search", str(query), "--k", "10", "--class", "label:reds")["queries"][0]["results"]
    assert len(found) == 6 and {Path(r["path"]).parent.name for r in found} == {"red"}
    assert all(r["custom_labels"][0]["name"] == "reds" for r in found)
    mixed = as_json(env, "search", str(query), "--k", "20", "--class", "label:reds", "--class", "jellyfish")
    assert {Path(r["path"]).parent.name for r in mixed["queries"][0]["results"]} == {"red", "deep"}
    green = str((colour_library / "green" / "green0.webp").resolve())
    near = as_json(env, "similar", green, "--k", "20", "--class", "label:REDS")["queries"][0]["results"]
    assert {Path(r["path"]).parent.name for r in near} == {"red"}
    plain = as_json(env, "search", str(query), "--k", "1")["queries"][0]["results"][0]
    assert plain["custom_labels"] == []  # a blue image has no label, and says so
    unknown = run(env, "search", str(query), "--class", "label:nope", code=1)
    assert "--class: unknown custom label 'nope'" in unknown.output and "reds" in unknown.output


def test_errors_are_one_line_messages(env: dict[str, str], colour_library: Path, tmp_path: Path) -> None:
    stray = tmp_path / "not-indexed.jpg"
    colour_image(BLUE).save(stray)
    cases = [
        (["label", "create", "goldfish", red(colour_library, 0)], "name of an ImageNet class"),
        (["label", "create", "x", str(stray)], "not-indexed.jpg: not an indexed image"),
        (["label", "create", "x", "424242"], "positive_ids: no indexed image has id 424242"),
        (["label", "create", "x", str(tmp_path / "bad\udcff\nname.jpg")], "bad\\xff\\x0aname.jpg: not an indexed"),
        (["label", "show", "nope"], "no custom label is named 'nope'"),
        (["label", "delete", "nope"], "no custom label is named 'nope'"),
        (["label", "add-examples", "nope", "1"], "no custom label is named 'nope'"),
        (["label", "set-threshold", "nope", "0.5"], "no custom label is named 'nope'"),
    ]
    for args, words in cases:
        result = run(env, *args, code=1)
        assert words in result.output and "Traceback" not in result.output, args
    run(env, "label", "create", "reds", red(colour_library, 0))
    assert "exists already" in run(env, "label", "create", "REDS", red(colour_library, 1), code=1).output
    assert "'1.5' is not a number from 0 to 1" in run(env, "label", "set-threshold", "reds", "1.5", code=2).output
    assert "'high' is not a number" in run(env, "label", "set-threshold", "reds", "high", code=2).output
    assert "is not an example" in run(env, "label", "remove-examples", "reds", red(colour_library, 3),
                                      code=1).output
    assert "Missing argument" in run(env, "label", "create", "x", code=2).output


def test_every_label_command_has_help_with_examples() -> None:
    commands = ["create", "add-examples", "remove-examples", "set-threshold", "relearn", "list", "show", "delete"]
    for command in [None, *commands]:
        result = CliRunner().invoke(cli, ["label", *([command] if command else []), "--help"])
        assert result.exit_code == 0 and "Example" in result.output and "lookalike label" in result.output, command
    assert "label:NAME" in CliRunner().invoke(cli, ["search", "--help"]).output
