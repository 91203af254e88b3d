"""Checks of the tiny TF-Hub-format model fixtures in model_fixtures.py."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
from model_fixtures import (
    BLUE_CLASS,
    FEATURE_DIM,
    GREEN_CLASS,
    RED_CLASS,
    build_tf1_hub_module,
    build_tf2_saved_model,
    expected_features,
    expected_logits,
)
from tensorflow.core.protobuf import saved_model_pb2

# These check the tests' own model builders (a dozen modules built and loaded), not the product.
pytestmark = pytest.mark.slow

SIGNATURES = ("default", "image_classification", "image_feature_vector")
TOL = 1e-5
Predict = Callable[[np.ndarray], dict[str, np.ndarray]]


def _random_images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, h, w, 3), dtype=np.float32)


def _pure_colours(h: int = 37, w: int = 53) -> np.ndarray:
    """Pure red, green and blue images, in that order."""
    images = np.zeros((3, h, w, 3), np.float32)
    for i in range(3):
        images[i, :, :, i] = 1.0
    return images


def _read_saved_model(path: pathlib.Path) -> saved_model_pb2.SavedModel:
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    return proto


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tf1_module: pathlib.Path, tf1_module_1001: pathlib.Path,
           tf2_module: pathlib.Path, tf2_module_1001: pathlib.Path) -> dict[str, pathlib.Path]:
    """The session's models (conftest.py), plus a TF1 module without the train graph, which only these checks use."""
    return {
        "tf1": build_tf1_hub_module(tmp_path_factory.mktemp("model_fixtures") / "tf1"),
        "tf1_1001": tf1_module_1001,
        "tf1_train": tf1_module,
        "tf2": tf2_module,
        "tf2_1001": tf2_module_1001,
    }


def _signature_predict(path: pathlib.Path) -> Predict:
    """Run the separate signatures; returns features, logits and default."""
    sigs = hub.load(str(path)).signatures

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        x = tf.constant(images)
        return {
            "features": sigs["image_feature_vector"](images=x)["default"].numpy(),
            "logits": sigs["image_classification"](images=x)["default"].numpy(),
            "default": sigs["default"](images=x)["default"].numpy(),
        }

    return predict


def _pruned_predict(path: pathlib.Path) -> Predict:
    """The consumer's single-pass recipe for TF1 Hub-format modules."""
    m = hub.load(str(path))
    fv, cls = m.signatures["image_feature_vector"], m.signatures["image_classification"]
    t = m.graph.get_tensor_by_name
    both = m.prune(
        feeds=[t(fv.inputs[0].name)],
        fetches={
            "features": t(fv.structured_outputs["default"].name),
            "logits": t(cls.structured_outputs["default"].name),
        },
    )

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in both(tf.constant(images)).items()}

    return predict


def test_reference_features_by_hand() -> None:
    # 5x7 image: split at row 2 and column 3, each quadrant one colour.
    img = np.zeros((1, 5, 7, 3), np.float32)
    img[0, :2, :3] = (1, 0, 0)
    img[0, :2, 3:] = (0, 1, 0)
    img[0, 2:, :3] = (0, 0, 1)
    img[0, 2:, 3:] = (1, 1, 1)
    counts = np.array([6, 8, 9, 12], np.float64)
    lumas = np.array([0.299, 0.587, 0.114, 1.0])
    mean_luma = counts @ lumas / 35
    luma_std = np.sqrt(counts @ (lumas - mean_luma) ** 2 / 35)
    want = [18 / 35, 20 / 35, 21 / 35, 1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1, luma_std]
    got = expected_features(img)
    assert got.shape == (1, FEATURE_DIM)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[0], want, atol=1e-6)


def test_reference_logits_by_hand() -> None:
    img = np.full((2, 3, 4, 3), (0.5, 0.25, 0.125), np.float32)
    got = expected_logits(img)
    assert got.shape == (2, 1000)
    assert got.dtype == np.float32
    want = np.zeros((2, 1000), np.float32)
    want[:, [RED_CLASS, GREEN_CLASS, BLUE_CLASS]] = (5.0, 2.5, 1.25)
    np.testing.assert_allclose(got, want, atol=1e-6)
    shifted = expected_logits(img, num_classes=1001)
    assert shifted.shape == (2, 1001)
    np.testing.assert_allclose(shifted[:, 1:], want, atol=1e-6)
    assert not shifted[:, 0].any()


def test_tf1_module_layout(models: dict[str, pathlib.Path]) -> None:
    path = models["tf1"]
    assert (path / "tfhub_module.pb").read_bytes() == b"\x08\x03"
    assert (path / "variables" / "variables.index").is_file()
    proto = _read_saved_model(path)
    assert [list(mg.meta_info_def.tags) for mg in proto.meta_graphs] == [[]]
    meta_graph = proto.meta_graphs[0]
    assert sorted(meta_graph.signature_def) == sorted(SIGNATURES)
    for sig in meta_graph.signature_def.values():
        assert list(sig.inputs) == ["images"]
        assert list(sig.outputs) == ["default"]
    assert "hub_module_attachments" in meta_graph.collection_def
    # The network is in the graph once: one MatMul each for features and logits.
    matmuls = [n for n in meta_graph.graph_def.node if n.op == "MatMul"]
    assert len(matmuls) == 2
    train = _read_saved_model(models["tf1_train"])
    assert [sorted(mg.meta_info_def.tags) for mg in train.meta_graphs] == [
        [],
        ["train"],
    ]


