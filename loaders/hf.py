"""The Hugging Face ``Trainer`` on a QuaDMix stream, resumable from the Trainer's own checkpoints.

    trainer = QuaDMixTrainer(model=model, args=args, train_dataset=PackedDataset(...))
    trainer.train()                                   # saves quadmix_loader.pt in each checkpoint
    trainer.train(resume_from_checkpoint=True)        # restores it (no batch skipping)

The Trainer's own data skipping on resume would re-read and discard every consumed batch; here
the loader state does it instead, so ``ignore_data_skip`` is forced on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from quadmix_stream.extras import require
from quadmix_stream.loaders.stateful import (
    checkpoint_loader,
    collate_lm,
    make_loader,
    restore_loader,
)

_transformers = require("transformers", "quadmix_stream.loaders.hf", "hf")
require("accelerate", "quadmix_stream.loaders.hf (the Trainer needs it)", "hf")
Trainer, TrainerCallback = _transformers.Trainer, _transformers.TrainerCallback
get_last_checkpoint = require("transformers.trainer_utils", "", "hf").get_last_checkpoint

STATE_FILE = "quadmix_loader.pt"


class _SaveLoaderState(TrainerCallback):
    def __init__(self, trainer: QuaDMixTrainer) -> None:
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer callback API)
        loader = self.trainer._quadmix_loader
        if loader is None:
            return control
        ckpt = checkpoint_loader(loader)  # every rank takes part
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{STATE_FILE}.tmp"
            torch.save(ckpt, tmp)
            os.replace(tmp, folder / STATE_FILE)
        return control


class QuaDMixTrainer(Trainer):
    """``Trainer`` whose train loader is a StatefulDataLoader over a QuaDMix stream.

    ``train_dataset`` is a :class:`~quadmix_stream.stream.packing.PackedDataset` (or a
    ``QuaDMixDataset`` with a ``data_collator`` of your own). The loader is built here, not by
    accelerate: the stream already splits itself across ranks and workers.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("data_collator", collate_lm)  # the default one would pass extra keys
        super().__init__(*args, **kwargs)
        self.args.ignore_data_skip = True
        self._quadmix_loader = None
        self._quadmix_resume: dict | None = None
        self.add_callback(_SaveLoaderState(self))

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        path = resume_from_checkpoint
        if path is True:
            path = get_last_checkpoint(self.args.output_dir)
        if path:
            f = Path(path) / STATE_FILE
            if not f.exists():
                raise FileNotFoundError(f"{f}: this checkpoint has no QuaDMix loader state")
            self._quadmix_resume = torch.load(f, map_location="cpu", weights_only=True)
        return super().train(resume_from_checkpoint=path or None, **kwargs)

    def get_train_dataloader(self):
        kw: dict[str, Any] = {"collate_fn": self.data_collator}
        workers = self.args.dataloader_num_workers
        if self._quadmix_resume is not None:
            loader, _ = restore_loader(
                self._quadmix_resume, self.train_dataset, self._train_batch_size, workers, **kw
            )
            self._quadmix_resume = None
        else:
            loader = make_loader(self.train_dataset, self._train_batch_size, workers, **kw)
        self._quadmix_loader = loader
        return loader
