"""Shard writers and row-level readers for MDS, WebDataset tar, JSONL.zst, Parquet and Arrow.

One writer interface (:class:`DatasetWriter`) produces shards, their label sidecars and the
manifest in any of these formats; :func:`open_shard` returns a reader that fetches single
rows, so the loader can skip documents it does not keep without reading or decoding them
(MDS: offsets table; tar: the sidecar's byte offsets; JSONL: only selected lines are parsed;
Parquet: only the row groups holding requested rows are read; Arrow: memory-mapped, zero-copy).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from quadmix_stream.hashing import doc_key
from quadmix_stream.io import (
    atomic_write_bytes,
    atomic_write_text,
    check_inside,
    default_cache_dir,
    sha256_file,
)
from quadmix_stream.labels import (
    FORMATS,
    LabelError,
    Manifest,
    ScorerInfo,
    ShardEntry,
    ShardLabels,
    write_sidecar,
)
from quadmix_stream.sampling import build_sigma_table
from quadmix_stream.storage import Store, as_store
from quadmix_stream.validate import expect_list, expect_object

MDS_COLUMNS = {"id": "str", "text": "str", "meta": "json"}


def split_doc(doc: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(id, text, meta) of a document dict; ``meta`` is everything else."""
    if "id" not in doc or "text" not in doc:
        raise LabelError(f"a document needs 'id' and 'text' fields, got keys {sorted(doc)}")
    meta = {k: v for k, v in doc.items() if k not in ("id", "text")}
    return str(doc["id"]), str(doc["text"]), meta


def _sidecar_name(shard_name: str) -> str:
    base = shard_name
    for suffix in (".zstd", ".zst", ".gz", ".tgz", ".mds", ".tar", ".jsonl", ".parquet", ".arrow"):
        base = base.removesuffix(suffix)
    return base + ".labels.npz"