def test_tf2_model_layout(models: dict[str, pathlib.Path]) -> None:
    path = models["tf2"]
    assert not (path / "tfhub_module.pb").exists()
    loaded = tf.saved_model.load(str(path))
    assert sorted(loaded.signatures) == sorted(SIGNATURES)
    spec = loaded.signatures["image_feature_vector"].structured_input_signature[1]
    assert list(spec) == ["images"]
    assert spec["images"].shape.as_list() == [None, None, None, 3]


@pytest.mark.parametrize("name", ["tf1", "tf2"])
def test_loaded_variables_hold_the_weights(
    models: dict[str, pathlib.Path], name: str
) -> None:
    variables = {
        tuple(v.shape): v.numpy() for v in hub.load(str(models[name])).variables
    }
    assert sorted(variables) == [(3, 1000), (16, 16), (1000,)]
    np.testing.assert_array_equal(variables[(16, 16)], np.eye(FEATURE_DIM))
    assert variables[(3, 1000)][0, RED_CLASS] == 10.0
    assert np.count_nonzero(variables[(3, 1000)]) == 3
    assert not variables[(1000,)].any()


def test_tf1_pruned_function_equals_signatures(models: dict[str, pathlib.Path]) -> None:
    images = np.concatenate([_random_images(3, 37, 53), _pure_colours()])
    pruned = _pruned_predict(models["tf1"])(images)
    separate = _signature_predict(models["tf1"])(images)
    assert set(pruned) == {"features", "logits"}
    np.testing.assert_array_equal(pruned["features"], separate["features"])
    np.testing.assert_array_equal(pruned["logits"], separate["logits"])
    np.testing.assert_array_equal(separate["default"], separate["logits"])


@pytest.mark.parametrize(
    ("name", "num_classes", "recipe"),
    [
        ("tf1", 1000, "signatures"),
        ("tf1", 1000, "pruned"),
        ("tf1_1001", 1001, "signatures"),
        ("tf1_1001", 1001, "pruned"),
        ("tf2", 1000, "signatures"),
        ("tf2_1001", 1001, "signatures"),
    ],
)
def test_outputs_match_numpy_reference(
    models: dict[str, pathlib.Path], name: str, num_classes: int, recipe: str
) -> None:
    make = _pruned_predict if recipe == "pruned" else _signature_predict
    predict = make(models[name])
    for images in (
        _random_images(4, 37, 53, seed=1),
        _random_images(2, 64, 48, seed=2),
        _pure_colours(),
        _pure_colours(1 + 2 * 20, 2 + 2 * 11),
    ):
        out = predict(images)
        assert out["features"].shape == (len(images), FEATURE_DIM)
        assert out["logits"].shape == (len(images), num_classes)
        np.testing.assert_allclose(out["features"], expected_features(images), atol=TOL)
        np.testing.assert_allclose(
            out["logits"], expected_logits(images, num_classes), atol=TOL
        )


@pytest.mark.parametrize(
    ("name", "offset"), [("tf1", 0), ("tf1_1001", 1), ("tf2", 0), ("tf2_1001", 1)]
)
def test_pure_colours_are_classified(
    models: dict[str, pathlib.Path], name: str, offset: int
) -> None:
    logits = _signature_predict(models[name])(_pure_colours())["logits"]
    want = [RED_CLASS + offset, GREEN_CLASS + offset, BLUE_CLASS + offset]
    assert logits.argmax(axis=1).tolist() == want
    probs = tf.nn.softmax(logits).numpy()
    top = probs[np.arange(3), want]
    num_classes = logits.shape[1]
    np.testing.assert_allclose(
        top, np.exp(10) / (np.exp(10) + num_classes - 1), rtol=1e-5
    )
    assert (top > 0.95).all()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("tf1", {}), ("tf2", {"signature": "default", "output_key": "default"})],
)
def test_keras_layer_returns_logits(
    models: dict[str, pathlib.Path], name: str, kwargs: dict[str, str]
) -> None:
    layer = hub.KerasLayer(str(models[name]), **kwargs)
    images = _random_images(2, 21, 30, seed=3)
    got = layer(tf.constant(images)).numpy()
    np.testing.assert_allclose(got, expected_logits(images), atol=TOL)


def test_train_graph_needs_hub_load(models: dict[str, pathlib.Path]) -> None:
    path = str(models["tf1_train"])
    with pytest.raises(ValueError, match="tags="):
        tf.saved_model.load(path)
    images = _pure_colours(9, 11)
    out = _pruned_predict(models["tf1_train"])(images)
    np.testing.assert_allclose(out["logits"], expected_logits(images), atol=TOL)
    explicit = tf.saved_model.load(path, tags=[]).signatures["image_feature_vector"]
    np.testing.assert_allclose(
        explicit(images=tf.constant(images))["default"].numpy(),
        expected_features(images),
        atol=TOL,
    )


def test_building_leaves_eager_mode_intact(tmp_path: pathlib.Path) -> None:
    global_graph = tf.compat.v1.get_default_graph()
    n_ops = len(global_graph.get_operations())
    build_tf1_hub_module(tmp_path / "tf1")
    build_tf2_saved_model(tmp_path / "tf2")
    assert tf.executing_eagerly()
    assert tf.compat.v1.get_default_graph() is global_graph
    assert len(global_graph.get_operations()) == n_ops
    assert float(tf.reduce_sum(tf.ones([2, 3]))) == 6.0


@pytest.mark.parametrize("build", [build_tf1_hub_module, build_tf2_saved_model])
def test_refuses_non_empty_out_dir(
    tmp_path: pathlib.Path, build: Callable[[pathlib.Path], pathlib.Path]
) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        build(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build(empty) == empty
    assert (empty / "saved_model.pb").is_file()
