"""The small interface every shard format implements, and what all formats share.

A format is a :class:`ShardFormat`: a :class:`WriterBackend` that writes its shards, and
:class:`ShardReader` s that read single rows of one shard (local file, or remote bytes fetched by
:mod:`quadmix_stream.formats.ranges`). A reader is told what it needs of a shard through a
:class:`ShardSpec`. Errors while decoding a shard's bytes become one :class:`ShardReadError`
(:func:`read_error`) naming the shard and the row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quadmix_stream.formats.labels import LabelError

if TYPE_CHECKING:
    from quadmix_stream.storage.store import Store

#: ``(sample bytes, row) → document``: decodes one sample fetched as a byte range.
SampleDecoder = Callable[[bytes, int], dict[str, Any]]


def as_text(value: Any) -> str:
    """A stored text value as the readers return it: bytes decoded as UTF-8 (invalid bytes
    replaced), a null as ``""``, anything else through ``str``. The labelling records the
    checksum of this text for shards labelled in place, so it must match what a reader gives."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def split_doc(doc: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(id, text, meta) of a document dict; ``meta`` is everything else."""
    if "id" not in doc or "text" not in doc:
        raise LabelError(f"a document needs 'id' and 'text' fields, got keys {sorted(doc)}")
    meta = {k: v for k, v in doc.items() if k not in ("id", "text")}
    return str(doc["id"]), as_text(doc["text"]), meta


def sidecar_name(shard_name: str) -> str:
    """The label sidecar's file name of a shard: its name without format suffixes + ``.labels.npz``."""
    base = shard_name
    for suffix in (".zstd", ".zst", ".gz", ".tgz", ".mds", ".tar", ".jsonl", ".parquet", ".arrow"):
        base = base.removesuffix(suffix)
    return base + ".labels.npz"


class WriterBackend:
    """Writes the payload shards of one format, one shard at a time, named ``shard.NNNNN.<ext>``.

    Attributes:
        index: number of the next shard (the labelling sets it to write unit ``index``'s shard).
    """

    index: int = 0

    def add(self, doc_id: str, text: str, meta: dict[str, Any]) -> tuple[int, int] | None:
        """Add one document to the current shard.

        Returns:
            (byte offset, byte length) of the document's sample in the shard where the format
            reads by offsets (tar), else None.
        """
        raise NotImplementedError

    def end_shard(self) -> str:
        """Write the current shard; return its file name relative to the root."""
        raise NotImplementedError

    def close(self) -> None:
        """Write what the format keeps beside its shards (MDS: ``index.json``)."""


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
        """Document ``row`` of the shard: ``{"id": str, "text": str, "meta": dict}``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the shard's file handles and maps."""


@dataclass(frozen=True)
class ShardSpec:
    """What a reader needs to know about one shard of a labelled dataset besides its bytes.

    Attributes:
        name: file name relative to the dataset root.
        rows: number of rows.
        sha256: content hash of the shard file (keys decompressed copies in the cache).
        nbytes: size of the shard file.
        offset: tar: byte offset of each row's sample (from the sidecar).
        length: tar: byte length of each row's sample.
        extra: the manifest's ``extra`` (``tar_members``, Parquet/Arrow ``columns``).
        mds_entry: MDS: the shard's entry in ``index.json``.
        reads: how many of its rows are about to be read, when known (a reader may read a few
            rows by positioned reads instead of mapping the whole file).
    """

    name: str
    rows: int
    sha256: str
    nbytes: int
    offset: np.ndarray | None = None
    length: np.ndarray | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    mds_entry: dict[str, Any] | None = None
    reads: int | None = None


@dataclass
class ScannedShard:
    """Every row of one shard file, read whole and in order (:meth:`ShardFormat.scan`).

    Attributes:
        docs: ``{"id", "text", "meta"}`` per row, as found: the id may be a non-string value, the
            text ``bytes`` (tar members, not decoded) or ``None`` (a null table cell), so the
            caller can count such rows before normalising them.
        keys: tar: each row's sample key (the row's name in messages); else ``None``.
        offset: tar: byte offset of each row's sample (what the sidecar records).
        length: tar: byte length of each row's sample.
    """

    docs: list[dict[str, Any]]
    keys: list[str] | None = None
    offset: list[int] | None = None
    length: list[int] | None = None


class ShardFormat:
    """One shard format: how its shards are written and how their rows are read.

    Subclasses implement :meth:`writer`, :meth:`open_local` and :meth:`scan`; a format whose
    samples can be fetched as byte ranges (so a sparse selection of a remote shard need not fetch
    all of it) also implements :meth:`row_spans` and :meth:`sample_decoder`.
    """

    def writer(
        self, root: Path, fmt: str, compression: str | None, row_group_rows: int
    ) -> WriterBackend:
        """A writer backend for shards of format ``fmt`` under ``root``."""
        raise NotImplementedError

    def open_local(self, path: Path, spec: ShardSpec) -> ShardReader:
        """A row reader of the shard file at ``path`` (a local file or a cached copy)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Import what reading this format needs, in the process that builds the stream.

        Called before DataLoader workers fork: a package first imported in a worker is a private
        copy per worker, one imported before the fork is shared memory.
        """

    def scan(self, path: Path, spec: ShardSpec, cache_dir: Path | None = None) -> ScannedShard:
        """Every row of the local shard file ``path``, in order (labelling shards in place).

        ``spec`` names the shard (``rows``, ``sha256``, ``offset`` and ``length`` may be
        unknown: 0, ``""``, ``None``); its ``extra`` names foreign tar members
        (``tar_members``) and table columns (``columns``) as for :meth:`open_local`.
        ``cache_dir``: where a compressed shard is decompressed (default: the node's cache).
        """
        raise NotImplementedError

    def row_spans(
        self, store: Store, spec: ShardSpec, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(start, end) byte spans of ``rows`` in the shard, or None where ranges cannot be read."""
        return None

    def sample_decoder(self, spec: ShardSpec, where: str) -> SampleDecoder:
        """Decodes one row's bytes as cut by :meth:`row_spans`."""
        raise NotImplementedError