# ---------------------------------------------------------------- format backends
class _Backend:
    """Writes the payload of one format; returns per-row tar offsets where relevant."""

    def add(self, doc_id: str, text: str, meta: dict) -> tuple[int, int] | None:
        raise NotImplementedError

    def end_shard(self) -> str:
        """Close the current shard; return its file name relative to the root."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _JsonlBackend(_Backend):
    def __init__(self, root: Path, level: int = 3) -> None:
        self.root, self.level, self.index, self.lines = root, level, 0, []

    def add(self, doc_id, text, meta):
        self.lines.append(json.dumps({"id": doc_id, "text": text, **meta}, ensure_ascii=False))
        return None

    def end_shard(self):
        name = f"shard.{self.index:05d}.jsonl.zst"
        data = ("\n".join(self.lines) + "\n").encode("utf-8")
        atomic_write_bytes(
            self.root / name, zstandard.ZstdCompressor(level=self.level).compress(data)
        )
        self.index, self.lines = self.index + 1, []
        return name


class _TarBackend(_Backend):
    def __init__(self, root: Path) -> None:
        self.root, self.index, self.buf, self.tar, self.n = root, 0, None, None, 0

    def add(self, doc_id, text, meta):
        if self.tar is None:
            self.buf = io.BytesIO()
            self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.USTAR_FORMAT)
            self.n = 0
        start = self.tar.offset
        key = f"s{self.n:08d}"
        for ext, payload in (
            ("txt", text.encode("utf-8")),
            ("json", json.dumps({"id": doc_id, **meta}, ensure_ascii=False).encode("utf-8")),
        ):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(payload)
            info.mtime = 0
            self.tar.addfile(info, io.BytesIO(payload))
        self.n += 1
        return start, self.tar.offset - start

    def end_shard(self):
        name = f"shard.{self.index:05d}.tar"
        if self.tar is None:  # empty shard
            self.buf = io.BytesIO()
            self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.USTAR_FORMAT)
        self.tar.close()
        atomic_write_bytes(self.root / name, self.buf.getvalue())
        self.index, self.tar, self.buf = self.index + 1, None, None
        return name


def docs_table(rows: Sequence[tuple[str, str, dict]], where: str = "") -> Any:
    """A pyarrow table with columns ``id``, ``text`` and one per meta field (absent → null)."""
    import pyarrow as pa

    names: dict[str, None] = {}
    for _, _, meta in rows:
        names.update(dict.fromkeys(k for k in meta if k not in ("id", "text")))
    cols = {"id": pa.array([r[0] for r in rows], pa.string())}
    cols["text"] = pa.array([r[1] for r in rows], pa.string())
    for k in names:
        try:
            cols[k] = pa.array([r[2].get(k) for r in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ValueError(
                f"{where}: meta field {k!r} has values of mixed types; Parquet/Arrow shards hold "
                f"one type per column ({e})"
            ) from None
    return pa.table(cols)


class _TableBackend(_Backend):
    """Parquet (row groups of ``row_group_rows``) or Arrow IPC stream files, one per shard."""

    def __init__(self, root: Path, fmt: str, row_group_rows: int = 1000) -> None:
        self.root, self.fmt, self.row_group_rows = root, fmt, row_group_rows
        self.index, self.rows = 0, []

    def add(self, doc_id, text, meta):
        self.rows.append((doc_id, text, meta))
        return None

    def end_shard(self):
        import pyarrow as pa

        name = f"shard.{self.index:05d}.{self.fmt}"
        table = docs_table(self.rows, name)
        sink = pa.BufferOutputStream()
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, sink, row_group_size=self.row_group_rows, compression="zstd")
        else:  # the layout of Hugging Face `save_to_disk` files: an Arrow IPC stream
            with pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table, max_chunksize=self.row_group_rows)
        atomic_write_bytes(self.root / name, sink.getvalue().to_pybytes())
        self.index, self.rows = self.index + 1, []
        return name


class _MDSBackend(_Backend):
    """A standard MDS dataset (shard files + ``index.json``) cut into shards at our row counts.

    Shards are encoded by :func:`quadmix_stream.labelling.mds.encode_shard`, which produces the
    bytes and ``index.json`` entries of ``streaming.MDSWriter(columns=MDS_COLUMNS)`` (a test
    compares them). ``MDSWriter`` itself cuts shards by size only, and cutting them at row
    boundaries needed its private ``_reset_cache()``; this needs no ``streaming`` API at all.
    """

    def __init__(self, root: Path, compression: str | None) -> None:
        if compression not in (None, "zstd"):
            raise ValueError(f"MDS compression must be None or 'zstd', got {compression!r}")
        self.root, self.compression, self.index = root, compression, 0
        self.docs: list[tuple[str, str, dict]] = []
        self.entries: list[dict[str, Any]] = []

    def add(self, doc_id, text, meta):
        self.docs.append((doc_id, text, meta))
        return None

    def end_shard(self):
        from quadmix_stream.labelling.mds import encode_shard

        _raw, stored, entry = encode_shard(self.docs, self.compression)
        raw_name = f"shard.{self.index:05d}.mds"
        name = raw_name + (f".{self.compression}" if self.compression else "")
        entry["raw_data"]["basename"] = raw_name
        if entry["zip_data"] is not None:
            entry["zip_data"]["basename"] = name
        atomic_write_bytes(self.root / name, stored)
        self.entries.append(entry)
        self.index, self.docs = self.index + 1, []
        return name

    def close(self):
        # what MDSWriter.finish() writes: {"shards": [...], "version": 2}, keys sorted
        obj = {"shards": self.entries, "version": 2}
        atomic_write_text(self.root / "index.json", json.dumps(obj, sort_keys=True))


# ---------------------------------------------------------------- the writer
class DatasetWriter:
    """Write documents with their labels as shards + sidecars + manifest.

    Example::

        with DatasetWriter(out, "mds", domains=["web", "code"], scorers=[ScorerInfo("q")]) as w:
            w.write({"id": "a", "text": "hello"}, domain="web", scores=[0.3], tokens=2)

    Args:
        root: output folder (created).
        fmt: ``"mds"``, ``"tar"``, ``"jsonl"``, ``"parquet"`` or ``"arrow"``.
        domains: domain names; labels may give a name or an id.
        scorers: scorer descriptions, in score column order.
        rows_per_shard: documents per shard.
        compression: MDS shard compression (``None`` or ``"zstd"``).
        extra: free-form manifest ``extra``.
        row_group_rows: Parquet rows per row group (Arrow: rows per record batch).
    """

    def __init__(
        self,
        root: str | Path,
        fmt: str,
        domains: Sequence[str],
        scorers: Sequence[ScorerInfo],
        rows_per_shard: int = 4096,
        compression: str | None = None,
        extra: dict | None = None,
        row_group_rows: int = 1000,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if any(self.root.iterdir()):
            raise FileExistsError(f"{self.root} is not empty; refusing to mix datasets")
        self.fmt, self.domains, self.scorers = fmt, list(domains), list(scorers)
        self.rows_per_shard, self.extra = rows_per_shard, extra or {}
        self._dom = {d: i for i, d in enumerate(self.domains)}
        if fmt == "mds":
            self._backend: _Backend = _MDSBackend(self.root, compression)
        elif fmt == "tar":
            self._backend = _TarBackend(self.root)
        elif fmt in ("parquet", "arrow"):
            self._backend = _TableBackend(self.root, fmt, row_group_rows)
        else:
            self._backend = _JsonlBackend(self.root)
        self._cur: dict[str, list] = self._empty()
        self._pending: list[tuple[str, ShardLabels]] = []
        self._all_scores: list[np.ndarray] = []
        self._all_tokens: list[np.ndarray] = []
        self.manifest: Manifest | None = None

    def _empty(self) -> dict[str, list]:
        return {k: [] for k in ("key", "domain", "tokens", "scores", "offset", "length")}

    def write(
        self, doc: dict[str, Any], domain: str | int, scores: Sequence[float], tokens: int
    ) -> None:
        doc_id, text, meta = split_doc(doc)
        d = self._dom.get(domain, domain) if isinstance(domain, str) else int(domain)
        if isinstance(d, str) or not 0 <= d < len(self.domains):
            raise LabelError(
                f"document {doc_id!r}: unknown domain {domain!r}; known {self.domains}"
            )
        scores = [float(s) for s in scores]
        if len(scores) != len(self.scorers) or not all(np.isfinite(scores)):
            raise LabelError(
                f"document {doc_id!r}: need {len(self.scorers)} finite scores, got {scores}"
            )
        off = self._backend.add(doc_id, text, meta)
        c = self._cur
        c["key"].append(doc_key(doc_id))
        c["domain"].append(d)
        c["tokens"].append(int(tokens))
        c["scores"].append(scores)
        if off is not None:
            c["offset"].append(off[0])
            c["length"].append(off[1])
        if len(c["key"]) >= self.rows_per_shard:
            self._end_shard()

    def _end_shard(self) -> None:
        c = self._cur
        if not c["key"]:
            return
        name = self._backend.end_shard()
        labels = ShardLabels(
            key=np.array(c["key"], dtype=np.uint64),
            domain=np.array(c["domain"], dtype=np.int32),
            tokens=np.array(c["tokens"], dtype=np.int64),
            scores=np.array(c["scores"], dtype=np.float64).reshape(-1, len(self.scorers)),
            offset=np.array(c["offset"], dtype=np.int64) if c["offset"] else None,
            length=np.array(c["length"], dtype=np.int64) if c["length"] else None,
        )
        self._pending.append((name, labels))
        self._cur = self._empty()

    def close(self) -> Manifest:
        """Finish the last shard, write sidecars, σ tables and the manifest (atomically, last)."""
        self._end_shard()
        self._backend.close()
        names = [s.name for s in self.scorers]
        entries = []
        for name, labels in self._pending:
            side = _sidecar_name(name)
            side_hash = write_sidecar(self.root / side, labels, names)
            path = self.root / name
            entries.append(
                ShardEntry(
                    name, side, labels.rows, sha256_file(path), side_hash, path.stat().st_size
                )
            )
        if not entries:
            raise LabelError(f"{self.root}: no documents were written")
        scores = np.concatenate([lab.scores for _, lab in self._pending])
        tokens = np.concatenate([lab.tokens for _, lab in self._pending])
        sigma = {
            s.name: build_sigma_table(scores[:, j], tokens, s.higher_is_better)
            for j, s in enumerate(self.scorers)
        }
        self.manifest = Manifest(self.fmt, self.domains, self.scorers, entries, sigma, self.extra)
        self.manifest.save(self.root)  # last: a dataset without a manifest is unfinished
        return self.manifest

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, *_: object) -> None:
        if exc_type is None:
            self.close()


# ---------------------------------------------------------------- readers
class ShardReadError(LabelError):
    """A shard whose bytes cannot be read or decoded: names the shard file and the row."""


def read_error(shard: str, row: int | None, e: BaseException) -> ShardReadError:
    """One error type for every format's read/decode failure (zstd, UTF-8, JSON, tar, MDS)."""
    where = f"shard {shard!r}" + ("" if row is None else f", row {row}")
    return ShardReadError(
        f"{where}: cannot be read ({type(e).__name__}: {e}); the file is corrupt or changed after "
        "labelling (verify_shards=True hashes each shard on first use)"
    )


