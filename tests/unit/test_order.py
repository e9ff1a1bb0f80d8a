"""order.py: item ids, the per-epoch shard permutation, θ-independent item keys, pieces (what is
left of an epoch), the epoch sequence and its windows, balancing and per-consumer ranges.

The sequence is checked against a brute-force reference that lists every item's key
``(position, priority, id)`` from the rows and copies directly, with priorities from
:func:`hash64` of ``(doc key, seed, epoch, copy)``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quadmix_stream.errors import UserError
from quadmix_stream.mixing.hashing import SALT_ORDER, hash64
from quadmix_stream.stream.order import (
    BALANCES,
    LOW,
    MAX_COPIES,
    EpochSequence,
    Piece,
    balanced_length,
    clip_pieces,
    consumer_range,
    full_epoch,
    get_balance,
    item_ids,
    max_floor,
    merge_pieces,
    shard_items,
    shard_order,
    split_ids,
    start_key,
)

pytestmark = pytest.mark.core


# ---------------------------------------------------------------- a brute-force reference
class Pool:
    """A small synthetic pool: per shard, each row's document key and realised copies."""

    def __init__(self, counts: list[list[int]], seed: int, epoch: int) -> None:
        self.counts = [np.asarray(c, dtype=np.int64) for c in counts]
        self.seed, self.epoch = seed, epoch
        self.row0 = np.concatenate([[0], np.cumsum([c.size for c in self.counts])]).astype(int)
        # distinct, arbitrary 64-bit document keys
        self.keys = [
            (np.arange(c.size, dtype=np.uint64) + np.uint64(self.row0[s])) * np.uint64(2654435761)
            + np.uint64(12345)
            for s, c in enumerate(self.counts)
        ]
        self.order = shard_order(len(counts), seed, epoch)
        self.totals = np.array([int(c.sum()) for c in self.counts], dtype=np.int64)
        self.calls: list[int] = []

    def priority(self, shard: int, row: int, copy: int) -> int:
        key = np.array([self.keys[shard][row]], dtype=np.uint64)
        h = hash64(key, self.seed, self.epoch, np.array([copy]), SALT_ORDER)
        return int(h.view(np.int64)[0])

    def all_keys(self) -> list[tuple[int, int, int]]:
        """Every item's key, in key order (the whole epoch)."""
        out = []
        for pos, shard in enumerate(self.order.tolist()):
            for row, n in enumerate(self.counts[shard].tolist()):
                for k in range(n):
                    item = (int(self.row0[shard]) + row) * 256 + k
                    out.append((pos, self.priority(shard, row, k), item))
        return sorted(out)

    def items(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(shard)
        return shard_items(
            int(self.row0[shard]), self.keys[shard], self.counts[shard], self.seed, self.epoch
        )

    def sequence(self, pieces: list[Piece]) -> EpochSequence:
        return EpochSequence(pieces, self.order, self.totals, self.items)


def in_pieces(key: tuple[int, int, int], pieces: list[Piece]) -> bool:
    return any(p.lo <= key < p.hi and (p.floor is None or key[1:] >= p.floor) for p in pieces)


pools = st.builds(
    Pool,
    counts=st.lists(st.lists(st.integers(0, 3), min_size=0, max_size=6), min_size=1, max_size=7),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 5),
)


# ---------------------------------------------------------------- item ids
def test_item_ids_pack_row_and_copy():
    ids = item_ids(np.array([0, 1, 5, 7]), np.array([0, 3, 255, 1]))
    assert ids.dtype == np.int64
    assert ids.tolist() == [0, 259, 5 * 256 + 255, 7 * 256 + 1]
    rows, copies = split_ids(np.array([0, 259, 1535, 1793]))
    assert rows.tolist() == [0, 1, 5, 7]
    assert copies.tolist() == [0, 3, 255, 1]
    assert MAX_COPIES == 255


@settings(max_examples=50)
@given(
    st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, MAX_COPIES)), min_size=1, max_size=50)
)
def test_item_ids_round_trip(pairs):
    rows = np.array([r for r, _ in pairs])
    copies = np.array([c for _, c in pairs])
    ids = item_ids(rows, copies)
    assert ids.tolist() == [r * 256 + c for r, c in pairs]
    back_rows, back_copies = split_ids(ids)
    assert back_rows.tolist() == rows.tolist()
    assert back_copies.tolist() == copies.tolist()


# ---------------------------------------------------------------- shard permutation
@settings(max_examples=40)
@given(n=st.integers(0, 200), seed=st.integers(0, 2**63), epoch=st.integers(0, 1000))
def test_shard_order_is_a_deterministic_permutation(n, seed, epoch):
    order = shard_order(n, seed, epoch)
    assert sorted(order.tolist()) == list(range(n))
    assert order.tolist() == shard_order(n, seed, epoch).tolist()


