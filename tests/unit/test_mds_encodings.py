"""formats/mds_encodings.py: MDS column decoders without ``streaming``.

Bytes are built by hand from MDS's documented layouts (and, where ``streaming`` is installed,
by its own ``mds_encode``, whose ``mds_decode`` gives the reference values and types).
"""

from __future__ import annotations

import importlib.util
import io
import json
import struct
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quadmix_stream.formats.mds_encodings import SCALARS, UNSAFE, decoder

pytestmark = pytest.mark.core

ND_CODES = {
    "uint8": 8,
    "int8": 9,
    "uint16": 16,
    "int16": 17,
    "float16": 18,
    "uint32": 32,
    "int32": 33,
    "float32": 34,
    "uint64": 64,
    "int64": 65,
    "float64": 66,
}


def nd_bytes(arr: np.ndarray, dtype_in_data: bool, shape_in_data: bool) -> bytes:
    """MDS NDArray layout: [dtype code] [ndim << 2 | shape width] [shape] [values]."""
    out = b""
    if dtype_in_data:
        out += bytes([ND_CODES[arr.dtype.name]])
    if shape_in_data:
        width = next(i for i, t in enumerate("BHIQ") if max(arr.shape) < 256 ** (1 << i))
        out += bytes([(arr.ndim << 2) | width])
        out += struct.pack(f"<{arr.ndim}{'BHIQ'[width]}", *arr.shape)
    return out + arr.tobytes()


def list_bytes(elements: list[bytes]) -> bytes:
    """MDS list layout: [reserved u32] [count u32] [sizes u32 × count] [elements]."""
    sizes = struct.pack(f"<{len(elements)}I", *map(len, elements))
    return struct.pack("<II", 0, len(elements)) + sizes + b"".join(elements)


# ---------------------------------------------------------------- names
def test_pkl_is_never_decoded():
    assert UNSAFE == {"pkl"}
    with pytest.raises(ValueError, match=r"^encoding 'pkl' unpickles data; it is never decoded$"):
        decoder("pkl")


@pytest.mark.parametrize("name", ["nope", "bytes:x", "str:utf8", "int64:2", "", "list[str]"])
def test_unknown_encodings_have_no_decoder(name):
    assert decoder(name) is None


@pytest.mark.parametrize(
    "name,message",
    [
        ("ndarray:complex64", r"unknown ndarray dtype 'complex64'"),
        ("ndarray::2,3", r"unknown ndarray dtype ''"),
        ("ndarray:uint8:2,0", r"ndarray shape \(2, 0\) has a dimension below 1"),
        ("ndarray:uint8:2:3", r"bad ndarray encoding 'ndarray:uint8:2:3'"),
    ],
)
def test_bad_ndarray_encodings(name, message):
    with pytest.raises(ValueError, match=message):
        decoder(name)


