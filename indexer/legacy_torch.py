"""Read a PyTorch state dict in the legacy (non-zip) ``.pth`` format, without PyTorch, safely.

Why: pretrained weights ship as ``.pth`` files, and PyTorch is far too heavy a dependency just
to read a few million floats. The format is five pickles followed by the raw storages:

    magic number, protocol version, sys_info, the state dict, the list of storage keys,
    then per storage key: int64 element count + the elements (little-endian).

Security: a pickle can call any importable function. The unpickler here resolves only the few
globals a state dict needs (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``
and the plain ``torch.*Storage`` types) to local stand-ins: nothing is ever imported, and any
other global is refused. Dict keys and set elements must be plain strings or numbers (hashing a
crafted tuple can take forever), and only the state dict's own attributes may be set. Everything
the pickles declare (shapes, strides, offsets, counts) is checked against the bytes actually
present before memory is allocated for it, and whatever goes wrong surfaces as
``pickle.UnpicklingError`` (a refused or malformed pickle) or ``ValueError`` (a malformed file),
naming the file.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
MAX_FILE_BYTES = 1 << 28  # far above any state dict this reader is meant for (~20 MB)
MAX_DIMS = 32  # numpy's limit on older versions
# The tensors of a state dict cover their storages about once (views may share a storage).
# More materialised bytes than this multiple of the file's data is an amplification attack.
MAX_EXPANSION = 2
STORAGE_DTYPES = {  # legacy torch storage classes -> little-endian numpy element types
    f"{name}Storage": np.dtype(code)
    for name, code in (("Float", "<f4"), ("Double", "<f8"), ("Half", "<f2"), ("Long", "<i8"), ("Int", "<i4"),
                       ("Short", "<i2"), ("Char", "i1"), ("Byte", "u1"), ("Bool", "?"))
}


# Stand-ins for what the pickles build. NamedTuples have no __dict__, no __setstate__ and read-only
# fields: even without the BUILD check below, a pickle could not alter them once checked.
class _StorageType(NamedTuple):
    name: str


class _StorageRef(NamedTuple):
    key: str
    view: tuple[str, int, int] | None  # (view key, element offset, size) into the root storage


class _TensorRef(NamedTuple):
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _OrderedDict(dict[Any, Any]):
    """Stands in for collections.OrderedDict (dicts keep order); has a __dict__ for torch's _metadata.

    torch builds it empty and fills it with SETITEM(S), whose keys are checked; arguments that
    would be hashed unchecked are refused. Only ever read through dict's own methods, since a
    pickle may set attributes such as ``items`` on it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:
            raise pickle.UnpicklingError("OrderedDict with arguments: a state dict is built empty, then filled")
        super().__init__()


def _what(value: Any) -> str:
    """A bounded description of a value from the file: never its repr (a pickle can make that exponential)."""
    return type(value).__name__


def _index_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > MAX_DIMS:
        raise pickle.UnpicklingError(f"tensor {what} must be a tuple of at most {MAX_DIMS} ints, got {_what(value)}")
    if not all(type(n) is int and n >= 0 for n in value):
        raise pickle.UnpicklingError(f"tensor {what} must hold non-negative ints")
    return value


class _TensorRebuilder:
    """Stands in for torch._utils._rebuild_tensor_v2: records where a tensor's elements are.

    An instance with no __dict__ (not a function, whose __dict__ a pickle could fill).
    """

    __slots__ = ()

    def __call__(self, storage: Any = None, offset: Any = None, size: Any = None, stride: Any = None,
                 *_: Any) -> _TensorRef:
        if not isinstance(storage, _StorageRef):
            raise pickle.UnpicklingError(f"a tensor must be built on a storage, not on a {_what(storage)}")
        if type(offset) is not int or offset < 0:
            raise pickle.UnpicklingError(f"tensor offset must be a non-negative int, got {_what(offset)}")
        size, stride = _index_tuple(size, "size"), _index_tuple(stride, "stride")
        if len(size) != len(stride):
            raise pickle.UnpicklingError(f"tensor size has {len(size)} dimensions but stride {len(stride)}")
        return _TensorRef(storage, offset, size, stride)


_REBUILD_TENSOR = _TensorRebuilder()
# Hashing these takes time linear in their size. A tuple key can share its parts through the
# memo, and hashing a 60-deep tuple of pairs (a few hundred bytes of pickle) takes 2**60 steps.
_HASHABLE = (str, int, bytes, float, bool, type(None))


def _check_hashable(items: Any, what: str) -> None:
    for item in items:
        if type(item) not in _HASHABLE:
            raise pickle.UnpicklingError(f"{what} must be a string or a number, not a {_what(item)}")


