"""The benchmarks' models and inputs: the EfficientNet-B4 stand-in (bench/b4_stand_in.py), built
and run through the product, the input size each module declares, and the sample photos.

Building B4 takes about a minute and 76 MB, so those tests build it once, in a child process, as
a user would (`python bench/b4_stand_in.py --out DIR`), and are left to `make test`. Choosing a
benchmark's module and input size is checked on the tiny fixture modules.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO

from bench.b4_stand_in import FEATURE_DIM, IMAGE_SIZE, bench_model, ensure_b4_stand_in
from indexer.model import Embedder, declared_image_size
from indexer.tf_runtime import load_tensorflow


@pytest.fixture(scope="module")
def b4_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("b4") / "b4_random_tf1"
    done = subprocess.run([sys.executable, "bench/b4_stand_in.py", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{out}: EfficientNet-B4 stand-in, 380x380, 1792-d" in done.stdout
    assert "deprecated" not in done.stderr  # the TF1 APIs' notices are silenced, not shown to users
    return out


@pytest.mark.subprocess
def test_stand_in_is_a_tf1_hub_module_holding_b4_once(b4_module: Path) -> None:
    load_tensorflow()
    from tensorflow.core.protobuf import saved_model_pb2

    assert declared_image_size(b4_module) == (IMAGE_SIZE, IMAGE_SIZE)
    saved = saved_model_pb2.SavedModel.FromString((b4_module / "saved_model.pb").read_bytes())
    assert [list(g.meta_info_def.tags) for g in saved.meta_graphs] == [[]]
    graph = saved.meta_graphs[0]
    assert set(graph.signature_def) == {"default", "image_classification", "image_feature_vector"}
    ops = collections.Counter(node.op for node in graph.graph_def.node)
    # B4's 32 MBConv blocks: 32 depthwise convs; stem + head + 30 expansions (the first stage has
    # none) + 32 projections + 2 per squeeze-excite = 128 convs; one classifier. Once, not twice.
    assert (ops["DepthwiseConv2dNative"], ops["Conv2D"], ops["MatMul"]) == (32, 128, 1)
    assert ops["If"] == ops["StatelessIf"] == 0  # inference only: no training-phase conditionals
    size = sum(f.stat().st_size for f in b4_module.rglob("*") if f.is_file())
    assert 70e6 < size < 90e6  # 19.5 M float32 weights


@pytest.mark.subprocess
def test_stand_in_runs_through_the_product_in_one_pass(b4_module: Path) -> None:
    embedder = Embedder(str(b4_module), IMAGE_SIZE)
    assert (embedder.format, embedder.route) == ("TF1 Hub format", "pruned single pass")
    assert (embedder.feature_dim, embedder.num_logits) == (FEATURE_DIM, 1000)
    pixels = np.random.default_rng(0).integers(0, 256, (2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    out = embedder.embed(pixels)
    assert out.features.shape == (2, FEATURE_DIM) and out.probabilities.shape == (2, 1000)
    assert np.isfinite(out.features).all() and not np.array_equal(out.features[0], out.features[1])


@pytest.mark.subprocess
def test_an_existing_stand_in_is_reused(b4_module: Path) -> None:
    mtime = (b4_module / "saved_model.pb").stat().st_mtime_ns
    started = time.perf_counter()
    assert ensure_b4_stand_in(b4_module) == b4_module
    assert time.perf_counter() - started < 1.0
    assert (b4_module / "saved_model.pb").stat().st_mtime_ns == mtime
    assert bench_model(str(b4_module), None) == (str(b4_module), IMAGE_SIZE)


def test_a_benchmark_runs_its_module_at_the_declared_size(tf1_module: Path, tf2_module: Path) -> None:
    assert bench_model(str(tf1_module), None) == (str(tf1_module), 380)  # the fixtures declare B4's 380
    assert bench_model(str(tf1_module), 64) == (str(tf1_module), 64)
    assert bench_model(str(tf2_module), 224) == (str(tf2_module), 224)
    with pytest.raises(SystemExit, match="declares no input size: give the square size to use with --image-size"):
        bench_model(str(tf2_module), None)
    with pytest.raises(SystemExit, match="no such module directory"):
        bench_model("/nonexistent/module", None)


def test_the_stand_in_never_replaces_a_folder_that_is_not_one(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not empty"):
        ensure_b4_stand_in(tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_a_missing_scikit_image_is_said_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import index_throughput

    monkeypatch.setitem(sys.modules, "skimage", None)  # what an install without the demo extra sees
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(SystemExit) as info:
        index_throughput.sample_photos()
    message = str(info.value.code)
    assert "\n" not in message and "pip install 'scikit-image>=0.22'" in message and "[demo]" in message
