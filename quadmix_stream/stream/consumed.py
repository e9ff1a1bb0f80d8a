"""Copies consumed before a switch, counted against the params in force after it.

A switch of params mid-epoch re-deals what is left of the epoch (:mod:`.order`): the items a
consumer had passed stay consumed, the rest follows the new params. By default a document whose
count the new params lower keeps the copies it already had *and* the copies of the new count
that lie above the cut, so over the epoch it may get up to max(old, new) copies.

With ``count_consumed_copies`` the copies a document got before each switch count against the
next params' counts: after the switch it gets at most ``max(0, c_new − consumed)`` more, so no
document exceeds what the params in force allow (except by copies it had before the switch,
which cannot be taken back). The copies it loses are its last ones in copy order.

This is a pure function of the switch history of one epoch: the params of every layer (the
span between two switches) and the pieces left at each switch. A document's consumed copies
are the items that were in the sequence of a layer and are gone from the pieces left at its end.
Only shards that a switch cut part-way need it: a shard left whole by every switch had nothing
consumed, and a shard left out had everything consumed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from quadmix_stream.stream.order import Piece, shard_copies


def inside(pieces: Sequence[Piece], position: int, pri: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Which items of the shard at ``position`` lie in any of ``pieces``."""
    m = np.zeros(pri.size, dtype=bool)
    for p in pieces:
        if position in p.positions():
            m |= p.mask(position, pri, ids)
    return m


def untouched(pieces: Sequence[Piece], position: int) -> bool:
    """Whether ``pieces`` hold every item of the shard at ``position`` (nothing of it consumed)."""
    return any(p.whole(position) for p in pieces)


def capped_counts(
    position: int,
    keys: np.ndarray,
    row0: int,
    seed: int,
    epoch: int,
    counts: Sequence[np.ndarray],
    cuts: Sequence[Sequence[Piece]],
) -> np.ndarray:
    """Per row of one shard, the copies the last layer may deal (int64).

    Args:
        position: the shard's position in the epoch's shard order.
        keys: its documents' keys; ``row0`` its first global row.
        counts: realised copies of each row under the params of layer 0 … n (n + 1 arrays).
        cuts: the pieces left at the end of layer 0 … n − 1 (n lists; each within the last).

    The last layer's items of a row are its copies ``k < result`` inside ``cuts[-1]``: at most
    ``max(0, counts[n] − consumed)`` of them, where ``consumed`` counts the copies dealt in an
    earlier layer and gone by its end.
    """
    c = [np.asarray(x, dtype=np.int64) for x in counts]
    if len(c) != len(cuts) + 1:
        raise ValueError(f"{len(c)} layers of counts for {len(cuts)} switches")
    most = np.max(np.stack(c), axis=0)
    n = most.size
    # every copy any layer deals, in (row, copy) order, with the keys the stream gives them
    rows, k, pri, ids = shard_copies(row0, keys, most, seed, epoch)
    first = np.cumsum(most) - most

    dealt = c[0]
    left = np.ones(rows.size, dtype=bool)  # layer 0 is the whole epoch
    consumed = np.zeros(n, dtype=np.int64)
    for j, cut in enumerate(cuts):
        now = inside(cut, position, pri, ids)
        gone = (k < dealt[rows]) & left & ~now
        consumed += np.bincount(rows[gone], minlength=n)
        left = now
        new = c[j + 1]
        allowed = np.maximum(new - consumed, 0)
        avail = (k < new[rows]) & left
        # 0-based place of each available copy among its row's available copies
        run = np.cumsum(avail)
        before = np.concatenate([[0], run])[first]
        place = run - 1 - before[rows]
        total = np.bincount(rows[avail], minlength=n)
        dealt = new.copy()
        over = total > allowed
        dealt[over & (allowed == 0)] = 0
        # the allowed-th available copy is the last one dealt
        last = avail & over[rows] & (allowed[rows] > 0) & (place == allowed[rows] - 1)
        dealt[rows[last]] = k[last] + 1
    return dealt
