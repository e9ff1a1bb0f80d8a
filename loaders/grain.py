"""Grain over a QuaDMix stream, resumed exactly from Grain's own checkpoints.

    import grain
    from quadmix_stream.loaders.grain import QuaDMixIterDataset

    stream = PackedDataset(QuaDMixDataset("data/synth", "params.json", infinite=True), tok, 513)
    ds = QuaDMixIterDataset(stream, dp_rank=rank, dp_world=world).batch(8)
    it = iter(ds)                                   # a grain.DatasetIterator
    batch = next(it)                                # {"input_ids": int64 [8, 513], ...}
    state = it.get_state()                          # JSON: what grain.checkpoint saves
    it2 = iter(ds); it2.set_state(state)            # continues item for item

:class:`QuaDMixIterDataset` is a source ``grain.IterDataset`` over a
:class:`~quadmix_stream.stream.dataset.QuaDMixDataset` (items are its document dicts) or a
:class:`~quadmix_stream.stream.packing.PackedDataset` (items are its token blocks: torch tensors, which
Grain's ``.batch()`` stacks into numpy arrays). Its iterator's ``get_state()`` is the stream's
own ``state_dict()`` (the items consumed so far) and ``set_state()`` its ``load_state_dict()``,
so anything that saves Grain iterator states — ``grain.checkpoint.CheckpointHandler`` (and its
``CheckpointSave``/``CheckpointRestore`` arguments under Orbax), the iterator's own Orbax
``save``/``load``, or ``json.dumps(it.get_state())`` — resumes the stream exactly. Grain's
transformations after it carry its state inside theirs (``.map`` and ``.batch`` are tested), so
exact resume holds through them. The state is plain JSON (it is
checked to be: a state that would not survive ``json.dumps`` raises ``TypeError``); save it as
JSON, not as an array PyTree (its nesting grows with the pieces of a re-dealt epoch).

Data parallelism: the stream deals each epoch's items to ``dp_world`` ranks itself (Grain's
``ShardOptions`` are not used). Pass ``dp_rank``/``dp_world`` (e.g. ``jax.process_index()`` /
``jax.process_count()``, or torchtitan's data-parallel rank and degree); left out, the stream's
own ``rank``/``world_size`` are kept (given to it, else torch.distributed, else the
``RANK``/``WORLD_SIZE`` environment, else a single process).

``mp_prefetch`` is supported with exact resume. Its ``W`` worker processes read disjoint shares:
worker ``i`` of rank ``r`` is consumer ``r·W + i`` of ``world·W`` (the dealing a torch
``DataLoader`` with ``W`` workers uses), and Grain interleaves the workers' items round-robin and
checkpoints each worker's state with the items it delivered. An item-for-item resume keeps
``dp_world``, the number of workers and the params: a state of one consumer among several is
refused under another topology (the stream's ``StateError``, raised by ``set_state`` or, for a
worker, by the next ``next``), one saved under other params too (unless the stream was made with
``resume_with_new_params``), and a state without workers in a pipeline with them, or the reverse,
here. Over a finite stream, every worker counts as a rank:
``PackedDataset`` then needs ``infinite=True`` (as for training) or ``balance=None``. Only the
slicing that ``mp_prefetch`` applies (``slice(i, None, W)``) is accepted; any other slice of the
stream is refused (it has no random access).

A finite stream (``infinite=False``) is one epoch per iterator: call ``stream.set_epoch(e)`` and
make a new iterator for the next epoch (a finished epoch's state resumes as finished). Elastic
resume (another ``dp_world``/worker count/params): gather every consumer's state with
:func:`quadmix_stream.stream.checkpoint.gather_state`, ``stream.load_state_dict(global_state)`` before
building the dataset, and start its iterators without ``set_state``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from quadmix_stream.extras import require
from quadmix_stream.stream.dataset import QuaDMixDataset
from quadmix_stream.stream.packing import PackedDataset

grain = require("grain", "quadmix_stream.loaders.grain", "grain")

Stream = QuaDMixDataset | PackedDataset

GRAIN_MARK = "quadmix_grain_state"  # marks an adapter state (version 1) in a Grain state tree


def _kind(stream: Stream) -> str:
    return "packed" if isinstance(stream, PackedDataset) else "docs"


def _inner(stream: Stream) -> QuaDMixDataset:
    return stream.dataset if isinstance(stream, PackedDataset) else stream


def _private_copy(stream: Stream) -> Stream:
    """A copy with its own iteration progress and caches, sharing the read-only parts.

    The stream keeps the progress of *its* running iteration on the instance, so two Grain
    iterators of one dataset (Grain makes throwaway ones, e.g. for a state before the first
    item) must not share it. Pickling rules (``__getstate__``) drop the live progress; the
    tables are forked because Grain may run an iterator in a prefetch thread.
    """
    if isinstance(stream, PackedDataset):
        out = copy.copy(stream)
        out.dataset = _private_copy(stream.dataset)
        return out
    out = copy.copy(stream)
    out.tables = stream.tables.fork()
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer | np.floating | np.bool_):
        return obj.item()  # numpy scalars: lossless as the Python scalar
    raise TypeError(
        f"loader state holds a {type(obj).__name__}, which a JSON checkpoint cannot keep"
    )


def _as_json(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` exactly as it comes back from a JSON checkpoint (tuples become lists, …)."""
    return json.loads(json.dumps(state, default=_json_default))


