"""indexer.hub_module_writer: a tiny network written as a TF1 Hub module, then run by the product.

The same writer makes the packaged Lite0 model and the benchmarks' B4 stand-in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.hub_module_writer import write_tf1_hub_module
from indexer.hub_protos import ModuleDef
from indexer.model import Embedder, declared_image_size
from indexer.tf_runtime import load_tensorflow

HEIGHT, WIDTH = 48, 40  # not square: height and width must not be swapped


def _write_tiny_module(out_dir: Path, image_size: tuple[int, int] = (HEIGHT, WIDTH)) -> Path:
    """features = mean RGB @ V (3 -> 8), logits = features @ W (8 -> 1000): one graph, two outputs."""
    tf = load_tensorflow()
    v1 = tf.compat.v1
    rng = np.random.default_rng(0)
    values = {"V": rng.normal(size=(3, 8)).astype(np.float32), "W": rng.normal(size=(8, 1000)).astype(np.float32)}
    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, None, None, 3], name="images")
        with v1.variable_scope("tiny", use_resource=True):
            variables = {name: v1.get_variable(name, shape=value.shape, initializer=v1.zeros_initializer())
                         for name, value in values.items()}
        features = tf.matmul(tf.reduce_mean(images, axis=[1, 2]), variables["V"])
        logits = tf.matmul(features, variables["W"])
        with v1.Session(graph=graph) as sess:
            sess.run([v.initializer for v in variables.values()],
                     feed_dict={variables[name].initial_value: value for name, value in values.items()})
            write_tf1_hub_module(out_dir, sess, images, features, logits, image_size, list(variables.values()))
    return out_dir


@pytest.fixture(scope="module")
def tiny_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_tiny_module(tmp_path_factory.mktemp("writer") / "tiny")


def test_written_module_is_tf1_hub_format(tiny_module: Path) -> None:
    load_tensorflow()
    from tensorflow.core.protobuf import saved_model_pb2

    assert ModuleDef.FromString((tiny_module / "tfhub_module.pb").read_bytes()).format == ModuleDef.FORMAT_V3
    saved = saved_model_pb2.SavedModel.FromString((tiny_module / "saved_model.pb").read_bytes())
    assert [list(g.meta_info_def.tags) for g in saved.meta_graphs] == [[]]
    graph = saved.meta_graphs[0]
    assert set(graph.signature_def) == {"default", "image_classification", "image_feature_vector"}
    assert not graph.HasField("saver_def")  # like tensorflow_hub's exporter: variables restored by name
    assert sorted(p.name for p in (tiny_module / "variables").iterdir()) == [
        "variables.data-00000-of-00001", "variables.index"]


def test_written_module_runs_in_one_pruned_pass_with_its_weights(tiny_module: Path) -> None:
    embedder = Embedder(str(tiny_module), 32)
    assert (embedder.format, embedder.route) == ("TF1 Hub format", "pruned single pass")
    assert (embedder.feature_dim, embedder.num_logits) == (8, 1000)
    pixels = np.zeros((2, 32, 32, 3), np.uint8)
    pixels[0, ..., 0], pixels[1, ..., 2] = 255, 255
    out = embedder.embed(pixels)
    assert np.isfinite(out.features).all() and not np.allclose(out.features[0], out.features[1])


def test_written_module_declares_its_size(tiny_module: Path, tmp_path: Path) -> None:
    assert declared_image_size(tiny_module) == (HEIGHT, WIDTH)
    assert declared_image_size(_write_tiny_module(tmp_path / "big", (600, 380))) == (600, 380)


def test_writer_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        _write_tiny_module(tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]
