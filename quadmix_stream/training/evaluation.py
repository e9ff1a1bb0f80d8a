"""Evaluation sets and losses, for the pretraining trainer and the search's proxies alike.

An evaluation set is a JSONL file (local or a URL) with a ``text`` field. Its documents are
tokenized and packed like training (an end-of-text token after each) into ``seq_len`` blocks:
:func:`full_blocks` keeps whole blocks only (the trainer), :func:`target_blocks` pads the last
one and marks real tokens (the proxies, which may also take a window of each document). One
loop, :func:`mean_loss`, accumulates ``(loss sum, count)`` pairs in float64 over batches of
blocks, whatever computes them: a Hugging Face model's mean loss, :func:`lm_loss` on a masked
batch, or a ``vmap`` over stacked proxies (one pair per proxy).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from quadmix_stream.errors import UserError
from quadmix_stream.storage.locations import read_location
from quadmix_stream.storage.store import is_remote

#: ``(ids, mask or None) → tensor [..., 2]`` of (loss sum, count) for one batch of blocks
BatchLoss = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def autocast(device: torch.device):
    """bf16 autocast on CUDA; plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of every predicted position, in fp32: ``[..., seq_len − 1]``
    (position t is the loss of token t + 1 given the tokens before it)."""
    pred = logits[..., :-1, :].float()
    nll = F.cross_entropy(
        pred.reshape(-1, pred.shape[-1]), ids[..., 1:].reshape(-1), reduction="none"
    )
    return nll.reshape(ids[..., 1:].shape)


def domain_loss_pairs(nll: torch.Tensor, token_domains: torch.Tensor, m: int) -> torch.Tensor:
    """``[m, 2]`` float64: per domain, the summed loss of its predicted tokens and their number
    (position t of ``nll`` predicts token t + 1, whose domain it is counted in)."""
    d = token_domains[..., 1:].reshape(-1)
    out = torch.zeros(m, 2, dtype=torch.float64, device=nll.device)
    out[:, 0].index_add_(0, d, nll.reshape(-1).double())
    out[:, 1].index_add_(0, d, torch.ones_like(d, dtype=torch.float64))
    return out


def lm_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None):
    """Next-token cross-entropy in fp32: ``(sum, count)`` over predicted positions.

    With ``mask`` (real tokens), position t+1 counts when tokens t and t+1 are both real.
    """
    nll = token_nll(logits, ids).reshape(-1)
    if mask is None:
        return nll.sum(), torch.tensor(float(nll.numel()), device=nll.device)
    keep = (mask[..., 1:] & mask[..., :-1]).reshape(-1).to(nll.dtype)
    return (nll * keep).sum(), keep.sum()


@torch.no_grad()
def mean_loss(
    batch_loss: BatchLoss,
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    device: torch.device,
    batch_size: int,
) -> torch.Tensor:
    """Mean loss over an evaluation set's blocks: ``Σ sum / Σ count`` (float64, on ``device``).

    Args:
        batch_loss: the (sum, count) pair of a batch (a leading axis for stacked models).
        ids: ``[blocks, seq_len]`` token ids.
        mask: real tokens of ``ids``, or ``None`` when every token is real.
        device: where the batches go.
        batch_size: blocks per batch.
    """
    acc = None
    for i in range(0, ids.shape[0], batch_size):
        x = ids[i : i + batch_size].to(device)
        m = None if mask is None else mask[i : i + batch_size].to(device)
        pair = batch_loss(x, m).double()
        acc = pair if acc is None else acc + pair
    if acc is None:
        raise UserError("an evaluation set without a block")
    return acc[..., 0] / acc[..., 1]


def hf_batch_loss(model: torch.nn.Module, device: torch.device) -> BatchLoss:
    """A Hugging Face causal LM's own mean loss, as the ``(mean · blocks, blocks)`` pair."""

    def pair(x: torch.Tensor, _mask: torch.Tensor | None) -> torch.Tensor:
        with autocast(device):
            loss = model(input_ids=x, labels=x).loss
        n = torch.tensor(float(len(x)), dtype=torch.float64, device=loss.device)
        return torch.stack([loss.double() * len(x), n])

    return pair