def _parse_slice(sl: slice) -> tuple[int, int]:
    """(worker, workers) of the slice ``mp_prefetch`` gives worker ``i`` of ``W``."""
    start, stop, step = sl.start or 0, sl.stop, sl.step or 1
    if stop is not None or not 0 <= start < step:
        raise ValueError(
            f"QuaDMixIterDataset cannot be sliced by {sl} (a stream has no random access); "
            "only mp_prefetch's per-worker slices slice(i, None, num_workers) are supported"
        )
    return start, step


class QuaDMixIterDataset(grain.IterDataset):
    """A QuaDMix stream as a Grain source ``IterDataset`` whose iterators resume exactly.

    Args:
        stream: a :class:`QuaDMixDataset` or :class:`PackedDataset` (not iterated by this
            object: each iterator works on its own copy; a state loaded into ``stream`` before,
            e.g. a gathered global state, is where every iterator starts).
        dp_rank, dp_world: this process's data-parallel rank and degree (both or neither);
            default: the stream's ``rank``/``world_size``.
    """

    def __init__(
        self, stream: Stream, *, dp_rank: int | None = None, dp_world: int | None = None
    ) -> None:
        super().__init__()
        if not isinstance(stream, QuaDMixDataset | PackedDataset):
            raise TypeError(
                f"QuaDMixIterDataset takes a QuaDMixDataset or PackedDataset, got {type(stream)}"
            )
        if (dp_rank is None) != (dp_world is None):
            raise ValueError("give both dp_rank and dp_world, or neither")
        inner = _inner(stream)
        rank = inner.rank if dp_rank is None else int(dp_rank)
        world = inner.world_size if dp_world is None else int(dp_world)
        if not 0 <= rank < world:
            raise ValueError(f"need 0 ≤ dp_rank < dp_world, got {rank}, {world}")
        self._stream, self._rank, self._world = stream, rank, world
        self._slice: tuple[int, int] | None = None  # (worker, workers) inside mp_prefetch

    @property
    def stream(self) -> Stream:
        return self._stream

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """Grain's in-place slicing, applied by ``mp_prefetch`` in each worker process.

        Only recorded and checked: the worker's share comes from its multiprocessing context
        (the same ``(i, W)``), which Grain also sets in the parent process, so a state taken
        there before the first item already names the worker's share.
        """
        del sequential_slice  # a consumer's share is always contiguous in the stream's order
        self._slice = _parse_slice(sl)

    def __iter__(self) -> QuaDMixDatasetIterator:
        return QuaDMixDatasetIterator(self._stream, self._rank, self._world, self._slice)

    def __str__(self) -> str:
        return f"QuaDMixIterDataset({_kind(self._stream)}, dp_rank={self._rank}/{self._world})"


