"""Read a PyTorch state dict in the legacy (non-zip) ``.pth`` format, without PyTorch.

Why: pretrained weights ship as ``.pth`` files, and PyTorch is far too heavy a dependency just
to read a few million floats. The format is five pickles followed by the raw storages:

    magic number, protocol version, sys_info, the state dict, the list of storage keys,
    then per storage key: int64 element count + the elements (little-endian).

A pickle can call any importable function: the unpickler here resolves only the few globals a
state dict needs, to local stand-ins, and refuses any other.
"""

from __future__ import annotations

import pathlib
import pickle
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {  # legacy torch storage classes -> little-endian numpy element types
    f"{name}Storage": np.dtype(code)
    for name, code in (("Float", "<f4"), ("Double", "<f8"), ("Half", "<f2"), ("Long", "<i8"), ("Int", "<i4"),
                       ("Short", "<i2"), ("Char", "i1"), ("Byte", "u1"), ("Bool", "?"))
}


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
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
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
        if unpickler.load() != LEGACY_MAGIC:
            raise ValueError(f"{path} is not a legacy torch file (bad magic number)")
        if unpickler.load() != LEGACY_PROTOCOL:
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
