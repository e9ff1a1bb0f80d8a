"""The epoch's items in a θ-independent key order, cut into contiguous per-consumer ranges.

Why this shape (docs/design.md, "Where this differs from fixed partitions"; it keeps every guarantee and
lets each consumer touch only its own shards):

* Every copy ``k`` of global row ``r`` is an *item* with id ``r·256 + k``. Its **key** is
  ``(position of its shard in the epoch's shard permutation, priority, id)`` with priority
  ``hash(doc key, seed, epoch, k)``. Keys do not depend on θ: new params add or remove items but
  never reorder the survivors, so "what is left of the epoch" can be written in key space and
  dealt again under any params or topology.
* What is left of an epoch is a list of :class:`Piece` s: key ranges, each with an optional
  floor on ``(priority, id)``. A fresh epoch is one piece. The **sequence** is the pieces' items
  in key order; its length comes from one item total per shard (a cached pool-wide pass), so no
  process enumerates the pool.
* Consumer ``c`` of ``C`` owns the contiguous positions ``[c·L/C, (c+1)·L/C)`` of the (balanced)
  sequence: a run of whole shards, so reads are shard-affine (one reader per shard, whole-shard
  or large-range fetches on object storage). Shares differ by at most one item; balancing
  drops or pads at most ``C − 1`` items at the epoch's tail.
* A consumer emits its range window by window (``window`` consecutive shard positions), each
  window's items sorted by ``(priority, id)``: documents of those shards interleave and a
  document's copies land at independent places. Memory is one window of its own range.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from quadmix_stream.mixing.choices import choose
from quadmix_stream.mixing.hashing import SALT_ORDER, SALT_SHARDS, hash64

COPY_BITS = 8
MAX_COPIES = (1 << COPY_BITS) - 1
LOW = -(1 << 63)  # below every priority and id

Key = tuple[int, int, int]
Floor = tuple[int, int]


def item_ids(rows: np.ndarray, copies: np.ndarray) -> np.ndarray:
    return (np.asarray(rows, dtype=np.int64) << COPY_BITS) | np.asarray(copies, dtype=np.int64)


def split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(ids, dtype=np.int64)
    return ids >> COPY_BITS, ids & MAX_COPIES


def shard_order(n_shards: int, seed: int, epoch: int) -> np.ndarray:
    """Per-epoch permutation of shard indices: ``order[position] = shard``."""
    return np.argsort(
        hash64(np.arange(n_shards, dtype=np.uint64), seed, epoch, SALT_SHARDS), kind="stable"
    )


def shard_copies(
    row0: int,
    keys: np.ndarray,
    counts: np.ndarray,
    seed: int,
    epoch: int,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row in the shard, copy, priority, item id) of each of one shard's items, in (row, copy)
    order.

    ``keys`` and ``counts`` are per row; ``rows``: which rows they are (ascending), when not
    every row of the shard in order (a sparse selection's kept rows).
    """
    c = np.asarray(counts, dtype=np.int64)
    at = np.repeat(np.arange(c.size, dtype=np.int64), c)
    local = at if rows is None else np.asarray(rows, dtype=np.int64)[at]
    k = np.arange(at.size, dtype=np.int64) - np.repeat(np.cumsum(c) - c, c)
    ids = item_ids(local + row0, k)
    pri = hash64(np.asarray(keys)[at], seed, epoch, k, SALT_ORDER).view(np.int64)
    return local, k, pri, ids


