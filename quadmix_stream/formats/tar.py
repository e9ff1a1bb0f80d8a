"""WebDataset tar shards: the writer, the seek-by-offset row reader, and sample parsing.

A sample is a run of consecutive members sharing a key (``key.txt`` + ``key.json`` in ours).
Rows are read by seeking to the byte offset recorded in the sidecar and parsing just that
sample's bytes with :mod:`tarfile`; the tar is never scanned at read time. Gzip-compressed tar
shards (not written by us) are read from a decompressed copy in the node's cache.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.formats.base import (
    SampleDecoder,
    ScannedShard,
    ShardFormat,
    ShardReader,
    ShardSpec,
    WriterBackend,
)
from quadmix_stream.formats.decompress import gunzip_copy
from quadmix_stream.formats.labels import LabelError
from quadmix_stream.storage.io import atomic_write_bytes, default_cache_dir, sha256_file
from quadmix_stream.storage.store import Store


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard.{index:05d}.tar"


class TarBackend(WriterBackend):
    """USTAR shards of ``sNNNNNNNN.txt`` + ``sNNNNNNNN.json`` pairs; returns each sample's span."""

    def __init__(self, root: Path) -> None:
        self.root, self.index, self.n = root, 0, 0
        self.buf: io.BytesIO | None = None
        self.tar: tarfile.TarFile | None = None

    def _open(self) -> tarfile.TarFile:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.USTAR_FORMAT)
        return self.tar

    def add(self, doc_id: str, text: str, meta: dict[str, Any]) -> tuple[int, int]:
        tar = self.tar
        if tar is None:
            tar, self.n = self._open(), 0
        start = tar.offset
        key = f"s{self.n:08d}"
        for ext, payload in (
            ("txt", text.encode("utf-8")),
            ("json", json.dumps({"id": doc_id, **meta}, ensure_ascii=False).encode("utf-8")),
        ):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(payload)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(payload))
        self.n += 1
        return start, tar.offset - start

    def end_shard(self) -> str:
        name = shard_name(self.index)
        tar = self.tar if self.tar is not None else self._open()  # an empty shard
        tar.close()
        assert self.buf is not None
        atomic_write_bytes(self.root / name, self.buf.getvalue())
        self.index, self.tar, self.buf = self.index + 1, None, None
        return name


def _sample_key_ext(name: str) -> tuple[str, str]:
    """WebDataset naming: ``dir/key.ext.ext2`` → (``dir/key``, ``ext.ext2``)."""
    head, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{head}/{key}" if head else key), ext


_ZERO_BLOCK = bytes(512)


