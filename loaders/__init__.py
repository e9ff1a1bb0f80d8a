"""Drop-in integrations, installed as ``quadmix_stream.loaders``.

* :mod:`quadmix_stream.loaders.stateful` — a ``StatefulDataLoader`` over a QuaDMix stream, and
  checkpoint/restore of its state that picks exact or re-dealt resume by itself;
* :mod:`quadmix_stream.loaders.hf` — the Hugging Face ``Trainer`` with the loader state saved in,
  and restored from, the Trainer's own checkpoints.

A plain PyTorch loop needs nothing from here: ``QuaDMixDataset`` is an ``IterableDataset``
(see the README).
"""