def test_shard_order_changes_with_seed_and_epoch():
    base = shard_order(64, 3, 0).tolist()
    assert base != list(range(64))  # shuffled, not the identity
    assert shard_order(64, 3, 1).tolist() != base
    assert shard_order(64, 4, 0).tolist() != base


# ---------------------------------------------------------------- one shard's items
def test_shard_items_lists_every_copy_sorted_by_priority_then_id():
    keys = np.array([11, 22, 33, 44], dtype=np.uint64)
    counts = np.array([2, 0, 1, 3])
    pri, ids = shard_items(10, keys, counts, seed=5, epoch=2)
    rows, copies = split_ids(ids)
    assert sorted(zip(rows.tolist(), copies.tolist(), strict=True)) == [
        (10, 0),
        (10, 1),
        (12, 0),
        (13, 0),
        (13, 1),
        (13, 2),
    ]
    assert list(zip(pri.tolist(), ids.tolist(), strict=True)) == sorted(
        zip(pri.tolist(), ids.tolist(), strict=True)
    )
    for p, r, c in zip(pri.tolist(), rows.tolist(), copies.tolist(), strict=True):
        want = hash64(keys[r - 10 : r - 9], 5, 2, np.array([c]), SALT_ORDER).view(np.int64)[0]
        assert p == int(want)


def test_shard_items_of_an_empty_selection():
    pri, ids = shard_items(0, np.array([1, 2], dtype=np.uint64), np.array([0, 0]), 1, 1)
    assert pri.size == 0 and ids.size == 0


@settings(max_examples=40)
@given(
    rows=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=20),
    seed=st.integers(0, 1000),
)
def test_shard_items_keys_do_not_depend_on_theta(rows, seed):
    """Other params add or remove items but never reorder the items both keep."""
    keys = np.arange(len(rows), dtype=np.uint64) * np.uint64(977) + np.uint64(5)
    small = np.array([min(a, b) for a, b in rows])
    large = np.array([max(a, b) for a, b in rows])
    ps, is_ = shard_items(0, keys, small, seed, 0)
    pl, il = shard_items(0, keys, large, seed, 0)
    kept = set(is_.tolist())
    assert [i for i in il.tolist() if i in kept] == is_.tolist()
    prio_large = dict(zip(il.tolist(), pl.tolist(), strict=True))
    assert [prio_large[i] for i in is_.tolist()] == ps.tolist()


# ---------------------------------------------------------------- pieces
def test_piece_dict_round_trip_through_json_lists():
    p = Piece((1, -5, 7), (3, LOW, LOW), floor=(10, 20))
    d = p.to_dict()
    assert d == {"lo": [1, -5, 7], "hi": [3, LOW, LOW], "floor": [10, 20]}
    assert Piece.from_dict(d) == p
    q = Piece(start_key(0), start_key(4))
    assert q.to_dict()["floor"] is None
    assert Piece.from_dict({"lo": [0, LOW, LOW], "hi": [4, LOW, LOW]}) == q  # floor optional


def test_piece_positions():
    assert Piece(start_key(2), start_key(5)).positions() == range(2, 5)
    assert Piece((2, 10, 3), (5, 7, 1)).positions() == range(2, 6)  # cuts into position 5
    assert Piece((2, 10, 3), (2, 11, 0)).positions() == range(2, 3)
    assert full_epoch(6) == [Piece((0, LOW, LOW), (6, LOW, LOW))]


def test_piece_whole():
    p = Piece(start_key(2), start_key(5))
    assert [p.whole(q) for q in p.positions()] == [True, True, True]
    assert not p.whole(5)
    cut = Piece((2, 10, 3), (5, 7, 1))
    assert [cut.whole(q) for q in cut.positions()] == [False, True, True, False]
    floored = Piece(start_key(2), start_key(5), floor=(LOW, LOW))
    assert not any(floored.whole(q) for q in floored.positions())


def test_piece_whole_is_false_before_the_piece():
    p = Piece(start_key(2), start_key(5))
    assert [p.whole(q) for q in range(7)] == [False, False, True, True, True, False, False]


