"""Run under torchrun: torchtitan's CheckpointManager saves and restores QuaDMixTitanDataLoader.

Each rank builds the loader exactly as torchtitan's trainer does (``Config.build`` with the
data-parallel rank and degree and torchtitan's own tokenizer), takes ``SAVED`` steps with a
checkpoint every ``INTERVAL`` steps (DCP, every rank), records the next ``NEXT`` batches, then
builds a fresh loader, model and checkpointer, loads the latest checkpoint and records what
the restored loader yields. Writes ``rank{R}.json`` with both.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torchtitan.components.checkpoint import CheckpointManager
from torchtitan.components.optimizer.lr_scheduler import LRSchedulersContainer
from torchtitan.components.optimizer.optimizer import OptimizersContainer, ParamGroupConfig
from torchtitan.components.tokenizer import HuggingFaceTokenizer

from quadmix_stream.loaders.torchtitan import QuaDMixTitanDataLoader

SAVED, INTERVAL, NEXT, SEQ_LEN, BATCH = 6, 3, 4, 32, 4


class TrainState:
    """The step, saved like torchtitan's trainer saves its own (a ``Stateful``)."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, Any]:
        return {"step": torch.tensor(self.step)}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.step = int(sd["step"])


def digest(batch: tuple[dict[str, torch.Tensor], torch.Tensor]) -> str:
    inputs, labels = batch
    assert inputs["input"].shape == labels.shape == (BATCH, SEQ_LEN)
    assert torch.equal(inputs["input"][:, 1:], labels[:, :-1])  # labels are shifted by one
    return hashlib.sha256(inputs["input"].numpy().tobytes() + labels.numpy().tobytes()).hexdigest()


def build(args: list[str], rank: int, world: int) -> tuple[Any, CheckpointManager, TrainState]:
    dataset, params, tok_dir, out, workers = args
    tokenizer = HuggingFaceTokenizer.Config().build(tokenizer_path=tok_dir)
    loader = QuaDMixTitanDataLoader.Config(
        dataset_path=dataset, params=params, seed=3, num_workers=int(workers)
    ).build(
        dp_world_size=world,
        dp_rank=rank,
        tokenizer=tokenizer,
        seq_len=SEQ_LEN,
        local_batch_size=BATCH,
        snapshot_every_n_steps=INTERVAL,
    )
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    optimizers = OptimizersContainer.Config(
        param_groups=[
            ParamGroupConfig(pattern=".*", optimizer_name="AdamW", optimizer_kwargs={"lr": 1e-3})
        ],
        implementation="for-loop",
    ).build(model_parts=[model])
    schedulers = LRSchedulersContainer.Config(warmup_steps=1).build(
        optimizers=optimizers, training_steps=SAVED + NEXT
    )
    state = TrainState()
    checkpointer = CheckpointManager.Config(enable=True, interval=INTERVAL, folder="ckpt").build(
        dataloader=loader,
        model_parts=[model],
        optimizers=optimizers,
        lr_schedulers=schedulers,
        states={"train_state": state},
        sd_adapter=None,
        base_folder=out,
    )
    return loader, checkpointer, state


def main() -> None:
    args = sys.argv[1:6]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    loader, checkpointer, state = build(args, rank, world)
    it = iter(loader)
    seen = []
    for step in range(1, SAVED + 1):  # a training loop: one batch per step, then maybe save
        state.step = step
        seen.append(digest(next(it)))
        checkpointer.save(step)
    want = [digest(next(it)) for _ in range(NEXT)]  # what the uninterrupted run gets next
    del it
    checkpointer.close()

    loader, checkpointer, state = build(args, rank, world)  # a new run
    checkpointer.load()
    got = [digest(b) for b, _ in zip(loader, range(NEXT), strict=False)]
    checkpointer.close()
    out = {"seen": seen, "want": want, "got": got, "loaded_step": state.step}
    Path(args[3], f"rank{rank}.json").write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
