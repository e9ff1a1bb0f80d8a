"""MDS shards (mosaicml-streaming's format): the one encoder, the readers, ``index.json``.

Layout of an MDS shard (format version 2): ``uint32 n``, ``uint32 offsets[n + 1]``, the writer's
config as JSON, then the samples; a sample is ``uint32`` sizes of its variable-size columns
followed by the columns' bytes, in column-name order.

Nothing here imports ``streaming`` (it pulls in torchvision and caps numpy and transformers, and
a DataLoader worker that imported it would carry ~250 MiB of its own). :func:`encode_shard`
produces the bytes and ``index.json`` entry of ``streaming.MDSWriter(columns=MDS_COLUMNS)`` (a
test compares them), cut into shards at our row counts (``MDSWriter`` cuts by size only).
Reading splits a sample into its columns in one place (:class:`MDSColumns`), under two policies:
the labelling reads whole shards with :func:`read_shard`, decoding only text, JSON and numeric
columns; the stream's row reader (:class:`MDSShardReader`) returns what ``streaming``'s
``MDSReader`` returns, every encoding it knows (:mod:`.mds_encodings`). Neither ever unpickles.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from quadmix_stream.formats import mds_encodings
from quadmix_stream.formats.base import (
    SampleDecoder,
    ScannedShard,
    ShardFormat,
    ShardReader,
    ShardSpec,
    WriterBackend,
)
from quadmix_stream.formats.decompress import zstd_copy
from quadmix_stream.formats.labels import LabelError
from quadmix_stream.storage.io import (
    atomic_write_bytes,
    atomic_write_text,
    check_inside,
    default_cache_dir,
    sha256_file,
)
from quadmix_stream.storage.store import Store, as_store
from quadmix_stream.validate import expect_list, expect_object

#: Our columns, as DatasetWriter writes them (MDSWriter sorts them by name).
MDS_COLUMNS = {"id": "str", "text": "str", "meta": "json"}
SIZE_LIMIT = 1 << 31  # the size_limit recorded in the config (what we used to pass MDSWriter)
ZSTD_LEVEL = 3  # streaming's default zstd level
FEW_READS = 4  # positioned reads when at most one row in FEW_READS of a shard is read

_FIXED = {"int": np.int64, **mds_encodings.SCALARS}  # numeric encodings, as numpy dtypes


# ---------------------------------------------------------------- writing
def _config(compression: str | None) -> dict[str, Any]:
    names = sorted(MDS_COLUMNS)
    return {
        "version": 2,
        "format": "mds",
        "compression": compression,
        "hashes": [],
        "size_limit": SIZE_LIMIT,
        "column_names": names,
        "column_encodings": [MDS_COLUMNS[n] for n in names],
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
        # the frame MDSWriter's `zstd` binding writes at this level (same libzstd: same bytes)
        stored = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)
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


def shard_name(index: int, compression: str | None = None) -> str:
    """File name of shard ``index`` (``shard.NNNNN.mds``, ``.zstd`` appended when compressed)."""
    return f"shard.{index:05d}.mds" + (f".{compression}" if compression else "")


class MDSBackend(WriterBackend):
    """A standard MDS dataset (shard files + ``index.json``) cut into shards at our row counts.

    Attributes:
        entries: the ``index.json`` entry of each shard written, in order.
    """

    def __init__(self, root: Path, compression: str | None) -> None:
        if compression not in (None, "zstd"):
            raise ValueError(f"MDS compression must be None or 'zstd', got {compression!r}")
        self.root, self.compression, self.index = root, compression, 0
        self.docs: list[tuple[str, str, dict]] = []
        self.entries: list[dict[str, Any]] = []

    def add(self, doc_id: str, text: str, meta: dict[str, Any]) -> None:
        self.docs.append((doc_id, text, meta))

    def end_shard(self) -> str:
        _raw, stored, entry = encode_shard(self.docs, self.compression)
        name = shard_name(self.index, self.compression)
        entry["raw_data"]["basename"] = shard_name(self.index)
        if entry["zip_data"] is not None:
            entry["zip_data"]["basename"] = name
        atomic_write_bytes(self.root / name, stored)
        self.entries.append(entry)
        self.index, self.docs = self.index + 1, []
        return name

    def close(self) -> None:
        # what MDSWriter.finish() writes: {"shards": [...], "version": 2}, keys sorted
        obj = {"shards": self.entries, "version": 2}
        atomic_write_text(self.root / "index.json", json.dumps(obj, sort_keys=True))


# ---------------------------------------------------------------- index.json
def mds_index(root: str | Path | Store) -> dict[str, dict]:
    """Map shard file name → its entry in the MDS ``index.json`` (validated).

    Every ``basename`` must name a file inside ``root`` (no absolute paths, no ``..``): the
    labeller writes each shard's sidecar beside it. Errors are :class:`LabelError` naming the file
    and the field.
    """
    store = as_store(root)
    path = store.where("index.json")
    d = expect_object(
        store.read_json(
            "index.json", LabelError, "MDS index", missing=f"{store}: MDS dataset has no index.json"
        ),
        path,
        LabelError,
        ("shards",),
        None,
    )
    out = {}
    for i, s in enumerate(expect_list(d["shards"], f"{path}: shards", LabelError)):
        where = f"{path}: shards[{i}]"
        s = expect_object(
            s, where, LabelError, ("column_names", "column_encodings", "column_sizes"), None
        )
        if not (s.get("raw_data") or s.get("zip_data")):
            raise LabelError(f"{where}: has neither 'raw_data' nor 'zip_data'")
        for key in ("zip_data", "raw_data"):
            if s.get(key):
                part = expect_object(s[key], f"{where}.{key}", LabelError, ("basename",), None)
                name = part["basename"]
                check_inside(store.url, name, f"{where}.{key}.basename", LabelError)
                out[name] = s
    return out


# ---------------------------------------------------------------- reading
#: The keys of an MDS shard entry (those ``streaming``'s ``MDSReader.from_json`` accepts).
ENTRY_KEYS = frozenset(
    {
        "version",
        "format",
        "column_encodings",
        "column_names",
        "column_sizes",
        "compression",
        "hashes",
        "raw_data",
        "samples",
        "size_limit",
        "zip_data",
    }
)
FILE_INFO_KEYS = frozenset({"basename", "bytes", "hashes"})


def check_entry(name: str, entry: dict[str, Any]) -> None:
    """Refuse an ``index.json`` shard entry that ``streaming``'s ``MDSReader`` would refuse."""
    where = f"shard {name!r}: index.json entry"
    keys = set(entry)
    if keys != ENTRY_KEYS:
        missing, extra = sorted(ENTRY_KEYS - keys), sorted(keys - ENTRY_KEYS)
        raise LabelError(f"{where}: missing fields {missing}, unknown fields {extra}")
    if entry["version"] != 2:
        raise LabelError(f"{where}: field 'version' is {entry['version']!r}, expected 2")
    if entry["format"] != "mds":
        raise LabelError(f"{where}: field 'format' is {entry['format']!r}, expected 'mds'")
    for key in ("raw_data", "zip_data"):
        part = entry[key]
        if part and (not isinstance(part, dict) or set(part) != FILE_INFO_KEYS):
            raise LabelError(f"{where}: field {key!r} must have exactly {sorted(FILE_INFO_KEYS)}")


