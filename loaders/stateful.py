"""StatefulDataLoader over a QuaDMix stream, with one checkpoint format for every resume kind."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.distributed as dist

from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.stream.checkpoint import gather_state
from quadmix_stream.stream.dataset import QuaDMixDataset, collate_docs
from quadmix_stream.stream.packing import PackedDataset
from quadmix_stream.stream.state import StateError, find_states


def collate_lm(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack packed blocks into ``input_ids``/``labels`` only (what a causal LM's forward takes).

    ``labels`` is an unshifted copy of ``input_ids``: Hugging Face causal LMs shift inside their
    loss; a loop computing its own loss compares ``logits[:, :-1]`` with ``labels[:, 1:]``.
    """
    return {k: torch.stack([it[k] for it in items]) for k in ("input_ids", "labels")}


def make_loader(
    dataset: QuaDMixDataset | PackedDataset, batch_size: int, num_workers: int = 0, **kw: Any
):
    """A ``torchdata`` ``StatefulDataLoader`` with the right collate function for the stream."""
    from quadmix_stream.extras import require

    StatefulDataLoader = require(
        "torchdata.stateful_dataloader", "StatefulDataLoader", "train"
    ).StatefulDataLoader

    if "collate_fn" not in kw and isinstance(dataset, QuaDMixDataset):
        kw["collate_fn"] = collate_docs
    with warnings.catch_warnings():
        # torchdata's own constructor calls torch.set_vital, which recent torch deprecated (a
        # no-op there): the warning is about torchdata's code, not ours or the user's
        warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)
        return StatefulDataLoader(dataset, batch_size=batch_size, num_workers=num_workers, **kw)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _inner(dataset: QuaDMixDataset | PackedDataset) -> QuaDMixDataset:
    return dataset.dataset if isinstance(dataset, PackedDataset) else dataset


def checkpoint_loader(loader: Any, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to resume the loader: call on every rank (it all-gathers).

    Args:
        loader: the ``StatefulDataLoader`` of this rank.
        state: this rank's loader state to save instead of ``loader.state_dict()`` (e.g. a
            snapshot taken when the last *consumed* batch was yielded, when the training loop
            fetches ahead of what it has consumed).

    Returns (identical on all ranks, save it from rank 0) each rank's own loader state for an
    exact resume, the global state for any other topology or params, and what they were for.
    """
    mine = loader.state_dict() if state is None else state
    rank, world = _world()
    per_rank: list[Any] = [None] * world
    if world > 1:
        dist.all_gather_object(per_rank, mine)
    else:
        per_rank = [mine]
    ds = _inner(loader.dataset)
    return {
        "world": world,
        "workers": loader.num_workers,
        "params_fingerprint": ds.params.fingerprint(),
        "rank_states": per_rank,
        "global": gather_state(mine),
    }


def switch_params(
    loader: Any,
    dataset: QuaDMixDataset | PackedDataset,
    params: SamplingParams,
    batch_size: int,
    num_workers: int = 0,
    **kw: Any,
) -> Any:
    """Switch a running stream to ``params`` at this point, without restarting the job.

    Call it on every rank at the same step (it all-gathers), between batches. What the loop has
    consumed so far stays consumed; the rest of the epoch is re-dealt under ``params``, exactly
    as a checkpoint taken here and resumed with the new params would be, so a run killed before
    or after the switch resumes to the same sequence. Returns the new loader (its workers are
    new processes); keep iterating that one.
    """
    state = checkpoint_loader(loader)
    _inner(dataset).set_params(params)
    dataset.load_state_dict(state["global"])
    return make_loader(dataset, batch_size, num_workers, **kw)


def loader_params(ckpt: dict[str, Any]) -> SamplingParams:
    """The params in force when ``ckpt`` (a :func:`checkpoint_loader` result) was taken."""
    states = find_states(ckpt["global"])
    if not states:
        raise StateError("checkpoint: no quadmix-stream loader state found")
    return SamplingParams.from_dict(states[0]["params"])


def restore_loader(
    ckpt: dict[str, Any],
    dataset: QuaDMixDataset | PackedDataset,
    batch_size: int,
    num_workers: int = 0,
    **kw: Any,
) -> tuple[Any, bool]:
    """Build the loader and restore ``ckpt`` into it; returns ``(loader, exact)``.

    Same world size, workers and params → this rank's own state (item-for-item continuation).
    Otherwise the global state is loaded into ``dataset`` before the loader exists (re-dealt:
    no document lost or repeated; for new params the dataset needs ``resume_with_new_params``).
    """
    rank, world = _world()
    ds = _inner(dataset)
    exact = (
        ckpt["world"] == world
        and ckpt["workers"] == num_workers
        and ckpt["params_fingerprint"] == ds.params.fingerprint()
    )
    if not exact:
        dataset.load_state_dict(ckpt["global"])
    loader = make_loader(dataset, batch_size, num_workers, **kw)
    if exact:
        loader.load_state_dict(ckpt["rank_states"][rank])
    return loader, exact
