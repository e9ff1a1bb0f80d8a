"""Loader state: per-consumer snapshots, the gathered global state, and re-dealing it.

A consumer is one (rank, DataLoader worker) pair; there are ``consumers = world × workers`` of
them. The state of the stream is tiny and independent of dataset size:

* ``segments``: per epoch, what of it remains (a cursor in θ-independent key space plus the ids of
  the few items already consumed past the cursor);
* ``progress``: per consumer, ``[epoch, items consumed]`` of its round-robin share;
* the params, seed, consumer count and balance policy the shares were dealt under.

Same topology and params → each consumer skips exactly its consumed items (exact resume). Any
other topology or params → :func:`rebase` turns "who consumed what" into a new segment (cursor +
exclusions) and deals the remainder afresh (elastic resume, resume with new params).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from quadmix_stream.order import EpochPlan, Segment, balanced_length, split_ids

STATE_MARK = "quadmix_state"
STATE_VERSION = 1


class StateError(ValueError):
    """A loader state that cannot be used with this dataset / configuration."""


def is_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get(STATE_MARK) == STATE_VERSION


def find_states(obj: Any) -> list[dict]:
    """Every quadmix state nested anywhere in ``obj`` (e.g. a StatefulDataLoader state dict)."""
    found: list[dict] = []
    if is_state(obj):
        found.append(obj)
    elif isinstance(obj, Mapping):
        for v in obj.values():
            found += find_states(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            found += find_states(v)
    return found


_SHARED = (
    "dataset",
    "seed",
    "params_fingerprint",
    "consumers",
    "balance",
    "infinite",
    "block_shards",
)


def merge_states(states: Iterable[Mapping]) -> dict:
    """Combine consumer snapshots (from all ranks and workers) into one global state.

    Raises:
        StateError: if the snapshots disagree on the stream they describe, or a consumer is missing.
    """
    states = [s for s in states if is_state(s)]
    if not states:
        raise StateError("no quadmix-stream loader state found")
    out = copy.deepcopy(dict(states[0]))
    out.pop("consumer", None)
    progress: dict[str, list[int]] = {}
    segments: dict[str, dict] = {}
    for s in states:
        for k in _SHARED:
            if s.get(k) != out.get(k):
                raise StateError(
                    f"cannot merge loader states: field {k!r} differs ({s.get(k)!r} vs {out.get(k)!r})"
                )
        for c, p in s["progress"].items():
            if c in progress and progress[c] != list(p):
                # the same consumer seen twice (e.g. main-process copy): keep the furthest
                progress[c] = max(progress[c], list(p))
            else:
                progress[c] = list(p)
        for e, seg in s["segments"].items():
            segments.setdefault(e, seg)
    out["progress"] = progress
    out["segments"] = segments
    out["epoch"] = min(s["epoch"] for s in states)
    return out


def check_complete(state: Mapping) -> None:
    missing = [c for c in range(state["consumers"]) if str(c) not in state["progress"]]
    if missing:
        raise StateError(
            f"loader state has progress for {len(state['progress'])} of {state['consumers']} consumers "
            f"(missing {missing[:8]}{'…' if len(missing) > 8 else ''}); gather every rank's and worker's "
            "state with quadmix_stream.gather_state() before saving it"
        )


PlanFactory = Callable[[int, Segment], EpochPlan]


def consumed_positions(state: Mapping, epoch: int, length: int) -> np.ndarray:
    """Sorted positions of epoch ``epoch``'s sequence consumed by the consumers of ``state``."""
    n_cons = int(state["consumers"])
    parts = []
    for c in range(n_cons):
        pe, n = state["progress"][str(c)]
        share = len(range(c, length, n_cons))
        n_e = share if pe > epoch else (min(n, share) if pe == epoch else 0)
        parts.append(c + n_cons * np.arange(n_e, dtype=np.int64))
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def rebase(state: Mapping, old_plan: PlanFactory) -> tuple[int, dict[str, dict]]:
    """Turn a complete global state into (first epoch, remaining segments) with no dealing.

    ``old_plan(epoch, segment)`` builds the epoch's plan under the *state's* params. The result's
    segments contain exactly the items nobody consumed (in θ-independent key space), so they can be
    dealt to any number of consumers, under any params.
    """
    check_complete(state)
    epochs = [int(p[0]) for p in state["progress"].values()]
    lo, hi = min(epochs), max(epochs)
    segs = {int(e): Segment.from_dict(s) for e, s in state["segments"].items() if int(e) >= lo}
    out: dict[str, dict] = {str(e): s.to_dict() for e, s in segs.items() if e > hi}
    first = None
    for e in range(lo, hi + 1):
        plan = old_plan(e, segs.get(e, Segment()))
        length = (
            plan.total
            if state["infinite"]
            else balanced_length(plan.total, int(state["consumers"]), state["balance"])
        )
        used = consumed_positions(state, e, length)
        real = min(length, plan.total)  # pad items (≥ total) are extras from the next epoch
        mask = np.zeros(real, dtype=bool)
        mask[used[used < real]] = True
        free = np.flatnonzero(~mask)
        if free.size == 0:  # epoch done: a cursor past the last block
            out[str(e)] = Segment(cursor=(len(plan.blocks), 0, 0)).to_dict()
            continue
        first = e if first is None else first
        j = int(free[0])
        b = plan.block_of_index(j)
        pri, item = plan.key_of(int(plan.items_at(np.array([j]))[0]))
        cursor = (b, pri, item)
        after = used[(used > j) & (used < real)]
        excl = [plan.items_at(after)]
        old = segs.get(e, Segment()).exclude
        if old.size:  # earlier exclusions still ahead of the new cursor stay excluded
            rows = split_ids(old)[0]
            blocks = plan.block_index_of_rows(rows)
            keys = [(int(bb), *plan.key_of(int(x))) for bb, x in zip(blocks, old, strict=True)]
            excl.append(
                np.array([x for x, k in zip(old, keys, strict=True) if k >= cursor], dtype=np.int64)
            )
        out[str(e)] = Segment(cursor=cursor, exclude=np.unique(np.concatenate(excl))).to_dict()
    return (hi + 1 if first is None else first), out
