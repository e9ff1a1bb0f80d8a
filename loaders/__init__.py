"""Drop-in integrations, installed as ``quadmix_stream.loaders``.

* :mod:`quadmix_stream.loaders.stateful` — a ``StatefulDataLoader`` over a QuaDMix stream, and
  checkpoint/restore of its state that picks exact or re-dealt resume by itself;
* :mod:`quadmix_stream.loaders.hf` — the Hugging Face ``Trainer`` with the loader state saved in,
  and restored from, the Trainer's own checkpoints;
* :mod:`quadmix_stream.loaders.lightning` — a ``LightningDataModule`` whose checkpointed state is
  that of the batches ``training_step`` consumed (exact resume from Lightning checkpoints);
* :mod:`quadmix_stream.loaders.torchtitan` — torchtitan's ``ParallelAwareDataloader`` over the
  stream, built by torchtitan's trainer and checkpointed by its ``CheckpointManager`` (torchtitan
  0.3; its main branch moved to Grain);
* :mod:`quadmix_stream.loaders.grain` — a Grain ``IterDataset`` over the stream, resumed exactly
  from Grain's own iterator states (``get_state``/``set_state``, ``mp_prefetch`` included).

Each needs its extra (``pip install 'quadmix-stream[hf]'``, ``[lightning]``, ``[torchtitan]``,
``[grain]``; ``stateful`` needs ``[train]``); importing one without it says which.

A plain PyTorch loop needs nothing from here: ``QuaDMixDataset`` is an ``IterableDataset``
(see the README).
"""
