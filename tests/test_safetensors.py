"""The C++ safetensors reader: round trips against the `safetensors` package, and one test per
kind of corrupt file (each must raise a clear Python exception, never crash)."""
import json
import struct

import numpy as np
import pytest

from specdec_native import _core

safetensors_numpy = pytest.importorskip("safetensors.numpy")


# ---------------------------------------------------------------------------------------------
# helpers


def write_raw(path, header, data=b"", header_size=None):
    """Writes a safetensors-like file by hand: <u64 N><N header bytes><data>."""
    if isinstance(header, (dict, list, int, str)):
        header = json.dumps(header).encode("utf-8")
    n = len(header) if header_size is None else header_size
    path.write_bytes(struct.pack("<Q", n) + header + data)
    return str(path)


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


def expect_error(path, exc, fragment):
    """Opening `path` must raise `exc` whose message contains `fragment` and the file path."""
    with pytest.raises(exc) as info:
        _core.safetensors_inspect(str(path))
    msg = str(info.value)
    assert fragment in msg, msg
    assert str(path) in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------
# valid files


def test_roundtrip_numpy_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "f64": rng.standard_normal((3, 5)).astype(np.float64),
        "f32": rng.standard_normal((7, 2, 3)).astype(np.float32),
        "f16": rng.standard_normal((4, 9)).astype(np.float16),
        "i64": rng.integers(-(2**62), 2**62, size=(6,), dtype=np.int64),
        "i32": rng.integers(-(2**31), 2**31 - 1, size=(2, 3), dtype=np.int32),
        "i16": rng.integers(-(2**15), 2**15 - 1, size=(5, 1), dtype=np.int16),
        "i8": rng.integers(-128, 127, size=(11,), dtype=np.int8),
        "u8": rng.integers(0, 255, size=(3, 3, 3), dtype=np.uint8),
        "bool": rng.integers(0, 2, size=(13,)).astype(np.bool_),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((8, 8)).astype(np.float32),
    }
    path = str(tmp_path / "m.safetensors")
    safetensors_numpy.save_file(arrays, path, metadata={"format": "np", "note": "h\u00e9llo"})

    info = _core.safetensors_inspect(path)
    expected_dtype = {
        "f64": "F64", "f32": "F32", "f16": "F16", "i64": "I64", "i32": "I32", "i16": "I16",
        "i8": "I8", "u8": "U8", "bool": "BOOL", "scalar": "F32", "empty": "F32",
        "model.layers.0.self_attn.q_proj.weight": "F32",
    }
    assert set(info) == set(arrays)
    for name, arr in arrays.items():
        dtype, shape, nbytes = info[name]
        assert dtype == expected_dtype[name], name
        assert shape == tuple(arr.shape), name
        assert isinstance(shape, tuple)
        assert nbytes == arr.nbytes, name
        raw = _core.safetensors_read(path, name)
        assert isinstance(raw, bytes)
        assert raw == np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes(), name
    assert info["scalar"][1] == ()
    assert info["empty"][2] == 0
    assert _core.safetensors_metadata(path) == {"format": "np", "note": "h\u00e9llo"}


def test_roundtrip_torch_bf16_and_fp8(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    g = torch.Generator().manual_seed(0)
    tensors = {
        "w_bf16": torch.randn(5, 7, generator=g).to(torch.bfloat16),
        "w_f16": torch.randn(3, 2, generator=g).to(torch.float16),
        "w_f32": torch.randn(4, generator=g),
        "ids": torch.arange(10, dtype=torch.int64),
    }
    expected = {"w_bf16": "BF16", "w_f16": "F16", "w_f32": "F32", "ids": "I64"}
    if hasattr(torch, "float8_e4m3fn"):
        tensors["w_e4m3"] = torch.randn(6, 3, generator=g).to(torch.float8_e4m3fn)
        expected["w_e4m3"] = "F8_E4M3"
    if hasattr(torch, "float8_e5m2"):
        tensors["w_e5m2"] = torch.randn(2, 2, generator=g).to(torch.float8_e5m2)
        expected["w_e5m2"] = "F8_E5M2"
    path = str(tmp_path / "t.safetensors")
    st_torch.save_file(tensors, path)

    info = _core.safetensors_inspect(path)
    assert set(info) == set(tensors)
    for name, t in tensors.items():
        dtype, shape, nbytes = info[name]
        assert dtype == expected[name]
        assert shape == tuple(t.shape)
        assert nbytes == t.numel() * t.element_size()
        want = t.contiguous().view(torch.uint8).numpy().tobytes()
        assert _core.safetensors_read(path, name) == want, name


def test_hand_written_file_with_gaps_padding_and_escapes(tmp_path):
    # Gaps between tensors, an empty tensor inside another's range, header padded with spaces,
    # a \u-escaped (surrogate pair) tensor name, extra unknown keys, and trailing unused data.
    header = {
        "a": entry("F32", [2], 0, 8),
        "gap_after_a": entry("U8", [3], 16, 19),
        "empty_inside": entry("F32", [0], 4, 4),
        "x\U0001F600": entry("I16", [], 19, 21),
        "__metadata__": {"k": "v"},
    }
    text = json.dumps(header, ensure_ascii=True)
    assert "\\ud83d\\ude00" in text
    hb = text.encode() + b"   \n "
    data = bytes(range(24))
    path = write_raw(tmp_path / "h.safetensors", hb, data)
    info = _core.safetensors_inspect(path)
    assert info["a"] == ("F32", (2,), 8)
    assert info["x\U0001F600"] == ("I16", (), 2)
    assert _core.safetensors_read(path, "gap_after_a") == data[16:19]
    assert _core.safetensors_read(path, "x\U0001F600") == data[19:21]
    assert _core.safetensors_read(path, "empty_inside") == b""
    assert _core.safetensors_metadata(path) == {"k": "v"}


def test_read_unknown_tensor_name_is_value_error(tmp_path):
    path = str(tmp_path / "m.safetensors")
    safetensors_numpy.save_file({"a": np.zeros(3, np.float32)}, path)
    with pytest.raises(ValueError, match="no tensor named 'b'"):
        _core.safetensors_read(path, "b")


def test_checkpoint_names_across_shards(tmp_path):
    p1 = str(tmp_path / "s1.safetensors")
    p2 = str(tmp_path / "s2.safetensors")
    safetensors_numpy.save_file({"b": np.zeros(2, np.float32), "a": np.ones(1, np.int8)}, p1)
    safetensors_numpy.save_file({"c": np.zeros((2, 2), np.float16)}, p2)
    assert _core.checkpoint_names([p1, p2]) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="no shard paths"):
        _core.checkpoint_names([])


