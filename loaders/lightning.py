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

A finite stream (``max_epochs``) gets Lightning's epoch through ``set_epoch``, and the last
batch of each epoch is marked, so that a checkpoint taken after it resumes at the next epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from quadmix_stream.extras import require
from quadmix_stream.loaders.stateful import checkpoint_loader, make_loader, restore_loader
from quadmix_stream.stream.dataset import QuaDMixDataset
from quadmix_stream.stream.packing import PackedDataset
from quadmix_stream.stream.state import find_states

pl = require("lightning.pytorch", "quadmix_stream.loaders.lightning", "lightning")

Stream = QuaDMixDataset | PackedDataset


EPOCH_DONE = "epoch_done"  # in a saved state: its batch was the last of a finite epoch


class _Tagged:
    """A batch, the loader state right after it was yielded, and whether it ended the epoch
    (deliberately not a collection: Lightning's ``apply_to_collection`` passes it through)."""

    __slots__ = ("batch", "state", "last")

    def __init__(self, batch: Any, state: dict[str, Any], last: bool = False) -> None:
        self.batch, self.state, self.last = batch, state, last


class TaggedLoader:
    """Iterates a ``StatefulDataLoader``, yielding each batch with the loader state after it.

    Not a ``DataLoader`` and without ``state_dict``: Lightning then neither re-creates it
    (sampler injection) nor saves its fetched-ahead state; :class:`QuaDMixDataModule` saves
    the state of the batches actually consumed.

    Args:
        open_loader: returns the loader to iterate for the epoch Lightning is starting, and
            whether its stream is finite (called at the start of every iteration). A finite
            epoch's last batch is marked (by fetching one batch ahead), so that a checkpoint
            taken after it resumes at the next epoch.
    """

    def __init__(self, open_loader: Callable[[], tuple[Any, bool]]) -> None:
        self._open = open_loader

    def __iter__(self) -> Iterator[_Tagged]:
        loader, finite = self._open()
        if not finite:
            for batch in loader:
                yield _Tagged(batch, loader.state_dict())
            return
        it = iter(loader)
        try:
            batch = next(it)
        except StopIteration:
            return
        state = loader.state_dict()  # taken before the next batch is fetched
        for ahead in it:
            yield _Tagged(batch, state)
            batch, state = ahead, loader.state_dict()
        yield _Tagged(batch, state, last=True)


def _saved_epoch(ckpt: dict[str, Any]) -> int:
    """The (latest) epoch a loader checkpoint from :func:`checkpoint_loader` was in."""
    return max(int(s["epoch"]) for s in find_states(ckpt["global"]))


class QuaDMixDataModule(pl.LightningDataModule):
    """A ``LightningDataModule`` whose checkpointed loader state is the state of the consumed
    batches: a run resumed from any Lightning checkpoint continues the stream item for item.

    Args:
        make_dataset: builds this rank's stream (a :class:`QuaDMixDataset` or a
            :class:`PackedDataset` over one). Called when Lightning first iterates the train
            loader, i.e. in each DDP process after the process group exists, so ranks come
            from ``torch.distributed``.
        batch_size: per-rank batch size.
        num_workers: DataLoader worker processes per rank.
        **loader_kw: passed to the ``StatefulDataLoader`` (e.g. ``collate_fn``; the default
            for a ``QuaDMixDataset`` is :func:`~quadmix_stream.stream.dataset.collate_docs`).

    An ``infinite=True`` stream is one Lightning epoch: train with ``max_steps``. A finite
    stream is one pass per Lightning epoch (``max_epochs``): the DataModule sets the stream's
    epoch to Lightning's, as a ``DistributedSampler`` would. The same world size, workers and
    params on resume continue item for item; another topology (or new params with
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
        self._dataset: Stream | None = None
        self._resume: dict[str, Any] | None = None
        self._consumed: dict[str, Any] | None = None  # loader state after the last consumed batch
        self._consumed_last = False  # ... and whether that batch ended a finite epoch

    def train_dataloader(self) -> TaggedLoader:
        self.loader = self._dataset = self._consumed = None
        self._consumed_last = False
        return TaggedLoader(self._loader_for_epoch)

    def _lightning_epoch(self) -> int:
        # the epoch Lightning is starting: what it passes to a sampler's set_epoch (read here
        # because Lightning starts iterating before it calls set_epoch)
        trainer = self.trainer
        return 0 if trainer is None else int(trainer.fit_loop.epoch_progress.current.processed)

    def _loader_for_epoch(self) -> tuple[Any, bool]:
        if self.loader is not None:  # the next epoch of this fit
            finite = not self._inner().infinite
            if finite:
                self._dataset.set_epoch(self._lightning_epoch())
            return self.loader, finite
        dataset = self._dataset = self.make_dataset()
        finite = not self._inner().infinite
        if finite and self.num_workers and self.loader_kw.get("persistent_workers"):
            raise ValueError(
                "persistent_workers would keep each worker's copy of a finite stream in its "
                "first epoch; use infinite=True or persistent_workers=False"
            )
        resume = self._resume
        if resume is not None and resume.get(EPOCH_DONE):
            # saved after an epoch's last batch: start the next epoch. (Lightning may iterate
            # before its epoch counter has moved on when the checkpoint was taken at that
            # batch, so the saved epoch decides, not the counter.)
            epoch, resume = _saved_epoch(resume) + 1, None
            self.exact_resume = True
        else:
            epoch = self._lightning_epoch()
        if finite:
            dataset.set_epoch(epoch)
        if resume is not None:
            self.loader, self.exact_resume = restore_loader(
                resume, dataset, self.batch_size, self.num_workers, **self.loader_kw
            )
        else:
            self.loader = make_loader(dataset, self.batch_size, self.num_workers, **self.loader_kw)
        return self.loader, finite

    def _inner(self) -> QuaDMixDataset:
        ds = self._dataset
        return ds.dataset if isinstance(ds, PackedDataset) else ds

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Lightning calls this for exactly the batch it is about to hand to training_step
        # (and for validation batches, which are not tagged).
        if isinstance(batch, _Tagged):
            self._consumed, self._consumed_last = batch.state, batch.last
            batch = batch.batch
            if self.trainer is not None:  # Lightning's precision cast skipped the wrapped batch
                batch = self.trainer.precision_plugin.convert_input(batch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The loader checkpoint as of the last consumed batch (every rank calls this when
        Lightning saves, as this all-gathers; ``{}`` before the first batch of a fresh run)."""
        if self._consumed is None:
            return dict(self._resume or {})  # nothing consumed since the restore (or ever)
        return {
            **checkpoint_loader(self.loader, state=self._consumed),
            EPOCH_DONE: self._consumed_last,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the checkpoint; :meth:`train_dataloader` restores the loader from it."""
        self._resume = dict(state_dict) if state_dict else None
        self._consumed = None