# ---------------------------------------------------------------- plain values
def test_bytes_str_json():
    assert decoder("bytes")(b"\x00\xff") == b"\x00\xff"
    assert decoder("str")("héllo".encode()) == "héllo"
    assert decoder("json")(b'{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]}


def test_int_is_a_python_int():
    got = decoder("int")(struct.pack("<q", -(2**40) - 3))
    assert got == -(2**40) - 3 and type(got) is int


def test_stringified_numbers():
    assert decoder("str_int")(b"-123456789012345678901234567890") == -123456789012345678901234567890
    f = decoder("str_float")(b"2.5e-3")
    assert f == 0.0025 and type(f) is float
    d = decoder("str_decimal")(b"3.14159265358979323846")
    assert d == Decimal("3.14159265358979323846") and type(d) is Decimal


@pytest.mark.parametrize(
    "name,fmt,value",
    [
        ("uint8", "<B", 200),
        ("uint16", "<H", 60000),
        ("uint32", "<I", 4_000_000_000),
        ("uint64", "<Q", 2**64 - 1),
        ("int8", "<b", -100),
        ("int16", "<h", -30000),
        ("int32", "<i", -(2**31)),
        ("int64", "<q", -(2**63)),
        ("float16", "<e", 1.5),
        ("float32", "<f", -0.25),
        ("float64", "<d", 1e300),
    ],
)
def test_fixed_width_scalars_are_numpy_scalars(name, fmt, value):
    got = decoder(name)(struct.pack(fmt, value))
    assert type(got) is SCALARS[name]
    assert got == value


def test_every_scalar_name_has_its_dtype():
    assert set(SCALARS) == set(ND_CODES)
    assert all(np.dtype(SCALARS[n]).name == n for n in SCALARS)


# ---------------------------------------------------------------- ndarray
def test_ndarray_dynamic_dtype_and_shape():
    arr = np.arange(6, dtype=np.int64).reshape(2, 3)
    data = bytes([65, (2 << 2) | 0, 2, 3]) + arr.tobytes()  # int64, 2 dims of uint8
    got = decoder("ndarray")(data)
    assert got.dtype == np.int64 and got.shape == (2, 3)
    assert got.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert not got.flags.writeable  # a read-only view over the sample's bytes


def test_ndarray_static_forms():
    arr = np.array([[1.5, -2.0]], dtype=np.float32)
    both = decoder("ndarray:float32:1,2")(arr.tobytes())
    assert both.dtype == np.float32 and both.tolist() == [[1.5, -2.0]]
    dtype_only = decoder("ndarray:float32")(bytes([2 << 2, 1, 2]) + arr.tobytes())
    assert dtype_only.shape == (1, 2) and dtype_only.tolist() == [[1.5, -2.0]]
    wide = np.zeros((300,), dtype=np.uint8)  # a dimension over 255: a uint16 shape
    got = decoder("ndarray:uint8")(bytes([(1 << 2) | 1]) + struct.pack("<H", 300) + wide.tobytes())
    assert got.shape == (300,)


@settings(max_examples=60)
@given(
    dtype=st.sampled_from(sorted(ND_CODES)),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
    seed=st.integers(0, 2**32 - 1),
    static_dtype=st.booleans(),
    static_shape=st.booleans(),
)
def test_ndarray_round_trip(dtype, shape, seed, static_dtype, static_shape):
    raw = np.random.default_rng(seed).bytes(int(np.prod(shape)) * np.dtype(dtype).itemsize)
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    name = "ndarray"
    if static_dtype or static_shape:
        name += f":{dtype}"
    if static_shape:
        name += ":" + ",".join(map(str, shape))
    data = nd_bytes(arr, not (static_dtype or static_shape), not static_shape)
    got = decoder(name)(data)
    assert got.dtype == arr.dtype and got.shape == arr.shape
    assert got.tobytes() == arr.tobytes()  # bit for bit (NaNs included)


# ---------------------------------------------------------------- images (Pillow)
def test_jpeg_array_errors_before_any_image_is_decoded():
    dec = decoder("jpeg_array")
    assert decoder("jpegarray") is not None
    with pytest.raises(ValueError, match="too short to contain valid jpeg arrays"):
        dec(b"\x01\x00")
    with pytest.raises(ValueError, match="Negative number of images decoded"):
        dec(struct.pack("<I", 0))
    with pytest.raises(ValueError, match=r"too short w\.r\.t the number of images"):
        dec(struct.pack("<II", 3, 10))


def test_images():
    image = pytest.importorskip("PIL.Image")
    img = image.new("RGB", (3, 2), (10, 20, 30))
    img.putpixel((2, 1), (200, 100, 0))
    raw = struct.pack("<III", 3, 2, 3) + b"RGB" + img.tobytes()
    pil = decoder("pil")(raw)
    assert pil.size == (3, 2) and pil.mode == "RGB" and pil.getpixel((2, 1)) == (200, 100, 0)

    png = io.BytesIO()
    img.save(png, format="PNG")
    got = decoder("png")(png.getvalue())
    assert got.format == "PNG" and got.convert("RGB").getpixel((2, 1)) == (200, 100, 0)
    listed = decoder("list[png]")(list_bytes([png.getvalue(), png.getvalue()]))
    assert [i.size for i in listed] == [(3, 2), (3, 2)]
    pils = decoder("list[pil]")(list_bytes([raw]))
    assert pils[0].tobytes() == img.tobytes()

    jpg = io.BytesIO()
    img.save(jpg, format="JPEG")
    assert decoder("jpeg")(jpg.getvalue()).format == "JPEG"
    assert [i.format for i in decoder("list[jpeg]")(list_bytes([jpg.getvalue()]))] == ["JPEG"]
    arr = struct.pack("<III", 2, len(jpg.getvalue()), len(png.getvalue()))
    both = decoder("jpeg_array")(arr + jpg.getvalue() + png.getvalue())
    assert [i.format for i in both] == ["JPEG", "PNG"]


# ---------------------------------------------------------------- against streaming
@pytest.fixture(scope="module")
def streaming_encodings():
    """``streaming``'s encodings module, loaded from its file: importing the package runs its
    ``__init__`` (torch and the whole loader, ~20 s); the module itself needs numpy and Pillow."""
    spec = importlib.util.find_spec("streaming")
    path = Path(spec.origin).parent / "base/format/mds/encodings.py" if spec else None
    if path is None or not path.exists():
        pytest.skip("streaming (the bench extra) is not installed")
    pytest.importorskip("PIL.Image")
    load = importlib.util.spec_from_file_location("_streaming_mds_encodings", path)
    module = importlib.util.module_from_spec(load)
    load.loader.exec_module(module)
    return module


def samples():
    """(encoding, object) pairs for streaming's mds_encode."""
    out = [
        ("bytes", b"\x00\x01raw"),
        ("str", "héllo wörld"),
        ("int", -(2**50)),
        ("str_int", 10**30),
        ("str_float", 0.1),
        ("str_decimal", Decimal("-1.000000000000000000001")),
        ("json", {"a": [1, 2.5, None, "x"], "b": {"c": True}}),
        ("ndarray", np.arange(12, dtype=np.int16).reshape(3, 4)),
        ("ndarray:float64", np.linspace(0, 1, 7)),
        ("ndarray:uint8:2,2", np.array([[1, 2], [3, 4]], dtype=np.uint8)),
        ("ndarray:int32", np.arange(600, dtype=np.int32).reshape(2, 300)),
    ]
    out += [(n, np.dtype(n).type(7)) for n in SCALARS]
    return out


@pytest.mark.parametrize("encoding,obj", samples(), ids=lambda x: str(x)[:20])
def test_matches_streaming_mds_decode(streaming_encodings, encoding, obj):
    enc = streaming_encodings
    data = enc.mds_encode(encoding, obj)
    want = enc.mds_decode(encoding, data)
    got = decoder(encoding)(data)
    assert type(got) is type(want)
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)
    else:
        assert got == want
    if encoding == "json":
        assert got == json.loads(json.dumps(obj))


