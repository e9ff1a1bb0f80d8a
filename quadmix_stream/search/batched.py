"""Several proxies trained at once in one process: one tiny model cannot fill a GPU.

The G proxies of a group share the architecture and the initial weights, so their weights are
stacked (``torch.func.stack_module_state``: every tensor gets a leading G axis) and one forward
and backward of ``vmap(functional_call(model))`` trains all of them, each on its own θ's batch.
The arithmetic is that of :func:`.proxy.train_one`, member by member:

* AdamW is element-wise, so one AdamW over the stacked tensors is G independent AdamWs (same
  step count and learning-rate schedule for all);
* gradient clipping uses each member's own gradient norm;
* a member whose loss turns non-finite is recorded as failed and frozen (its slice zeroed);
  the other members are independent of it and keep training.

Results match one-at-a-time training up to float reassociation (tested).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from torch.func import functional_call, stack_module_state, vmap

from quadmix_stream.search.data import SelectionError, TokenStream
from quadmix_stream.search.proxy import (
    ProxyContext,
    ProxyJob,
    Ticker,
    adamw,
    build_model,
    decay_mask,
    finish,
    result,
    stream_stats,
)
from quadmix_stream.training.evaluation import autocast, lm_loss, mean_loss


@dataclass
class Group:
    """The members of a group that have a stream: job index, stream and expected selection."""

    jobs: list[ProxyJob]
    t0: float
    out: list[dict | None]
    members: list[int] = field(default_factory=list)  # index into jobs of each stacked member
    streams: list[TokenStream] = field(default_factory=list)
    sels: list[dict] = field(default_factory=list)


def _open(jobs: list[ProxyJob], ctx: ProxyContext) -> Group:
    """Every job's stream; a θ that selects (almost) nothing is recorded as failed at once."""
    grp = Group(jobs, time.perf_counter(), [None] * len(jobs))
    for i, job in enumerate(jobs):
        try:
            st, sel = ctx.stream(job)
        except SelectionError as e:
            grp.out[i] = result(job, "failed", reason=str(e), seconds=time.perf_counter() - grp.t0)
            continue
        grp.streams.append(st)
        grp.members.append(i)
        grp.sels.append(sel)
    return grp


def _stack(model: torch.nn.Module, g: int, device: torch.device):
    params, buffers = stack_module_state([model] * g)
    params = {k: v.detach().to(device).requires_grad_(True) for k, v in params.items()}
    buffers = {k: v.to(device) for k, v in buffers.items()}
    return params, buffers


def _member_fn(skeleton: torch.nn.Module, ctx: ProxyContext, mask: bool):
    """One member's ``(params, buffers, ids[, mask]) →`` mean loss (training) or (sum, count)."""
    kwargs = {"attention_mask": ctx.attn_mask}

    def logits(p, b, ids):
        return functional_call(skeleton, (p, b), (), {"input_ids": ids, **kwargs}).logits

    if mask:
        return lambda p, b, ids, m: torch.stack(lm_loss(logits(p, b, ids), ids, m))

    def mean(p, b, ids):
        s, c = lm_loss(logits(p, b, ids), ids)
        return s / c

    return mean


def _next_rows(grp: Group, alive: torch.Tensor, fail, zeros: torch.Tensor) -> torch.Tensor:
    """The next batch of every member, ``(G, batch, seq)``; zeros for a failed member."""
    rows = []
    for j, st in enumerate(grp.streams):
        if alive[j]:
            try:
                rows.append(st.next_batch())
                continue
            except SelectionError as e:
                fail(j, str(e))
        rows.append(zeros)
    return torch.stack(rows)


