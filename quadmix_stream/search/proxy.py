"""One proxy: a small causal LM trained on θ's stream for a fixed token budget, then evaluated.

The model is :mod:`quadmix_stream.training.model`'s Llama-family LM (RegMix's 1M proxies are the same
family), the learning rate :mod:`quadmix_stream.training.schedule`'s, the losses
:mod:`quadmix_stream.training.evaluation`'s: the pretraining trainer's. Every proxy
of a search starts from the same weights (``proxy.init_seed``) and reads its θ's stream with the
job's data seed: the same for every proposal (``proxy.data_seed``, so two proxies differ only by
θ), or one per proposal (``proxy.seed_per_run``, see :func:`run_seed`). The score is the mean per-token loss on the
target set (nats per token of the run's tokenizer). A non-finite loss, in training or at the end,
marks the proxy as failed (diverged) instead of stopping the search.

:mod:`.batched` trains several proxies at once with the same arithmetic.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from quadmix_stream.errors import UserError
from quadmix_stream.mixing.params import SamplingParams
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
from quadmix_stream.storage.locations import dataset_location
from quadmix_stream.training.evaluation import autocast, lm_loss, mean_loss
from quadmix_stream.training.launch import cpu_threads
from quadmix_stream.training.model import ModelConfig, build_causal_lm, count_params

__all__ = [  # count_params: the report counts the proxy's parameters through this module
    "ProxyContext",
    "ProxyJob",
    "build_model",
    "count_params",
    "evaluate",
    "stream_fingerprint",
    "train_one",
]


# ---------------------------------------------------------------- placement and model
def resolve_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"proxy.device: {spec!r} asked for but CUDA is not available")
    return dev


def model_config(cfg: ProxyConfig) -> ModelConfig:
    """The proxy's architecture; attention left unset is eager (it works under vmap everywhere)."""
    if cfg.model.attn_implementation:
        return cfg.model
    return dataclasses.replace(cfg.model, attn_implementation="eager")


def build_model(cfg: ProxyConfig, vocab_size: int) -> torch.nn.Module:
    """The proxy LM with the search's shared initial weights (seeded by ``cfg.init_seed``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        return build_causal_lm(model_config(cfg), vocab_size, cfg.seq_len)


def causal_mask(cfg: ProxyConfig, device: torch.device) -> torch.Tensor | None:
    """A ready 4-D additive causal mask for eager attention (transformers then skips building
    one per forward, which costs more than the tiny model itself); ``None`` for sdpa (is_causal)."""
    if model_config(cfg).attn_implementation != "eager":
        return None
    n = cfg.seq_len
    mask = torch.full((n, n), torch.finfo(torch.float32).min).triu(1)
    return mask[None, None].to(device)


def decay_mask(model: torch.nn.Module) -> dict[str, bool]:
    """Weight decay on matrices (projections, embeddings), not on norm gains."""
    return {n: p.ndim >= 2 for n, p in model.named_parameters()}


def adamw(
    named: Iterable[tuple[str, torch.Tensor]], decay: dict[str, bool], cfg: ProxyConfig
) -> torch.optim.AdamW:
    """AdamW over ``named`` parameters, weight decay on those ``decay`` marks."""
    named = list(named)
    groups = [
        {"params": [p for n, p in named if decay[n]], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if not decay[n]], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, foreach=True)


# ---------------------------------------------------------------- jobs and shared context
@dataclass
class ProxyJob:
    """A proxy to train: its name in the run folder, its θ and the seed of its stream (``None``:
    the recipe's ``proxy.data_seed``)."""

    name: str
    params: SamplingParams
    info: dict[str, Any] = field(default_factory=dict)
    data_seed: int | None = None


def run_seed(cfg: ProxyConfig, run: int) -> int:
    """The data seed of proposal ``run``: ``data_seed``, or with ``seed_per_run`` a seed drawn
    from (``data_seed``, ``run``), the same on every resume."""
    if not cfg.seed_per_run:
        return cfg.data_seed
    import numpy as np

    return int(np.random.SeedSequence([cfg.data_seed, 7, int(run)]).generate_state(1)[0])


@dataclass
class ProxyContext:
    """What every proxy of a search shares: dataset, tokenizer, settings, evaluation blocks.

    ``evals`` maps each evaluation set (``target`` first) to its ``(blocks, mask)``;
    ``progress`` (when set) receives a line every ``progress_every`` seconds of training.
    """

    dataset: (
        str | Path
    )  # a folder, or a URL kept as the string (see quadmix_stream.storage.locations)
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
        torch.set_num_threads(cpu_threads(cfg.threads))  # else every core in every process

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
        cfg = self.cfg
        seed = self.seed_of(job)
        ds = open_stream(self.dataset, job.params, seed)
        sel = check_selection(ds, cfg.tokens, cfg.max_epochs, cfg.doc_tokens, cfg.pool_fraction)
        stream = TokenStream(
            ds,
            self.tokenizer,
            self.cfg.batch_size,
            self.cfg.seq_len,
            self.cfg.max_epochs,
            cache=self.token_cache,
            doc_tokens=self.cfg.doc_tokens,
            window_seed=seed,
            pool_fraction=self.cfg.pool_fraction,
        )
        return stream, sel

    def seed_of(self, job: ProxyJob) -> int:
        return self.cfg.data_seed if job.data_seed is None else int(job.data_seed)


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
        **({} if job.data_seed is None else {"data_seed": int(job.data_seed)}),
        **job.info,
        **kw,
    }