# The pure-Python unpickler's opcode handlers, which the checked opcodes below call after their checks.
_PURE_DISPATCH: dict[int, Callable[[Any], None]] = dict(pickle._Unpickler.dispatch)


class _RestrictedUnpickler(pickle._Unpickler):
    """Resolves only the few globals a state dict needs; anything else is refused, never imported.

    Python's own (pure Python) unpickler, so that the opcodes that hash keys or set attributes can
    be checked first: every dict key and set element must be a plain string or number, BUILD may
    only set the state dict's own attributes, and extension codes are refused.
    """

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(_PURE_DISPATCH)
    stack: list[Any]  # the pure-Python unpickler's working stack, set up by load()

    def __init__(self, f: io.BytesIO) -> None:
        super().__init__(f)
        self.dtypes: dict[str, np.dtype] = {}  # storage key -> element type, for reading the data
        self.declared: dict[str, int] = {}  # storage key -> element count its persistent id declares

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return _OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _REBUILD_TENSOR
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module[:100]}.{name[:100]} from a state dict")

    def persistent_load(self, pid: Any) -> _StorageRef:
        # torch writes ("storage", storage type, key, location, element count, view or None).
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            shape = f"a tuple of {len(pid)}" if isinstance(pid, tuple) else f"a {_what(pid)}"
            raise pickle.UnpicklingError(f"unsupported persistent id: {shape}, not ('storage', type, key, "
                                         "location, size, view)")
        _, storage_type, key, location, numel, view = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type: a {_what(storage_type)}")
        if not isinstance(key, str) or not isinstance(location, str) or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError("storage key and location must be strings and its size a non-negative int")
        dtype = STORAGE_DTYPES[storage_type.name]
        if self.dtypes.setdefault(key, dtype) != dtype or self.declared.setdefault(key, numel) != numel:
            raise pickle.UnpicklingError(f"storage {key[:100]} is declared twice, differently")
        if view is not None:
            if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                    and all(type(n) is int and n >= 0 for n in view[1:])):
                raise pickle.UnpicklingError(f"storage {key[:100]}: a view must be (key, offset, size)")
            if view[1] + view[2] > numel:
                raise pickle.UnpicklingError(f"storage {key[:100]}: its view ends past the storage")
        return _StorageRef(key, view)

    # The checked opcodes. After a MARK, self.stack holds just the items since the mark.
    def _load_setitem(self) -> None:
        _check_hashable(self.stack[-2:-1], "a dict key")
        _PURE_DISPATCH[pickle.SETITEM[0]](self)

    def _load_setitems(self) -> None:
        _check_hashable(self.stack[0::2], "a dict key")
        _PURE_DISPATCH[pickle.SETITEMS[0]](self)

    def _load_dict(self) -> None:
        _check_hashable(self.stack[0::2], "a dict key")
        _PURE_DISPATCH[pickle.DICT[0]](self)

    def _load_additems(self) -> None:
        _check_hashable(self.stack, "a set element")
        _PURE_DISPATCH[pickle.ADDITEMS[0]](self)

    def _load_frozenset(self) -> None:
        _check_hashable(self.stack, "a set element")
        _PURE_DISPATCH[pickle.FROZENSET[0]](self)

    def _load_build(self) -> None:
        inst, state = self.stack[-2:] if len(self.stack) >= 2 else (None, None)
        if type(inst) is not _OrderedDict or type(state) is not dict or not all(type(k) is str for k in state):
            raise pickle.UnpicklingError(f"refusing to set the attributes of a {_what(inst)} (BUILD): only a "
                                         "state dict's own, by name")
        _PURE_DISPATCH[pickle.BUILD[0]](self)

    def _load_ext(self) -> None:
        raise pickle.UnpicklingError("refusing an extension code: a state dict names its few globals")

    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems
    dispatch[pickle.DICT[0]] = _load_dict
    dispatch[pickle.ADDITEMS[0]] = _load_additems
    dispatch[pickle.FROZENSET[0]] = _load_frozenset
    dispatch[pickle.BUILD[0]] = _load_build
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _load_ext
    del _op

    def load_checked(self, what: str) -> Any:
        """One pickle; any failure inside the pickle machinery becomes an UnpicklingError."""
        try:
            return self.load()
        except pickle.UnpicklingError as exc:
            raise pickle.UnpicklingError(f"cannot read the {what}: {exc}") from None
        except KeyError:  # its message would be the repr of a value from the file
            raise pickle.UnpicklingError(f"cannot read the {what}: a missing key") from None
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, OverflowError,
                RecursionError) as exc:
            raise pickle.UnpicklingError(f"cannot read the {what}: {type(exc).__name__}: {str(exc)[:200]}") from None


