"""What a proxy reads: its θ's token stream, packed into batches.

The training stream is :class:`~quadmix_stream.stream.dataset.QuaDMixDataset` for θ, one epoch after
another (epochs re-draw the realised copies, exactly as ``infinite=True`` does), tokenized and
packed into ``seq_len`` blocks with an end-of-text token after each document, until the token
budget is reached; documents repeat when the selection is smaller than the budget. With
``doc_tokens`` each drawn document contributes only a window of that many tokens (at an offset
seeded by the stream seed, the document and the epoch), so a small budget spreads over many
documents instead of a few long ones. The epochs
are driven here (``set_epoch``) rather than with ``infinite=True`` so that a θ whose selection
is empty is detected and reported instead of spinning forever. Blocks are cut by
:class:`~quadmix_stream.stream.packing.BlockPacker`, as the trainer's; the evaluation sets are built by
:mod:`quadmix_stream.training.evaluation`. With ``pool_fraction`` < 1 the stream keeps only the documents
of a fixed hash-chosen part of the pool (a uniform subsample, independent of θ and of the
stream's own draws), so a small proxy budget meets a selection as often as the full training.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

# the evaluation sets live with the trainer's (re-exported: the pipeline reads them from here)
from quadmix_stream.errors import UserError
from quadmix_stream.mixing.hashing import SALT_PROXY_POOL, uniform
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.search.tokenizer import TextTokenizer
from quadmix_stream.stream.packing import BlockPacker
from quadmix_stream.training.evaluation import eval_coverage, load_target_texts, target_blocks

__all__ = [
    "SelectionError",
    "TokenStream",
    "check_selection",
    "eval_coverage",
    "expected_selection",
    "load_target_texts",
    "open_stream",
    "target_blocks",
]


class SelectionError(UserError):
    """θ selects too little to train on (the proxy is recorded as failed, with this reason)."""


def open_stream(dataset: str | Path, params: SamplingParams, seed: int):
    """The proxy's QuaDMix stream: the whole stream in this process, whatever the torchrun rank."""
    from quadmix_stream.stream.dataset import QuaDMixDataset

    return QuaDMixDataset(dataset, params, seed=seed, balance=None, rank=0, world_size=1)


def expected_selection(ds) -> dict:
    """Expected selected label tokens and documents per epoch, overall and per domain."""
    mix = ds.tables.mixture(ds.params, ds.seed, None)
    tokens, docs = mix["tokens"], mix["docs"]
    return {
        "tokens": float(tokens.sum()),
        "docs": float(docs.sum()),
        "token_share": {
            d: float(t / tokens.sum()) if tokens.sum() > 0 else 0.0
            for d, t in zip(ds.manifest.domains, tokens, strict=True)
        },
    }


def in_proxy_pool(key: int, pool_fraction: float) -> bool:
    """Whether document ``key`` is in the proxies' ``pool_fraction`` of the pool."""
    if pool_fraction >= 1.0:
        return True
    k = np.array([int(key) & (2**64 - 1)], dtype=np.uint64)
    return bool(uniform(k, SALT_PROXY_POOL)[0] < pool_fraction)


def epoch_tokens(sel: dict, doc_tokens: int = 0, pool_fraction: float = 1.0) -> float:
    """Label tokens a proxy reads from one epoch of a selection (:func:`expected_selection`):
    at most ``doc_tokens`` per document, from ``pool_fraction`` of the pool (in expectation)."""
    per_epoch = sel["tokens"] if not doc_tokens else min(sel["tokens"], sel["docs"] * doc_tokens)
    return per_epoch * pool_fraction


def check_selection(
    ds, budget_tokens: int, max_epochs: int, doc_tokens: int = 0, pool_fraction: float = 1.0
) -> dict:
    """Refuse θ that selects nothing, or so little that the budget needs > ``max_epochs`` epochs.

    Token counts here are the labels' (the labeller's tokenizer); the check is in documents and
    label tokens, so it is approximate for another tokenizer, and :class:`TokenStream` enforces
    ``max_epochs`` exactly while streaming. With a per-document cap ``doc_tokens`` an epoch
    yields at most ``doc_tokens`` tokens per document; with ``pool_fraction`` it yields that
    fraction of them (in expectation).
    """
    sel = expected_selection(ds)
    if sel["tokens"] <= 0 or sel["docs"] <= 0:
        raise SelectionError("θ selects nothing (0 expected tokens per epoch)")
    per_epoch = epoch_tokens(sel, doc_tokens, pool_fraction)
    need = budget_tokens / per_epoch
    if need > max_epochs:
        raise SelectionError(
            f"θ selects {sel['tokens']:.0f} expected tokens per epoch; the budget of "
            f"{budget_tokens} tokens would need ~{need:.0f} epochs (> proxy.max_epochs={max_epochs})"
        )
    return sel


