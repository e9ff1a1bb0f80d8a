"""Reading remote shards: a pinned cached copy, or just the byte ranges of the rows needed.

:func:`quadmix_stream.formats.open_shard` fetches a remote shard whole into the node's cache
(:class:`PinnedReader` releases it on close) unless the rows about to be read are a small part of
it and the format can cut them out by byte ranges (:meth:`ShardFormat.row_spans`): then only those
ranges are fetched, merged where close (:func:`read_spans`), into a :class:`RangeShardReader`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.formats.base import SampleDecoder, ShardReader
from quadmix_stream.storage.store import Store


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

    def __init__(self, data: dict[int, bytes], decode: SampleDecoder) -> None:
        super().__init__()
        self.data, self.decode = data, decode

    def read(self, row: int) -> dict[str, Any]:
        self.rows_read += 1
        return self.decode(self.data[row], row)


def plan_ranges(start: np.ndarray, end: np.ndarray, hole: int) -> list[tuple[int, int]]:
    """Sorted spans merged into requests wherever the hole between them is at most ``hole``."""
    merged: list[tuple[int, int]] = []
    for a, b in zip(start.tolist(), end.tolist(), strict=True):
        if merged and a - merged[-1][1] <= hole:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def ranges_cost(merged: list[tuple[int, int]], request_bytes: int) -> int:
    """Cost of fetching ``merged`` in bytes-equivalent: its bytes plus one request each."""
    return sum(b - a for a, b in merged) + request_bytes * len(merged)


def read_spans(
    store: Store,
    name: str,
    rows: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    merged: list[tuple[int, int]],
) -> dict[int, bytes]:
    """Fetch the planned requests and cut them back into rows (``start`` sorted)."""
    blobs = store.read_ranges(name, merged)
    first = np.array([m[0] for m in merged], dtype=np.int64)
    which = np.searchsorted(first, start, side="right") - 1
    out: dict[int, bytes] = {}
    for r, a, b, w in zip(rows.tolist(), start.tolist(), end.tolist(), which.tolist(), strict=True):
        base = merged[w][0]
        out[r] = blobs[w][a - base : b - base]
    return out