def shard_items(
    row0: int,
    keys: np.ndarray,
    counts: np.ndarray,
    seed: int,
    epoch: int,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(priorities, item ids) of one shard's items, sorted by (priority, id)."""
    _, _, pri, ids = shard_copies(row0, keys, counts, seed, epoch, rows)
    o = np.lexsort((ids, pri))
    return pri[o], ids[o]


def start_key(position: int) -> Key:
    return (int(position), LOW, LOW)


@dataclass(frozen=True)
class Piece:
    """Items with ``lo ≤ key < hi`` and, if ``floor`` is set, ``(priority, id) ≥ floor``."""

    lo: Key
    hi: Key
    floor: Floor | None = None

    def to_dict(self) -> dict:
        return {
            "lo": list(self.lo),
            "hi": list(self.hi),
            "floor": None if self.floor is None else list(self.floor),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Piece:
        lo, hi, fl = d["lo"], d["hi"], d.get("floor")
        return cls(
            lo=(int(lo[0]), int(lo[1]), int(lo[2])),
            hi=(int(hi[0]), int(hi[1]), int(hi[2])),
            floor=None if fl is None else (int(fl[0]), int(fl[1])),
        )

    def positions(self) -> range:
        """Shard positions this piece may have items in."""
        last = self.hi[0] if self.hi[1:] != (LOW, LOW) else self.hi[0] - 1
        return range(self.lo[0], last + 1)

    def whole(self, position: int) -> bool:
        """Does the piece hold every item of the shard at ``position``?"""
        return (
            self.floor is None
            and (position > self.lo[0] or (position == self.lo[0] and self.lo[1:] == (LOW, LOW)))
            and position < self.hi[0]
        )

    def mask(self, position: int, pri: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Which of a shard's (sorted) items at ``position`` are in the piece."""
        m = np.ones(pri.size, dtype=bool)
        if position == self.lo[0]:
            m &= _ge(pri, ids, self.lo[1:])
        if position == self.hi[0]:
            m &= ~_ge(pri, ids, self.hi[1:])
        if self.floor is not None:
            m &= _ge(pri, ids, self.floor)
        return m


def _ge(pri: np.ndarray, ids: np.ndarray, bound: Floor) -> np.ndarray:
    return (pri > bound[0]) | ((pri == bound[0]) & (ids >= bound[1]))


def full_epoch(n_shards: int) -> list[Piece]:
    return [Piece(start_key(0), start_key(n_shards))]


def max_floor(a: Floor | None, b: Floor | None) -> Floor | None:
    return b if a is None else a if b is None else max(a, b)


def clip_pieces(pieces: list[Piece], lo: Key, hi: Key, floor: Floor | None = None) -> list[Piece]:
    """The parts of ``pieces`` inside ``[lo, hi)``, with ``floor`` added."""
    out = []
    for p in pieces:
        a, b = max(p.lo, lo), min(p.hi, hi)
        if a < b:
            out.append(Piece(a, b, max_floor(p.floor, floor)))
    return out


def merge_pieces(pieces: list[Piece]) -> list[Piece]:
    """Sorted, with touching pieces of the same floor joined (keeps states small)."""
    out: list[Piece] = []
    for p in sorted(pieces, key=lambda p: p.lo):
        if out and out[-1].hi == p.lo and out[-1].floor == p.floor:
            out[-1] = Piece(out[-1].lo, p.hi, p.floor)
        else:
            out.append(p)
    return out


ItemsFn = Callable[[int], tuple[np.ndarray, np.ndarray]]


class EpochSequence:
    """The items left in one epoch, in key order, described by segments (no item is listed).

    Args:
        pieces: what is left of the epoch (sorted, disjoint).
        order: the epoch's shard permutation (``order[position] = shard``).
        totals: items of each shard in this epoch (index: shard).
        items: shard → its sorted (priorities, item ids); called only for shards a piece cuts.
    """

    def __init__(
        self, pieces: list[Piece], order: np.ndarray, totals: np.ndarray, items: ItemsFn
    ) -> None:
        self.pieces, self.order, self._items_fn = pieces, order, items
        self._items: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        seg_piece, seg_pos, seg_count = [], [], []
        for i, p in enumerate(pieces):
            pos = np.arange(p.positions().start, p.positions().stop, dtype=np.int64)
            cnt = totals[order[pos]].astype(np.int64)
            # only a floored piece cuts every shard; otherwise at most its two ends
            maybe_cut = range(pos.size) if p.floor is not None else {0, pos.size - 1}
            for j in maybe_cut:
                q = int(pos[j])
                if 0 <= j < pos.size and not p.whole(q):  # count its items in the piece
                    pri, ids = self.items(q)
                    cnt[j] = int(p.mask(q, pri, ids).sum())
            seg_piece.append(np.full(pos.size, i, dtype=np.int64))
            seg_pos.append(pos)
            seg_count.append(cnt)
        cat = (lambda a: np.concatenate(a)) if pieces else (lambda a: np.zeros(0, np.int64))
        self.seg_piece, self.seg_pos, self.seg_count = cat(seg_piece), cat(seg_pos), cat(seg_count)
        self.starts = np.concatenate([[0], np.cumsum(self.seg_count)]).astype(np.int64)
        self.total = int(self.starts[-1])
        self.end_key = start_key(order.size)

    def items(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """Sorted (priorities, ids) of every item of the shard at ``position`` (a few cached)."""
        hit = self._items.get(position)
        if hit is None:
            hit = self._items[position] = self._items_fn(int(self.order[position]))
            if len(self._items) > 4:
                self._items.popitem(last=False)
        return hit

    def segment_items(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Sorted (priorities, ids) of segment ``j``'s items."""
        q = int(self.seg_pos[j])
        pri, ids = self.items(q)
        p = self.pieces[int(self.seg_piece[j])]
        if p.whole(q):
            return pri, ids
        m = p.mask(q, pri, ids)
        return pri[m], ids[m]

    def key_at(self, position: int) -> Key:
        """Key of the item at ``position`` (``end_key`` at or past the end)."""
        if position >= self.total:
            return self.end_key
        j = int(np.searchsorted(self.starts, position, side="right") - 1)
        pri, ids = self.segment_items(j)
        k = position - int(self.starts[j])
        return (int(self.seg_pos[j]), int(pri[k]), int(ids[k]))

    def windows(self, a: int, b: int, window: int) -> list[list[tuple[int, int, int]]]:
        """Positions ``[a, b)`` grouped into windows: lists of (segment, first, end) offsets."""
        if a >= b:
            return []
        j0 = int(np.searchsorted(self.starts, a, side="right") - 1)
        j1 = int(np.searchsorted(self.starts, b, side="left"))
        out: list[list[tuple[int, int, int]]] = []
        last = None
        for j in range(j0, j1):
            s, e = int(self.starts[j]), int(self.starts[j + 1])
            lo, hi = max(a, s) - s, min(b, e) - s
            if lo >= hi:
                continue
            w = int(self.seg_pos[j]) // window
            if w != last:
                out.append([])
                last = w
            out[-1].append((j, lo, hi))
        return out

    @staticmethod
    def window_size(win: list[tuple[int, int, int]]) -> int:
        return sum(hi - lo for _, lo, hi in win)

    def window_span(self, win: list[tuple[int, int, int]]) -> tuple[int, int]:
        """First and end sequence positions of a window."""
        j, lo, _ = win[0]
        jl, _, hil = win[-1]
        return int(self.starts[j]) + lo, int(self.starts[jl]) + hil

    def window_items(self, win: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """A window's (priorities, ids) in emission order: sorted by (priority, id)."""
        pri, ids = [], []
        for j, lo, hi in win:
            p, i = self.segment_items(j)
            pri.append(p[lo:hi])
            ids.append(i[lo:hi])
        pri_a, ids_a = np.concatenate(pri), np.concatenate(ids)
        o = np.lexsort((ids_a, pri_a))
        return pri_a[o], ids_a[o]


def _keep(total: int, consumers: int) -> int:
    """No balancing: every item exactly once (shares may differ by one)."""
    return total


def _drop(total: int, consumers: int) -> int:
    """Drop at most ``consumers − 1`` items at the tail."""
    return total - total % consumers


def _pad(total: int, consumers: int) -> int:
    """Pad with at most ``consumers − 1`` items of the next epoch's order."""
    return -(-total // consumers) * consumers


#: how an epoch's tail is balanced across consumers, by name (``None``: not balanced)
BALANCE: dict[str | None, Callable[[int, int], int]] = {"drop": _drop, "pad": _pad, None: _keep}
BALANCES = tuple(BALANCE)


def get_balance(balance: str | None) -> Callable[[int, int], int]:
    """The balancing function ``(total, consumers) → length`` named ``balance``."""
    return choose(BALANCE, balance, "balance")


def balanced_length(total: int, consumers: int, balance: str | None) -> int:
    """Length of the epoch after balancing so every consumer gets the same number of items."""
    if consumers <= 1:
        return total
    return get_balance(balance)(total, consumers)


def consumer_range(length: int, consumer: int, consumers: int) -> tuple[int, int]:
    """Contiguous positions ``[a, b)`` of the sequence dealt to ``consumer``."""
    return consumer * length // consumers, (consumer + 1) * length // consumers
