"""Tokenized, packed fixed-length sequences from a QuaDMixDataset, with a resumable state.

Documents are tokenized, joined with an end-of-text token and cut into blocks of ``seq_len``
tokens (``input_ids``; ``labels`` is the same tensor, Hugging Face causal LMs shift internally).
The state stays tiny however long a document is: it holds the inner stream's state, the carried
tokens of finished documents (< ``seq_len``) and, for a document cut mid-way, only its row and
token offset (the document is re-read and re-tokenized on resume).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from quadmix_stream.errors import UserError
from quadmix_stream.stream.dataset import QuaDMixDataset
from quadmix_stream.stream.state import find_states, is_state, merge_states
from quadmix_stream.training.tokenizer import TextTokenizer

PACKED_MARK = "quadmix_packed_state"


class BlockPacker:
    """Token ids of documents (each ending with its end-of-text token) cut into blocks of ``size``.

    The one place blocks are cut: :class:`PackedDataset` packs ``seq_len`` blocks with the
    domain of every token (``tags``); the search's ``TokenStream`` packs whole
    ``batch_size × seq_len`` batches. ``carry`` holds the tokens not yet in a block (fewer than
    ``size``), ``tags`` (when tracked) one tag per carried token.

    Args:
        size: tokens per block.
        carry: tokens carried in (a resumed state's leftovers).
        tags: their tags; ``None``: tags are not tracked.
    """

    def __init__(self, size: int, carry: list[int] | None = None, tags: list | None = None) -> None:
        self.size = int(size)
        self.carry: list[int] = list(carry or [])
        self.tags: list | None = None if tags is None else list(tags)

    def add(self, toks: list[int], tag: Any = None) -> Iterator[tuple[list[int], list | None, int]]:
        """Append a document; yields each block it completes as ``(ids, tags, pos)``.

        ``pos`` is how many of ``toks`` are in blocks so far; ``carry`` is already empty when a
        block is yielded, and holds the rest of ``toks`` once the generator ends.
        """
        pos = 0
        while len(self.carry) + len(toks) - pos >= self.size:
            take = self.size - len(self.carry)
            ids = self.carry + toks[pos : pos + take]
            tags = None if self.tags is None else self.tags + [tag] * take
            pos += take
            self.carry = []
            self.tags = None if self.tags is None else []
            yield ids, tags, pos
        # in place: a long batch is filled by many short documents
        self.carry.extend(toks[pos:])
        if self.tags is not None:
            self.tags.extend([tag] * (len(toks) - pos))


class PackedDataset(IterableDataset):
    """Fixed-length token blocks from a :class:`QuaDMixDataset` (each rank/worker packs its share).

    ``labels`` is an unshifted copy of ``input_ids`` (Hugging Face causal LMs shift internally).
    Across several ranks the inner stream must be ``infinite=True`` (a finite balanced one is
    refused: its ranks would yield different numbers of blocks and hang DDP; ``balance=None``
    says the ranks do not synchronise).

    Items: ``input_ids`` and ``labels`` (LongTensor ``[seq_len]``), ``token_domains``
    (LongTensor ``[seq_len]``: the domain id of each token, for per-domain training losses) and
    ``domain_tokens`` (LongTensor ``[M]``: how many of the block's tokens came from each domain,
    for logging the realised mixture).

    Args:
        dataset: the document stream.
        tokenizer: a :class:`~quadmix_stream.training.tokenizer.TextTokenizer` or a path to one.
        seq_len: tokens per block.
        track_docs: also yield ``doc_ids`` (LongTensor ``[seq_len]``, −1 padded): the documents
            whose first token is in this block, as :func:`encode_doc_id` of (epoch, row, copy),
            so a training run can audit exactly which documents it consumed.
    """

    def __init__(
        self,
        dataset: QuaDMixDataset,
        tokenizer: TextTokenizer | str | Path,
        seq_len: int,
        track_docs: bool = False,
    ) -> None:
        super().__init__()
        self.track_docs = track_docs
        self.dataset = dataset
        self.tokenizer = (
            tokenizer if isinstance(tokenizer, TextTokenizer) else TextTokenizer(tokenizer)
        )
        self.seq_len = int(seq_len)
        self._resume: dict | None = None
        self._live: dict | None = None

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_live"] = None
        return d

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """This consumer's snapshot: inner stream state plus the packing leftovers."""
        inner = self.dataset.state_dict()
        if self._live is None and self._resume is not None:
            # restored and not iterated since: the restored leftovers are still to be packed
            leftovers = copy.deepcopy(self._resume["leftovers"])
        else:
            live = self._live or {"carry": [], "carry_domains": [], "doc": None, "started": []}
            leftovers = {str(inner.get("consumer", 0)): copy.deepcopy(live)}
        return {PACKED_MARK: 1, "inner": inner, "leftovers": leftovers, "seq_len": self.seq_len}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        packed = [s for s in _find_packed(state)]
        if not packed:
            raise UserError("not a packed loader state (no 'quadmix_packed_state' marker)")
        st = merge_packed(packed) if len(packed) > 1 else dict(packed[0])
        if st["seq_len"] != self.seq_len:
            raise UserError(
                f"packed state is for seq_len={st['seq_len']}, this loader has {self.seq_len}"
            )
        self.dataset.load_state_dict(st["inner"])
        self._resume, self._live = st, None

    def _my_leftovers(self, consumer: int, consumers: int) -> list[dict]:
        st = self._resume
        if st is None:
            return []
        inner = st["inner"]
        left = st["leftovers"]
        same = (
            inner["consumers"] == consumers
            and inner["params_fingerprint"] == self.dataset.params.fingerprint()
        )
        if same:
            return [left[str(consumer)]] if str(consumer) in left else []
        # another topology: old consumers' leftovers are dealt round-robin to the new ones
        return [left[k] for i, k in enumerate(sorted(left, key=int)) if i % consumers == consumer]

    # ------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        ds = self.dataset
        if not ds.infinite and ds.world_size > 1 and ds.balance is not None:
            # Balancing equalises documents per consumer, not blocks: ranks would yield different
            # numbers of blocks and a DDP all-reduce would wait forever on the last ones.
            raise UserError(
                "PackedDataset over a finite QuaDMixDataset cannot give every rank the same number "
                "of blocks; use QuaDMixDataset(..., infinite=True) and train for a number of steps "
                "(as the trainer, the HF, Lightning and torchtitan integrations do), or "
                "balance=None if your ranks do not synchronise per batch"
            )
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        consumer = self.dataset.rank * workers + worker
        consumers = self.dataset.world_size * workers
        m = len(self.dataset.manifest.domains)
        carry: list[int] = []
        carry_dom: list[int] = []
        started: list[int] = []  # docs whose first token is in the block being filled
        pending: list[tuple[list[int], int, dict | None]] = []  # (tokens, domain, doc marker)
        for lo in self._my_leftovers(consumer, consumers):
            carry += lo["carry"]
            carry_dom += lo["carry_domains"]
            started += lo.get("started", [])
            if lo["doc"] is not None:
                d = lo["doc"]
                doc = self.dataset.read_row(d["row"])
                toks = self.tokenizer.encode_docs([doc["text"]])[0]
                dom = int(doc["domain_id"])
                pending.append((toks[d["offset"] :], dom, {**d}))
        packer = BlockPacker(self.seq_len, carry, carry_dom)
        live = {
            "carry": packer.carry,
            "carry_domains": packer.tags,
            "doc": None,
            "started": started,
        }
        self._live = live

        def blocks(
            toks: list[int], dom: int, marker: dict | None
        ) -> Iterator[dict[str, torch.Tensor]]:
            nonlocal started
            if marker is not None and marker["offset"] == 0:
                started.append(encode_doc_id(marker["epoch"], marker["row"], marker["copy"]))
            for ids, doms, pos in packer.add(toks, dom):
                # the state a checkpoint taken after this block resumes from
                if marker is not None and len(toks) - pos > 0:
                    live["doc"] = {**marker, "offset": marker["offset"] + pos}
                else:
                    live["doc"] = None
                live["carry"], live["carry_domains"] = packer.carry, packer.tags
                t = torch.tensor(ids, dtype=torch.long)
                item = {
                    "input_ids": t,
                    "labels": t.clone(),
                    "token_domains": torch.tensor(doms, dtype=torch.long),
                    "domain_tokens": torch.from_numpy(np.bincount(doms, minlength=m)).long(),
                }
                if self.track_docs:
                    d = torch.full((self.seq_len,), -1, dtype=torch.long)
                    head = started[: self.seq_len]
                    d[: len(head)] = torch.tensor(head, dtype=torch.long)
                    item["doc_ids"] = d
                started = live["started"] = started[self.seq_len :]
                yield item
            live["carry"], live["carry_domains"], live["doc"] = packer.carry, packer.tags, None

        for toks, dom, marker in pending:
            yield from blocks(toks, dom, {**marker, "offset": marker["offset"]} if marker else None)
        for doc in self.dataset:
            toks = self.tokenizer.encode_docs([doc["text"]])[0]
            marker = {"row": doc["row"], "copy": doc["copy"], "epoch": doc["epoch"], "offset": 0}
            yield from blocks(toks, doc["domain_id"], marker)
        # the epoch's last partial block stays in the carry (state) and opens the next epoch


def encode_doc_id(epoch: int, row: int, copy: int) -> int:
    """One int64 for (epoch, global row, copy): epoch·2^48 + row·2^8 + copy."""
    return (int(epoch) << 48) | (int(row) << 8) | int(copy)


def decode_doc_id(x: int) -> tuple[int, int, int]:
    return x >> 48, (x >> 8) & ((1 << 40) - 1), x & 255


def _find_packed(obj: Any) -> list[dict]:
    if isinstance(obj, Mapping):
        if obj.get(PACKED_MARK) == 1:
            return [dict(obj)]
        return [s for v in obj.values() for s in _find_packed(v)]
    if isinstance(obj, list | tuple):
        return [s for v in obj for s in _find_packed(v)]
    return []


def merge_packed(states: list[Mapping]) -> dict:
    """One global packed state from every consumer's snapshot."""
    inner = merge_states([s for st in states for s in find_states(st["inner"]) if is_state(s)])
    left: dict[str, dict] = {}
    for st in states:
        left.update(st["leftovers"])
    return {PACKED_MARK: 1, "inner": inner, "leftovers": left, "seq_len": states[0]["seq_len"]}
