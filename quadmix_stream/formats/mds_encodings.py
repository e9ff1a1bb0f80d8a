"""MDS column encodings, decoded without ``streaming``: one pure function per encoding name.

The values and types are those of ``streaming``'s ``mds_decode`` (mosaicml-streaming 0.13 and
its fork streaming-community; a test compares them on every encoding): ``str`` and ``json`` as
Python objects, ``int`` as a Python ``int``, the fixed-width numbers as numpy scalars,
``ndarray[:dtype[:shape]]`` as a read-only array over the sample's bytes, ``str_*`` as ``int`` /
``float`` / ``Decimal``, images through Pillow (imported only when an image column is decoded).
``pkl`` is never decoded: unpickling data we did not write can run arbitrary code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np

#: Fixed-width scalar encodings → numpy dtype (decoded as a numpy scalar, as ``streaming`` does).
SCALARS: dict[str, type] = {
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "float16": np.float16,
    "float32": np.float32,
    "float64": np.float64,
}

#: Encodings that unpickle: refused.
UNSAFE = frozenset({"pkl"})

# NDArray's header codes (streaming's NDArray): value dtype and shape dtype.
_ND_VALUE = {
    8: "uint8",
    9: "int8",
    16: "uint16",
    17: "int16",
    18: "float16",
    32: "uint32",
    33: "int32",
    34: "float32",
    64: "uint64",
    65: "int64",
    66: "float64",
}
_ND_SHAPE = {0: "uint8", 1: "uint16", 2: "uint32", 3: "uint64"}


def _int(data: bytes) -> int:
    return int(np.frombuffer(data, np.int64)[0])


def _image(data: bytes) -> Any:
    from io import BytesIO

    from quadmix_stream.extras import require

    return require("PIL.Image", "decoding an MDS image column", "bench").open(BytesIO(data))


def _pil(data: bytes) -> Any:
    from quadmix_stream.extras import require

    image = require("PIL.Image", "decoding an MDS image column", "bench")
    width, height, mode_size = (int(x) for x in np.frombuffer(data[:12], np.uint32))
    mode = data[12 : 12 + mode_size].decode("utf-8")
    return image.frombytes(mode, (width, height), data[12 + mode_size :])


def _list(element: Callable[[bytes], Any]) -> Callable[[bytes], list]:
    def decode(data: bytes) -> list:
        n = int(np.frombuffer(data[4:8], np.uint32)[0])  # the first 4 bytes are reserved
        sizes = np.frombuffer(data[8 : 8 + 4 * n], np.uint32)
        idx, out = 8 + 4 * n, []
        for size in sizes.tolist():
            out.append(element(data[idx : idx + size]))
            idx += size
        return out

    return decode


def _jpeg_array(data: bytes) -> list:
    if len(data) < 4:
        raise ValueError("Input data is too short to contain valid jpeg arrays")
    n = int(np.frombuffer(data[:4], np.uint32)[0])
    if n <= 0:
        raise ValueError("Negative number of images decoded")
    start = 4 + 4 * n
    if len(data) < start:
        raise ValueError("Data is too short w.r.t the number of images decoded")
    out, idx = [], start
    for size in np.frombuffer(data[4:start], np.uint32).tolist():
        out.append(_image(data[idx : idx + size]))
        idx += size
    return out


_DECODERS: dict[str, Callable[[bytes], Any]] = {
    "bytes": lambda data: data,
    "str": lambda data: data.decode("utf-8"),
    "int": _int,
    "str_int": lambda data: int(data.decode("utf-8")),
    "str_float": lambda data: float(data.decode("utf-8")),
    "str_decimal": lambda data: Decimal(data.decode("utf-8")),
    "json": lambda data: json.loads(data.decode("utf-8")),
    "pil": _pil,
    "jpeg": _image,
    "png": _image,
    "list[pil]": _list(_pil),
    "list[jpeg]": _list(_image),
    "list[png]": _list(_image),
    "jpeg_array": _jpeg_array,
    "jpegarray": _jpeg_array,
}


def _ndarray(config: str) -> Callable[[bytes], np.ndarray]:
    """``ndarray[:dtype[:d0,d1,…]]``: a static dtype and shape are in the name, else in the data."""
    args = config.split(":") if config else []
    if len(args) > 2:
        raise ValueError(f"bad ndarray encoding 'ndarray:{config}'")
    dtype = args[0] if args else None
    if dtype is not None and dtype not in _ND_VALUE.values():
        raise ValueError(f"unknown ndarray dtype {dtype!r}")
    shape = tuple(int(d) for d in args[1].split(",")) if len(args) == 2 else None
    if shape is not None and min(shape, default=1) < 1:
        raise ValueError(f"ndarray shape {shape} has a dimension below 1")

    def decode(data: bytes) -> np.ndarray:
        idx = 0
        dt = dtype
        if not dt:
            dt = _ND_VALUE[data[idx]]
            idx += 1
        sh: Any = shape
        if not sh:
            ndim, code = data[idx] >> 2, data[idx] % 4
            idx += 1
            size = ndim * 2**code
            sh = np.frombuffer(data[idx : idx + size], _ND_SHAPE[code])
            idx += size
        return np.frombuffer(data[idx:], dt).reshape(sh)

    return decode


def decoder(encoding: str) -> Callable[[bytes], Any] | None:
    """The decoding function of an MDS encoding name (``None`` when unknown; ``pkl`` refused)."""
    if encoding in UNSAFE:
        raise ValueError(f"encoding {encoding!r} unpickles data; it is never decoded")
    if encoding in SCALARS:
        dtype = SCALARS[encoding]
        return lambda data: np.frombuffer(data, dtype)[0]
    name, _, config = encoding.partition(":")
    if name == "ndarray":
        return _ndarray(config)
    if config:
        return None
    return _DECODERS.get(encoding)