class MDSColumns:
    """Decodes the samples of one MDS shard: the one place MDS sample bytes are taken apart.

    A sample is the ``uint32`` sizes of its variable-size columns, then each column's bytes.
    ``strict`` (the stream) gives what ``streaming``'s ``MDSReader.decode_sample`` gives, every
    encoding by :mod:`.mds_encodings`; the index entry is checked as ``MDSReader.from_json``
    checks it, and pickled columns and unknown encodings are refused. Not ``strict`` (the
    labelling): ``str`` with replacement characters,
    ``str_*`` as text, numbers as Python scalars, other encodings left out.

    Args:
        name: the shard's file name (in errors).
        entry: the shard's ``index.json`` entry.
        strict: decode as ``streaming`` does (see above).
    """

    def __init__(self, name: str, entry: dict[str, Any], strict: bool) -> None:
        self.names: list[str] = entry["column_names"]
        self.encodings: list[str] = entry["column_encodings"]
        self.sizes: list[int | None] = entry["column_sizes"]
        self.strict = strict
        self._coders: list[Any] = []
        if not strict:
            return
        unsafe = [
            c for c, e in zip(self.names, self.encodings, strict=False) if e in mds_encodings.UNSAFE
        ]
        if unsafe:  # decoding would unpickle data we did not write
            raise LabelError(
                f"shard {name!r}: MDS columns {unsafe} are pickled; refusing to unpickle untrusted "
                "data (re-encode them as json/str)"
            )
        check_entry(name, entry)
        for col, enc in zip(self.names, self.encodings, strict=False):
            try:
                coder = mds_encodings.decoder(enc)
            except ValueError as e:
                raise LabelError(f"shard {name!r}: MDS column {col!r}: {e}") from None
            if coder is None:
                raise LabelError(f"shard {name!r}: MDS column {col!r} has unknown encoding {enc!r}")
            self._coders.append(coder)
        # the stream decodes every sample it yields: the sizes of the variable-size columns are
        # read in one unpack and the columns cut by a precomputed plan (as the loop below does)
        sized = self.sizes[: len(self.names)]
        self._var = struct.Struct(f"<{sum(1 for x in sized if not x)}I")
        self._plan = list(zip(self.names, self._coders, sized, strict=False))

    def decode(self, data: bytes) -> dict[str, Any]:
        """One sample's bytes → {column: value}."""
        if self.strict:
            var = iter(self._var.unpack_from(data, 0))
            idx = self._var.size
            sample: dict[str, Any] = {}
            for name, coder, size in self._plan:
                n = size or next(var)
                sample[name] = coder(data[idx : idx + n])
                idx += n
            return sample
        sizes = []
        idx = 0
        # as MDSReader.decode_sample: a falsy size is variable; unlike streaming (which zips
        # leniently, as the strict path above does), ragged column lists are refused here
        for _, size in zip(self.names, self.sizes, strict=True):
            if not size:
                (size,) = np.frombuffer(data[idx : idx + 4], np.uint32)
                idx += 4
            sizes.append(int(size))
        sample = {}
        for name, enc, size in zip(self.names, self.encodings, sizes, strict=True):
            raw = data[idx : idx + size]
            idx += size
            if enc == "json":
                sample[name] = json.loads(raw.decode("utf-8"))
            elif enc == "str":
                sample[name] = raw.decode("utf-8", "replace")
            elif enc in ("str_int", "str_float", "str_decimal"):
                sample[name] = raw.decode("utf-8")
            elif enc in _FIXED:
                sample[name] = np.frombuffer(raw, _FIXED[enc])[0].item()
        return sample


