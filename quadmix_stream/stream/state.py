"""Loader state: per-consumer snapshots, the gathered global state, and re-dealing it.

A consumer is one (rank, DataLoader worker) pair; there are ``consumers = world × workers`` of
them. The state is tiny and independent of the pool's size:

* ``pieces``: per epoch that was re-dealt, what of it was left then (key ranges, see
  :mod:`quadmix_stream.stream.order`); an epoch not listed is whole;
* ``progress``: per consumer, ``[epoch, items consumed]`` of its own range;
* the params, seed, consumer count, balance policy and window the ranges were dealt under;
* ``history`` (only with ``count_consumed_copies``): per epoch, its earlier switches of params,
  each the params in force until it and the pieces left at it (:mod:`.consumed`). It grows by
  one entry per switch within an epoch and is dropped with the epoch.

Same topology, params and window → each consumer skips exactly its consumed items (exact resume).
Anything else → :func:`rebase` turns "who consumed what" into the pieces still left and the
remainder is dealt afresh (elastic resume, resume with new params). Each consumer leaves at most
two pieces (the rest of its current window above its cursor, and the rest of its range), so the
state stays O(consumers) however far consumers drifted apart.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from quadmix_stream.errors import UserError
from quadmix_stream.stream.order import (
    EpochSequence,
    Piece,
    balanced_length,
    clip_pieces,
    consumer_range,
    merge_pieces,
)

STATE_MARK = "quadmix_state"
STATE_VERSION = 2


class StateError(UserError):
    """A loader state that cannot be used with this dataset / configuration."""


def is_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get(STATE_MARK) == STATE_VERSION


def find_states(obj: Any) -> list[dict]:
    """Every quadmix state nested anywhere in ``obj`` (e.g. a StatefulDataLoader state dict)."""
    found: list[dict] = []
    if isinstance(obj, Mapping) and STATE_MARK in obj:
        if obj.get(STATE_MARK) != STATE_VERSION:
            raise StateError(
                f"loader state version {obj.get(STATE_MARK)!r}; this quadmix-stream reads version "
                f"{STATE_VERSION} (states of older versions cannot be resumed: start the epoch anew)"
            )
        found.append(obj)  # type: ignore[arg-type]
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
    "rank_config",
    "consumers",
    "balance",
    "infinite",
    "block_shards",
    "count_consumed",
)
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "dataset": str,
    "seed": int,
    "params": dict,
    "params_fingerprint": str,
    "rank_config": str,
    "consumers": int,
    "balance": (str, type(None)),
    "infinite": bool,
    "block_shards": int,
    "epoch": int,
    "pieces": dict,
    "progress": dict,
}


def validate_state(st: Mapping) -> None:
    """Check a state's structure; a hand-edited or damaged state is a :class:`StateError`."""
    for k, t in _FIELDS.items():
        if k not in st:
            raise StateError(f"loader state: field {k!r} is missing")
        if not isinstance(st[k], t) or (t is int and isinstance(st[k], bool)):
            raise StateError(
                f"loader state: field {k!r} has the wrong type ({type(st[k]).__name__})"
            )
    if st["consumers"] < 1 or st["block_shards"] < 1 or st["epoch"] < 0:
        raise StateError("loader state: 'consumers', 'block_shards' must be ≥ 1 and 'epoch' ≥ 0")
    for c, p in st["progress"].items():
        ok = (
            str(c).isdigit()
            and int(c) < st["consumers"]
            and isinstance(p, list | tuple)
            and len(p) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in p)
        )
        if not ok:
            raise StateError(
                f"loader state: field 'progress' entry {c!r}: {p!r} is not [epoch ≥ 0, items ≥ 0] "
                f"of a consumer below {st['consumers']}"
            )
    for e, pieces in st["pieces"].items():
        try:
            if int(e) < 0 or not isinstance(pieces, list):
                raise ValueError
            for p in pieces:
                Piece.from_dict(p)
        except (ValueError, TypeError, KeyError, IndexError):
            raise StateError(f"loader state: field 'pieces' of epoch {e!r} is malformed") from None
    if not isinstance(st.get("count_consumed", False), bool):
        raise StateError("loader state: field 'count_consumed' has the wrong type")
    try:
        switches_of(st)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise StateError("loader state: field 'history' is malformed") from None


def merge_states(states: Iterable[Mapping]) -> dict:
    """Combine consumer snapshots (from all ranks and workers) into one global state.

    Raises:
        StateError: if the snapshots disagree on the stream they describe.
    """
    states = [s for s in states if is_state(s)]
    if not states:
        raise StateError("no quadmix-stream loader state found")
    for s in states:
        validate_state(s)
    out = copy.deepcopy(dict(states[0]))
    out.pop("consumer", None)
    progress: dict[str, list[int]] = {}
    pieces: dict[str, list] = {}
    history: dict[str, list] = {}
    for s in states:
        for k in _SHARED:
            if s.get(k) != out.get(k):
                raise StateError(
                    f"cannot merge loader states: field {k!r} differs ({s.get(k)!r} vs {out.get(k)!r})"
                )
        for c, p in s["progress"].items():
            # the same consumer seen twice (e.g. the main process's copy): keep the furthest
            progress[c] = max(progress.get(c, list(p)), list(p))
        for e, ps in s["pieces"].items():
            pieces.setdefault(e, ps)
        for e, sw in (s.get("history") or {}).items():
            history.setdefault(e, sw)
    out["progress"] = progress
    out["pieces"] = pieces
    if history:
        out["history"] = history
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