def test_knows_every_safe_streaming_encoding(streaming_encodings):
    enc = streaming_encodings
    names = enc.get_mds_encodings()
    assert UNSAFE <= names
    for name in sorted(names - UNSAFE):
        assert decoder(name) is not None, name


@pytest.mark.parametrize("encoding", ["pil", "png", "jpeg", "list[pil]", "list[png]", "jpeg_array"])
def test_images_match_streaming_mds_decode(streaming_encodings, encoding):
    image = pytest.importorskip("PIL.Image")
    img = image.new("RGB", (4, 3), (1, 2, 3))
    img.putpixel((3, 2), (250, 0, 128))
    if encoding == "jpeg_array":
        jpg = io.BytesIO()
        img.save(jpg, format="JPEG")
        obj = [jpg.getvalue(), jpg.getvalue()]
    else:
        obj = [img, img] if encoding.startswith("list") else img
    data = streaming_encodings.mds_encode(encoding, obj)
    want = streaming_encodings.mds_decode(encoding, data)
    got = decoder(encoding)(data)
    pairs = list(zip(got, want, strict=True)) if isinstance(want, list) else [(got, want)]
    for g, w in pairs:
        assert (g.mode, g.size, g.format) == (w.mode, w.size, w.format)
        assert g.tobytes() == w.tobytes()
