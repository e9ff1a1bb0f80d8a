"""A Lightning run (CPU; DDP with gloo and Lightning's own launcher) over a QuaDMix stream.

    python lightning_script.py DATASET PARAMS OUT STEPS WORKERS DEVICES MODE [CKPT]

Every ``training_step`` appends the documents of its batch (``epoch``, ``key``, ``copy``) to
``OUT/consumed-rank{R}.jsonl`` under the step number, so a test can compare what the model
consumed in an interrupted-and-resumed run with an uninterrupted one. A checkpoint is saved
every ``EVERY`` steps (environment ``CKPT_EVERY``, default 4). ``MODE``: ``datamodule`` (:class:`QuaDMixDataModule`, infinite stream,
``STEPS`` steps); ``finite`` (the same over a finite stream for ``STEPS`` epochs, with a
checkpoint at each epoch's end too); ``stateful`` (a plain ``StatefulDataLoader`` returned
from ``train_dataloader``: what Lightning does with it on its own). ``CKPT``: resume from it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from quadmix_stream.loaders.lightning import QuaDMixDataModule
from quadmix_stream.loaders.stateful import make_loader
from quadmix_stream.stream.dataset import QuaDMixDataset

EVERY = int(os.environ.get("CKPT_EVERY", "4"))
BATCH = 3


class Recorder(pl.LightningModule):
    """A one-parameter model that logs the documents of each batch it trains on."""

    def __init__(self, out: Path, step_time: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.out, self.step_time = out, step_time

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        docs = [
            [int(e), int(k), int(c)]
            for e, k, c in zip(batch["epoch"], batch["key"], batch["copy"], strict=True)
        ]
        with open(self.out / f"consumed-rank{self.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": self.global_step, "docs": docs}) + "\n")
        time.sleep(self.step_time)  # leaves the test time to kill the run mid-way
        x = torch.tensor(batch["tokens"], dtype=torch.float32).mean() / 1000
        return (self.w * x - 1) ** 2

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class PlainStateful(pl.LightningDataModule):
    """A ``StatefulDataLoader`` handed to Lightning as is (Lightning saves its state itself)."""

    def __init__(self, make, workers: int) -> None:
        super().__init__()
        self.make, self.workers = make, workers

    def train_dataloader(self):
        return make_loader(self.make(), BATCH, self.workers)


def main() -> None:
    dataset, params, out, steps, workers, devices, mode = sys.argv[1:8]
    ckpt = sys.argv[8] if len(sys.argv) > 8 else None
    out_dir = Path(out)
    finite = mode == "finite"

    def make() -> QuaDMixDataset:
        return QuaDMixDataset(dataset, params, seed=5, infinite=not finite)

    dm = (
        PlainStateful(make, int(workers))
        if mode == "stateful"
        else QuaDMixDataModule(make, BATCH, int(workers))
    )
    saves = [
        ModelCheckpoint(
            dirpath=out_dir / "ckpt", filename="{step}", every_n_train_steps=EVERY, save_top_k=-1
        )
    ]
    if finite:  # and at the end of every epoch
        saves.append(
            ModelCheckpoint(dirpath=out_dir / "ckpt", filename="end-{epoch}", save_top_k=-1)
        )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=int(devices),
        strategy="ddp" if int(devices) > 1 else "auto",
        max_steps=-1 if finite else int(steps),
        max_epochs=int(steps) if finite else None,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        callbacks=saves,
    )
    # slow steps leave a test time to kill the run at a step of its choice
    step_time = 0.05 if mode == "datamodule" and ckpt is None else 0.0
    trainer.fit(Recorder(out_dir, step_time), datamodule=dm, ckpt_path=ckpt)
    if trainer.global_rank == 0 and mode != "stateful":
        (out_dir / "resume.json").write_text(json.dumps({"exact": dm.exact_resume}))


if __name__ == "__main__":
    main()
