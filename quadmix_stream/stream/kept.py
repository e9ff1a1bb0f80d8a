"""The labels a sparse selection reads, kept in the node cache beside its counts.

Reading a document needs a few of its labels (key, domain, tokens, checksum, tar offsets), and
dealing a shard's items needs the keys of the documents it keeps. Reading the shard's sidecar for
them costs the same whether 5 % or all of its rows are kept: at 10 % of a 500-row shard it cost
more than reading the 50 documents. So the epoch's totals pass, which reads every sidecar
anyway, writes the labels of the kept rows of each chunk of shards into one node-cache file when
the selection is sparse (at most one row in :data:`SPARSE` kept), and a consumer takes a shard's
slice of it instead of its sidecar: work in proportion to what the shard keeps.

File layout (little-endian): ``MAGIC``, ``u4`` flags (1: checksums, 2: tar offsets), ``u4``
shards in the chunk, ``i8`` × (shards + 1) first record of each shard, then the records
(:func:`record_dtype`). A file that does not parse, or disagrees with the counts, is ignored:
the consumer reads the sidecar instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quadmix_stream.formats.labels import ShardLabels
from quadmix_stream.storage.io import atomic_write_bytes, map_bytes

log = logging.getLogger(__name__)

MAGIC = b"QMSKEPT1"
SPARSE = 8  # write kept labels when at most one row in SPARSE has items
_DIGEST, _OFFSETS = 1, 2


@dataclass(frozen=True)
class RowLabels:
    """The labels the stream reads of some rows of one shard.

    ``row``: those rows (ascending), or None for every row in order; the other fields are
    aligned with them. :meth:`at` finds the rows an item list needs.
    """

    size: int  # rows in the shard
    row: np.ndarray | None
    key: np.ndarray
    domain: np.ndarray
    tokens: np.ndarray
    digest: np.ndarray | None = None
    offset: np.ndarray | None = None
    length: np.ndarray | None = None

    @classmethod
    def of(cls, lab: ShardLabels) -> RowLabels:
        return cls(
            lab.rows, None, lab.key, lab.domain, lab.tokens, lab.digest, lab.offset, lab.length
        )

    def at(self, local: np.ndarray) -> np.ndarray:
        """Positions of the rows ``local`` in the fields (each must be one of ``row``)."""
        if self.row is None:
            return local
        i = np.searchsorted(self.row, local)
        if i.size and (i.max() >= self.row.size or np.any(self.row[i] != local)):
            raise RuntimeError("items of rows without kept labels")  # a bug, not bad input
        return i

    def dense(self, name: str) -> np.ndarray | None:
        """Field ``name`` for every row of the shard (zeros where no label is kept)."""
        col = getattr(self, name)
        if col is None or self.row is None:
            return col
        out = np.zeros(self.size, dtype=col.dtype)
        out[self.row] = col
        return out


def _flags(digest: bool, offsets: bool) -> int:
    return (_DIGEST if digest else 0) | (_OFFSETS if offsets else 0)


def record_dtype(flags: int) -> np.dtype:
    fields = [("row", "<u4"), ("key", "<u8"), ("domain", "<i4"), ("tokens", "<i8")]
    if flags & _DIGEST:
        fields.append(("digest", "<u4"))
    if flags & _OFFSETS:
        fields += [("offset", "<i8"), ("length", "<i8")]
    return np.dtype(fields)


def records(lab: ShardLabels, counts: np.ndarray) -> np.ndarray:
    """The kept rows' labels of one shard (rows with ``counts > 0``), as records."""
    rows = np.flatnonzero(counts)
    flags = _flags(lab.digest is not None, lab.offset is not None)
    rec = np.empty(rows.size, dtype=record_dtype(flags))
    rec["row"] = rows
    for name in rec.dtype.names[1:]:
        rec[name] = getattr(lab, name)[rows]
    return rec


def write_kept(path: Path, parts: list[np.ndarray]) -> None:
    """Write one chunk's records (one array per shard, all of one dtype) atomically."""
    if len({p.dtype for p in parts}) != 1:  # shards with different optional columns: skip
        return
    names = parts[0].dtype.names
    flag = _flags("digest" in names, "offset" in names)
    starts = np.concatenate([[0], np.cumsum([p.size for p in parts])]).astype("<i8")
    head = MAGIC + np.array([flag, len(parts)], "<u4").tobytes() + starts.tobytes()
    try:
        atomic_write_bytes(path, head + b"".join(p.tobytes() for p in parts))
    except OSError as e:  # a full disk: consumers read the sidecars instead
        log.debug("kept labels %s not cached: %s", path, e)


class KeptFile:
    """One chunk's kept labels, memory-mapped (the page cache is shared by the node's processes)."""

    def __init__(self, path: Path, shards: int) -> None:
        data = map_bytes(path)
        head = 16 + 8 * (shards + 1)
        if data.size < head or bytes(data[:8]) != MAGIC:
            raise ValueError("not a kept-labels file")
        flags, n = (int(x) for x in data[8:16].view("<u4"))
        self.starts = data[16:head].view("<i8")
        self.dtype = record_dtype(flags)
        body = data.size - head
        if (
            n != shards
            or self.starts[0] != 0
            or np.any(np.diff(self.starts) < 0)
            or body != int(self.starts[-1]) * self.dtype.itemsize
        ):
            raise ValueError("kept-labels file does not match its chunk")
        self.records = data[head:].view(self.dtype)

    def labels(self, j: int, counts: np.ndarray) -> RowLabels | None:
        """Labels of the ``j``-th shard of the chunk (``counts``: its counts), or None when the
        file disagrees with them."""
        rec = self.records[int(self.starts[j]) : int(self.starts[j + 1])]
        row = rec["row"].astype(np.int64)
        if row.size != np.count_nonzero(counts) or (
            row.size and (row[-1] >= counts.size or np.any(counts[row] == 0))
        ):
            return None
        names = self.dtype.names

        def col(name: str, dtype: str) -> np.ndarray | None:
            return rec[name].astype(dtype) if name in names else None

        return RowLabels(
            size=counts.size,
            row=row,
            key=col("key", "u8"),
            domain=col("domain", "i4"),
            tokens=col("tokens", "i8"),
            digest=col("digest", "u4"),
            offset=col("offset", "i8"),
            length=col("length", "i8"),
        )
