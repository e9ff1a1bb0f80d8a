"""The epoch's emitted sequence as a pure function of (seed, epoch, shard metadata, counts).

Why this shape (DESIGN.md §5 recommends canonical partitions; this keeps every guarantee with
less state): every copy ``k`` of document ``r`` is an *item* with id ``r·256 + k`` and a
priority ``hash(key, seed, epoch, k)``. Shards are permuted per epoch and grouped into blocks of
``block_shards`` shards; the epoch's sequence is the items of block 0 sorted by priority, then
block 1, and so on. The sort key ``(block, priority, id)`` does not depend on θ, so a *cursor*
in that key space marks "everything before here is consumed" under any params, and the
remaining items under new params are simply those with a key at or after the cursor. Copies of a
document land at independent random places in their block (spread apart); domains interleave
within a block. Items are dealt round-robin to consumers (rank × worker), so all consumers get
the same count ±1 and balancing needs to drop at most ``consumers − 1`` items per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from quadmix_stream.hashing import SALT_ORDER, SALT_SHARDS, hash64

COPY_BITS = 8
MAX_COPIES = (1 << COPY_BITS) - 1


def item_ids(rows: np.ndarray, copies: np.ndarray) -> np.ndarray:
    return (np.asarray(rows, dtype=np.int64) << COPY_BITS) | np.asarray(copies, dtype=np.int64)


def split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(ids, dtype=np.int64)
    return ids >> COPY_BITS, ids & MAX_COPIES


def shard_order(n_shards: int, seed: int, epoch: int) -> np.ndarray:
    """Per-epoch permutation of shard indices."""
    return np.argsort(
        hash64(np.arange(n_shards, dtype=np.uint64), seed, epoch, SALT_SHARDS), kind="stable"
    )


def make_blocks(n_shards: int, seed: int, epoch: int, block_shards: int | None) -> list[np.ndarray]:
    order = shard_order(n_shards, seed, epoch)
    size = n_shards if not block_shards else max(1, int(block_shards))
    return [order[i : i + size] for i in range(0, n_shards, size)]


@dataclass(frozen=True)
class Segment:
    """The part of an epoch still to be emitted: keys ≥ ``cursor``, minus ``exclude`` item ids."""

    cursor: tuple[int, int, int] | None = None  # (block, priority as int64 bits, item id)
    exclude: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def to_dict(self) -> dict:
        return {
            "cursor": None if self.cursor is None else [int(x) for x in self.cursor],
            "exclude": [int(x) for x in np.sort(self.exclude)],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Segment:
        cur = d.get("cursor")
        return cls(
            cursor=None if cur is None else (int(cur[0]), int(cur[1]), int(cur[2])),
            exclude=np.asarray(d.get("exclude", []), dtype=np.int64),
        )


class EpochPlan:
    """The ordered items of one epoch's segment, materialised lazily block by block.

    Args:
        shard_start: (n_shards + 1,) global row where each shard starts.
        keys: (n_docs,) document keys (uint64).
        counts: (n_docs,) realised copies for this epoch.
        seed, epoch: the stream's seed and the epoch.
        block_shards: shards per shuffle block (``None``: the whole epoch is one block).
        segment: what remains of the epoch (default: all of it).
    """

    def __init__(
        self,
        shard_start: np.ndarray,
        keys: np.ndarray,
        counts: np.ndarray,
        seed: int,
        epoch: int,
        block_shards: int | None,
        segment: Segment | None = None,
    ) -> None:
        if counts.size and counts.max() > MAX_COPIES:
            raise ValueError(
                f"a document has {counts.max()} copies; at most {MAX_COPIES} are supported"
            )
        self.shard_start, self.keys, self.counts = shard_start, keys, counts
        self.seed, self.epoch = seed, epoch
        self.segment = segment or Segment()
        n_shards = shard_start.size - 1
        self.blocks = make_blocks(n_shards, seed, epoch, block_shards)
        per_shard = np.add.reduceat(counts, shard_start[:-1]) if counts.size else np.zeros(n_shards)
        per_shard = np.where(
            np.diff(shard_start) > 0, per_shard, 0
        )  # reduceat quirk on empty shards
        sizes = np.array([int(per_shard[b].sum()) for b in self.blocks], dtype=np.int64)
        self._cache: dict[int, np.ndarray] = {}
        cur = self.segment.cursor
        if cur is not None:
            sizes[: cur[0]] = 0
        touched = set() if cur is None else {cur[0]}
        if self.segment.exclude.size:
            rows = split_ids(self.segment.exclude)[0]
            touched |= set(self.block_index_of_rows(rows).tolist())
        for b in touched:  # blocks where the segment differs from "everything": exact size
            if b < len(self.blocks):
                sizes[b] = self.block_items(b).size
        self.sizes = sizes
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.total = int(self.starts[-1])

    def block_index_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """Block of each global row."""
        shard_of = np.searchsorted(self.shard_start, rows, side="right") - 1
        block_of = np.empty(self.shard_start.size - 1, dtype=np.int64)
        for i, b in enumerate(self.blocks):
            block_of[b] = i
        return block_of[shard_of]

    def block_rows(self, b: int) -> np.ndarray:
        return np.concatenate(
            [np.arange(self.shard_start[s], self.shard_start[s + 1]) for s in self.blocks[b]]
        ).astype(np.int64)

    def block_items(self, b: int) -> np.ndarray:
        """Item ids of block ``b`` in emission order (segment filters applied)."""
        if b in self._cache:
            return self._cache[b]
        cur = self.segment.cursor
        if cur is not None and b < cur[0]:
            return np.zeros(0, dtype=np.int64)
        rows = self.block_rows(b)
        c = self.counts[rows]
        rep_rows = np.repeat(rows, c)
        k = np.arange(rep_rows.size) - np.repeat(np.cumsum(c) - c, c)
        ids = item_ids(rep_rows, k)
        pri = hash64(self.keys[rep_rows], self.seed, self.epoch, k, SALT_ORDER).view(np.int64)
        order = np.lexsort((ids, pri))
        ids, pri = ids[order], pri[order]
        if cur is not None and b == cur[0]:
            keep = (pri > cur[1]) | ((pri == cur[1]) & (ids >= cur[2]))
            ids, pri = ids[keep], pri[keep]
        if self.segment.exclude.size:
            ids = ids[~np.isin(ids, self.segment.exclude)]
        # keep only the last two blocks: consumers walk blocks in order
        if len(self._cache) >= 2:
            self._cache.pop(min(self._cache))
        self._cache[b] = ids
        return ids

    def key_of(self, item_id: int) -> tuple[int, int]:
        """(priority, id) of an item: the θ-independent part of its sort key."""
        row, k = split_ids(np.array([item_id]))
        pri = hash64(self.keys[row], self.seed, self.epoch, k, SALT_ORDER).view(np.int64)
        return int(pri[0]), int(item_id)

    def block_of_index(self, j: int) -> int:
        return int(np.searchsorted(self.starts, j, side="right") - 1)

    def items_at(self, positions: np.ndarray) -> np.ndarray:
        """Item ids at sorted positions of the segment's sequence."""
        out = np.empty(positions.size, dtype=np.int64)
        if not positions.size:
            return out
        blocks = np.searchsorted(self.starts, positions, side="right") - 1
        for b in np.unique(blocks):
            m = blocks == b
            out[m] = self.block_items(int(b))[positions[m] - self.starts[b]]
        return out


def balanced_length(total: int, consumers: int, balance: str | None) -> int:
    """Length of the epoch after balancing so every consumer gets the same number of items."""
    if balance is None or consumers <= 1:
        return total
    if balance == "drop":
        return total - total % consumers
    if balance == "pad":
        return -(-total // consumers) * consumers
    raise ValueError(f"balance must be 'drop', 'pad' or None, got {balance!r}")


def consumer_positions(length: int, consumer: int, consumers: int, start: int = 0) -> np.ndarray:
    """Positions of the sequence dealt to ``consumer`` (round-robin), skipping its first ``start``."""
    return np.arange(consumer + start * consumers, length, consumers, dtype=np.int64)
