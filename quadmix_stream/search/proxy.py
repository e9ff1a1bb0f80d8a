"""One proxy: a small causal LM trained on θ's stream for a fixed token budget, then evaluated.

The model is a transformers ``LlamaConfig`` (RMSNorm, SwiGLU, RoPE; RegMix's 1M proxies are the
same family) built with ``AutoModelForCausalLM.from_config`` — nothing is downloaded. Every proxy
of a search starts from the same weights (``proxy.init_seed``) and reads its θ's stream with the
same stream seed, so two proxies differ only by θ. The score is the mean per-token loss on the
target set (nats per token of the run's tokenizer). A non-finite loss, in training or at the end,
marks the proxy as failed (diverged) instead of stopping the search.

:mod:`.batched` trains several proxies at once with the same arithmetic.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from quadmix_stream.locations import dataset_location
from quadmix_stream.params import SamplingParams
from quadmix_stream.search.config import ProxyConfig
from quadmix_stream.search.data import (
    SelectionError,
    TokenStream,
    check_selection,
    load_target_texts,
    open_stream,
    target_blocks,
)
from quadmix_stream.search.tokenizer import TextTokenizer


# ---------------------------------------------------------------- placement and model
def resolve_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"proxy.device: {spec!r} asked for but CUDA is not available")
    return dev


def autocast(device: torch.device):
    """bf16 autocast on CUDA; plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_model(cfg: ProxyConfig, vocab_size: int) -> torch.nn.Module:
    """The proxy LM with the search's shared initial weights (seeded by ``cfg.init_seed``)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    m = cfg.model
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_heads,
        max_position_embeddings=cfg.seq_len,
        tie_word_embeddings=False,
        use_cache=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=m.attn_implementation)
    return model


def causal_mask(cfg: ProxyConfig, device: torch.device) -> torch.Tensor | None:
    """A ready 4-D additive causal mask for eager attention (transformers then skips building
    one per forward, which costs more than the tiny model itself); ``None`` for sdpa (is_causal)."""
    if cfg.model.attn_implementation != "eager":
        return None
    n = cfg.seq_len
    mask = torch.full((n, n), torch.finfo(torch.float32).min).triu(1)
    return mask[None, None].to(device)


def count_params(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for n, p in model.named_parameters() if "embed" in n or "lm_head" in n)
    return {"total": total, "non_embedding": total - emb}


def lm_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None):
    """Next-token cross-entropy in fp32: ``(sum, count)`` over predicted positions.

    With ``mask`` (real tokens), position t+1 counts when tokens t and t+1 are both real.
    """
    pred = logits[..., :-1, :].float()
    tgt = ids[..., 1:]
    nll = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), tgt.reshape(-1), reduction="none")
    if mask is None:
        return nll.sum(), torch.tensor(float(nll.numel()), device=nll.device)
    keep = (mask[..., 1:] & mask[..., :-1]).reshape(-1).to(nll.dtype)
    return (nll * keep).sum(), keep.sum()


def lr_at(step: int, cfg: ProxyConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio · lr`` at the last step."""
    total = cfg.steps
    warm = int(round(cfg.warmup * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm - 1)
    cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cos)


def decay_mask(model: torch.nn.Module) -> dict[str, bool]:
    """Weight decay on matrices (projections, embeddings), not on norm gains."""
    return {n: p.ndim >= 2 for n, p in model.named_parameters()}


