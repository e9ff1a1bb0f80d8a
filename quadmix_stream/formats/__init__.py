"""Shard formats behind one small interface: a writer backend and row readers per format.

One module per format (:mod:`.mds`, :mod:`.tar`, :mod:`.jsonl`, :mod:`.table` for Parquet and
Arrow), each a :class:`~quadmix_stream.formats.base.ShardFormat` registered here by format name.
The dataset, the labelling, ``sample`` and the benchmarks write shards through
:func:`writer_backend` and read rows through :func:`open_shard` (a labelled dataset's shard, local
or remote) or :func:`open_reader` (a local shard file).

Rows are read without touching the documents the loader skips: MDS through its offsets table, tar
through the sidecar's byte offsets, JSONL by parsing only the selected lines, Parquet only the row
groups holding requested rows, Arrow memory-mapped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quadmix_stream.errors import UserError
from quadmix_stream.formats import jsonl, mds, table, tar
from quadmix_stream.formats.base import (
    ScannedShard,
    ShardFormat,
    ShardReader,
    ShardReadError,
    ShardSpec,
    WriterBackend,
    read_error,
    sidecar_name,
    split_doc,
)
from quadmix_stream.formats.labels import FORMATS, LabelError, Manifest
from quadmix_stream.formats.ranges import (
    PinnedReader,
    RangeShardReader,
    plan_ranges,
    ranges_cost,
    read_spans,
)
from quadmix_stream.storage.store import Store, as_store

__all__ = [
    "REGISTRY",
    "ScannedShard",
    "ShardFormat",
    "ShardReadError",
    "ShardReader",
    "ShardSpec",
    "WriterBackend",
    "get_format",
    "open_reader",
    "open_shard",
    "read_error",
    "sidecar_name",
    "split_doc",
    "writer_backend",
]

#: Format name (as in the manifest) → its implementation.
REGISTRY: dict[str, ShardFormat] = {
    "mds": mds.FORMAT,
    "tar": tar.FORMAT,
    "jsonl": jsonl.FORMAT,
    "parquet": table.PARQUET,
    "arrow": table.ARROW,
}
assert set(REGISTRY) == set(FORMATS)


def get_format(fmt: str) -> ShardFormat:
    """The implementation of format ``fmt``."""
    if fmt not in REGISTRY:
        raise UserError(f"format must be one of {FORMATS}, got {fmt!r}")
    return REGISTRY[fmt]


def writer_backend(
    root: Path, fmt: str, compression: str | None = None, row_group_rows: int = 1000
) -> WriterBackend:
    """A writer of ``fmt`` shards under ``root``.

    Args:
        root: output folder.
        fmt: a format name of :data:`REGISTRY`.
        compression: MDS shard compression (``None`` or ``"zstd"``); other formats ignore it.
        row_group_rows: Parquet rows per row group (Arrow: rows per record batch).
    """
    return get_format(fmt).writer(root, fmt, compression, row_group_rows)


def shard_spec(
    manifest: Manifest,
    shard_index: int,
    offset: np.ndarray | None = None,
    length: np.ndarray | None = None,
    mds_entry: dict | None = None,
    reads: int | None = None,
) -> ShardSpec:
    """What the readers need of shard ``shard_index`` of a labelled dataset."""
    e = manifest.shards[shard_index]
    return ShardSpec(
        e.name,
        e.rows,
        e.shard_sha256,
        e.shard_bytes,
        offset,
        length,
        manifest.extra,
        mds_entry,
        reads,
    )


def open_reader(path: Path, fmt: str, spec: ShardSpec) -> ShardReader:
    """A row reader of the local shard file ``path`` of format ``fmt``."""
    return get_format(fmt).open_local(path, spec)


def open_shard(
    root: str | Path | Store,
    manifest: Manifest,
    shard_index: int,
    offset: np.ndarray | None = None,
    length: np.ndarray | None = None,
    _mds_index: dict[str, dict] | None = None,
    rows: np.ndarray | None = None,
    reads: int | None = None,
) -> ShardReader:
    """A row reader for shard ``shard_index`` of a labelled dataset.

    ``rows`` (the rows about to be read) lets a local reader of a few rows read just those. On
    object storage it lets a sparse selection fetch only their bytes (MDS without compression,
    tar) when that costs less than the whole shard, a request counted as the store's
    ``request_bytes``; otherwise the shard is fetched whole into the node's cache.

    Args:
        root: the dataset's folder or URL (or its :class:`Store`).
        manifest: the dataset's manifest.
        shard_index: which shard.
        offset, length: tar: the sidecar's byte offset and length of each row's sample.
        _mds_index: MDS: the parsed ``index.json`` (:func:`.mds.mds_index`), to avoid re-reading.
        rows: the rows about to be read, when known.
        reads: how many rows are about to be read (default: those of ``rows``).
    """
    store = as_store(root)
    entry = manifest.shards[shard_index]
    name = entry.name
    fmt = get_format(manifest.format)
    mds_entry = None
    if manifest.format == "mds":
        idx = _mds_index if _mds_index is not None else mds.mds_index(store)
        if name not in idx:
            raise LabelError(f"shard {name!r}: not listed in {store.where('index.json')}")
        mds_entry = idx[name]
    if reads is None and rows is not None:
        reads = len(rows)
    spec = shard_spec(manifest, shard_index, offset, length, mds_entry, reads)
    if not store.remote:
        path = store.path(name)
        if not path.exists():
            raise LabelError(f"shard {name!r}: shard file is missing")
        return fmt.open_local(path, spec)
    cost = store.config.request_bytes
    # a shard needing most of its rows is fetched whole without asking for its offsets table
    if rows is not None and entry.rows and len(rows) < entry.rows // 2 and cost < entry.shard_bytes:
        rows = np.unique(rows)
        spans = fmt.row_spans(store, spec, rows)
        if spans is not None:
            o = np.argsort(spans[0], kind="stable")
            rows, start, end = rows[o], spans[0][o], spans[1][o]
            merged = plan_ranges(start, end, cost)
            if ranges_cost(merged, cost) < entry.shard_bytes + cost:
                decode = fmt.sample_decoder(spec, store.where(name))
                data = read_spans(store, name, rows, start, end, merged)
                return RangeShardReader(data, decode)
    path = store.fetch(name, size=entry.shard_bytes, sha256=entry.shard_sha256)
    try:
        inner = fmt.open_local(path, spec)
    except BaseException:
        store.release(path)
        raise
    return PinnedReader(inner, store, path)
