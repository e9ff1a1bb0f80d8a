"""torchtitan's data loader over a QuaDMix stream, checkpointed by torchtitan's own checkpointer.

In a torchtitan trainer config, use :class:`QuaDMixTitanDataLoader.Config` as the
``dataloader`` (torchtitan calls ``config.dataloader.build(dp_world_size=…, dp_rank=…,
tokenizer=…, seq_len=…, local_batch_size=…, snapshot_every_n_steps=…)``)::

    dataloader=QuaDMixTitanDataLoader.Config(
        dataset_path="data/synth", params="data/params.json", seed=0, num_workers=2),

The loader is torchtitan's :class:`ParallelAwareDataloader` (a ``StatefulDataLoader`` with the
``Stateful`` protocol that torchtitan's ``CheckpointManager`` saves with DCP), over a
:class:`~quadmix_stream.stream.packing.PackedDataset` of an infinite QuaDMix stream dealt by the
*data-parallel* rank and degree (not the world: tensor- and pipeline-parallel peers read the
same data). Batches are what torchtitan's trainer takes: ``({"input": ids[:, :-1]}, ids[:, 1:])``
from blocks of ``seq_len + 1`` tokens (documents joined by the tokenizer's end-of-text id).

Resume is item for item. As with torchtitan's own loaders, each data-parallel rank restores its
own state, so the data-parallel degree, ``num_workers`` and params must be the ones saved; a
checkpoint that does not match is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from quadmix_stream.extras import require
from quadmix_stream.stream.dataset import QuaDMixDataset
from quadmix_stream.stream.packing import PackedDataset
from quadmix_stream.training.tokenizer import TextTokenizer

ParallelAwareDataloader = require(
    "torchtitan.components.dataloader", "quadmix_stream.loaders.torchtitan", "torchtitan"
).ParallelAwareDataloader

META_KEY = "quadmix"


def collate_titan(
    items: list[dict[str, torch.Tensor]],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Stack blocks of ``seq_len + 1`` tokens into torchtitan's ``(input_dict, labels)``.

    Labels are shifted here (torchtitan's loss does not shift): ``labels[t] = input[t + 1]``.
    """
    ids = torch.stack([it["input_ids"] for it in items])
    return {"input": ids[:, :-1]}, ids[:, 1:]


def _tokenizer_path(config_path: str | None, tokenizer: Any) -> str:
    """The tokenizer file or folder: the config's, else the one torchtitan's tokenizer read."""
    path = config_path or getattr(tokenizer, "tokenizer_path", None)
    if not path:
        raise ValueError(
            "QuaDMixTitanDataLoader needs a tokenizer: set tokenizer_path, or build it with "
            "torchtitan's HuggingFaceTokenizer (its tokenizer_path is used)"
        )
    return str(path)


class QuaDMixTitanDataLoader(ParallelAwareDataloader):
    """torchtitan data loader streaming a labelled dataset through QuaDMix sampling.

    Args:
        config: the fields of :class:`QuaDMixTitanDataLoader.Config` below.
        dp_world_size: data-parallel degree (torchtitan's ``batch_degree``).
        dp_rank: this process's data-parallel rank.
        tokenizer: torchtitan's tokenizer; its ``tokenizer_path`` is read with
            :class:`~quadmix_stream.training.tokenizer.TextTokenizer` unless ``config.tokenizer_path``
            is set (documents are encoded by the same ``tokenizer.json``).
        seq_len: tokens per sample given to the model (blocks hold ``seq_len + 1``).
        local_batch_size: samples per batch on this rank.
        snapshot_every_n_steps: passed to the ``StatefulDataLoader`` (torchtitan sets it to
            its checkpoint interval).
    """

    @dataclass(kw_only=True, slots=True)
    class Config(ParallelAwareDataloader.Config):
        """``dataset_path``: the labelled dataset folder (``dataset`` is only a name here)."""

        dataset: str = "quadmix"
        params: str = ""
        """params.json of the sampling function (SamplingParams.save)."""
        seed: int = 0
        """Stream seed: draws and order are pure functions of (seed, epoch, document)."""
        tokenizer_path: str | None = None
        """tokenizer.json (or a folder with one); default: torchtitan's tokenizer's path."""
        shuffle_block_shards: int | None = 256
        """Shards whose items are shuffled together (QuaDMixDataset)."""

    def __init__(
        self,
        config: Config,
        *,
        dp_world_size: int,
        dp_rank: int,
        tokenizer: Any = None,
        seq_len: int,
        local_batch_size: int,
        snapshot_every_n_steps: int | None = 1,
        **kwargs: Any,
    ) -> None:
        del kwargs  # torchtitan passes builder arguments that other loaders use
        if not config.dataset_path or not config.params:
            raise ValueError("QuaDMixTitanDataLoader.Config needs dataset_path and params")
        stream = QuaDMixDataset(
            config.dataset_path,
            config.params,
            seed=config.seed,
            infinite=True,  # torchtitan trains for a number of steps; ranks never run dry
            shuffle_block_shards=config.shuffle_block_shards,
            rank=dp_rank,
            world_size=dp_world_size,
        )
        tok = TextTokenizer(_tokenizer_path(config.tokenizer_path, tokenizer))
        data = PackedDataset(stream, tok, seq_len=int(seq_len) + 1)
        self._meta = (
            f"dp={dp_world_size};workers={config.num_workers};"
            f"params={stream.params.fingerprint()};seq_len={seq_len}"
        )
        super().__init__(
            data,
            dp_rank=dp_rank,
            dp_world_size=dp_world_size,
            batch_size=local_batch_size,
            collate_fn=collate_titan,
            num_workers=config.num_workers,
            persistent_workers=config.persistent_workers,
            pin_memory=config.pin_memory,
            prefetch_factor=config.prefetch_factor,
            snapshot_every_n_steps=snapshot_every_n_steps,
        )

    def state_dict(self) -> dict[str, Any]:
        """torchtitan's per-dp-rank state plus what it is valid for (checked on load)."""
        return {**super().state_dict(), META_KEY: self._meta}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore this dp rank's state; refuse one saved for another topology or params."""
        if not state_dict:
            return
        saved = state_dict.get(META_KEY)
        if saved is not None and saved != self._meta:
            raise ValueError(
                f"QuaDMix loader checkpoint is for {saved}; this loader is {self._meta}. "
                "torchtitan restores each data-parallel rank's own loader state: keep the "
                "data-parallel degree, num_workers, params and seq_len of the saved run"
            )
        super().load_state_dict({k: v for k, v in state_dict.items() if k != META_KEY})