def train_group(jobs: list[ProxyJob], ctx: ProxyContext) -> list[dict]:
    """Train and evaluate ``jobs`` together; returns one result record per job, in order."""
    cfg, dev = ctx.cfg, ctx.device
    grp = _open(jobs, ctx)
    if not grp.members:
        return grp.out  # type: ignore[return-value]

    g = len(grp.members)
    model = build_model(cfg, ctx.tokenizer.vocab_size)
    decay = decay_mask(model)
    params, buffers = _stack(model, g, dev)
    skeleton = copy.deepcopy(model).to("meta")  # architecture only; weights come from `params`
    del model
    opt = adamw(params.items(), decay, cfg)
    losses_of = vmap(_member_fn(skeleton, ctx, mask=False))
    alive = torch.ones(g, dtype=torch.bool)
    last = torch.full((g,), float("nan"))
    base = dict(mode="batched", group=g, device=str(dev), steps=cfg.steps)

    def fail(j: int, reason: str) -> None:
        alive[j] = False
        i = grp.members[j]
        grp.out[i] = result(
            jobs[i],
            "failed",
            reason=reason,
            seconds=time.perf_counter() - grp.t0,
            expected=grp.sels[j],
            **base,
            **stream_stats(grp.streams[j]),
        )

    zeros = torch.zeros(cfg.batch_size, cfg.seq_len, dtype=torch.long)
    names = [jobs[i].name for i in grp.members]
    tick = Ticker(ctx, f"{names[0]}…{names[-1]} (group of {g})" if g > 1 else names[0], g)
    for step in range(cfg.steps):
        batch = _next_rows(grp, alive, fail, zeros)
        if not alive.any():
            break
        batch = batch.to(dev, non_blocking=True)  # (G, batch, seq)
        for pg in opt.param_groups:
            pg["lr"] = cfg.lr_at(step)
        total = torch.zeros(g, device=dev)
        for ids in batch.split(cfg.micro, dim=1):
            with autocast(dev):
                losses = losses_of(params, buffers, ids) * (ids.shape[1] / batch.shape[1])
            live = alive.to(dev)
            torch.where(live, losses, torch.zeros_like(losses)).sum().backward()
            total += losses.detach()
        last = total.float().cpu()
        for j in torch.nonzero(alive & ~torch.isfinite(last)).flatten().tolist():
            fail(j, f"diverged: training loss {float(last[j])} at step {step}")
        _step(params, opt, alive.to(dev), cfg.grad_clip)
        live = last[alive & torch.isfinite(last)]
        tick(step, float(live.mean()) if len(live) else float("nan"))

    losses = evaluate_group(skeleton, params, buffers, ctx)
    del params, buffers, opt
    return _finish(grp, ctx, losses, last, base)


def _finish(
    grp: Group, ctx: ProxyContext, losses: dict[str, list[float]], last: torch.Tensor, base: dict
) -> list[dict]:
    """The result record of every member still alive (the failed ones have theirs)."""
    cfg, g = ctx.cfg, len(grp.members)
    seconds = time.perf_counter() - grp.t0  # the group's wall time, shared by its members
    for j, i in enumerate(grp.members):
        if grp.out[i] is not None:
            continue
        stats = dict(
            train_loss=float(last[j]),
            tokens=cfg.steps * cfg.batch_size * cfg.seq_len,
            seconds=seconds / g,
            group_seconds=seconds,
            expected=grp.sels[j],
            **base,
            **stream_stats(grp.streams[j]),
        )
        grp.out[i] = finish(grp.jobs[i], {k: v[j] for k, v in losses.items()}, ctx, stats)
    return grp.out  # type: ignore[return-value]


@torch.no_grad()
def _step(params: dict, opt: torch.optim.Optimizer, alive: torch.Tensor, clip: float) -> None:
    """Freeze failed members, clip each member's gradient by its own norm, take the AdamW step."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    g = alive.shape[0]
    for p in params.values():
        if p.grad is None:
            continue
        view = (g,) + (1,) * (p.ndim - 1)
        p.grad.mul_(alive.view(view)).nan_to_num_(0.0, 0.0, 0.0)
        p.mul_(alive.view(view))  # a failed member's weights become zeros (never NaN compute)
    if clip > 0 and grads:
        sq = torch.stack([gr.float().pow(2).flatten(1).sum(1) for gr in grads]).sum(0)
        coef = (clip / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for gr in grads:
            gr.mul_(coef.view((g,) + (1,) * (gr.ndim - 1)).to(gr.dtype))
    opt.step()
    opt.zero_grad(set_to_none=True)
    for state in opt.state.values():  # failed members: no moments left to replay
        for v in state.values():
            if torch.is_tensor(v) and v.ndim and v.shape[0] == g:
                v.mul_(alive.view((g,) + (1,) * (v.ndim - 1))).nan_to_num_(0.0, 0.0, 0.0)


@torch.no_grad()
def evaluate_group(
    skeleton, params: dict, buffers: dict, ctx: ProxyContext
) -> dict[str, list[float]]:
    """Mean per-token loss of every stacked member on every evaluation set (same blocks for all)."""
    fn = vmap(_member_fn(skeleton, ctx, mask=True), in_dims=(0, 0, None, None))

    def batch_loss(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        with autocast(ctx.device):
            return fn(params, buffers, ids, mask)

    bs = ctx.cfg.eval_batch_size
    return {
        name: mean_loss(batch_loss, ids, mask, ctx.device, bs).tolist()
        for name, (ids, mask) in ctx.evals.items()
    }