def test_piece_mask():
    pri = np.array([-3, 0, 0, 5, 9])
    ids = np.array([4, 1, 2, 0, 3])
    p = Piece((2, 0, 2), (4, LOW, LOW))
    assert p.mask(2, pri, ids).tolist() == [False, False, True, True, True]  # ≥ (0, 2)
    assert p.mask(3, pri, ids).tolist() == [True] * 5
    q = Piece(start_key(0), (2, 5, 0))
    assert q.mask(2, pri, ids).tolist() == [True, True, True, False, False]  # < (5, 0)
    f = Piece(start_key(0), start_key(9), floor=(0, 2))
    assert f.mask(7, pri, ids).tolist() == [False, False, True, True, True]
    both = Piece((2, -3, 5), (2, 9, 3), floor=(0, 0))
    assert both.mask(2, pri, ids).tolist() == [False, True, True, True, False]


def test_max_floor():
    assert max_floor(None, None) is None
    assert max_floor((1, 2), None) == (1, 2)
    assert max_floor(None, (1, 2)) == (1, 2)
    assert max_floor((1, 9), (2, 0)) == (2, 0)
    assert max_floor((3, 1), (3, 0)) == (3, 1)


def test_clip_pieces():
    pieces = [Piece(start_key(0), start_key(3)), Piece(start_key(5), start_key(8), (1, 1))]
    assert clip_pieces(pieces, (1, 4, 4), (6, 0, 0)) == [
        Piece((1, 4, 4), start_key(3)),
        Piece(start_key(5), (6, 0, 0), (1, 1)),
    ]
    assert clip_pieces(pieces, start_key(3), start_key(5)) == []  # the gap between them
    assert clip_pieces(pieces, start_key(0), start_key(2), floor=(0, 0)) == [
        Piece(start_key(0), start_key(2), (0, 0))
    ]
    assert clip_pieces(pieces, start_key(6), start_key(9), floor=(0, 5)) == [
        Piece(start_key(6), start_key(8), (1, 1))  # the higher floor wins
    ]


def test_merge_pieces_sorts_and_joins_touching_pieces_of_one_floor():
    a = Piece(start_key(0), start_key(2))
    b = Piece(start_key(2), (3, 5, 5))
    c = Piece((3, 5, 5), start_key(4), (1, 1))
    d = Piece(start_key(6), start_key(7))
    assert merge_pieces([d, c, b, a]) == [Piece(start_key(0), (3, 5, 5)), c, d]
    assert merge_pieces([]) == []


# ---------------------------------------------------------------- the epoch sequence
@settings(max_examples=60, deadline=None)
@given(pool=pools, window=st.integers(1, 4))
def test_full_epoch_sequence_matches_brute_force(pool, window):
    ref = pool.all_keys()
    seq = pool.sequence(full_epoch(len(pool.counts)))
    assert pool.calls == []  # no piece cuts a shard: no shard's items are read to count
    assert seq.total == len(ref)
    assert [seq.key_at(i) for i in range(seq.total)] == ref
    assert seq.key_at(seq.total) == seq.end_key == start_key(len(pool.counts))
    wins = seq.windows(0, seq.total, window)
    assert sum(seq.window_size(w) for w in wins) == seq.total
    for w in wins:
        a, b = seq.window_span(w)
        span = ref[a:b]
        assert len({q // window for q, _, _ in span}) == 1  # one window of shard positions
        pri, ids = seq.window_items(w)
        assert list(zip(pri.tolist(), ids.tolist(), strict=True)) == sorted(
            (p, i) for _, p, i in span
        )


@settings(max_examples=60, deadline=None)
@given(pool=pools, window=st.integers(1, 3), consumers=st.integers(1, 5))
def test_every_row_copy_exactly_once_over_consumers(pool, window, consumers):
    seq = pool.sequence(full_epoch(len(pool.counts)))
    length = balanced_length(seq.total, consumers, None)
    assert length == seq.total
    emitted = []
    for c in range(consumers):
        a, b = consumer_range(length, c, consumers)
        for w in seq.windows(a, b, window):
            emitted += seq.window_items(w)[1].tolist()
    rows, copies = split_ids(np.array(emitted, dtype=np.int64))
    want = Counter(
        (int(pool.row0[s]) + r, k)
        for s, cs in enumerate(pool.counts)
        for r, n in enumerate(cs.tolist())
        for k in range(n)
    )
    assert Counter(zip(rows.tolist(), copies.tolist(), strict=True)) == want
    assert len(emitted) == sum(want.values())


@settings(max_examples=50, deadline=None)
@given(pool=pools, data=st.data())
def test_sequence_of_pieces_matches_brute_force(pool, data):
    """Any sorted, disjoint pieces (cut anywhere, some floored) give exactly their items."""
    ref = pool.all_keys()
    n = len(pool.counts)
    # piece bounds: real item keys and whole-shard starts, sorted and distinct
    bounds = sorted(set(ref) | {start_key(q) for q in range(n + 1)})
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(bounds) - 1), min_size=2, max_size=6))))
    pieces = []
    for lo, hi in zip(cuts[::2], cuts[1::2], strict=False):
        floor = None
        if ref and data.draw(st.booleans()):
            _, p, i = ref[data.draw(st.integers(0, len(ref) - 1))]
            floor = (p, i)
        pieces.append(Piece(bounds[lo], bounds[hi], floor))
    want = [k for k in ref if in_pieces(k, pieces)]
    seq = pool.sequence(pieces)
    assert seq.total == len(want)
    assert [seq.key_at(i) for i in range(seq.total)] == want
    a = data.draw(st.integers(0, seq.total))
    b = data.draw(st.integers(a, seq.total))
    got = []
    for w in seq.windows(a, b, 2):
        for j, lo, hi in w:
            pri, ids = seq.segment_items(j)
            got += [
                (int(seq.seg_pos[j]), p, i) for p, i in zip(pri[lo:hi], ids[lo:hi], strict=True)
            ]
    assert got == want[a:b]