def _read_storages(raw: bytes, pos: int, keys: list[str], unpickler: _RestrictedUnpickler) -> dict[str, np.ndarray]:
    """The raw storages after the pickles (from pos), as read-only arrays over the file's bytes."""
    storages = {}
    for key in keys:
        if pos + 8 > len(raw):
            raise ValueError(f"truncated file: no data for storage {key[:100]}")
        numel = int.from_bytes(raw[pos : pos + 8], "little", signed=True)
        pos += 8
        if key not in unpickler.dtypes:
            raise ValueError(f"storage {key[:100]} is used by no tensor: its element type is unknown")
        dtype = unpickler.dtypes[key]
        if numel != unpickler.declared[key]:
            raise ValueError(f"storage {key[:100]} holds {numel} elements but its tensors declare "
                             f"{unpickler.declared[key]}")
        if numel * dtype.itemsize > len(raw) - pos:  # checked against the file before anything is made
            raise ValueError(f"truncated file: storage {key[:100]} needs {numel} elements of {dtype.itemsize} "
                             f"bytes, the file has {len(raw) - pos} bytes left")
        storages[key] = np.frombuffer(raw, dtype, count=numel, offset=pos)
        pos += numel * dtype.itemsize
    return storages


def _materialize(ref: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    if ref.storage.key not in storages:
        raise ValueError(f"tensor storage {ref.storage.key[:100]} is not in the file's storage list")
    buf = storages[ref.storage.key]
    if ref.storage.view is not None:
        _, start, length = ref.storage.view
        buf = buf[start : start + length]
    count = math.prod(ref.size)
    if count == 0:
        return np.zeros(ref.size, buf.dtype.newbyteorder("="))
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
    if last >= len(buf) or count > len(buf):  # a tensor reads inside its storage, each element once
        raise ValueError(f"tensor view out of bounds of storage {ref.storage.key[:100]}")
    strides = tuple(s * buf.itemsize for s in ref.stride)
    view = np.lib.stride_tricks.as_strided(buf[ref.offset :], shape=ref.size, strides=strides, writeable=False)
    return np.array(view, dtype=buf.dtype.newbyteorder("="), order="C")  # a C-ordered native copy


def _read_bounded(path: Path) -> bytes:
    """The whole file, refused when it is far larger than any state dict this reader is for."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{path} is {size} bytes, more than the {MAX_FILE_BYTES} a state dict may have")
        return f.read(size)  # what it held when checked: a file growing meanwhile is read only that far


def read_legacy_torch_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Read a state dict saved by torch.save in the legacy (non-zip) format: name -> array.

    Only tensors in a dict are accepted. Raises pickle.UnpicklingError (a refused global or a
    malformed pickle), ValueError (a malformed file) or OSError (unreadable), naming the file.
    """
    raw = _read_bounded(path)  # parsed from memory: a declared length can never make a read allocate more
    if raw[:2] == b"PK":
        raise ValueError(f"{path} is a zip-format torch file; only the legacy format is supported")
    f = io.BytesIO(raw)
    unpickler = _RestrictedUnpickler(f)  # every pickle in the file goes through it, never plain pickle.load
    try:
        if unpickler.load_checked("magic number") != LEGACY_MAGIC:
            raise ValueError("not a legacy torch file (bad magic number)")
        if unpickler.load_checked("protocol version") != LEGACY_PROTOCOL:
            raise ValueError("unsupported torch legacy protocol version")
        sys_info = unpickler.load_checked("system information")
        if not isinstance(sys_info, dict) or dict.get(sys_info, "little_endian") is not True:
            raise ValueError("only little-endian files are supported")
        obj, keys = unpickler.load_checked("state dict"), unpickler.load_checked("storage key list")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("the storage key list is missing")
        storages = _read_storages(raw, f.tell(), keys, unpickler)
        if not isinstance(obj, dict):
            raise ValueError(f"does not hold a state dict but a {_what(obj)}")
        state, budget = {}, MAX_EXPANSION * sum(s.nbytes for s in storages.values())
        for name, value in dict.items(obj):
            if not isinstance(name, str) or not isinstance(value, _TensorRef):
                raise ValueError(f"entry {name[:100] if isinstance(name, str) else _what(name)} is not a named tensor")
            state[name] = _materialize(value, storages)
            budget -= state[name].nbytes
            if budget < 0:
                raise ValueError(f"its tensors hold more than {MAX_EXPANSION}x the file's data")
    except pickle.UnpicklingError as exc:
        raise pickle.UnpicklingError(f"{path}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return state
