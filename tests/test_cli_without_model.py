"""Commands that answer from the catalog and the index never load the model: they work while it cannot load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner
from helpers import RED, colour_image, env_for

from lookalike.cli import cli


def test_similar_stats_and_duplicates_work_with_a_model_that_cannot_load(tmp_path: Path, tf1_module: Path,
                                                                         colour_library: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tf1_module, model)
    env = env_for(tmp_path / "data", model)
    runner = CliRunner()
    assert runner.invoke(cli, ["index", str(colour_library)], env=env).exit_code == 0
    shutil.rmtree(model / "variables")  # the same saved_model.pb, so the same model id: but no weights to load

    new = tmp_path / "new.jpg"
    colour_image(RED, seed=99).save(new)
    broken = runner.invoke(cli, ["search", str(new)], env=env)
    assert broken.exit_code == 1 and isinstance(broken.exception, SystemExit)  # a message, not a traceback
    assert "Traceback" not in broken.output and str(model) in broken.output, broken.output

    red0 = colour_library / "red" / "red0.jpg"
    for args in (["similar", "1"], ["similar", str(red0), "--json", "--k", "3"], ["stats"], ["stats", "--json"],
                 ["duplicates"], ["duplicates", "--json"]):
        result = runner.invoke(cli, args, env=env)
        assert result.exit_code == 0, (args, result.output)
    # A query whose bytes are in the library is answered from the catalog: no model either.
    known = runner.invoke(cli, ["search", str(red0), "--json", "--k", "2"], env=env)
    assert known.exit_code == 0, known.output
    assert json.loads(known.stdout)["queries"][0]["results"][0]["path"] == str(red0.resolve())
