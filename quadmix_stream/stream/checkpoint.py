"""Checkpointing the loader: gather every rank's and worker's snapshot into one global state.

Two ways to resume, both tested:

* **same topology and params** (exact resume, item for item): each rank restores its own
  ``StatefulDataLoader.state_dict()`` (or, in-process, its dataset's ``state_dict()``);
* **anything else** (another number of ranks or workers, new params): every rank loads the one
  global state from :func:`gather_state` into its dataset *before* building the loader; the
  remainder of the epoch is re-dealt, nothing consumed is repeated and nothing is lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from quadmix_stream.stream.state import check_complete, find_states, merge_states


def _all_ranks(items: list[Any]) -> list[Any]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, items)
        return [x for part in gathered for x in part]
    return items


def gather_state(local: Mapping[str, Any] | list[Any] | None = None, loader: Any = None) -> dict:
    """One global loader state from every rank's (and worker's) snapshot.

    Args:
        local: this rank's snapshot: the dataset's (or packed dataset's) ``state_dict()`` for
            in-process iteration, or a ``StatefulDataLoader.state_dict()`` (or a list of them).
        loader: alternatively the ``StatefulDataLoader`` itself.

    Under torch.distributed every rank must call this (it all-gathers); all ranks get the same
    global state, so rank 0 can save it.
    """
    from quadmix_stream.stream.packing import _find_packed, merge_packed

    obj = loader.state_dict() if loader is not None else local
    packed = _all_ranks(_find_packed(obj))
    if packed:
        merged = merge_packed(packed)
        check_complete(merged["inner"])
        return merged
    merged = merge_states(_all_ranks(find_states(obj)))
    check_complete(merged)
    return merged