def read_shard(path: Path, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Every sample of an MDS shard as a dict of its decodable columns (no ``streaming`` import).

    ``str``/``str_*`` → str, ``json`` → object, integer and float encodings → Python numbers;
    other encodings (bytes, images, arrays, ``pkl``) are left out: nothing is ever unpickled.
    """
    data = path.read_bytes()
    comp = entry.get("compression")
    if entry.get("zip_data") and comp:
        if not str(comp).startswith("zstd"):
            raise LabelError(f"shard {path.name!r}: MDS compression {comp!r} is not supported here")
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    n = int(np.frombuffer(data, np.uint32, count=1)[0])
    offs = np.frombuffer(data, np.uint32, count=n + 1, offset=4).astype(np.int64)
    cols = MDSColumns(path.name, entry, strict=False)
    return [cols.decode(data[offs[i] : offs[i + 1]]) for i in range(n)]


def mds_doc(sample: dict[str, Any], shard: str, row: int) -> dict[str, Any]:
    """A document from an MDS sample without our ``id``/``meta`` columns.

    ``id`` defaults to ``"<shard>:<row>"``; ``meta`` is the ``meta`` column or every other column.
    """
    if "text" not in sample:
        raise LabelError(
            f"shard {shard!r}: MDS sample {row} has no 'text' column (columns {sorted(sample)})"
        )
    doc_id = str(sample["id"]) if "id" in sample else f"{shard}:{row}"
    if "meta" in sample and isinstance(sample["meta"], dict):
        meta = sample["meta"]
    else:
        meta = {k: v for k, v in sample.items() if k not in ("id", "text")}
    return {"id": doc_id, "text": sample["text"], "meta": meta}


def mds_sample_doc(columns: MDSColumns, raw: bytes, name: str, row: int) -> dict[str, Any]:
    """One MDS sample's bytes → a document dict."""
    s = columns.decode(raw)
    if "id" in s and "meta" in s:
        return {"id": s["id"], "text": s["text"], "meta": s["meta"]}
    return mds_doc(s, name, row)


class MDSShardReader(ShardReader):
    """Random access into one MDS shard file via its offsets table.

    The file is memory-mapped, or with ``few_reads`` read by one positioned read per sample: a
    sparse selection touches one page per sample it reads, and a fault costs more than the
    read. zstd shards are decompressed once into a local cache (:mod:`.decompress`).
    """

    def __init__(
        self,
        path: Path,
        name: str,
        index_entry: dict,
        sha256: str = "",
        cache_dir: Path | None = None,
        few_reads: bool = False,
    ) -> None:
        super().__init__()
        import mmap

        self.decoder = MDSColumns(name, index_entry, strict=True)
        self.name = name
        if name.endswith(".zstd"):
            path = zstd_copy(path, sha256 or sha256_file(path), cache_dir or default_cache_dir())
        self.file = open(path, "rb", buffering=0)  # noqa: SIM115 (closed in close())
        self.buf: memoryview | None = None
        if few_reads:
            head = os.pread(self.file.fileno(), 4, 0)
            n = int.from_bytes(head, "little") if len(head) == 4 else 0
            table = os.pread(self.file.fileno(), 4 * (n + 1), 4)
        else:
            self.buf = memoryview(mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ))
            n = int(np.frombuffer(self.buf, np.uint32, count=1)[0])
            table = self.buf[4 : 4 * (n + 2)]
        self.offsets = np.frombuffer(table, np.uint32, count=n + 1).astype(np.int64)

    def read(self, row: int) -> dict[str, Any]:
        self.rows_read += 1
        a, b = int(self.offsets[row]), int(self.offsets[row + 1])
        raw = (
            bytes(self.buf[a:b]) if self.buf is not None else os.pread(self.file.fileno(), b - a, a)
        )
        return mds_sample_doc(self.decoder, raw, self.name, row)

    def close(self) -> None:
        self.offsets = None  # drop views of the map before closing it
        if self.buf is not None:
            self.buf.release()
        self.file.close()