SequenceFactory = Callable[[int, list[Piece] | None], EpochSequence]


def consumed_in(state: Mapping, consumer: int, epoch: int, share: int) -> int:
    """Items of ``epoch`` that ``consumer`` had consumed, out of its ``share``."""
    pe, n = state["progress"][str(consumer)]
    if pe == epoch:
        check_progress(consumer, epoch, n, share)
    return share if pe > epoch else (n if pe == epoch else 0)


def check_progress(consumer: int, epoch: int, consumed: int, share: int) -> None:
    """A state's claim that ``consumer`` consumed ``consumed`` items of ``epoch`` must fit in the
    ``share`` its range holds: a larger claim (an edited state, or one from another run) would
    silently skip the rest of the epoch."""
    if consumed > share:
        raise StateError(
            f"loader state: consumer {consumer} claims {consumed} items of epoch {epoch}, but its "
            f"range holds {share}; the state was edited or comes from another run (resume from "
            "the checkpoint it was saved with)"
        )


def remaining_pieces(state: Mapping, seq: EpochSequence, epoch: int) -> list[Piece]:
    """What nobody consumed of ``epoch``, in θ-independent key space.

    ``seq`` is the epoch's sequence as the state's consumers saw it (the state's params and
    pieces). Each consumer consumed a prefix of its emission order: whole windows, then the
    items of one window below a cursor on (priority, id).
    """
    n_cons, window = int(state["consumers"]), int(state["block_shards"])
    length = (
        seq.total if state["infinite"] else balanced_length(seq.total, n_cons, state["balance"])
    )
    real = min(length, seq.total)  # positions past the total are pad items of the next epoch
    left: list[Piece] = []
    for c in range(n_cons):
        a, b = consumer_range(length, c, n_cons)
        n = consumed_in(state, c, epoch, b - a)
        b = min(b, real)
        done = 0
        for win in seq.windows(a, b, window):
            size = seq.window_size(win)
            if n >= done + size:
                done += size
                continue
            ws, we = seq.window_span(win)
            k = n - done
            if k > 0:  # part of this window was consumed: the rest is above the cursor
                pri, ids = seq.window_items(win)
                floor = (int(pri[k]), int(ids[k]))
                left += clip_pieces(seq.pieces, seq.key_at(ws), seq.key_at(we), floor)
                ws = we
            left += clip_pieces(seq.pieces, seq.key_at(ws), seq.key_at(b))
            break
    if real < seq.total:  # the tail that balancing dropped was never emitted
        left += clip_pieces(seq.pieces, seq.key_at(real), seq.end_key)
    return merge_pieces(left)


def rebase(state: Mapping, old_sequence: SequenceFactory) -> tuple[int, dict[str, list[dict]]]:
    """Turn a complete global state into (first epoch, pieces left per epoch), dealt to nobody.

    ``old_sequence(epoch, pieces)`` builds an epoch's sequence under the *state's* params. The
    result holds exactly the items nobody consumed (in θ-independent key space), so it can be
    dealt to any number of consumers, under any params.
    """
    check_complete(state)
    epochs = [int(p[0]) for p in state["progress"].values()]
    lo, hi = min(epochs), max(epochs)
    old = {int(e): [Piece.from_dict(p) for p in ps] for e, ps in state["pieces"].items()}
    out: dict[str, list[dict]] = {
        str(e): [p.to_dict() for p in ps] for e, ps in old.items() if e > hi
    }
    first = None
    for e in range(lo, hi + 1):
        seq = old_sequence(e, old.get(e))  # None: the epoch was whole
        left = remaining_pieces(state, seq, e)
        out[str(e)] = [p.to_dict() for p in left]
        if left and first is None:
            first = e
    return (hi + 1 if first is None else first), out


def switches_of(state: Mapping) -> dict[int, list[tuple[dict, list[Piece]]]]:
    """Per epoch, its earlier switches: (params dict in force until it, pieces left at it)."""
    out = {}
    for e, switches in (state.get("history") or {}).items():
        if int(e) < 0 or not isinstance(switches, list):
            raise ValueError(e)
        out[int(e)] = [
            (dict(sw["params"]), [Piece.from_dict(p) for p in sw["pieces"]]) for sw in switches
        ]
    return out


def pieces_of(state: Mapping, epoch: int) -> list[Piece] | None:
    """The pieces left of ``epoch`` per the state (``None``: the epoch is whole)."""
    ps = state.get("pieces", {}).get(str(epoch))
    return None if ps is None else [Piece.from_dict(p) for p in ps]
