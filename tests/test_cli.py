from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import REPO, env_for, free_port, http_search, wait_ready

from lookalike import __version__
from lookalike.cli import cli
from storage.lock import writer_lock

COMMANDS = [["index"], ["errors"], ["duplicates"], ["search"], ["similar"], ["stats"], ["verify"], ["rebuild"],
            ["serve"], ["demo"], ["sample-library"], ["model", "info"], ["model", "fetch"], ["config", "show"],
            ["backup"]]


def test_version_and_help_with_examples_everywhere(runner: CliRunner) -> None:
    assert runner.invoke(cli, ["--version"]).output.strip() == f"lookalike, version {__version__}"
    listed = runner.invoke(cli, ["--help"]).output
    for command in COMMANDS:
        result = runner.invoke(cli, [*command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, command
        assert "Example" in result.output, command
        assert command[0] in listed


def test_sample_library_has_real_photos(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["sample-library", str(tmp_path / "lib")])
    assert result.exit_code == 0, result.output
    photos = sorted(p.name for p in (tmp_path / "lib" / "photos").iterdir())
    assert {"chelsea.jpg", "coffee.jpg", "rocket.jpg", "china.jpg", "flower.jpg"} <= set(photos)
    assert len(list((tmp_path / "lib").rglob("*.*"))) == 3 * len(photos)


def test_index_json_summary_and_stats(runner: CliRunner, colour_library: Path, tmp_path: Path,
                                      tf1_module: Path) -> None:
    (colour_library / "broken.jpg").write_bytes(b"not a jpeg")
    env = env_for(tmp_path / "data", tf1_module)
    result = runner.invoke(cli, ["index", "--json", str(colour_library)], env=env)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["indexed"] == 14 and summary["unchanged"] == 0 and summary["removed"] == 0
    assert summary["failed"] == 1
    assert summary["failures"][0]["path"].endswith("broken.jpg") and summary["failures"][0]["error"]
    again = json.loads(runner.invoke(cli, ["index", "--json", str(colour_library)], env=env).stdout.splitlines()[-1])
    assert (again["indexed"], again["unchanged"]) == (0, 14)

    stats = json.loads(runner.invoke(cli, ["stats", "--json"], env=env).stdout)
    assert stats["images"] == 14 and stats["vectors"] == 14 and stats["generation"] == 1
    human = runner.invoke(cli, ["index", str(colour_library)], env=env)
    assert human.exit_code == 0 and "indexed 0, linked 0, unchanged 14, skipped 1" in human.stdout


@pytest.mark.parametrize(
    ("args", "env_extra", "message"),
    [
        (["index", "{missing}"], {}, "no such folder"),
        (["index", "{library}"], {"LOOKALIKE_MODEL__IMAGE_SIZE": "tiny"}, "model.image_size"),
        (["index", "{library}"], {"LOOKALIKE_MODEL__HANDLE": "{missing}"}, "no such module directory"),
        (["index", "{library}"], {"LOOKALIKE_MODEL__HANDLE": "http://127.0.0.1:9/b4.tar.gz",
                                  "LOOKALIKE_MODEL__DOWNLOAD_TIMEOUT": "2"}, "cannot download model"),
        (["--config", "{missing}", "stats"], {}, "not found"),
    ],
    ids=["missing-folder", "bad-setting", "missing-model", "unreachable-hub", "missing-config"],
)
def test_errors_are_clear_and_exit_1(runner: CliRunner, colour_library: Path, tmp_path: Path, tf1_module: Path,
                                     args: list[str], env_extra: dict[str, str], message: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    fill = {"missing": str(tmp_path / "missing"), "library": str(colour_library)}
    env = env_for(tmp_path / "data", tf1_module) | {k: v.format(**fill) for k, v in env_extra.items()}
    result = runner.invoke(cli, [a.format(**fill) for a in args], env=env)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_busy_data_dir_and_model_change_are_refused(runner: CliRunner, colour_library: Path, tmp_path: Path,
                                                     tf1_module: Path, tf2_module: Path) -> None:
    env = env_for(tmp_path / "data", tf1_module)
    with writer_lock(tmp_path / "data"):
        busy = runner.invoke(cli, ["index", str(colour_library)], env=env)
    assert busy.exit_code == 1 and "another lookalike indexer" in busy.output
    assert runner.invoke(cli, ["index", str(colour_library)], env=env).exit_code == 0
    changed = runner.invoke(cli, ["index", str(colour_library)], env=env_for(tmp_path / "data", tf2_module))
    assert changed.exit_code == 1 and "--reindex" in changed.output
    redo = runner.invoke(cli, ["index", "--reindex", "--json", str(colour_library)],
                         env=env_for(tmp_path / "data", tf2_module))
    assert redo.exit_code == 0 and json.loads(redo.stdout.splitlines()[-1])["indexed"] == 14


@pytest.mark.gunicorn
def test_serve_answers_queries_over_http(runner: CliRunner, colour_library: Path, tmp_path: Path,
                                         tf1_module: Path) -> None:
    env = env_for(tmp_path / "data", tf1_module)
    assert runner.invoke(cli, ["index", str(colour_library)], env=env).exit_code == 0
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lookalike", "serve", "--port", str(port)],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_ready(proc, base)["vectors"] == 14
        results = http_search(base, colour_library / "red" / "red0.jpg", 2)["results"]
        assert Path(results[0]["path"]).name == "red0.jpg" and results[0]["score"] > 0.999
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.gunicorn
def test_demo_command_indexes_and_serves_offline(tmp_path: Path) -> None:
    """The README's main command, on a machine that cannot reach TF Hub."""
    port = free_port()
    env = {**os.environ, "LOOKALIKE_CONFIG": "", "TFHUB_CACHE_DIR": str(tmp_path / "cache"),
           "LOOKALIKE_MODEL__HANDLE": f"http://127.0.0.1:{free_port()}/b4.tar.gz"}
    proc = subprocess.Popen([sys.executable, "-m", "lookalike", "demo", "--dir", str(tmp_path / "demo"),
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        ready = wait_ready(proc, base)
        assert ready["vectors"] == 42 and ready["model"]["stand_in"] is True
        body = http_search(base, tmp_path / "demo" / "library" / "photos" / "coffee.jpg", 3)
        assert body["query"]["labels"][0]["name"] == "espresso"
        assert {Path(r["path"]).name.split("-")[0].split(".")[0] for r in body["results"]} == {"coffee"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_demo_falls_back_loudly_only_when_the_hub_is_unreachable(runner: CliRunner, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    env = env_for(tmp_path / "unused", f"http://127.0.0.1:{free_port()}/b4.tar.gz")
    result = runner.invoke(cli, ["demo", "--dir", str(tmp_path / "demo"), "--no-serve"], env=env)
    assert result.exit_code == 0, result.output
    assert "cannot download model" in result.stderr and "NOT EfficientNet-B4" in result.stderr
    assert "indexed 42," in result.stdout and "model: package:efficientnet-lite0 (224x224)" in result.stdout
    data_dirs = list((tmp_path / "demo" / "data").iterdir())
    assert [d.name for d in data_dirs] == ["package-efficientnet-lite0-0-1-0-224-crop-0-875"]  # the model id, crop too

    missing = runner.invoke(cli, ["demo", "--dir", str(tmp_path / "demo"), "--no-serve"],
                            env=env_for(tmp_path / "unused", tmp_path / "no-such-model"))
    assert missing.exit_code == 1 and "no such module directory" in missing.output
    assert "NOT EfficientNet-B4" not in missing.output

    # The demo leaves its settings behind, and the commands it prints work as shown.
    config = tmp_path / "demo" / "config.yaml"
    assert f"lookalike --config {config} search" in result.stdout
    no_env: dict[str, str | None] = {"LOOKALIKE_CONFIG": None, "LOOKALIKE_STORAGE__DATA_DIR": None,
                                     "LOOKALIKE_MODEL__HANDLE": None, "LOOKALIKE_MODEL__IMAGE_SIZE": None}
    stats = runner.invoke(cli, ["--config", str(config), "stats", "--json"], env=no_env)
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.stdout)["images"] == 42 and json.loads(stats.stdout)["vectors"] == 42
    photo = tmp_path / "demo" / "library" / "photos" / "chelsea.jpg"
    similar = runner.invoke(cli, ["--config", str(config), "similar", str(photo), "--json"], env=no_env)
    assert similar.exit_code == 0, similar.output
    assert Path(json.loads(similar.stdout)["queries"][0]["results"][0]["path"]).name.startswith("chelsea-")
    # A second demo finds nothing to do: the library files are not rewritten.
    again = runner.invoke(cli, ["demo", "--dir", str(tmp_path / "demo"), "--no-serve"], env=env)
    assert again.exit_code == 0 and "indexed 0, linked 0, unchanged 42" in again.stdout, again.output


def test_demo_refuses_a_busy_port_before_doing_any_work(runner: CliRunner, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = runner.invoke(cli, ["demo", "--dir", str(tmp_path / "demo"), "--port", str(port)],
                               env={"LOOKALIKE_CONFIG": ""})
        served = runner.invoke(cli, ["serve", "--port", str(port)], env={"LOOKALIKE_CONFIG": ""})
    assert result.exit_code == 1 and f"port {port} on 127.0.0.1 is already in use" in result.output
    assert "PORT=" in result.output and time.monotonic() - started < 5
    assert not (tmp_path / "demo").exists()
    assert served.exit_code == 1 and f"port {port} on 127.0.0.1 is already in use" in served.output


@pytest.mark.subprocess
def test_a_cpu_only_start_says_so_in_one_line_and_nothing_alarming(colour_library: Path, tmp_path: Path,
                                                                    tf1_module: Path) -> None:
    env = {**os.environ, **env_for(tmp_path / "data", tf1_module), "PYTHONPATH": str(REPO)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user's shell has
    done = subprocess.run([sys.executable, "-m", "lookalike", "index", str(colour_library)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "runs the model on the CPU" in done.stderr
    for noise in ("cuInit", "absl::InitializeLog", "cuda drivers", "pkg_resources", "oneDNN custom operations",
                  "Traceback", "E0000", "I0000"):
        assert noise not in done.stderr, done.stderr