# ---------------------------------------------------------------------------------------------
# corrupt files: one test per defect


def test_file_shorter_than_8_bytes(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    expect_error(path, RuntimeError, "3 bytes, shorter than the 8-byte header-size prefix")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    expect_error(path, RuntimeError, "shorter than the 8-byte")


def test_header_size_beyond_file(tmp_path):
    path = write_raw(tmp_path / "big.safetensors", b"{}", header_size=1000)
    expect_error(path, RuntimeError, "header size 1000 bytes exceeds the 2 bytes")


def test_header_size_absurd(tmp_path):
    path = write_raw(tmp_path / "huge.safetensors", b"{}", header_size=2**63 + 5)
    expect_error(path, RuntimeError, "-byte limit")


def test_header_not_json(tmp_path):
    path = write_raw(tmp_path / "nojson.safetensors", b'{"a": {"dtype": "F32",,}}')
    msg = expect_error(path, RuntimeError, "header is not valid JSON")
    assert "at byte 22" in msg


def test_header_json_trailing_garbage(tmp_path):
    path = write_raw(tmp_path / "trail.safetensors", b"{} {}")
    expect_error(path, RuntimeError, "unexpected trailing data")


def test_header_json_too_deep(tmp_path):
    deep = b'{"m": ' + b"[" * 200 + b"]" * 200 + b"}"
    path = write_raw(tmp_path / "deep.safetensors", deep)
    expect_error(path, RuntimeError, "nesting deeper than")


def test_header_invalid_utf8(tmp_path):
    path = write_raw(tmp_path / "utf8.safetensors", b'{"\xff": 1}')
    expect_error(path, RuntimeError, "invalid UTF-8")


def test_header_not_an_object(tmp_path):
    path = write_raw(tmp_path / "arr.safetensors", [1, 2, 3])
    expect_error(path, RuntimeError, "header must be a JSON object, found array")


def test_entry_not_an_object(tmp_path):
    path = write_raw(tmp_path / "e.safetensors", {"w": [1, 2]})
    expect_error(path, RuntimeError, "tensor 'w': entry must be an object")


def test_missing_field(tmp_path):
    path = write_raw(tmp_path / "e.safetensors", {"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4)
    expect_error(path, RuntimeError, "tensor 'w': missing \"data_offsets\"")


def test_unknown_dtype(tmp_path):
    path = write_raw(tmp_path / "dt.safetensors", {"w": entry("F17", [2], 0, 8)}, b"\0" * 8)
    expect_error(path, RuntimeError, "tensor 'w': unknown dtype 'F17'")


def test_dtype_not_a_string(tmp_path):
    path = write_raw(tmp_path / "dt.safetensors", {"w": entry(4, [1], 0, 4)}, b"\0" * 4)
    expect_error(path, RuntimeError, "\"dtype\" must be a string")


def test_shape_offsets_size_mismatch(tmp_path):
    path = write_raw(tmp_path / "mm.safetensors", {"w": entry("F32", [2, 3], 0, 20)}, b"\0" * 24)
    expect_error(path, RuntimeError,
                 "tensor 'w': shape and dtype F32 need 6 elements * 4 bytes = 24 bytes, "
                 "but data_offsets [0, 20] span 20 bytes")


def test_shape_product_overflow(tmp_path):
    path = write_raw(tmp_path / "ovf.safetensors", {"w": entry("F32", [2**62, 8], 0, 8)}, b"\0" * 8)
    expect_error(path, RuntimeError, "overflows int64")


def test_offsets_outside_data_region(tmp_path):
    path = write_raw(tmp_path / "oob.safetensors", {"w": entry("F32", [4], 8, 24)}, b"\0" * 16)
    expect_error(path, RuntimeError,
                 "tensor 'w': data_offsets [8, 24] extend past the end of the data region (16 bytes")


def test_begin_greater_than_end(tmp_path):
    path = write_raw(tmp_path / "be.safetensors", {"w": entry("F32", [0], 8, 4)}, b"\0" * 8)
    expect_error(path, RuntimeError, "tensor 'w': data_offsets begin 8 is greater than end 4")


def test_data_offsets_wrong_length(tmp_path):
    hdr = {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}
    path = write_raw(tmp_path / "off3.safetensors", hdr, b"\0" * 8)
    expect_error(path, RuntimeError, "must have 2 entries [begin, end], found 3")


def test_negative_offset(tmp_path):
    path = write_raw(tmp_path / "negoff.safetensors", {"w": entry("U8", [4], -4, 0)}, b"\0" * 4)
    expect_error(path, RuntimeError, "invalid \"data_offsets\": expected a non-negative integer")


def test_overlapping_tensors(tmp_path):
    hdr = {"a": entry("F32", [4], 0, 16), "b": entry("F32", [2], 8, 16)}
    path = write_raw(tmp_path / "ov.safetensors", hdr, b"\0" * 16)
    expect_error(path, RuntimeError, "tensors 'a' [0, 16) and 'b' [8, 16) overlap")


def test_negative_shape(tmp_path):
    path = write_raw(tmp_path / "neg.safetensors", {"w": entry("F32", [-1, 2], 0, 8)}, b"\0" * 8)
    expect_error(path, RuntimeError,
                 "tensor 'w': invalid \"shape\": expected a non-negative integer at index 0, "
                 "found number -1")


def test_fractional_shape(tmp_path):
    path = write_raw(tmp_path / "frac.safetensors", b'{"w": {"dtype": "U8", "shape": [2.0], '
                     b'"data_offsets": [0, 2]}}', b"\0" * 2)
    expect_error(path, RuntimeError, "found non-integer number")


def test_bad_metadata(tmp_path):
    hdr = {"__metadata__": {"k": 1}, "w": entry("U8", [1], 0, 1)}
    path = write_raw(tmp_path / "md.safetensors", hdr, b"\0")
    expect_error(path, RuntimeError, "\"__metadata__\" value for key 'k' must be a string")


def test_duplicate_name_within_file(tmp_path):
    hb = (b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
          b'"w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}')
    path = write_raw(tmp_path / "dup.safetensors", hb, b"\0\0")
    expect_error(path, RuntimeError, "tensor 'w': duplicate tensor name")


def test_missing_file(tmp_path):
    path = tmp_path / "does_not_exist.safetensors"
    expect_error(path, RuntimeError, "cannot open: No such file or directory")


def test_directory_instead_of_file(tmp_path):
    expect_error(tmp_path, RuntimeError, "not a regular file")


def test_truncated_data_region(tmp_path):
    path = tmp_path / "trunc.safetensors"
    safetensors_numpy.save_file(
        {"a": np.arange(8, dtype=np.float32), "b": np.arange(4, dtype=np.int64)}, str(path))
    full = path.read_bytes()
    path.write_bytes(full[:-5])
    expect_error(path, RuntimeError, "extend past the end of the data region")


def test_duplicate_names_across_shards(tmp_path):
    p1 = str(tmp_path / "s1.safetensors")
    p2 = str(tmp_path / "s2.safetensors")
    safetensors_numpy.save_file({"a": np.zeros(2, np.float32), "shared": np.zeros(1, np.int8)}, p1)
    safetensors_numpy.save_file({"shared": np.zeros(3, np.int8)}, p2)
    with pytest.raises(RuntimeError, match="tensor 'shared' appears in both") as info:
        _core.checkpoint_names([p1, p2])
    assert p1 in str(info.value) and p2 in str(info.value)


def test_corrupt_shard_in_checkpoint_names_that_shard(tmp_path):
    p1 = str(tmp_path / "s1.safetensors")
    safetensors_numpy.save_file({"a": np.zeros(2, np.float32)}, p1)
    p2 = write_raw(tmp_path / "s2.safetensors", [])
    with pytest.raises(RuntimeError, match="header must be a JSON object") as info:
        _core.checkpoint_names([p1, p2])
    assert p2 in str(info.value)


def test_random_garbage_never_crashes(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "fuzz.safetensors"
    good = tmp_path / "good.safetensors"
    safetensors_numpy.save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                                 "b": np.arange(3, dtype=np.int16)}, str(good))
    base = good.read_bytes()
    for _ in range(300):
        buf = bytearray(base)
        for _ in range(int(rng.integers(1, 4))):
            buf[int(rng.integers(0, len(buf)))] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            buf = buf[: int(rng.integers(0, len(buf)))]
        path.write_bytes(bytes(buf))
        try:
            info = _core.safetensors_inspect(str(path))
        except (RuntimeError, ValueError):
            continue
        for name in info:
            assert len(_core.safetensors_read(str(path), name)) == info[name][2]
