"""`lookalike search`, `similar`, `model info|fetch` and `config show|example` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import RED, REPO, colour_image, env_for, free_port
from model_fixtures import BLUE_CLASS, FEATURE_DIM, GREEN_CLASS, RED_CLASS

from indexer.settings import Settings
from indexer.settings_doc import descriptions
from lookalike.cli import cli


@pytest.fixture
def query_image(tmp_path: Path) -> Path:
    path = tmp_path / "query.jpg"
    colour_image(RED, seed=42).save(path, quality=95)
    return path


def test_search_table_json_and_filters(indexed_env: dict[str, str], query_image: Path) -> None:
    runner = CliRunner()
    table = runner.invoke(cli, ["search", str(query_image), "--k", "3"], env=indexed_env)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].startswith(str(query_image)) and "goldfish" in lines[0]
    assert "rank" in lines[1] and "score" in lines[1] and "path" in lines[1]
    assert len(lines) == 5 and all("/red/red" in line for line in lines[2:])

    out = runner.invoke(cli, ["search", str(query_image), str(query_image), "--json", "--k", "2",
                              "--class", "tree frog"], env=indexed_env)
    queries = json.loads(out.stdout)["queries"]
    assert len(queries) == 2 and queries[0]["labels"][0]["class_id"] == RED_CLASS
    assert [r["labels"][0]["class_id"] for r in queries[0]["results"]] == [GREEN_CLASS, GREEN_CLASS]
    strict = json.loads(runner.invoke(cli, ["search", str(query_image), "--json", "--min-score", "0.999"],
                                      env=indexed_env).stdout)["queries"][0]["results"]
    assert all(r["score"] >= 0.999 for r in strict)


def test_class_rule_options(indexed_env: dict[str, str], query_image: Path) -> None:
    def found(*options: str) -> list[dict]:
        out = CliRunner().invoke(cli, ["search", str(query_image), "--json", "--k", "20", "--class", "goldfish",
                                       *options], env=indexed_env)
        assert out.exit_code == 0, out.output
        return json.loads(out.stdout)["queries"][0]["results"]

    top1 = found("--class-rule", "top1")
    assert len(top1) == 6 and all(r["labels"][0]["class_id"] == RED_CLASS for r in top1)
    anywhere = found("--class-min-probability", "0")  # goldfish anywhere in the top 5
    assert len(anywhere) > len(top1)
    assert {r["id"] for r in top1} < {r["id"] for r in anywhere}


def test_similar_by_id_and_path_and_contact_sheet(indexed_env: dict[str, str], colour_library: Path,
                                                  tmp_path: Path) -> None:
    runner = CliRunner()
    blue = (colour_library / "blue" / "deep" / "blue2.png").resolve()
    by_path = json.loads(runner.invoke(cli, ["similar", str(blue), "--json", "--k", "4"], env=indexed_env).stdout)
    query = by_path["queries"][0]
    assert query["image"] == str(blue) and query["labels"][0]["class_id"] == BLUE_CLASS
    assert len(query["results"]) == 4 and all(r["path"] != str(blue) for r in query["results"])
    by_id = json.loads(runner.invoke(cli, ["similar", str(query["id"]), "--json", "--k", "4"],
                                     env=indexed_env).stdout)
    assert by_id["queries"][0]["results"] == query["results"]

    sheet = tmp_path / "sheet.html"
    result = runner.invoke(cli, ["similar", str(blue), "--k", "3", "--html", str(sheet)], env=indexed_env)
    assert result.exit_code == 0
    html = sheet.read_text()
    assert html.startswith("<!doctype html>") and html.count("data:image/jpeg;base64,") == 4
    assert "jellyfish" in html and "src=\"http" not in html and "src=\"/" not in html


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "{missing}"], "no such file"),
        (["search", "{query}", "--class", "unicorn"], "unknown class 'unicorn'"),
        (["search", "{notimage}"], "not an image"),
        (["similar", "99999"], "not an indexed image"),
        (["similar", "{missing}"], "not an indexed image"),
    ],
    ids=["missing-image", "unknown-class", "not-an-image", "unknown-id", "unknown-path"],
)
def test_search_errors(indexed_env: dict[str, str], query_image: Path, tmp_path: Path, args: list[str],
                       message: str) -> None:
    (tmp_path / "notes.jpg").write_text("hello")
    fill = {"missing": str(tmp_path / "missing.jpg"), "query": str(query_image),
            "notimage": str(tmp_path / "notes.jpg")}
    result = CliRunner().invoke(cli, [a.format(**fill) for a in args], env=indexed_env)
    assert result.exit_code == 1 and message in result.output, result.output


def test_search_before_any_index(tmp_path: Path, tf1_module: Path, query_image: Path) -> None:
    result = CliRunner().invoke(cli, ["search", str(query_image)], env=env_for(tmp_path / "empty", tf1_module))
    assert result.exit_code == 1 and "no catalog at" in result.output and "lookalike index" in result.output
    assert not (tmp_path / "empty").exists()


def test_usage_errors_exit_2(indexed_env: dict[str, str], query_image: Path) -> None:
    assert CliRunner().invoke(cli, ["search"], env=indexed_env).exit_code == 2
    assert CliRunner().invoke(cli, ["search", str(query_image), "--k", "0"], env=indexed_env).exit_code == 2


@pytest.mark.parametrize("fixture", ["tf1_module", "tf2_module"])
def test_model_info(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    module = request.getfixturevalue(fixture)
    result = CliRunner().invoke(cli, ["model", "info", "--json"], env=env_for(tmp_path / "d", module))
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["format"] == ("TF1 Hub format" if fixture == "tf1_module" else "TF2 SavedModel")
    assert info["single_pass"] == ("pruned single pass" if fixture == "tf1_module" else "frozen single pass")
    assert info["feature_dim"] == FEATURE_DIM and info["classes"] == 1000 and info["background_class"] is False
    assert {"image_feature_vector", "image_classification"} <= set(info["signatures"])
    assert info["origin"] == "local directory" and info["resolved_path"] == str(module.resolve())
    assert info["stand_in"] is None
    if fixture == "tf1_module":  # the TF1 fixture declares B4's 380x380 like the real module; we run it at 64
        assert info["declared_image_size"] == [380, 380]
        assert "declares 380x380 input, but model.image_size is 64" in result.stderr
    else:
        assert info["declared_image_size"] is None


def test_model_fetch_copies_a_module_and_fails_fast_offline(tmp_path: Path, tf1_module: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["model", "fetch", "--to", str(tmp_path / "copy")],
                           env=env_for(tmp_path / "d", tf1_module))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "copy" / "saved_model.pb").is_file() and "model.handle:" in result.stdout
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    offline = runner.invoke(cli, ["model", "fetch"], env=env_for(tmp_path / "d", f"http://127.0.0.1:{free_port()}/m"))
    assert offline.exit_code == 1 and "cannot download model" in offline.output


def test_config_show_names_every_source(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("api:\n  port: 9001\n")
    result = CliRunner().invoke(cli, ["--config", str(cfg), "config", "show", "--json"],
                                env={"LOOKALIKE_MODEL__IMAGE_SIZE": "224", "LOOKALIKE_CONFIG": ""})
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    helps = descriptions()
    assert shown["api.port"] == {"value": 9001, "source": f"config file {cfg}", "description": helps["api.port"]}
    assert shown["model.image_size"] == {"value": 224, "source": "environment LOOKALIKE_MODEL__IMAGE_SIZE",
                                         "description": helps["model.image_size"]}
    assert shown["model.batch_size"] == {"value": 0, "source": "default", "description": helps["model.batch_size"]}
    assert set(shown) == {f"{section}.{key}" for section, keys in Settings().model_dump().items() for key in keys}
    assert all(entry["description"] for entry in shown.values())
    table = CliRunner().invoke(cli, ["--config", str(cfg), "config", "show"], env={"LOOKALIKE_CONFIG": ""})
    rows = table.stdout.splitlines()
    port = next(i for i, line in enumerate(rows) if line.startswith("api.port "))
    assert rows[port].split() == ["api.port", "9001", "config", "file", str(cfg)]
    assert rows[port + 1] == "    Port `lookalike serve` listens on."  # its help, on the lines below it
    settings_rows = [line for line in rows if not line.startswith(" ")]
    assert [line.split()[0] for line in settings_rows] == list(shown)
    words = " ".join(table.stdout.split())
    assert all(" ".join(helps[key].split()) in words for key in shown)


def test_config_example_is_the_repository_config_yaml() -> None:
    result = CliRunner().invoke(cli, ["config", "example"], env={"LOOKALIKE_CONFIG": ""})
    assert result.exit_code == 0, result.output
    assert result.stdout == (REPO / "config.yaml").read_text(encoding="utf-8")


def test_k_is_bounded_by_search_max_k(tmp_path: Path, query_image: Path, tf1_module: Path) -> None:
    env = env_for(tmp_path / "empty", tf1_module)
    for command in (["search", str(query_image)], ["similar", str(query_image)]):
        over = CliRunner().invoke(cli, [*command, "--k", "1001"], env=env)
        assert over.exit_code == 2 and "1001 is not in the range 1<=x<=1000" in over.output, over.output
        lowered = CliRunner().invoke(cli, [*command, "--k", "6"], env={**env, "LOOKALIKE_SEARCH__MAX_K": "5"})
        assert lowered.exit_code == 2 and "6 is not in the range 1<=x<=5" in lowered.output, lowered.output
        raised = CliRunner().invoke(cli, [*command, "--k", "1500"], env={**env, "LOOKALIKE_SEARCH__MAX_K": "2000"})
        assert raised.exit_code == 1 and "no catalog at" in raised.output, raised.output  # past parsing