class ShardReader:
    """Reads single rows of one shard; ``rows_read`` counts decoded rows (for tests/benchmarks)."""

    def __init__(self) -> None:
        self.rows_read = 0

    def read(self, row: int) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _decompressed(path: Path, sha256: str, cache_dir: Path) -> Path:
    """A decompressed copy of a zstd shard in the cache, keyed by the shard's content hash.

    Written to a temp file and renamed, so concurrent workers never read a half-written copy.
    """
    out = cache_dir / f"{sha256[:24]}-{path.name.removesuffix('.zstd')}"
    if not out.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as src:
            data = zstandard.ZstdDecompressor().stream_reader(src).read()
        atomic_write_bytes(out, data)
    return out


def _gunzipped(path: Path, sha256: str, cache_dir: Path) -> Path:
    """A decompressed copy of a gzip-compressed tar shard in the cache (see :func:`_decompressed`)."""
    import gzip
    import shutil

    base = path.name.removesuffix(".gz").removesuffix(".tgz")
    out = cache_dir / f"{(sha256 or sha256_file(path))[:24]}-{base}"
    if not out.exists():  # to a temp file, then renamed: workers never see a partial copy
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{out.name}.", suffix=".tmp")
        try:
            with gzip.open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return out


class MDSShardReader(ShardReader):
    """Random access into one MDS shard file via its offsets table (memory-mapped).

    zstd shards are decompressed once into a local cache (like mosaicml-streaming does), so
    reading a few rows of a shard does not pay for decompressing all of it every epoch.
    """

    def __init__(
        self,
        path: Path,
        name: str,
        index_entry: dict,
        sha256: str = "",
        cache_dir: Path | None = None,
    ) -> None:
        super().__init__()
        import mmap

        self.decoder = mds_decoder(name, index_entry)
        self.name = name
        if name.endswith(".zstd"):
            path = _decompressed(
                path, sha256 or sha256_file(path), cache_dir or default_cache_dir()
            )
        self.file = open(path, "rb")  # noqa: SIM115 (closed in close())
        self.buf = memoryview(mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ))
        n = int(np.frombuffer(self.buf, np.uint32, count=1)[0])
        self.offsets = np.frombuffer(self.buf, np.uint32, count=n + 1, offset=4).astype(np.int64)

    def read(self, row: int) -> dict[str, Any]:
        self.rows_read += 1
        return mds_sample_doc(
            self.decoder, bytes(self.buf[self.offsets[row] : self.offsets[row + 1]]), self.name, row
        )

    def close(self) -> None:
        self.offsets = None  # drop views of the map before closing it
        self.buf.release()
        self.file.close()