def stream_stats(stream: TokenStream) -> dict:
    return {"epochs": stream.epochs, "docs": stream.docs, "unique_docs": len(stream.unique)}


# ---------------------------------------------------------------- one proxy, start to end
@torch.no_grad()
def evaluate(model: torch.nn.Module, ctx: ProxyContext) -> dict[str, float]:
    """Mean per-token loss of ``model`` on every evaluation set (``target`` first)."""

    def batch_loss(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        with autocast(ctx.device):
            logits = model(input_ids=ids, attention_mask=ctx.attn_mask).logits
        return torch.stack(lm_loss(logits, ids, mask))

    model.eval()
    bs = ctx.cfg.eval_batch_size
    out = {
        name: float(mean_loss(batch_loss, ids, mask, ctx.device, bs))
        for name, (ids, mask) in ctx.evals.items()
    }
    model.train()
    return out


def train_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batch: torch.Tensor,
    step: int,
    ctx: ProxyContext,
) -> float:
    """One optimiser step on ``batch`` (micro-batches accumulated); returns its training loss.

    A non-finite loss returns before the step (the proxy has diverged).
    """
    cfg = ctx.cfg
    for g in opt.param_groups:
        g["lr"] = cfg.lr_at(step)
    total = 0.0
    for ids in batch.split(cfg.micro):  # gradient accumulation over micro-batches
        with autocast(ctx.device):
            logits = model(input_ids=ids, attention_mask=ctx.attn_mask).logits
        s, c = lm_loss(logits, ids)
        loss = s / c * (ids.shape[0] / batch.shape[0])
        loss.backward()
        total += float(loss.detach())
    if not math.isfinite(total):
        return total
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total


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
    opt = adamw(model.named_parameters(), decay_mask(model), cfg)
    base = dict(mode="sequential", device=str(dev), expected=sel, steps=cfg.steps)
    last = float("nan")
    tick = Ticker(ctx, job.name)
    try:
        for step in range(cfg.steps):
            batch = stream.next_batch().to(dev, non_blocking=True)
            last = train_step(model, opt, batch, step, ctx)
            if not math.isfinite(last):
                return result(
                    job,
                    "failed",
                    reason=f"diverged: training loss {last} at step {step}",
                    seconds=time.perf_counter() - t0,
                    **base,
                    **stream_stats(stream),
                )
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
