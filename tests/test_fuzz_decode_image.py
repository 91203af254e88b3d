"""decode_image against the fuzzing corpus: every input the fuzzer kept, and every input a run once failed on.

The suite replays a fixed corpus (fuzz/corpus, fuzz/regressions), so it is deterministic;
open-ended fuzzing is `make fuzz`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

from indexer.images import ImageRejected, decode_image

FUZZ = REPO / "fuzz"
CORPUS = sorted((FUZZ / "corpus").iterdir())
REGRESSIONS = sorted((FUZZ / "regressions").iterdir())
SIZE = 64
MAX_PIXELS = 4_000_000  # as in the fuzz target
REJECTION_KINDS = {"empty", "not_image", "unsupported_format", "corrupt", "too_many_pixels"}
# Replaying the whole corpus in a fresh process: Python, Pillow and numpy take about 60 MB.
CORPUS_PEAK_RSS_MB = 300


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_inputs_that_once_escaped_are_rejected(path: Path) -> None:
    with pytest.raises(ImageRejected) as raised:
        decode_image(path.read_bytes(), SIZE, MAX_PIXELS)
    assert raised.value.kind in REJECTION_KINDS


def test_corpus_decodes_or_is_rejected_and_nothing_else() -> None:
    assert len(CORPUS) >= 100
    decoded = 0
    for path in CORPUS:
        try:
            out = decode_image(path.read_bytes(), SIZE, MAX_PIXELS)
        except ImageRejected as exc:
            assert exc.kind in REJECTION_KINDS, path.name
            continue
        assert out.pixels.shape == (SIZE, SIZE, 3) and out.width * out.height <= MAX_PIXELS, path.name
        decoded += 1
    assert decoded >= 10  # the seeds in every allowed format still decode


# The peak is VmHWM, this process image's own high-water mark: getrusage's ru_maxrss also keeps the
# peak of the forked parent before exec (the whole test process), which says nothing about decoding.
REPLAY = """
import json, re, sys
from pathlib import Path
from indexer.images import ImageRejected, decode_image
for path in sorted(Path(sys.argv[1]).iterdir()) + sorted(Path(sys.argv[2]).iterdir()):
    try:
        decode_image(path.read_bytes(), 64, 4_000_000)
    except ImageRejected:
        pass
status = Path("/proc/self/status").read_text()
print(json.dumps({"peak_rss_mb": int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) / 1024}))
"""


@pytest.mark.subprocess
def test_replaying_the_corpus_stays_small_in_memory() -> None:
    """Peak memory of a process that decodes every corpus input: no input may be a memory bomb."""
    done = subprocess.run([sys.executable, "-c", REPLAY, str(FUZZ / "corpus"), str(FUZZ / "regressions")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    peak = json.loads(done.stdout.splitlines()[-1])["peak_rss_mb"]
    assert peak < CORPUS_PEAK_RSS_MB, peak


@pytest.mark.fuzz
def test_the_fuzz_target_runs_the_corpus(tmp_path: Path) -> None:
    """The harness behind `make fuzz` still works: libFuzzer executes the fixed corpus once (-runs=0)."""
    corpus = tmp_path / "corpus"  # libFuzzer may add to its first corpus folder: never the repository's
    shutil.copytree(FUZZ / "corpus", corpus)
    done = subprocess.run(
        [sys.executable, str(FUZZ / "fuzz_decode_image.py"), "-runs=0", "-rss_limit_mb=1024",
         f"-artifact_prefix={tmp_path}/", str(corpus), str(FUZZ / "regressions")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "INITED" in output and "Done" in output, output[-2000:]
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("oom-*"))