# ---------------------------------------------------------------- jobs and shared context
@dataclass
class ProxyJob:
    """A proxy to train: its name in the run folder and its θ."""

    name: str
    params: SamplingParams
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProxyContext:
    """What every proxy of a search shares: dataset, tokenizer, settings, evaluation blocks.

    ``evals`` maps each evaluation set (``target`` first) to its ``(blocks, mask)``;
    ``progress`` (when set) receives a line every ``progress_every`` seconds of training.
    """

    dataset: str | Path  # a folder, or a URL kept as the string (see quadmix_stream.locations)
    tokenizer: TextTokenizer
    cfg: ProxyConfig
    device: torch.device
    eval_ids: torch.Tensor
    eval_mask: torch.Tensor
    attn_mask: torch.Tensor | None = None
    token_cache: dict[int, list[int]] = field(default_factory=dict)
    evals: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    progress: Callable[[str], None] | None = None
    progress_every: float = 10.0

    def __post_init__(self) -> None:
        self.evals = {"target": (self.eval_ids, self.eval_mask), **self.evals}

    @classmethod
    def create(
        cls,
        dataset: str | Path,
        tokenizer: TextTokenizer,
        cfg: ProxyConfig,
        target: str | Path,
        evals: dict[str, Path] | None = None,
    ) -> ProxyContext:
        device = resolve_device(cfg.device)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)

        def blocks(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
            texts = load_target_texts(path)
            return target_blocks(
                texts,
                tokenizer,
                cfg.seq_len,
                cfg.eval_max_tokens,
                cfg.eval_doc_tokens,
                cfg.data_seed,
            )

        ids, mask = blocks(target)
        more = {k: blocks(v) for k, v in (evals or {}).items() if k != "target"}
        return cls(
            dataset_location(dataset),
            tokenizer,
            cfg,
            device,
            ids,
            mask,
            causal_mask(cfg, device),
            evals=more,
        )

    def stream(self, job: ProxyJob) -> tuple[TokenStream, dict]:
        """θ's token stream, after refusing a θ that selects (almost) nothing."""
        ds = open_stream(self.dataset, job.params, self.cfg.data_seed)
        cfg = self.cfg
        sel = check_selection(ds, cfg.tokens, cfg.max_epochs, cfg.doc_tokens, cfg.pool_fraction)
        stream = TokenStream(
            ds,
            self.tokenizer,
            self.cfg.batch_size,
            self.cfg.seq_len,
            self.cfg.max_epochs,
            cache=self.token_cache,
            doc_tokens=self.cfg.doc_tokens,
            window_seed=self.cfg.data_seed,
            pool_fraction=self.cfg.pool_fraction,
        )
        return stream, sel


class Ticker:
    """A progress line every ``every`` seconds: step, training loss, tokens/s, ETA."""

    def __init__(self, ctx: ProxyContext, what: str, members: int = 1) -> None:
        self.ctx, self.what, self.members = ctx, what, members
        self.t0 = self.last = time.perf_counter()

    def __call__(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        if self.ctx.progress is None or now - self.last < self.ctx.progress_every:
            return
        self.last = now
        cfg = self.ctx.cfg
        done = step + 1
        rate = done * cfg.batch_size * cfg.seq_len * self.members / (now - self.t0)
        eta = (now - self.t0) / done * (cfg.steps - done)
        self.ctx.progress(
            f"  {self.what}: step {done}/{cfg.steps}, train loss {loss:.3f}, "
            f"{rate:,.0f} tokens/s, ETA {eta:.0f}s"
        )


def diverged(loss: float, vocab_size: int) -> str | None:
    """Why a final target loss counts as diverged: not finite, or worse than twice the loss of
    predicting uniformly (ln V), which no trained model reaches."""
    if not math.isfinite(loss):
        return f"diverged: target loss {loss}"
    if loss > 2.0 * math.log(vocab_size):
        return f"diverged: target loss {loss:.3f} > 2·ln(V) = {2 * math.log(vocab_size):.3f}"
    return None


def stream_fingerprint(params: SamplingParams) -> str:
    """A hash of what changes θ's stream (names, form, α, λ, ω, η, ε), not of its provenance or
    ``extra`` (which hold timestamps and notes): the key that says "this θ was already trained"."""
    import hashlib
    import json

    d = params.to_dict()
    d.pop("provenance", None)
    d.pop("extra", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def result(job: ProxyJob, status: str, **kw: Any) -> dict:
    return {
        "name": job.name,
        "status": status,
        "params_fingerprint": job.params.fingerprint(),
        "stream_fingerprint": stream_fingerprint(job.params),
        **job.info,
        **kw,
    }


def stream_stats(stream: TokenStream) -> dict:
    return {"epochs": stream.epochs, "docs": stream.docs, "unique_docs": len(stream.unique)}


# ---------------------------------------------------------------- one proxy, start to end
@torch.no_grad()
def evaluate(model: torch.nn.Module, ctx: ProxyContext) -> dict[str, float]:
    """Mean per-token loss of ``model`` on every evaluation set (``target`` first)."""
    model.eval()
    out = {}
    bs = ctx.cfg.eval_batch_size
    for name, (all_ids, all_mask) in ctx.evals.items():
        total = torch.zeros((), dtype=torch.float64, device=ctx.device)
        count = torch.zeros((), dtype=torch.float64, device=ctx.device)
        for i in range(0, all_ids.shape[0], bs):
            ids = all_ids[i : i + bs].to(ctx.device)
            mask = all_mask[i : i + bs].to(ctx.device)
            with autocast(ctx.device):
                logits = model(input_ids=ids, attention_mask=ctx.attn_mask).logits
            s, c = lm_loss(logits, ids, mask)
            total += s.double()
            count += c.double()
        out[name] = float(total / count)
    model.train()
    return out


def train_one(job: ProxyJob, ctx: ProxyContext) -> dict:
    """Train and evaluate one proxy; returns its result record (``ok`` or ``failed``)."""
    cfg, dev = ctx.cfg, ctx.device
    t0 = time.perf_counter()
    try:
        stream, sel = ctx.stream(job)
    except SelectionError as e:
        return result(job, "failed", reason=str(e), seconds=time.perf_counter() - t0)
    model = build_model(cfg, ctx.tokenizer.vocab_size).to(dev)
    model.train()
    decay = decay_mask(model)
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if decay[n]],
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for n, p in model.named_parameters() if not decay[n]], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, foreach=True)
    base = dict(mode="sequential", device=str(dev), expected=sel, steps=cfg.steps)
    last = float("nan")
    tick = Ticker(ctx, job.name)
    try:
        for step in range(cfg.steps):
            batch = stream.next_batch().to(dev, non_blocking=True)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            total = 0.0
            for ids in batch.split(cfg.micro):  # gradient accumulation over micro-batches
                with autocast(dev):
                    logits = model(input_ids=ids, attention_mask=ctx.attn_mask).logits
                s, c = lm_loss(logits, ids)
                loss = s / c * (ids.shape[0] / batch.shape[0])
                loss.backward()
                total += float(loss.detach())
            last = total
            if not math.isfinite(last):
                return result(
                    job,
                    "failed",
                    reason=f"diverged: training loss {last} at step {step}",
                    seconds=time.perf_counter() - t0,
                    **base,
                    **stream_stats(stream),
                )
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            tick(step, last)
    except SelectionError as e:
        return result(job, "failed", reason=str(e), seconds=time.perf_counter() - t0, **base)
    losses = evaluate(model, ctx)
    stats = dict(train_loss=last, tokens=cfg.steps * cfg.batch_size * cfg.seq_len)
    stats.update(stream_stats(stream), seconds=time.perf_counter() - t0, **base)
    del model, opt
    return finish(job, losses, ctx, stats)


def finish(job: ProxyJob, losses: dict[str, float], ctx: ProxyContext, stats: dict) -> dict:
    """The record of a trained proxy: ``loss`` is the target loss, ``losses`` every set's."""
    why = next(
        (w for w in (diverged(v, ctx.tokenizer.vocab_size) for v in losses.values()) if w), None
    )
    if why:
        return result(job, "failed", reason=why, losses=losses, **stats)
    return result(job, "ok", loss=losses["target"], losses=losses, **stats)