class TokenStream:
    """Packed ``(batch_size, seq_len)`` int64 blocks of θ's stream, epoch after epoch."""

    def __init__(
        self,
        ds,
        tokenizer: TextTokenizer,
        batch_size: int,
        seq_len: int,
        max_epochs: int,
        chunk_docs: int = 64,
        cache: dict[int, list[int]] | None = None,
        cache_limit: int = 1_000_000,
        doc_tokens: int = 0,
        window_seed: int = 0,
        pool_fraction: float = 1.0,
    ) -> None:
        self.ds, self.tok = ds, tokenizer
        self.batch_size, self.seq_len = batch_size, seq_len
        self.max_epochs, self.chunk = max_epochs, chunk_docs
        self.epochs = 0  # epochs started
        self.drawn = 0  # documents drawn from the stream
        self.docs = 0  # documents tokenized into the budget
        self.unique: set[int] = set()
        # whole batches are the packer's blocks: the stream is cut as one long sequence
        self._packer = BlockPacker(batch_size * seq_len)
        self._ready: deque[list[int]] = deque()
        # token ids by document key, shared by the proxies of a process (bounded)
        self.cache = {} if cache is None else cache
        self.cache_limit = cache_limit
        self.doc_tokens, self.window_seed = doc_tokens, window_seed
        self.pool_fraction = pool_fraction
        self._docs = self._doc_ids()

    def _texts(self) -> Iterator[tuple[int, str, int]]:
        empty_run = 0
        while True:
            if self.epochs >= self.max_epochs:
                raise SelectionError(
                    f"θ's selection did not fill the token budget within {self.max_epochs} epochs "
                    f"({self.docs} documents drawn)"
                )
            self.ds.set_epoch(self.epochs)
            self.epochs += 1
            n = 0
            for doc in self.ds:
                if not in_proxy_pool(doc["key"], self.pool_fraction):
                    continue
                n += 1
                self.drawn += 1
                yield int(doc["key"]), str(doc.get("text") or ""), self.epochs - 1
            empty_run = 0 if n else empty_run + 1
            if empty_run >= 20 and self.drawn == 0:
                raise SelectionError("θ selected no document in 20 epochs")

    def _doc_ids(self) -> Iterator[list[int]]:
        batch: list[tuple[int, str, int]] = []
        for item in self._texts():
            batch.append(item)
            if len(batch) == self.chunk:
                yield from self._encode(batch)
                batch = []

    def _encode(self, batch: list[tuple[int, str, int]]) -> Iterator[list[int]]:
        todo = [(k, t) for k, t, _ in batch if k not in self.cache]
        fresh = dict(
            zip((k for k, _ in todo), self.tok.encode_docs([t for _, t in todo]), strict=True)
        )
        if len(self.cache) < self.cache_limit:
            self.cache.update(fresh)
        for key, _, epoch in batch:
            self.docs += 1
            self.unique.add(key)
            ids = fresh[key] if key in fresh else self.cache[key]
            yield self._window(ids, key, epoch) if self.doc_tokens else ids

    def _window(self, ids: list[int], key: int, epoch: int) -> list[int]:
        """At most ``doc_tokens`` consecutive tokens of a document (then its end-of-text)."""
        body = len(ids) - 1  # the last id is the end-of-text token
        if body <= self.doc_tokens:
            return ids
        seq = np.random.SeedSequence([self.window_seed, int(key) & (2**64 - 1), epoch])
        start = int(np.random.default_rng(seq).integers(0, body - self.doc_tokens + 1))
        return ids[start : start + self.doc_tokens] + ids[-1:]

    def next_batch(self) -> torch.Tensor:
        # documents are drawn only while no batch is ready (the epoch and document counters
        # say how far the stream went)
        while not self._ready:
            self._ready.extend(ids for ids, _, _ in self._packer.add(next(self._docs)))
        out = self._ready.popleft()
        return torch.tensor(out, dtype=torch.long).view(self.batch_size, self.seq_len)