@settings(max_examples=40, deadline=None)
@given(pool=pools, data=st.data())
def test_resuming_from_a_key_gives_the_rest_of_the_sequence(pool, data):
    """What is left after ``m`` items, written as pieces, is the sequence from ``m`` on."""
    seq = pool.sequence(full_epoch(len(pool.counts)))
    ref = [seq.key_at(i) for i in range(seq.total)]
    m = data.draw(st.integers(0, seq.total))
    rest = pool.sequence(clip_pieces(seq.pieces, seq.key_at(m), seq.end_key))
    assert [rest.key_at(i) for i in range(rest.total)] == ref[m:]
    head = pool.sequence(clip_pieces(seq.pieces, start_key(0), seq.key_at(m)))
    assert [head.key_at(i) for i in range(head.total)] == ref[:m]


def test_sequence_without_pieces_is_empty():
    pool = Pool([[1, 2], [3]], seed=1, epoch=0)
    seq = pool.sequence([])
    assert seq.total == 0
    assert seq.key_at(0) == start_key(2)
    assert seq.windows(0, 0, 1) == []


def test_sequence_reads_only_the_shards_a_piece_cuts():
    pool = Pool([[1, 1]] * 6, seed=2, epoch=1)
    ref = pool.all_keys()
    cut_lo, cut_hi = ref[3], ref[9]  # inside positions 1 and 4
    assert (cut_lo[0], cut_hi[0]) == (1, 4)
    seq = pool.sequence([Piece(cut_lo, cut_hi)])
    assert sorted(set(pool.calls)) == sorted({int(pool.order[1]), int(pool.order[4])})
    assert seq.total == 6


# ---------------------------------------------------------------- balancing and ranges
def test_balanced_length_by_name():
    assert BALANCES == ("drop", "pad", None)
    assert balanced_length(10, 4, "drop") == 8
    assert balanced_length(10, 4, "pad") == 12
    assert balanced_length(10, 4, None) == 10
    assert balanced_length(12, 4, "drop") == balanced_length(12, 4, "pad") == 12
    assert balanced_length(3, 4, "drop") == 0
    assert balanced_length(0, 4, "pad") == 0
    assert balanced_length(10, 1, "drop") == 10  # one consumer: nothing to balance


def test_unknown_balance_is_refused_with_the_valid_names():
    with pytest.raises(UserError, match=r"balance must be one of \('drop', 'pad', None\), got 'x'"):
        get_balance("x")
    with pytest.raises(UserError, match="balance must be one of"):
        balanced_length(10, 3, "even")
    with pytest.raises(UserError, match="got \\['drop'\\]"):
        get_balance(["drop"])  # unhashable: refused like an unknown name


@given(total=st.integers(0, 10_000), consumers=st.integers(1, 64))
def test_balancing_changes_at_most_consumers_minus_one_items(total, consumers):
    drop = balanced_length(total, consumers, "drop")
    pad = balanced_length(total, consumers, "pad")
    assert drop % consumers == 0 and pad % consumers == 0
    assert 0 <= total - drop < consumers
    assert 0 <= pad - total < consumers


@given(length=st.integers(0, 10_000), consumers=st.integers(1, 64))
def test_consumer_ranges_partition_the_sequence(length, consumers):
    ranges = [consumer_range(length, c, consumers) for c in range(consumers)]
    assert ranges[0][0] == 0 and ranges[-1][1] == length
    for (_, b), (a, _) in zip(ranges, ranges[1:], strict=False):
        assert b == a  # contiguous, no gap, no overlap
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_consumer_range_concrete():
    assert [consumer_range(10, c, 4) for c in range(4)] == [(0, 2), (2, 5), (5, 7), (7, 10)]
