"""Helpers for stream tests: expected multisets and walking datasets as (rank, worker) consumers."""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.stream.dataset import QuaDMixDataset, collate_docs

# Wide ranges so that documents get 0, 1 and 2+ copies.
WIDE = {"omega": (0.3, 0.9), "eta": (0.3, 1.5), "lam": (1.0, 50.0), "eps": (0.0, 0.2)}


def wide_params(ds_root, seed: int = 1) -> SamplingParams:
    from quadmix_stream.formats.labels import Manifest

    m = Manifest.load(ds_root)
    return SamplingParams.propose(1, m.domains, m.scorer_names, seed=seed, ranges=WIDE)[0]


def favouring(ds_root, domain: str, others: float = 0.05, this: float = 1.5) -> SamplingParams:
    """A domain mixture that keeps ``domain`` at η=``this`` and the others at ``others``."""
    from quadmix_stream.formats.labels import Manifest
    from quadmix_stream.mixing.params import domain_mixture

    m = Manifest.load(ds_root)
    eta = [this if d == domain else others for d in m.domains]
    return domain_mixture(m.domains, m.scorer_names, eta)


def all_counts(ds: QuaDMixDataset, epoch: int) -> np.ndarray:
    """Realised copies of every document in global row order (the whole pool: tests only)."""
    return np.concatenate([ds.counts(s, epoch) for s in range(ds.tables.n_shards)]).astype(np.int64)


def all_labels(ds: QuaDMixDataset):
    from quadmix_stream.formats.labels import load_labels

    return load_labels(ds.root, ds.manifest)


def expected_items(ds: QuaDMixDataset, epoch: int) -> Counter:
    """(key, copy) multiset the epoch must emit over all consumers (balance=None)."""
    counts = all_counts(ds, epoch)
    keys = all_labels(ds).key
    return Counter(
        {
            (int(k), c): 1
            for k, n in zip(keys.tolist(), counts.tolist(), strict=True)
            for c in range(n)
        }
    )


def ids(items: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(it["key"], it["copy"]) for it in items]


def walk_loader(
    ds: QuaDMixDataset, workers: int, batch: int = 4, limit: int | None = None
) -> list[tuple[int, int]]:
    """Items of one rank through a real DataLoader with ``workers`` worker processes."""
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate_docs)
    out: list[tuple[int, int]] = []
    for b in loader:
        out += list(zip(b["key"], b["copy"], strict=True))
        if limit is not None and len(out) >= limit:
            break
    return out


def as_counter(pairs) -> Counter:
    return Counter(pairs)


def mixture_of(ds: QuaDMixDataset, pairs) -> np.ndarray:
    """Per-domain token shares of a list of (key, copy) pairs."""
    lab = all_labels(ds)
    index = {k: i for i, k in enumerate(lab.key.tolist())}
    m = len(ds.manifest.domains)
    tok = np.zeros(m)
    for k, _ in pairs:
        i = index[k]
        tok[lab.domain[i]] += lab.tokens[i]
    return tok / max(tok.sum(), 1)


def kill_tree(pid: int) -> None:
    """SIGKILL torchrun and all its workers at once.

    torchrun starts every worker in a session of its own, so killing torchrun's process group
    leaves the workers running (and writing checkpoints) after the "kill".
    """
    import psutil

    parent = psutil.Process(pid)
    procs = [parent, *parent.children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive, f"processes survived SIGKILL: {alive}"