def ustar_members(data: bytes) -> tuple[str, dict[str, bytes]] | None:
    """(sample key, {extension: payload}) of a sample made only of plain USTAR headers and
    regular files (as our writer makes them), parsed directly: ``tarfile`` costs ~100 µs a sample.

    Returns None for anything else (pax or GNU long names, links, a bad header checksum, a
    truncated member): the caller then parses the sample with ``tarfile``, which handles those
    or raises its error.
    """
    members: dict[str, bytes] = {}
    key, pos, n = "", 0, len(data)
    while pos + 512 <= n:
        h = data[pos : pos + 512]
        if h == _ZERO_BLOCK:  # end of the archive
            break
        if h[156] not in (48, 0) or h[124] & 0x80:  # not a regular file; base-256 size
            return None
        try:
            stored = int(h[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
            size = int(h[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            return None
        if stored != sum(h) - sum(h[148:156]) + 256:  # the header checksum (spaces for itself)
            return None
        name = h[:100].split(b"\0", 1)[0]
        if h[257:262] == b"ustar":
            prefix = h[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        start = pos + 512
        if start + size > n:
            return None
        try:
            key, ext = _sample_key_ext(name.decode("utf-8"))
        except UnicodeDecodeError:
            return None
        members[ext] = data[start : start + size]
        pos = start + (size + 511) // 512 * 512
    return key, members


def webdataset_members(data: bytes) -> tuple[str, dict[str, bytes]]:
    """(sample key, {extension: payload}) of one sample's bytes (handles pax/GNU long names)."""
    fast = ustar_members(data)
    if fast is not None:
        return fast
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


def tar_sample_doc(
    data: bytes, members: dict[str, Any] | None, where: str, offset: int, row: int
) -> dict[str, Any]:
    """One tar sample's bytes → a document dict (``members``: a WebDataset not written by us)."""
    if members is not None:
        return webdataset_doc(data, members.get("text_ext", "txt"), members.get("json_ext", "json"))
    _key, found = webdataset_members(data)
    if "txt" not in found or "json" not in found:
        raise LabelError(
            f"{where}: sample at byte {offset} (row {row}) is not a txt+json pair; tar and "
            "sidecar disagree"
        )
    meta = json.loads(found["json"])
    doc_id = meta.pop("id")
    return {"id": doc_id, "text": found["txt"].decode("utf-8"), "meta": meta}


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


class TarFormat(ShardFormat):
    """WebDataset tar: rows by the sidecar's byte offsets; uncompressed remote shards by ranges."""

    def writer(
        self, root: Path, fmt: str, compression: str | None, row_group_rows: int
    ) -> WriterBackend:
        return TarBackend(root)

    def open_local(self, path: Path, spec: ShardSpec) -> ShardReader:
        if spec.offset is None or spec.length is None:
            raise LabelError(f"shard {spec.name!r}: tar reads need the sidecar's byte offsets")
        if spec.name.endswith((".gz", ".tgz")):  # gzip cannot seek: a decompressed copy, cached
            path = gunzip_copy(path, spec.sha256, default_cache_dir())
        return TarShardReader(path, spec.offset, spec.length, spec.extra.get("tar_members"))

    def scan(self, path: Path, spec: ShardSpec, cache_dir: Path | None = None) -> ScannedShard:
        """Every sample (:func:`scan_tar`), with its byte offset and length. Members are named
        by ``spec.extra["tar_members"]`` (default ``txt``/``json``); the text stays bytes and
        the id is the JSON member's ``id`` as found, else the sample key."""
        members = spec.extra.get("tar_members") or {}
        text_ext = members.get("text_ext", "txt")
        json_ext = members.get("json_ext", "json")
        if spec.name.endswith((".gz", ".tgz")):  # offsets are into the decompressed tar (cached)
            path = gunzip_copy(
                path, spec.sha256 or sha256_file(path), cache_dir or default_cache_dir()
            )
        out = ScannedShard([], [], [], [])
        with open(path, "rb") as f:
            for key, off, length in scan_tar(path):
                f.seek(off)
                _key, found = webdataset_members(f.read(length))
                if text_ext not in found:
                    raise LabelError(
                        f"shard {spec.name!r}: sample {key!r} has no .{text_ext} member "
                        f"(has {sorted(found)}); set input.tar_text_ext"
                    )
                meta: dict[str, Any] = {}
                if json_ext and json_ext in found:
                    meta = json.loads(found[json_ext])
                    if not isinstance(meta, dict):
                        meta = {"json": meta}
                doc_id = meta.pop("id", key)
                out.docs.append({"id": doc_id, "text": found[text_ext], "meta": meta})
                out.keys.append(key)  # type: ignore[union-attr]
                out.offset.append(off)  # type: ignore[union-attr]
                out.length.append(length)  # type: ignore[union-attr]
        return out

    def row_spans(
        self, store: Store, spec: ShardSpec, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        if spec.offset is None or spec.length is None or spec.name.endswith((".gz", ".tgz")):
            return None
        start = spec.offset[rows].astype(np.int64)
        return start, start + spec.length[rows]

    def sample_decoder(self, spec: ShardSpec, where: str) -> SampleDecoder:
        members = spec.extra.get("tar_members")
        offset = spec.offset
        assert offset is not None

        def decode_tar(raw: bytes, row: int) -> dict[str, Any]:
            return tar_sample_doc(raw, members, where, int(offset[row]), row)

        return decode_tar


FORMAT = TarFormat()
