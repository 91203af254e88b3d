"""Every command the README shows exists: each `lookalike` subcommand and flag, and each `make` target."""

from __future__ import annotations

import re
import shlex

import click
import pytest
from click.testing import CliRunner
from helpers import REPO

from lookalike.cli import cli

README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```sh\n(.*?)```", README, flags=re.S)
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


def shown_commands(program: str) -> list[list[str]]:
    """The words of each README shell line that runs `program` (after any VAR=value prefixes)."""
    commands = []
    for block in BLOCKS:
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line:
                continue
            words = shlex.split(line)
            while words and ENV_ASSIGNMENT.match(words[0]):
                words = words[1:]
            if words and words[0] == program:
                commands.append(words[1:])
    return commands


def resolve(words: list[str]) -> tuple[click.Command, list[str], list[str]]:
    """The (sub)command the words name, the path to it, and the options used along the way."""
    command: click.Command = cli
    path: list[str] = []
    options: list[str] = []
    for word in words:
        if word.startswith("-"):
            options.append(word.split("=", 1)[0])
        elif isinstance(command, click.Group) and word in command.commands:
            command = command.commands[word]
            path.append(word)
    return command, path, options


LOOKALIKE = shown_commands("lookalike")


def test_the_readme_shows_the_main_commands() -> None:
    shown = {resolve(words)[1][0] for words in LOOKALIKE if resolve(words)[1]}
    assert {"index", "search", "similar", "serve", "stats"} <= shown
    assert len(README.encode("utf-8")) <= 12 * 1024  # for users: the rest lives in docs/


@pytest.mark.parametrize("words", LOOKALIKE, ids=[" ".join(w)[:60] for w in LOOKALIKE])
def test_each_lookalike_command_and_flag_exists(words: list[str]) -> None:
    command, path, options = resolve(words)
    assert path, f"no lookalike subcommand in {words}"
    known = {opt for param in command.params if isinstance(param, click.Option) for opt in param.opts}
    known |= {opt for param in cli.params if isinstance(param, click.Option) for opt in param.opts}
    assert set(options) <= known | {"--help", "-h"}, f"unknown options {set(options) - known} for {path}"
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_each_make_target_exists() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    shown = {words[0] for words in shown_commands("make")}
    assert shown and shown <= targets, shown - targets


def test_every_linked_document_exists() -> None:
    for link in re.findall(r"\]\(((?:docs|bench)/[^)#]+)\)", README):
        assert (REPO / link).is_file(), link