def load_target_texts(path: str | Path) -> list[str]:
    """Texts of an evaluation set (JSONL with a ``text`` field; a local path or a URL).

    Lines without a non-empty ``text`` are skipped; a set with none is a :class:`UserError`
    (``ValueError``), as is a line that is not JSON.
    """
    if is_remote(str(path)):
        raw = read_location(path).decode("utf-8")
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"target set {path}: no such file")
        raw = path.read_text(encoding="utf-8")
    texts, lines = [], 0
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        lines += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"target set {path}, line {i}: not valid JSON ({e})") from None
        text = obj.get("text") if isinstance(obj, dict) else None
        if isinstance(text, str) and text.strip():
            texts.append(text)
    if not texts:
        raise UserError(
            f"target set {path}: no text ({lines} JSON lines, none with a non-empty 'text' field)"
        )
    return texts


def full_blocks(
    path: str | Path, tokenizer, seq_len: int, max_blocks: int, doc_tokens: int = 0, seed: int = 0
) -> tuple[torch.Tensor, dict]:
    """At most ``max_blocks`` whole blocks of an evaluation set (the trainer's ``eval_loss``) and
    its coverage (:func:`eval_coverage`'s dict).

    ``doc_tokens = 0``: the first blocks of the file (on long documents, the first few of them).
    ``doc_tokens > 0``: at most that many tokens from the start of each document, documents in a
    seeded order, so the blocks spread over the whole set (as the proxies' ``eval_doc_tokens``).
    """
    texts = load_target_texts(path)
    ids, used = eval_ids(texts, tokenizer, max_blocks * seq_len, doc_tokens, seed)
    n = len(ids) // seq_len
    if n == 0:
        raise UserError(f"eval set {path} has fewer than seq_len={seq_len} tokens")
    coverage = {"docs": len(texts), "docs_used": used, "tokens": n * seq_len}
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len), coverage


def target_blocks(
    texts: list[str],
    tokenizer,
    seq_len: int,
    max_tokens: int,
    doc_tokens: int = 0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An evaluation set as ``(blocks, mask)``: documents packed like training, cut at ``max_tokens``.

    ``doc_tokens = 0`` takes the documents in file order (the first ``max_tokens`` tokens of the
    file: on long documents, only the first few). ``doc_tokens > 0`` takes at most that many
    tokens from the start of each document, documents in a seeded random order, so the budget
    covers ``max_tokens / doc_tokens`` documents spread over the whole set (see
    :func:`eval_coverage`). The last block is padded; ``mask`` marks real tokens. The loss of a
    block counts the prediction of every real token after the first of its block.
    """
    ids = eval_ids(texts, tokenizer, max_tokens, doc_tokens, seed)[0]
    n = -(-len(ids) // seq_len)
    blocks = np.full(n * seq_len, tokenizer.eos_id, dtype=np.int64)
    blocks[: len(ids)] = ids
    mask = np.zeros(n * seq_len, dtype=bool)
    mask[: len(ids)] = True
    return (
        torch.from_numpy(blocks).view(n, seq_len),
        torch.from_numpy(mask).view(n, seq_len),
    )


def eval_coverage(
    texts: list[str], tokenizer, max_tokens: int, doc_tokens: int = 0, seed: int = 0
) -> dict:
    """How much of an evaluation set :func:`target_blocks` reads: documents and tokens."""
    ids, used = eval_ids(texts, tokenizer, max_tokens, doc_tokens, seed)
    return {"docs": len(texts), "docs_used": used, "tokens": len(ids)}


def eval_ids(
    texts: list[str], tokenizer, max_tokens: int, doc_tokens: int = 0, seed: int = 0
) -> tuple[list[int], int]:
    """The first ``max_tokens`` token ids of the set and how many documents they draw on.

    ``doc_tokens > 0``: documents in a seeded order, at most that many tokens of each (plus its
    end-of-text token).
    """
    order = np.arange(len(texts))
    if doc_tokens:
        order = np.random.default_rng(seed).permutation(len(texts))
    ids: list[int] = []
    used = 0
    for chunk in range(0, len(order), 256):
        docs = tokenizer.encode_docs([texts[i] for i in order[chunk : chunk + 256]])
        for doc in docs:
            if len(ids) >= max_tokens:
                break
            ids.extend(doc[:-1][:doc_tokens] + doc[-1:] if doc_tokens else doc)
            used += 1
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens], used
