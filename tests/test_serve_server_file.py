"""A real `lookalike serve` says where it answers in its data dir's server.json, and takes it back when it
stops; `lookalike search` in a fresh process finds it there and answers without importing TensorFlow,
FAISS or SQLAlchemy."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import RED, ServerProcess, colour_image, make_settings, run_index, subprocess_env

from lookalike.cli_search import MODEL_NOTICE
from search_api.server_file import SERVER_FILE, health_instance, read_server_file

pytestmark = pytest.mark.gunicorn

SEARCH = """
import sys
from lookalike.cli import cli
try:
    cli(["search", *sys.argv[1:]], prog_name="lookalike")
except SystemExit as exc:
    code = exc.code
heavy = [m for m in ("tensorflow", "faiss", "sqlalchemy", "flask", "numpy") if m in sys.modules]
print(f"heavy imports: {heavy}", file=sys.stderr)
sys.exit(code)
"""


def test_serve_writes_server_file_and_search_uses_it_without_tensorflow(tmp_path: Path, tf1_module: Path,
                                                                        colour_library: Path) -> None:
    data = tmp_path / "data"
    run_index(make_settings(data, tf1_module), colour_library)
    query = tmp_path / "query.jpg"
    colour_image(RED, seed=42).save(query, quality=95)
    env = subprocess_env(data, tf1_module)
    with ServerProcess(env, tmp_path / "serve.log") as server:
        info = read_server_file(data)
        assert info is not None and info.url == server.base and info.pid == server.proc.pid
        assert health_instance(server.base) == info.instance and len(info.instance) == 32

        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", SEARCH, str(query), "--json", "--k", "3"], env=env,
                             capture_output=True, text=True, timeout=120)
        took = time.perf_counter() - started
        assert out.returncode == 0, out.stderr
        # Imports are most of what a search through a server costs: none of the big libraries is needed.
        assert "heavy imports: []" in out.stderr and MODEL_NOTICE not in out.stderr
        hits = json.loads(out.stdout)["queries"][0]["results"]
        assert len(hits) == 3 and all("/red/" in h["path"] for h in hits)
        print(f"search through the server in a fresh process: {took:.2f} s")

        assert server.stop(signal.SIGTERM) == 0, server.output()
    assert not (data / SERVER_FILE).exists()