def mds_decoder(name: str, index_entry: dict) -> Any:
    """mosaicml-streaming's sample decoder for one MDS shard (pickled columns are refused)."""
    from streaming.base.format.mds.reader import MDSReader

    unsafe = [
        c
        for c, enc in zip(
            index_entry.get("column_names", []),
            index_entry.get("column_encodings", []),
            strict=False,
        )
        if enc == "pkl"
    ]
    if unsafe:  # decoding would unpickle data we did not write
        raise LabelError(
            f"shard {name!r}: MDS columns {unsafe} are pickled; refusing to unpickle untrusted data (re-encode them as json/str)"
        )
    return MDSReader.from_json("", None, index_entry)  # decodes bytes; never opens a file


def mds_sample_doc(decoder: Any, raw: bytes, name: str, row: int) -> dict[str, Any]:
    """One MDS sample's bytes → a document dict."""
    s = decoder.decode_sample(raw)
    if "id" in s and "meta" in s:
        return {"id": s["id"], "text": s["text"], "meta": s["meta"]}
    return mds_doc(s, name, row)


class TarShardReader(ShardReader):
    """Seeks to a sample through the sidecar's byte offsets; never scans the tar."""

    def __init__(
        self,
        path: Path,
        offset: np.ndarray,
        length: np.ndarray,
        members: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.file = open(path, "rb")  # noqa: SIM115
        self.offset, self.length = offset, length
        #: WebDataset shards not written by us: ``{"text_ext": ..., "json_ext": ... | None}``
        self.members = members

    def read(self, row: int) -> dict[str, Any]:
        self.rows_read += 1
        self.file.seek(int(self.offset[row]))
        data = self.file.read(int(self.length[row]))
        return tar_sample_doc(data, self.members, self.file.name, int(self.offset[row]), row)

    def close(self) -> None:
        self.file.close()


def tar_sample_doc(
    data: bytes, members: dict[str, Any] | None, where: str, offset: int, row: int
) -> dict[str, Any]:
    """One tar sample's bytes → a document dict (``members``: a WebDataset not written by us)."""
    if members is not None:
        return webdataset_doc(data, members.get("text_ext", "txt"), members.get("json_ext", "json"))
    found: dict[str, bytes] = {}
    pos = 0
    while pos + 512 <= len(data):
        hdr = data[pos : pos + 512]
        name = hdr[:100].rstrip(b"\0").decode()
        if not name:
            break
        size = int(hdr[124:136].strip(b"\0 ") or b"0", 8)
        found[name.rsplit(".", 1)[-1]] = data[pos + 512 : pos + 512 + size]
        pos += 512 + (size + 511) // 512 * 512
    if "txt" not in found or "json" not in found:
        raise LabelError(
            f"{where}: sample at byte {offset} (row {row}) is not a txt+json pair; tar and sidecar disagree"
        )
    meta = json.loads(found["json"])
    doc_id = meta.pop("id")
    return {"id": doc_id, "text": found["txt"].decode("utf-8"), "meta": meta}


class JsonlShardReader(ShardReader):
    """Decompresses the shard once and parses only the lines that are asked for."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        data = zstandard.ZstdDecompressor().stream_reader(open(path, "rb")).read()  # noqa: SIM115
        self.lines = data.split(b"\n")
        if self.lines and self.lines[-1] == b"":
            self.lines.pop()
        self.path = path

    def read(self, row: int) -> dict[str, Any]:
        self.rows_read += 1
        try:
            obj = json.loads(self.lines[row])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LabelError(f"{self.path.name}: row {row} is not valid JSON ({e})") from None
        doc_id, text, meta = split_doc(obj)
        return {"id": doc_id, "text": text, "meta": meta}


def _parquet_cache_bytes() -> int:
    return int(float(os.environ.get("QUADMIX_PARQUET_CACHE_MB", "1024")) * (1 << 20))


class _TableDocs:
    """Builds documents from columns: ``text``, ``id`` (or ``"<shard>:<row>"``), meta = the rest."""

    def __init__(
        self,
        schema_names: Sequence[str],
        shard: str,
        text_column: str,
        id_column: str | None,
        meta_columns: Sequence[str] | None,
    ) -> None:
        if text_column not in schema_names:
            raise LabelError(
                f"shard {shard!r}: no text column {text_column!r} (columns {list(schema_names)})"
            )
        self.shard, self.text = shard, text_column
        self.id = id_column if id_column in schema_names else None
        skip = {text_column, self.id}
        meta = [c for c in schema_names if c not in skip] if meta_columns is None else meta_columns
        missing = [c for c in meta if c not in schema_names]
        if missing:
            raise LabelError(f"shard {shard!r}: meta columns {missing} are not in the file")
        self.meta = list(meta)
        #: what to read: text, id, meta (in this order)
        self.columns = [text_column] + ([self.id] if self.id else []) + self.meta

    def doc(self, arrays: Sequence[Any], i: int, row: int) -> dict[str, Any]:
        text = arrays[0][i].as_py()
        k = 1
        if self.id:
            doc_id, k = arrays[1][i].as_py(), 2
            doc_id = f"{self.shard}:{row}" if doc_id is None else str(doc_id)
        else:
            doc_id = f"{self.shard}:{row}"
        meta = {c: arrays[k + j][i].as_py() for j, c in enumerate(self.meta)}
        return {"id": doc_id, "text": "" if text is None else str(text), "meta": meta}


class ParquetShardReader(ShardReader):
    """Rows of one Parquet file, read one row group at a time (decide before decode).

    Only the row groups holding requested rows are read, only the text, id and meta columns, and
    only requested rows are turned into Python objects. Row groups stay in a per-process LRU cache
    shared by all readers (``$QUADMIX_PARQUET_CACHE_MB``, default 1024 MiB of Arrow data), so a
    block's shuffled reads fetch each group once while the block's groups fit in it.

    Attributes:
        groups_read: indices of the row groups read from the file, in order (a group read again
            after being evicted appears twice); tests assert unselected groups are never read.
    """

    _cache: OrderedDict[tuple, tuple[list[Any], int]] = OrderedDict()
    _cache_used = 0

    def __init__(
        self,
        path: Path,
        text_column: str = "text",
        id_column: str | None = "id",
        meta_columns: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.name = name or self.path.name
        self.file = pq.ParquetFile(self.path)  # reads the footer only
        md = self.file.metadata
        sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.docs = _TableDocs(
            self.file.schema_arrow.names, self.name, text_column, id_column, meta_columns
        )
        st = self.path.stat()
        self._ident = (str(self.path.resolve()), st.st_size, st.st_mtime_ns, *self.docs.columns)
        self.groups_read: list[int] = []

    @classmethod
    def clear_cache(cls) -> None:
        """Drop every cached row group of this process."""
        cls._cache.clear()
        cls._cache_used = 0

    def _group(self, g: int) -> list[Any]:
        cls = ParquetShardReader
        key = (*self._ident, g)
        hit = cls._cache.get(key)
        if hit is not None:
            cls._cache.move_to_end(key)
            return hit[0]
        table = self.file.read_row_group(g, columns=self.docs.columns)
        self.groups_read.append(g)
        arrays = [table.column(c).combine_chunks() for c in self.docs.columns]
        nbytes = int(table.nbytes)
        cls._cache[key] = (arrays, nbytes)
        cls._cache_used += nbytes
        budget = _parquet_cache_bytes()
        while cls._cache_used > budget and len(cls._cache) > 1:
            _, (_, freed) = cls._cache.popitem(last=False)
            cls._cache_used -= freed
        return arrays

    def read(self, row: int) -> dict[str, Any]:
        if not 0 <= row < self.starts[-1]:
            raise LabelError(
                f"{self.path.name}: row {row} is out of range ({self.starts[-1]} rows)"
            )
        self.rows_read += 1
        g = int(np.searchsorted(self.starts, row, side="right")) - 1
        return self.docs.doc(self._group(g), row - int(self.starts[g]), row)

    def close(self) -> None:
        self.file.close()


def open_arrow_table(path: Path) -> Any:
    """A zero-copy table over a memory-mapped Arrow IPC file or stream (HF ``save_to_disk``)."""
    import pyarrow as pa

    source = pa.memory_map(str(path), "r")
    try:
        return pa.ipc.open_file(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_stream(source).read_all()


class ArrowShardReader(ShardReader):
    """Rows of one Arrow IPC file (as Hugging Face ``datasets.save_to_disk`` writes them).

    The file is memory-mapped and its record batches are views into the map, so opening it reads
    only batch headers and a row's bytes are paged in when that row is read.
    """

    def __init__(
        self,
        path: Path,
        text_column: str = "text",
        id_column: str | None = "id",
        meta_columns: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.name = name or self.path.name
        self.table = open_arrow_table(self.path)
        self.docs = _TableDocs(
            self.table.schema.names, self.name, text_column, id_column, meta_columns
        )
        self.arrays = [self.table.column(c) for c in self.docs.columns]

    def read(self, row: int) -> dict[str, Any]:
        if not 0 <= row < self.table.num_rows:
            raise LabelError(
                f"{self.path.name}: row {row} is out of range ({self.table.num_rows} rows)"
            )
        self.rows_read += 1
        return self.docs.doc(self.arrays, row, row)

    def close(self) -> None:
        self.arrays, self.table = [], None


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


class PinnedReader(ShardReader):
    """A reader of a remote shard's cached copy; closing it lets the cache evict the copy."""

    def __init__(self, inner: ShardReader, store: Store, path: Path) -> None:
        super().__init__()
        self.inner, self.store, self.path = inner, store, path

    def read(self, row: int) -> dict[str, Any]:
        self.rows_read += 1
        return self.inner.read(row)

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.store.release(self.path)


class RangeShardReader(ShardReader):
    """The rows of one remote shard the stream needs, fetched as byte ranges, decoded on read."""

    def __init__(self, data: dict[int, bytes], decode: Any) -> None:
        super().__init__()
        self.data, self.decode = data, decode

    def read(self, row: int) -> dict[str, Any]:
        self.rows_read += 1
        return self.decode(self.data[row], row)


# Ranges with a hole of at most this many bytes are fetched as one request (pyarrow's
# CacheOptions default for the same trade-off: a request costs a round trip, a hole costs bytes).
RANGE_MERGE_GAP = 8192


def _row_spans(
    store: Store,
    manifest: Manifest,
    i: int,
    rows: np.ndarray,
    offset: np.ndarray | None,
    length: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Byte spans of ``rows`` of shard ``i`` where the format allows range reads, else None."""
    entry = manifest.shards[i]
    if manifest.format == "tar" and offset is not None and not entry.name.endswith((".gz", ".tgz")):
        start = offset[rows].astype(np.int64)
        return start, start + length[rows]
    if manifest.format == "mds" and not entry.name.endswith(".zstd"):
        # the shard's offsets table: u32 count, then count + 1 u32 sample offsets
        head = store.read_ranges(entry.name, [(0, 4 * (entry.rows + 2))])[0]
        offs = np.frombuffer(head, np.uint32, offset=4).astype(np.int64)
        if int(np.frombuffer(head, np.uint32, count=1)[0]) != entry.rows:
            raise LabelError(
                f"shard {entry.name!r}: its offsets table does not list {entry.rows} rows"
            )
        return offs[rows], offs[rows + 1]
    return None


def _read_spans(
    store: Store, name: str, rows: np.ndarray, start: np.ndarray, end: np.ndarray
) -> dict[int, bytes]:
    """Fetch the spans (merged where close) and cut them back into rows."""
    o = np.argsort(start, kind="stable")
    rows, start, end = rows[o], start[o], end[o]
    merged: list[tuple[int, int]] = []
    for a, b in zip(start.tolist(), end.tolist(), strict=True):
        if merged and a - merged[-1][1] <= RANGE_MERGE_GAP:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    blobs = store.read_ranges(name, merged)
    first = np.array([m[0] for m in merged], dtype=np.int64)
    which = np.searchsorted(first, start, side="right") - 1
    out: dict[int, bytes] = {}
    for r, a, b, w in zip(rows.tolist(), start.tolist(), end.tolist(), which.tolist(), strict=True):
        base = merged[w][0]
        out[r] = blobs[w][a - base : b - base]
    return out


def _sample_decoder(
    manifest: Manifest, name: str, idx: dict | None, offset: np.ndarray | None, where: str
) -> Any:
    """(sample bytes, row) → document, for a shard read by byte ranges."""
    if manifest.format == "mds":
        dec = mds_decoder(name, idx[name])

        def decode(raw: bytes, row: int) -> dict[str, Any]:
            return mds_sample_doc(dec, raw, name, row)

        return decode
    members = manifest.extra.get("tar_members")

    def decode_tar(raw: bytes, row: int) -> dict[str, Any]:
        return tar_sample_doc(raw, members, where, int(offset[row]), row)

    return decode_tar


def open_shard(
    root: str | Path | Store,
    manifest: Manifest,
    shard_index: int,
    offset: np.ndarray | None = None,
    length: np.ndarray | None = None,
    _mds_index: dict[str, dict] | None = None,
    rows: np.ndarray | None = None,
) -> ShardReader:
    """A row reader for shard ``shard_index`` of a labelled dataset.

    On object storage, ``rows`` (the rows about to be read) lets a sparse selection fetch only
    their bytes (MDS without compression, tar): when they are under the store's
    ``range_fraction`` of the shard. Otherwise the shard is fetched whole into the node's cache.
    """
    store = as_store(root)
    entry = manifest.shards[shard_index]
    name = entry.name
    if manifest.format == "mds":
        idx = _mds_index if _mds_index is not None else mds_index(store)
        if name not in idx:
            raise LabelError(f"shard {name!r}: not listed in {store.where('index.json')}")
    if not store.remote:
        path = store.path(name)
        if not path.exists():
            raise LabelError(f"shard {name!r}: shard file is missing")
        return _open_local(
            path, manifest, shard_index, offset, length, idx if manifest.format == "mds" else None
        )
    frac = store.config.range_fraction
    if rows is not None and entry.rows and len(rows) < frac * entry.rows:
        rows = np.unique(rows)
        spans = _row_spans(store, manifest, shard_index, rows, offset, length)
        if spans is not None and int((spans[1] - spans[0]).sum()) < frac * entry.shard_bytes:
            decode = _sample_decoder(
                manifest, name, idx if manifest.format == "mds" else None, offset, store.where(name)
            )
            return RangeShardReader(_read_spans(store, name, rows, *spans), decode)
    path = store.fetch(name, size=entry.shard_bytes, sha256=entry.shard_sha256)
    try:
        inner = _open_local(
            path, manifest, shard_index, offset, length, idx if manifest.format == "mds" else None
        )
    except BaseException:
        store.release(path)
        raise
    return PinnedReader(inner, store, path)


def _open_local(
    path: Path,
    manifest: Manifest,
    shard_index: int,
    offset: np.ndarray | None,
    length: np.ndarray | None,
    idx: dict[str, dict] | None,
) -> ShardReader:
    entry = manifest.shards[shard_index]
    name = entry.name
    if manifest.format == "mds":
        return MDSShardReader(path, name, idx[name], entry.shard_sha256)
    if manifest.format == "tar":
        if offset is None or length is None:
            raise LabelError(f"shard {name!r}: tar reads need the sidecar's byte offsets")
        if name.endswith((".gz", ".tgz")):  # gzip cannot seek: a decompressed copy, cached once
            path = _gunzipped(path, entry.shard_sha256, default_cache_dir())
        return TarShardReader(path, offset, length, manifest.extra.get("tar_members"))
    if manifest.format in ("parquet", "arrow"):
        cls = ParquetShardReader if manifest.format == "parquet" else ArrowShardReader
        return cls(path, **manifest.extra.get("columns", {}), name=name)
    return JsonlShardReader(path)


# ---------------------------------------------------------------- shards not written by us
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


def _sample_key_ext(name: str) -> tuple[str, str]:
    """WebDataset naming: ``dir/key.ext.ext2`` → (``dir/key``, ``ext.ext2``)."""
    head, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{head}/{key}" if head else key), ext


def webdataset_members(data: bytes) -> tuple[str, dict[str, bytes]]:
    """(sample key, {extension: payload}) of one sample's bytes (handles pax/GNU long names)."""
    members: dict[str, bytes] = {}
    key = ""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for m in tf:
            if not m.isfile():
                continue
            key, ext = _sample_key_ext(m.name)
            f = tf.extractfile(m)
            members[ext] = f.read() if f is not None else b""
    return key, members


def webdataset_doc(data: bytes, text_ext: str, json_ext: str | None) -> dict[str, Any]:
    """A document from one WebDataset sample: text from ``text_ext``, fields from ``json_ext``.

    Without a JSON member (or without ``id`` in it) the id is the sample key. Text that is not
    valid UTF-8 is decoded with replacement characters (labelling counts these).
    """
    key, members = webdataset_members(data)
    if text_ext not in members:
        raise LabelError(f"tar sample {key!r} has no .{text_ext} member (has {sorted(members)})")
    meta: dict[str, Any] = {}
    if json_ext and json_ext in members:
        meta = json.loads(members[json_ext])
        if not isinstance(meta, dict):
            meta = {"json": meta}
    doc_id = str(meta.pop("id", key))
    return {"id": doc_id, "text": members[text_ext].decode("utf-8", "replace"), "meta": meta}


def scan_tar(path: str | Path) -> list[tuple[str, int, int]]:
    """(sample key, byte offset, byte length) of every sample of an uncompressed tar shard.

    A sample is a run of consecutive regular members sharing a key (WebDataset convention); its
    bytes run from the first member's header (pax/GNU headers included) to the end of the last
    member's padded data, which is what :class:`TarShardReader` seeks to.
    """
    out: list[tuple[str, int, int]] = []
    cur_key, start, end = None, 0, 0
    try:
        with tarfile.open(path, mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, _ = _sample_key_ext(m.name)
                stop = m.offset_data + (m.size + 511) // 512 * 512
                if key != cur_key:
                    if cur_key is not None:
                        out.append((cur_key, start, end - start))
                    cur_key, start = key, m.offset
                end = stop
    except tarfile.TarError as e:
        raise LabelError(f"{path}: not a readable uncompressed tar ({e})") from None
    if cur_key is not None:
        out.append((cur_key, start, end - start))
    return out