class MDSFormat(ShardFormat):
    """MDS: rows by the shard's offsets table; uncompressed remote shards by byte ranges."""

    def writer(
        self, root: Path, fmt: str, compression: str | None, row_group_rows: int
    ) -> WriterBackend:
        return MDSBackend(root, compression)

    def open_local(self, path: Path, spec: ShardSpec) -> ShardReader:
        assert spec.mds_entry is not None
        # a few rows of a large shard: positioned reads (a sparse selection's shards)
        few = spec.reads is not None and spec.reads * FEW_READS < spec.rows
        return MDSShardReader(path, spec.name, spec.mds_entry, spec.sha256, few_reads=few)

    def scan(self, path: Path, spec: ShardSpec, cache_dir: Path | None = None) -> ScannedShard:
        """Every sample through :func:`read_shard` (lenient decoding, no ``streaming``)."""
        assert spec.mds_entry is not None
        docs = []
        for row, sample in enumerate(read_shard(path, spec.mds_entry)):
            doc = mds_doc(sample, spec.name, row)
            if "id" in sample:  # as found: the caller counts ids that are not strings
                doc["id"] = sample["id"]
            docs.append(doc)
        return ScannedShard(docs)

    def row_spans(
        self, store: Store, spec: ShardSpec, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        if spec.name.endswith(".zstd"):
            return None
        # the shard's offsets table: u32 count, then count + 1 u32 sample offsets
        head = store.read_ranges(spec.name, [(0, 4 * (spec.rows + 2))])[0]
        offs = np.frombuffer(head, np.uint32, offset=4).astype(np.int64)
        if int(np.frombuffer(head, np.uint32, count=1)[0]) != spec.rows:
            raise LabelError(
                f"shard {spec.name!r}: its offsets table does not list {spec.rows} rows"
            )
        return offs[rows], offs[rows + 1]

    def sample_decoder(self, spec: ShardSpec, where: str) -> SampleDecoder:
        assert spec.mds_entry is not None
        dec = MDSColumns(spec.name, spec.mds_entry, strict=True)
        name = spec.name

        def decode(raw: bytes, row: int) -> dict[str, Any]:
            return mds_sample_doc(dec, raw, name, row)

        return decode


FORMAT = MDSFormat()
