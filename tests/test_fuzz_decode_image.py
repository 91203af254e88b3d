"""decode_image under fuzzing: a short atheris run, and every input a run once failed on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

from indexer.images import ImageRejected, decode_image

FUZZ = REPO / "fuzz"
REGRESSIONS = sorted((FUZZ / "regressions").iterdir())
RUNS = 3000


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_inputs_that_once_escaped_are_rejected(path: Path) -> None:
    with pytest.raises(ImageRejected) as raised:
        decode_image(path.read_bytes(), 64, 4_000_000)
    assert raised.value.kind in {"empty", "not_image", "unsupported_format", "corrupt", "too_many_pixels"}


@pytest.mark.fuzz
def test_short_fuzz_run_raises_only_image_rejected(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    result = subprocess.run(
        [sys.executable, str(FUZZ / "fuzz_decode_image.py"), f"-runs={RUNS}", "-max_total_time=50", "-timeout=10",
         "-rss_limit_mb=1024", "-seed=1", f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert f"Done {RUNS} runs" in output, output[-2000:]
    assert len(list(corpus.iterdir())) >= 15  # the seeds, plus what the run found worth keeping
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("oom-*"))
