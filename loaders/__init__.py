"""Drop-in integrations, installed as ``quadmix_stream.loaders``.

* :mod:`quadmix_stream.loaders.stateful` — a ``StatefulDataLoader`` over a QuaDMix stream, and
  checkpoint/restore of its state that picks exact or re-dealt resume by itself;
* :mod:`quadmix_stream.loaders.hf` — the Hugging Face ``Trainer`` with the loader state saved in,
  and restored from, the Trainer's own checkpoints;
* :mod:`quadmix_stream.loaders.lightning` — a ``LightningDataModule`` whose checkpointed state is
  that of the batches ``training_step`` consumed (exact resume from Lightning checkpoints);
* :mod:`quadmix_stream.loaders.torchtitan` — torchtitan's ``ParallelAwareDataloader`` over the
  stream, built by torchtitan's trainer and checkpointed by its ``CheckpointManager``.

A plain PyTorch loop needs nothing from here: ``QuaDMixDataset`` is an ``IterableDataset``
(see the README).
"""
