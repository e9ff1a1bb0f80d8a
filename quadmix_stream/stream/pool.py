"""A shuffled look at a labelled pool: every document once, for tokenizer training and reports."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from quadmix_stream.formats.labels import Manifest
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.storage.store import StorageConfig, Store
from quadmix_stream.stream.dataset import QuaDMixDataset


def pool_texts(
    dataset: str | Path,
    max_docs: int,
    seed: int = 0,
    storage: StorageConfig | None = None,
    verify_documents: bool = True,
) -> Iterable[str]:
    """Up to ``max_docs`` texts of a labelled dataset's pool (every document once, shuffled)."""
    for doc in pool_docs(dataset, max_docs, seed, storage, verify_documents):
        yield str(doc.get("text") or "")


def pool_docs(
    dataset: str | Path,
    max_docs: int,
    seed: int = 0,
    storage: StorageConfig | None = None,
    verify_documents: bool = True,
) -> Iterable[dict]:
    """Up to ``max_docs`` documents (with their labels) of a labelled dataset's pool, shuffled.

    Args:
        dataset: the dataset's folder or URL (``s3://bucket/ds``).
        max_docs: how many texts at most.
        seed: the stream seed (which documents come first).
        storage: how a remote dataset is read (the trainer's cache limit); ignored locally.
        verify_documents: check each text against its sidecar checksum (:class:`QuaDMixDataset`).
    """
    m = Manifest.load(Store(dataset, storage))
    keep = SamplingParams.keep_all(m.domains, m.scorer_names)
    ds = QuaDMixDataset(
        dataset,
        keep,
        seed=seed,
        balance=None,
        rank=0,
        world_size=1,
        storage=storage,
        verify_documents=verify_documents,
    )
    for i, doc in enumerate(ds):
        if i >= max_docs:
            break
        yield doc