class QuaDMixDatasetIterator(grain.DatasetIterator):
    """Iterator of :class:`QuaDMixIterDataset`: ``get_state``/``set_state`` are the stream's."""

    def __init__(
        self, stream: Stream, rank: int, world: int, sliced: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        # a snapshot of the stream as given (epoch, loaded state); never iterated itself
        self._template = _private_copy(stream)
        self._rank, self._world, self._sliced = rank, world, sliced
        self._stream: Stream | None = None  # the copy being read, made on first use
        self._items: Iterator[Any] | None = None
        self._loaded: dict[str, Any] | None = None  # set_state's state, until the next item

    def _consumer(self) -> tuple[int, int]:
        """(rank, world) of this iterator as the stream's dealer sees it.

        Grain sets the multiprocessing context after ``__iter__`` returns, so it is read on
        first use (as Grain's own iterators do), never in ``__init__``.
        """
        mp = self._ctx.mp_context
        if self._sliced is not None and self._sliced != (mp.process_index, mp.process_count):
            raise ValueError(
                f"QuaDMixIterDataset was sliced as worker {self._sliced[0]} of "
                f"{self._sliced[1]} but runs as worker {mp.process_index} of {mp.process_count}: "
                "only mp_prefetch's own slicing is supported"
            )
        workers = mp.process_count
        return self._rank * workers + mp.process_index, self._world * workers

    def _fresh(self) -> Stream:
        stream = _private_copy(self._template)
        rank, world = self._consumer()
        inner = _inner(stream)
        inner.rank, inner.world_size = rank, world
        return stream

    def _own(self) -> Stream:
        if self._stream is None:
            self._stream = self._fresh()
        return self._stream

    def __next__(self) -> Any:
        self._assert_not_closed()
        if self._items is None:
            self._items = iter(self._own())
            self._loaded = None
        return next(self._items)

    def get_state(self) -> dict[str, Any]:
        """The stream's state after the items returned so far (JSON, as checkpoints keep it)."""
        if self._loaded is not None:
            # restored and not read since: the state restored (a PackedDataset reports its
            # carried tokens only once it iterates; the restored state still holds them)
            return _as_json(self._loaded)
        stream = self._own()
        return {GRAIN_MARK: 1, "kind": _kind(stream), "stream": _as_json(stream.state_dict())}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue right after the items the state was taken after.

        Raises the stream's ``StateError``/``ValueError`` for a state of another dataset, params,
        seed or topology (data-parallel degree × prefetch workers), and ``ValueError`` for a
        state of another kind of stream or not from this adapter.
        """
        if not isinstance(state, Mapping) or state.get(GRAIN_MARK) != 1:
            raise ValueError(
                "not a QuaDMixIterDataset iterator state (no 'quadmix_grain_state' marker); "
                "a state from a pipeline with other transformations or mp_prefetch workers?"
            )
        stream = self._fresh()  # a fresh copy: no progress of an earlier iteration lingers
        if state.get("kind") != _kind(stream):
            raise ValueError(
                f"this iterator state is for a {state.get('kind')} stream, this dataset streams "
                f"{_kind(stream)} (QuaDMixDataset: docs, PackedDataset: packed)"
            )
        stream.load_state_dict(state["stream"])
        # where this consumer resumes is worked out lazily by the stream; do it now, so that a
        # state of another topology is refused here rather than at the next item
        stream.state_dict()
        self._close_items()
        self._stream = stream
        self._loaded = {GRAIN_MARK: 1, "kind": state["kind"], "stream": state["stream"]}

    def _close_items(self) -> None:
        if self._items is not None:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()  # the stream's generator closes its open shard readers
            self._items = None

    def close(self) -> None:
        if not self._closed:
            self._close_items()
        super().close()

    def __str__(self) -> str:
        return f"QuaDMixDatasetIterator(rank={self._rank}/{self._world})"


def stream_states(state: Any) -> list[dict[str, Any]]:
    """The stream states inside a Grain pipeline's state (one per ``mp_prefetch`` worker).

    E.g. to gather them into a global state for an elastic resume
    (:func:`quadmix_stream.stream.checkpoint.gather_state`).
    """
    if isinstance(state, Mapping):
        if state.get(GRAIN_MARK) == 1:
            return [state["stream"]]
        return [s for v in state.values() for s in stream_states(v)]
    if isinstance(state, list | tuple):
        return [s for v in state for s in stream_states(v)]
    return []


__all__ = ["QuaDMixDatasetIterator", "QuaDMixIterDataset", "stream_states"]
