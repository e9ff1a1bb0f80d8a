"""MDS shards without importing ``streaming``: a writer for our columns, a safe reader for any.

Why not ``streaming.MDSWriter``/``MDSReader`` here: importing ``streaming`` pulls in torch,
transformers and sklearn (about 10 s on a 2-core box), once per labelling helper process, and its
reader unpickles ``pkl`` columns. The writer below produces the same bytes and ``index.json``
entry as ``MDSWriter(columns={"id": "str", "text": "str", "meta": "json"})`` (a test checks it);
the reader decodes only text, JSON and numeric columns and never unpickles.

Layout of an MDS shard (format version 2): ``uint32 n``, ``uint32 offsets[n + 1]``, the writer's
config as JSON, then the samples; a sample is ``uint32`` sizes of its variable-size columns
followed by the columns' bytes, in column-name order.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# The `zstd` binding (a declared dependency), not `zstandard`: it is what MDSWriter compresses
# with, so our compressed shards are its bytes too.
import zstd

from quadmix_stream.labels import LabelError

#: Our columns, as DatasetWriter writes them (MDSWriter sorts them by name).
COLUMNS = {"id": "str", "meta": "json", "text": "str"}
SIZE_LIMIT = 1 << 31  # what shards._MDSBackend passes to MDSWriter (recorded in the config)
ZSTD_LEVEL = 3  # streaming's default zstd level

_FIXED = {
    "int": np.int64,
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


def _config(compression: str | None) -> dict[str, Any]:
    names = sorted(COLUMNS)
    return {
        "version": 2,
        "format": "mds",
        "compression": compression,
        "hashes": [],
        "size_limit": SIZE_LIMIT,
        "column_names": names,
        "column_encodings": [COLUMNS[n] for n in names],
        "column_sizes": [None] * len(names),
    }


def encode_shard(
    docs: Sequence[tuple[str, str, dict]], compression: str | None = None
) -> tuple[bytes, bytes, dict[str, Any]]:
    """(raw shard bytes, bytes to store, index entry without basenames) of (id, text, meta) rows."""
    config = _config(compression)
    config_data = json.dumps(config, sort_keys=True).encode("utf-8")
    samples = []
    head3 = struct.Struct("<III")  # the three variable-size columns' byte sizes (uint32 LE)
    for doc_id, text, meta in docs:
        a = doc_id.encode("utf-8")
        b = json.dumps(meta).encode("utf-8")
        c = text.encode("utf-8")
        samples.append(b"".join((head3.pack(len(a), len(b), len(c)), a, b, c)))
    n = len(samples)
    sizes = [len(s) for s in samples]
    head = 4 + 4 * (n + 1) + len(config_data)
    offsets = np.array([0, *sizes], dtype=np.int64).cumsum() + head
    if offsets[-1] >= 1 << 32:
        raise ValueError("an MDS shard must stay under 4 GiB; lower rows_per_shard")
    raw = (
        np.uint32(n).tobytes()
        + offsets.astype(np.uint32).tobytes()
        + config_data
        + b"".join(samples)
    )
    stored = raw
    if compression == "zstd":
        stored = zstd.compress(raw, ZSTD_LEVEL)
    elif compression is not None:
        raise ValueError(f"MDS compression must be None or 'zstd', got {compression!r}")
    entry = {
        **config,
        "raw_data": {"basename": None, "bytes": len(raw), "hashes": {}},
        "samples": n,
        "zip_data": (
            {"basename": None, "bytes": len(stored), "hashes": {}} if compression else None
        ),
    }
    return raw, stored, dict(sorted(entry.items()))


def read_shard(path: Path, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Every sample of an MDS shard as a dict of its decodable columns.

    ``str``/``str_*`` → str, ``json`` → object, integer and float encodings → Python numbers;
    other encodings (bytes, images, arrays, ``pkl``) are left out: nothing is ever unpickled.
    """
    data = path.read_bytes()
    comp = entry.get("compression")
    if entry.get("zip_data") and comp:
        if not str(comp).startswith("zstd"):
            raise LabelError(f"shard {path.name!r}: MDS compression {comp!r} is not supported here")
        data = zstd.decompress(data)
    names = entry["column_names"]
    encs = entry["column_encodings"]
    fixed = entry["column_sizes"]
    n = int(np.frombuffer(data, np.uint32, count=1)[0])
    offs = np.frombuffer(data, np.uint32, count=n + 1, offset=4).astype(np.int64)
    n_var = sum(1 for s in fixed if s is None)
    out = []
    mv = memoryview(data)
    for i in range(n):
        s = mv[offs[i] : offs[i + 1]]
        var = np.frombuffer(s, np.uint32, count=n_var) if n_var else []
        pos, k = 4 * n_var, 0
        sample: dict[str, Any] = {}
        for name, enc, size in zip(names, encs, fixed, strict=True):
            if size is None:
                size = int(var[k])
                k += 1
            raw = bytes(s[pos : pos + size])
            pos += size
            if enc == "str":
                sample[name] = raw.decode("utf-8", "replace")
            elif enc in ("str_int", "str_float", "str_decimal"):
                sample[name] = raw.decode("utf-8")
            elif enc == "json":
                sample[name] = json.loads(raw.decode("utf-8"))
            elif enc in _FIXED:
                sample[name] = np.frombuffer(raw, _FIXED[enc])[0].item()
        out.append(sample)
    return out
