"""PyTorch Lightning on a QuaDMix stream, resumed exactly from Lightning's own checkpoints.

    dm = QuaDMixDataModule(lambda: PackedDataset(QuaDMixDataset(..., infinite=True), tok, 512),
                           batch_size=8, num_workers=2)
    trainer = L.Trainer(max_steps=..., callbacks=[ModelCheckpoint(every_n_train_steps=...)])
    trainer.fit(model, datamodule=dm)                       # loader state saved in each .ckpt
    trainer.fit(model, datamodule=dm, ckpt_path="last")     # continues the stream exactly

Why a DataModule of its own: Lightning (2.x) fetches one batch ahead of ``training_step`` when
the loader has no length (every streaming loader), and saves a ``StatefulDataLoader``'s state
as of the batch it fetched, not the one it trained on: a resumed run skips one batch per rank.
A plain ``DataLoader`` has no state at all, and Lightning restarts the stream from its start.
Here every batch travels with the loader state taken when it was yielded; the DataModule
unwraps it in ``on_before_batch_transfer`` (called for exactly the batch handed to
``training_step``) and saves that state, so the checkpoint matches what the model consumed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

try:  # the `lightning` package; the standalone `pytorch_lightning` has the same classes
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on which distribution is installed
    import pytorch_lightning as pl

from quadmix_stream.dataset import QuaDMixDataset
from quadmix_stream.loaders.stateful import checkpoint_loader, make_loader, restore_loader
from quadmix_stream.packing import PackedDataset

Stream = QuaDMixDataset | PackedDataset


class _Tagged:
    """A batch and the loader state right after it was yielded (deliberately not a collection:
    Lightning's ``apply_to_collection`` passes it through untouched)."""

    __slots__ = ("batch", "state")

    def __init__(self, batch: Any, state: dict[str, Any]) -> None:
        self.batch, self.state = batch, state


class TaggedLoader:
    """Iterates a ``StatefulDataLoader``, yielding each batch with the loader state after it.

    Not a ``DataLoader`` and without ``state_dict``: Lightning then neither re-creates it
    (sampler injection) nor saves its fetched-ahead state; :class:`QuaDMixDataModule` saves
    the state of the batches actually consumed.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[_Tagged]:
        for batch in self.loader:
            yield _Tagged(batch, self.loader.state_dict())


class QuaDMixDataModule(pl.LightningDataModule):
    """A ``LightningDataModule`` whose checkpointed loader state is the state of the consumed
    batches: a run resumed from any Lightning checkpoint continues the stream item for item.

    Args:
        make_dataset: builds this rank's stream (a :class:`QuaDMixDataset` with
            ``infinite=True``, or a :class:`PackedDataset` over one). Called in
            :meth:`train_dataloader`, i.e. in each DDP process after the process group exists,
            so ranks come from ``torch.distributed``.
        batch_size: per-rank batch size.
        num_workers: DataLoader worker processes per rank.
        **loader_kw: passed to the ``StatefulDataLoader`` (e.g. ``collate_fn``; the default
            for a ``QuaDMixDataset`` is :func:`~quadmix_stream.dataset.collate_docs`).

    Train with ``max_steps`` (the stream is infinite). The same world size, workers and params
    on resume continue item for item; another topology (or new params with
    ``resume_with_new_params=True``) re-deals the rest of the epoch from the saved global
    state. A subclass that overrides ``on_before_batch_transfer`` must call ``super()`` first
    (and, as always when a DataModule defines that hook, Lightning then ignores the
    LightningModule's own).
    """

    def __init__(
        self,
        make_dataset: Callable[[], Stream],
        batch_size: int,
        num_workers: int = 0,
        **loader_kw: Any,
    ) -> None:
        super().__init__()
        self.make_dataset = make_dataset
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.loader_kw = loader_kw
        self.loader: Any = None  # this rank's StatefulDataLoader, once built
        self.exact_resume: bool | None = None  # set when restored: item for item, or re-dealt
        self._resume: dict[str, Any] | None = None
        self._consumed: dict[str, Any] | None = None  # loader state after the last consumed batch

    def train_dataloader(self) -> TaggedLoader:
        dataset = self.make_dataset()
        inner = dataset.dataset if isinstance(dataset, PackedDataset) else dataset
        if not inner.infinite:
            # Finite epochs would need the end-of-epoch state to start the next epoch on
            # resume; Lightning saves mid-epoch and at epoch end alike. Refuse rather than
            # repeat or lose an epoch's tail.
            raise ValueError(
                "QuaDMixDataModule needs QuaDMixDataset(..., infinite=True); train with "
                "Trainer(max_steps=...)"
            )
        self._consumed = None
        if self._resume is not None:
            self.loader, self.exact_resume = restore_loader(
                self._resume, dataset, self.batch_size, self.num_workers, **self.loader_kw
            )
        else:
            self.loader = make_loader(dataset, self.batch_size, self.num_workers, **self.loader_kw)
        return TaggedLoader(self.loader)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Lightning calls this for exactly the batch it is about to hand to training_step
        # (and for validation batches, which are not tagged).
        if isinstance(batch, _Tagged):
            self._consumed = batch.state
            batch = batch.batch
            if self.trainer is not None:  # Lightning's precision cast skipped the wrapped batch
                batch = self.trainer.precision_plugin.convert_input(batch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The loader checkpoint as of the last consumed batch (every rank calls this when
        Lightning saves, as this all-gathers; ``{}`` before the first batch of a fresh run)."""
        if self._consumed is None:
            return dict(self._resume or {})  # nothing consumed since the restore (or ever)
        return checkpoint_loader(self.loader, state=self._consumed)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the checkpoint; :meth:`train_dataloader` restores the loader from it."""
        self._resume = dict(state_dict) if state_dict else None
        self._consumed = None
